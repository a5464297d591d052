"""The Generator actor on real Ray: user-facing errors reach the driver as themselves."""

from __future__ import annotations

import pytest

from ftsafe_ray.errors import DataError, StageError
from ftsafe_ray.generate.actor import Generator
from ftsafe_ray.generate.stage import _get
from ftsafe_ray.spec import SamplingSpec


def test_errors_raised_in_tasks_and_actor_init_arrive_in_one_line(ray_local) -> None:
    @ray_local.remote
    def fail() -> None:
        raise StageError("adapter /a: rank r=32 exceeds generation.vllm.max_lora_rank=16")

    with pytest.raises(StageError) as caught:
        _get(ray_local, fail.remote())
    assert str(caught.value) == "adapter /a: rank r=32 exceeds generation.vllm.max_lora_rank=16"

    actor = ray_local.remote(num_cpus=0)(Generator).remote("builtin:nope", "float32", "vllm")
    with pytest.raises(DataError, match="unknown built-in model 'builtin:nope'") as caught:
        _get(ray_local, actor.generate.remote([], SamplingSpec(), 4))
    assert "\n" not in str(caught.value)
    ray_local.kill(actor)


def test_unknown_backend_is_named() -> None:
    with pytest.raises(ValueError, match=r"generation\.backend 'tgi' is unknown"):
        Generator("/nowhere", "float32", "tgi")


def test_sampled_units_carry_their_fine_tunes_seed(tmp_path, tiny_model_dir) -> None:
    import yaml

    from ftsafe_ray.generate.stage import _sampling_seed
    from ftsafe_ray.pipeline import load_plan
    from tests.test_generate_check import write_campaign

    campaign = write_campaign(tmp_path, tiny_model_dir)
    spec = yaml.safe_load(campaign.read_text())
    spec.update(seeds=[1, 2], sampling={"max_new_tokens": 4, "temperature": 1.0})
    campaign.write_text(yaml.safe_dump(spec))
    plan = load_plan(campaign)
    seeds = {(u.target.arm, u.target.seed): _sampling_seed(u, plan) for u in plan.generations}
    assert seeds == {("base", None): 0, ("refuse", 1): 1, ("refuse", 2): 2}
    spec["sampling"]["temperature"] = 0.0
    campaign.write_text(yaml.safe_dump(spec))
    greedy = load_plan(campaign)
    assert {_sampling_seed(u, greedy) for u in greedy.generations} == {0}


def test_plan_pins_the_bases_revision_but_not_the_aligned_merges(tmp_path, tiny_model_dir) -> None:
    import yaml

    from ftsafe_ray.pipeline import load_plan
    from tests.test_generate_check import write_campaign

    campaign = write_campaign(tmp_path, tiny_model_dir)
    spec = yaml.safe_load(campaign.read_text())
    spec["models"][0]["revision"] = "v1"
    campaign.write_text(yaml.safe_dump(spec))
    plan = load_plan(campaign)
    assert (plan.model_path("tiny"), plan.model_revision("tiny")) == (str(tiny_model_dir), "v1")
    spec["models"][0]["align"] = {"datasets": [{"dataset": "d"}]}
    campaign.write_text(yaml.safe_dump(spec))
    aligned = load_plan(campaign)
    # the merge is a local directory this run wrote: it has no hub revisions
    assert aligned.model_path("tiny") != str(tiny_model_dir)
    assert aligned.model_revision("tiny") is None


def test_stage_check_on_a_generator_actor_stops_on_zero_weights_and_records_the_rest(
    tmp_path, tiny_model_dir, ray_local
) -> None:
    import io
    import json
    import shutil

    import yaml

    from ftsafe_ray.generate.check import CHECKS_FILE
    from ftsafe_ray.generate.stage import _check_adapters
    from ftsafe_ray.pipeline import load_plan
    from ftsafe_ray.progress import PlainProgress
    from ftsafe_ray.store import RunStore
    from tests.test_generate_check import peft_adapter, write_campaign

    campaign = write_campaign(tmp_path, tiny_model_dir)
    spec = yaml.safe_load(campaign.read_text())
    spec["seeds"] = [1, 2]
    campaign.write_text(yaml.safe_dump(spec))
    plan = load_plan(campaign)
    store = RunStore(tmp_path / "run")
    store.create()
    labels = {
        u.target.adapter_key: f"{u.target.arm}/{u.target.size}/seed{u.target.seed}"
        for u in plan.generations
        if not u.target.is_base
    }
    first, second = sorted(labels)
    peft_adapter(tiny_model_dir, store.adapter_dir(first), 0.0)  # never trained
    peft_adapter(tiny_model_dir, store.adapter_dir(second), 0.1)
    actor = ray_local.remote(num_cpus=0)(Generator).remote(
        str(tiny_model_dir), "float32", "transformers", 1
    )
    log = io.StringIO()
    try:
        with pytest.raises(StageError, match="all-zero LoRA B weights") as caught:
            _check_adapters(ray_local, actor, plan.generations, plan, store, PlainProgress(log))
        assert labels[first] in str(caught.value) and labels[second] not in str(caught.value)
        shutil.rmtree(store.adapter_dir(first))
        peft_adapter(tiny_model_dir, store.adapter_dir(first), 1e-6)  # keeps the base's answers
        _check_adapters(ray_local, actor, plan.generations, plan, store, PlainProgress(log))
    finally:
        ray_local.kill(actor)
    recorded = json.loads((store.root / CHECKS_FILE).read_text())
    assert {key: entry["status"] for key, entry in recorded.items()} == {
        first: "inconclusive",
        second: "applied",
    }
    assert f"warning: adapter {labels[first]}: effect unproven" in log.getvalue()
