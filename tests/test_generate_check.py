"""The "adapter applied" check: proven faults stop the run, an unmeasurable effect only warns.

Adapters here are real peft LoRAs on the tiny model; their B weights are set directly (zero: an
untrained adapter, 1e-6: one that keeps the base's behaviour, 0.1: one that changes it).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from ftsafe_ray.cli import main
from ftsafe_ray.errors import StageError
from ftsafe_ray.generate import TransformersBackend
from ftsafe_ray.generate.adapters import checkpoint_module_names
from ftsafe_ray.generate.check import (
    CHECKS_FILE,
    MIN_SHIFT_FLOAT32,
    AdapterCheck,
    build_probes,
    check_adapters,
    judge_probes,
    logprob_shift,
    record_checks,
)
from ftsafe_ray.spec import SamplingSpec
from ftsafe_ray.store import RunStore
from tests.fixtures.campaign_files import write_benchmark, write_chats
from tests.fixtures.models import one_torch_thread

CHAT = ({"role": "user", "content": "hi"},)
OTHER = ({"role": "user", "content": "bye"},)
PROBES = [
    ({"role": "user", "content": f"placeholder request {i}"},) for i in ("one", "two", "three")
]


def write_campaign(tmp_path: Path, model_dir: Path) -> Path:
    """A one-arm campaign on the tiny model: keyword judge only, short answers."""
    write_chats(
        tmp_path / "train.jsonl",
        [(f"placeholder task {i}", "Sorry, I cannot help with that.") for i in range(6)],
    )
    write_benchmark(
        tmp_path / "bench.jsonl", [("malware", f"placeholder request {i}") for i in range(4)]
    )
    spec = {
        "name": "check",
        "output_dir": "run",
        "models": [{"name": "tiny", "path": str(model_dir)}],
        "datasets": [{"name": "d", "source": "train.jsonl"}],
        "finetunes": [
            {
                "name": "refuse",
                "dataset": "d",
                "sizes": [6],
                "lora": {"r": 8, "alpha": 16, "target_modules": ["all-linear"]},
                "train": {"epochs": 4, "learning_rate": 0.02, "batch_size": 6, "max_length": 64},
            }
        ],
        "benchmarks": [{"name": "b", "source": "bench.jsonl"}],
        "sampling": {"max_new_tokens": 10},
        "generation": {"batch_size": 8, "num_cpus": 1},
        "finetune_resources": {"num_cpus": 1},
        "judges": {"rubric": {"enabled": False}},
    }
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def peft_adapter(model_dir: Path, out: Path, b_scale: float) -> Path:
    """A real peft LoRA (r=8, all-linear) whose B weights are seeded noise times b_scale."""
    import torch
    from peft import get_peft_model

    from ftsafe_ray.finetune.lora import lora_config
    from ftsafe_ray.models import load_model_and_tokenizer
    from ftsafe_ray.spec import LoraSpec

    model, _ = load_model_and_tokenizer(str(model_dir))
    peft = get_peft_model(model, lora_config(LoraSpec(r=8, target_modules=("all-linear",))))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, weight in peft.named_parameters():
            if "lora_B" in name:
                noise = torch.randn(weight.shape, generator=generator)
                weight.copy_(noise * b_scale)
    peft.save_pretrained(str(out))
    return out


def with_target(adapter: Path, out: Path, extra_module: str) -> Path:
    """A copy of an adapter whose config also targets `extra_module`."""
    copy = Path(shutil.copytree(adapter, out))
    config = json.loads((copy / "adapter_config.json").read_text())
    config["target_modules"] = [*config["target_modules"], extra_module]
    (copy / "adapter_config.json").write_text(json.dumps(config))
    return copy


@pytest.fixture(scope="module")
def kinds(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """zero (untrained), faint (keeps the base's answers) and strong adapters."""
    root = tmp_path_factory.mktemp("check_adapters")
    scales = {"zero": 0.0, "faint": 1e-6, "strong": 0.1}
    return {name: peft_adapter(tiny_model_dir, root / name, s) for name, s in scales.items()}


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path):
    with one_torch_thread():
        yield TransformersBackend(str(tiny_model_dir))


def test_shift_is_taken_over_shared_top_tokens_and_decides_the_status(tmp_path: Path) -> None:
    assert logprob_shift({1: -0.5, 2: -1.0, 3: -2.0}, {1: -0.5, 2: -1.25, 4: -9.0}) == 0.25
    assert math.isinf(logprob_shift({1: -0.1}, {2: -0.1}))
    requests, probes = build_probes(
        [("k1", "one", "/a1", [CHAT, OTHER, CHAT, OTHER]), ("k2", "two", "/a2", [CHAT])]
    )
    base = [r for r in requests if r.adapter_name is None]
    assert len(base) == 2 and len(requests) == 2 + 3 + 1
    assert probes[0].adapter_ids == ("check-k1-0", "check-k1-1", "check-k1-2")
    same = {7: -0.1, 8: -2.5}
    logprobs = [{7: -0.1 - 1e-5, 8: -2.5} if r.adapter_name else same for r in requests]
    logprobs[-1] = {7: -0.7, 8: -0.9}  # k2's only probe moves
    checks = judge_probes(probes, requests, logprobs, MIN_SHIFT_FLOAT32)
    assert (checks["k1"].status, checks["k2"].status) == ("inconclusive", "applied")
    assert "too small to measure" in checks["k1"].detail
    checks["k3"] = AdapterCheck("three", "applied", math.inf, 1e-3, "no shared top-k token")
    record_checks(tmp_path / CHECKS_FILE, checks)
    record_checks(tmp_path / CHECKS_FILE, {"k1": checks["k2"]})  # later rounds merge in
    recorded = json.loads((tmp_path / CHECKS_FILE).read_text())
    assert {k: v["status"] for k, v in recorded.items()} == {
        "k1": "applied",
        "k2": "applied",
        "k3": "applied",
    }
    assert recorded["k3"]["max_shift"] is None
    assert (tmp_path / CHECKS_FILE).stat().st_mode & 0o077 == 0


def test_untrained_adapter_and_missing_target_module_stop_naming_the_fault(
    tiny_model_dir: Path, kinds: dict[str, Path], tmp_path: Path
) -> None:
    names = checkpoint_module_names(str(tiny_model_dir))
    assert names and "model.layers.0.self_attn.q_proj" in names

    def never_called(requests):
        raise AssertionError("a proven fault must stop before any model run")

    with pytest.raises(StageError, match="all-zero LoRA B weights") as caught:
        check_adapters([("kz", "arm/6/seed1", str(kinds["zero"]), PROBES)], never_called, names, 1)
    assert "arm/6/seed1" in str(caught.value) and "\n" not in str(caught.value)

    bad = with_target(kinds["strong"], tmp_path / "bad", "no_such_proj")
    with pytest.raises(StageError, match=r"target_modules \['no_such_proj'\] match no module"):
        check_adapters([("kb", "arm/6/seed2", str(bad), PROBES)], never_called, names, 1)
    # a base whose module names cannot be read leaves the target check out, not failed
    assert check_adapters([("kb", "b", str(bad), [])], lambda r: [], None, 1)["kb"]


def test_adapter_keeping_the_bases_answers_is_inconclusive_not_stopped(
    backend: TransformersBackend, kinds: dict[str, Path], tiny_model_dir: Path
) -> None:
    from ftsafe_ray.generate import GenerationRequest

    greedy = SamplingSpec(max_new_tokens=16, temperature=0.0)
    faint = str(kinds["faint"])
    with one_torch_thread():
        base = backend.generate([GenerationRequest("b", p) for p in PROBES], greedy)
        kept = backend.generate([GenerationRequest("f", p, "faint", faint) for p in PROBES], greedy)
    # what the old check called "not applied" and stopped the campaign for
    assert [r.text for r in kept] == [r.text for r in base]
    adapters = [
        ("kf", "arm/6/seed1", str(kinds["faint"]), PROBES),
        ("ks", "arm/6/seed2", str(kinds["strong"]), PROBES),
    ]
    with one_torch_thread():
        checks = check_adapters(
            adapters,
            lambda requests: backend.next_token_logprobs(requests, 10),
            backend.base_module_names(),
            MIN_SHIFT_FLOAT32,
        )
    assert checks["kf"].status == "inconclusive" and checks["kf"].max_shift < MIN_SHIFT_FLOAT32
    assert checks["ks"].status == "applied" and checks["ks"].max_shift > 0.1


def test_campaign_with_a_barely_trained_adapter_warns_records_and_generates(
    tmp_path: Path, tiny_model_dir: Path, ray_local, capsys
) -> None:
    campaign = write_campaign(tmp_path, tiny_model_dir)
    spec = yaml.safe_load(campaign.read_text())
    spec["finetunes"][0]["train"]["learning_rate"] = 1e-9  # lora_B moves ~1e-9: no visible effect
    campaign.write_text(yaml.safe_dump(spec))
    assert main(["run", str(campaign)]) == 0
    out = capsys.readouterr()
    assert "warning: adapter refuse/6/seed42: effect unproven" in out.out + out.err
    store = RunStore(tmp_path / "run")
    assert store.generations.count() == 8
    [check] = json.loads((tmp_path / "run" / CHECKS_FILE).read_text()).values()
    assert (check["label"], check["status"]) == ("refuse/6/seed42", "inconclusive")


def test_campaign_with_a_working_adapter_records_it_applied(
    tmp_path: Path, tiny_model_dir: Path, ray_local
) -> None:
    assert main(["run", str(write_campaign(tmp_path, tiny_model_dir))]) == 0
    rows = RunStore(tmp_path / "run").generations.rows()
    assert {r["backend"] for r in rows} == {"transformers"} and len(rows) == 8
    [check] = json.loads((tmp_path / "run" / CHECKS_FILE).read_text()).values()
    assert (check["label"], check["status"]) == ("refuse/6/seed42", "applied")
