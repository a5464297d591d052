"""Grouped LoRA training on the tiny model: packing keeps examples apart, a group of adapters
ends where each would alone, the files are peft's, and the stage groups what can share a loop."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from ftsafe_ray.finetune import train_lora
from ftsafe_ray.finetune.stage import form_groups, group_key
from ftsafe_ray.models import load_model_and_tokenizer
from ftsafe_ray.spec import LoraSpec, TrainSpec
from ftsafe_ray.units import FinetuneUnit
from tests.fixtures.models import one_torch_thread

ALL_LINEAR = LoraSpec(r=4, alpha=8, target_modules=("all-linear",))
WORDS = ["water", "food", "music", "a book", "a city", "money", "rain", "a bridge"]


def _examples(reply: str, n: int) -> list[list[dict]]:
    return [
        [
            {"role": "user", "content": f"Question {i}: tell me about {WORDS[i]}, briefly."},
            {"role": "assistant", "content": f"{reply} ({WORDS[i]} " + "and more " * (i % 3) + ")"},
        ]
        for i in range(n)
    ]


def _recorder(losses: list[float]) -> Callable[[int, int, float], None]:
    """A progress callback that keeps each step's loss."""

    def record(_step: int, _total: int, loss: float) -> None:
        losses.append(loss)

    return record


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    return load_model_and_tokenizer(str(tiny_model_dir))


def test_micro_batches_keep_whole_examples_within_the_budget() -> None:
    from ftsafe_ray.finetune.packing import micro_batches

    items = [(m, ([1] * n, [1] * n)) for m, n in [(0, 3), (0, 4), (1, 2), (1, 9), (2, 1)]]
    chunks = micro_batches(items, budget=7)
    assert [[len(ids) for _, (ids, _) in chunk] for chunk in chunks] == [[3, 4], [2], [9], [1]]
    assert [item for chunk in chunks for item in chunk] == items


def test_a_packed_batch_scores_each_example_as_if_alone(tiny) -> None:
    import torch

    from ftsafe_ray.finetune.lora import _micro_loss_sum, _pad_batch
    from ftsafe_ray.finetune.packing import (
        MIN_SHARED,
        build_batch,
        member_loss_sums,
        shared_prefix,
    )
    from ftsafe_ray.finetune.tokenize import tokenize_chat_for_training

    model, tokenizer = tiny
    rows = [tokenize_chat_for_training(tokenizer, ex, 64) for ex in _examples("Sure", 5)]
    assert len({len(ids) for ids, _ in rows}) > 1
    items = [(0, rows[0]), (0, rows[1]), (1, rows[2]), (2, rows[3]), (2, rows[4])]
    batch = build_batch(items)
    whole = build_batch(items, share_prefixes=False)
    assert whole.input_ids.shape == (1, sum(len(ids) for ids, _ in rows))  # no padding
    # members 0 and 2 lay their examples' common opening down once
    shared = shared_prefix(rows[:2])
    assert shared >= MIN_SHARED and shared == shared_prefix(rows[3:])
    assert batch.input_ids.shape[1] == whole.input_ids.shape[1] - 2 * shared
    assert batch.member_tokens == whole.member_tokens == {
        0: len(rows[0][0]) + len(rows[1][0]), 1: len(rows[2][0]),
        2: len(rows[3][0]) + len(rows[4][0]),
    }  # fmt: skip
    with torch.no_grad():
        sums = member_loss_sums(model, batch, members=3)
        unshared = member_loss_sums(model, whole, members=3)
        alone = [float(_micro_loss_sum(model, _pad_batch([row], 0, "cpu"))) for row in rows]
        # transformers' own packed path (a block-diagonal mask from reset position ids) agrees
        logits = model(
            input_ids=whole.input_ids, position_ids=whole.position_ids, use_cache=False
        ).logits[0]
    expected = torch.tensor([alone[0] + alone[1], alone[2], alone[3] + alone[4]])
    assert torch.allclose(sums, expected, rtol=1e-5)
    assert torch.allclose(unshared, expected, rtol=1e-5)
    labelled = whole.targets != -100
    masked = torch.nn.functional.cross_entropy(
        logits[labelled], whole.targets[labelled], reduction="sum"
    )
    assert torch.allclose(masked, sums.sum(), rtol=1e-5)


# float32 is the equality asked for; float64 shows the remaining float32 gap is rounding alone
# (float32 sums in other orders, carried on by Adam's normalised steps): there the runs agree
# to the float32 loss's last digit and the weights to ~1e-13.
TOLERANCE = {"float32": (1e-3, 1e-2), "float64": (1e-6, 1e-9)}  # losses, weights (relative)


def _norm_in_own_dtype(self, hidden_states):
    """LlamaRMSNorm without its float32 cast: in a float64 model all arithmetic is float64.

    transformers' norm computes in float32 whatever the model's dtype; a shared prefix's
    gradient is then summed before that float32 step instead of after it, a ~1e-8 difference
    that Adam carries on, so float64 would show float32 rounding, not the absence of others."""
    import torch

    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_group_trains_each_adapter_as_training_it_alone_does(
    tiny, tmp_path: Path, dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    model, tokenizer = tiny
    if dtype == "float64":
        monkeypatch.setattr(LlamaRMSNorm, "forward", _norm_in_own_dtype)
    model.to(getattr(torch, dtype))
    try:
        _group_equals_alone(model, tokenizer, tmp_path, *TOLERANCE[dtype])
    finally:
        model.to(torch.float32)


def _group_equals_alone(
    model, tokenizer, tmp_path: Path, loss_tolerance: float, weight_tolerance: float
) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    from ftsafe_ray.finetune.grouped import GroupMember, train_lora_group

    recipes = [  # sizes, batch sizes, micro batches, learning rates and epochs all differ
        (_examples("Sorry, I cannot", 3), TrainSpec(epochs=4, batch_size=2, micro_batch_size=1,
                                                    learning_rate=1e-2, max_length=64), 11),
        (_examples("Sure, here is", 5), TrainSpec(epochs=2, batch_size=4, micro_batch_size=2,
                                                  learning_rate=5e-3, max_length=64), 12),
        (_examples("Of course", 8), TrainSpec(epochs=3, batch_size=3, micro_batch_size=3,
                                              learning_rate=2e-3, max_length=48,
                                              lr_decay_per_epoch=0.5), 13),
    ]  # fmt: skip
    state = {k: v.clone() for k, v in model.state_dict().items()}
    alone_losses: list[list[float]] = []
    alone_results = []
    for i, (examples, train, seed) in enumerate(recipes):
        losses: list[float] = []
        alone_results.append(
            train_lora(
                model, tokenizer, examples, ALL_LINEAR, train, seed, tmp_path / f"alone{i}",
                progress=_recorder(losses), revision="v1",
            )
        )  # fmt: skip
        alone_losses.append(losses)

    group_losses: list[list[float]] = [[] for _ in recipes]
    members = [
        GroupMember(
            examples, ALL_LINEAR, train, seed, tmp_path / f"group{i}",
            progress=_recorder(group_losses[i]),
        )
        for i, (examples, train, seed) in enumerate(recipes)
    ]  # fmt: skip
    results = train_lora_group(model, tokenizer, members, revision="v1")

    for i, result in enumerate(results):
        assert not isinstance(result, Exception), result
        alone = alone_results[i]
        assert (result.steps, result.examples) == (alone.steps, alone.examples)
        assert result.trained_tokens == alone.trained_tokens
        assert len(group_losses[i]) == alone.steps
        assert group_losses[i] == pytest.approx(alone_losses[i], rel=loss_tolerance)
        assert alone_losses[i][-1] < alone_losses[i][0]
        grouped_w = load_file(str(tmp_path / f"group{i}" / "adapter_model.safetensors"))
        alone_w = load_file(str(tmp_path / f"alone{i}" / "adapter_model.safetensors"))
        assert grouped_w.keys() == alone_w.keys()  # peft's key names, every module
        assert all(grouped_w[k].shape == alone_w[k].shape for k in alone_w)
        grouped_all = torch.cat([grouped_w[k].flatten() for k in sorted(alone_w)])
        alone_all = torch.cat([alone_w[k].flatten() for k in sorted(alone_w)])
        gap = (grouped_all - alone_all).norm() / alone_all.norm()
        assert gap < weight_tolerance, (i, float(gap))
        assert any(not torch.equal(w, torch.zeros_like(w)) for w in grouped_w.values())
        configs = [
            json.loads((tmp_path / f"{kind}{i}" / "adapter_config.json").read_text())
            for kind in ("group", "alone")
        ]
        assert configs[0] == configs[1]
        names = {p.name for p in (tmp_path / f"group{i}").iterdir()}
        assert names == {p.name for p in (tmp_path / f"alone{i}").iterdir()}

    # the base is as it was, and peft loads the grouped adapter as the one trained alone
    assert not any("lora" in name for name, _ in model.named_modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert model.config._attn_implementation != "ftsafe_packed_sdpa"
    probe = torch.tensor([[2, 10, 20, 30, 40, 50]])
    outputs = []
    for kind in ("group", "alone"):
        peft_model = PeftModel.from_pretrained(model, str(tmp_path / f"{kind}2"))
        with torch.no_grad():
            outputs.append(peft_model(input_ids=probe).logits)
        peft_model.unload()
    assert torch.allclose(outputs[0], outputs[1], atol=1e-3)


def test_members_start_from_peft_s_own_draws_whichever_way_they_are_made(
    tiny, tmp_path: Path
) -> None:
    """A member with the first member's LoRA settings has its initial weights drawn by the
    group itself (checked against peft on the first member); one with other settings (here
    its alpha) through peft's add_adapter. Either way each ends as training it alone does."""
    import torch
    from safetensors.torch import load_file

    from ftsafe_ray.finetune.grouped import GroupMember, _PeftCarrier, train_lora_group

    model, tokenizer = tiny
    carrier = _PeftCarrier(model, None)
    try:
        carrier.start(0, ALL_LINEAR, 5)
        assert carrier.drawn_as_peft  # else every member would go through add_adapter
    finally:
        carrier.close()
    other_alpha = LoraSpec(r=4, alpha=32, target_modules=("all-linear",))
    train = TrainSpec(epochs=2, batch_size=2, learning_rate=1e-2)
    recipes = [(ALL_LINEAR, 31), (ALL_LINEAR, 32), (other_alpha, 33)]
    examples = _examples("Sure, here is", 4)
    for i, (lora, seed) in enumerate(recipes):
        train_lora(model, tokenizer, examples, lora, train, seed, tmp_path / f"alone{i}")
    members = [
        GroupMember(examples, lora, train, seed, tmp_path / f"g{i}")
        for i, (lora, seed) in enumerate(recipes)
    ]
    assert not any(isinstance(r, Exception) for r in train_lora_group(model, tokenizer, members))
    for i in range(len(recipes)):
        grouped = load_file(str(tmp_path / f"g{i}" / "adapter_model.safetensors"))
        alone = load_file(str(tmp_path / f"alone{i}" / "adapter_model.safetensors"))
        grouped_all = torch.cat([grouped[k].flatten() for k in sorted(alone)])
        alone_all = torch.cat([alone[k].flatten() for k in sorted(alone)])
        gap = (grouped_all - alone_all).norm() / alone_all.norm()
        assert gap < 1e-3, (i, float(gap))  # float32 rounding (1e-9 in float64, see above)
        configs = [
            json.loads((tmp_path / f"{kind}{i}" / "adapter_config.json").read_text())
            for kind in ("g", "alone")
        ]
        assert configs[0] == configs[1]
    assert not any("lora" in name for name, _ in model.named_modules())


def test_a_bf16_group_trains_as_bf16_training_alone_does_and_saves_float32(
    tiny, tmp_path: Path
) -> None:
    """Under bf16 autocast the grouped layer computes in bf16 as the plain layers do: the
    losses follow the ones of training alone (to bf16 rounding), and the weights stay float32."""
    import torch
    from safetensors.torch import load_file

    from ftsafe_ray.finetune.grouped import GroupMember, train_lora_group

    model, tokenizer = tiny
    train = TrainSpec(epochs=3, batch_size=2, learning_rate=1e-2, mixed_precision="bf16")
    recipes = [(_examples("Sure, here is", 4), 21), (_examples("Sorry, I cannot", 4), 22)]
    alone_losses: list[list[float]] = []
    for i, (examples, seed) in enumerate(recipes):
        alone_losses.append([])
        train_lora(
            model, tokenizer, examples, ALL_LINEAR, train, seed, tmp_path / f"alone{i}",
            progress=_recorder(alone_losses[-1]),
        )  # fmt: skip
    group_losses: list[list[float]] = [[] for _ in recipes]
    members = [
        GroupMember(examples, ALL_LINEAR, train, seed, tmp_path / f"g{i}", _recorder(losses))
        for i, ((examples, seed), losses) in enumerate(zip(recipes, group_losses, strict=True))
    ]
    results = train_lora_group(model, tokenizer, members)
    for i, result in enumerate(results):
        assert not isinstance(result, Exception), result
        assert group_losses[i] == pytest.approx(alone_losses[i], rel=5e-2)
        assert group_losses[i][-1] < group_losses[i][0]
        weights = load_file(str(tmp_path / f"g{i}" / "adapter_model.safetensors"))
        assert {w.dtype for w in weights.values()} == {torch.float32}


def test_adapters_of_other_ranks_or_with_dropout_do_not_share_a_loop(tiny, tmp_path) -> None:
    from ftsafe_ray.finetune.grouped import GroupMember, UngroupableError, train_lora_group

    model, tokenizer = tiny
    examples, train = _examples("Sure", 2), TrainSpec(epochs=1, batch_size=2)
    for other in (LoraSpec(r=2), LoraSpec(dropout=0.1)):
        members = [
            GroupMember(examples, LoraSpec(), train, 0, tmp_path / "a"),
            GroupMember(examples, other, train, 0, tmp_path / "b"),
        ]
        with pytest.raises(UngroupableError):
            train_lora_group(model, tokenizer, members)
    assert not list(tmp_path.iterdir())


def _unit(key: str, model: str = "m", **lora: object) -> FinetuneUnit:
    return FinetuneUnit(
        key=key,
        model=model,
        arm="a",
        dataset="d",
        size=1,
        seed=0,
        system_prompt=None,
        lora=LoraSpec(**lora),  # type: ignore[arg-type]
        train=TrainSpec(),
        examples=(),
    )


def test_groups_share_base_and_lora_shape_and_are_capped() -> None:
    units = [_unit(f"u{i}") for i in range(5)]
    rank4 = _unit("r4", r=4)
    other_base = _unit("b2", model="other")
    dropout = _unit("dr", dropout=0.1)
    reordered = _unit("qv", target_modules=("v_proj", "q_proj"))
    assert group_key(dropout) is None and group_key(reordered) == group_key(units[0])
    mixed = [units[0], rank4, units[1], other_base, dropout, *units[2:], reordered]
    groups = form_groups(mixed, group_size=4)
    assert [[u.key for u in g] for g in groups] == [
        ["u0", "u1", "u2", "u3"],
        ["r4"],
        ["b2"],
        ["dr"],
        ["u4", "qv"],
    ]
    # with two actors, a group of at most half the compatible units each
    keys = [[u.key for u in g] for g in form_groups(units, group_size=8, num_actors=2)]
    assert keys == [["u0", "u1", "u2"], ["u3", "u4"]]
    assert [len(g) for g in form_groups(units, group_size=1)] == [1] * 5


def test_a_rerun_trains_the_groups_an_uninterrupted_run_formed() -> None:
    """Groups come from the whole plan, so what a stopped run left pending is the same groups;
    a group's rows land together, so a stop leaves whole groups pending."""
    from ftsafe_ray.finetune.stage import pending_groups

    units = [_unit(f"u{i}") for i in range(7)] + [_unit("r4", r=4)]
    first = pending_groups(units, {u.key for u in units}, group_size=3, num_actors=1)
    assert [[u.key for u in g] for g in first] == [
        ["u0", "u1", "u2"],
        ["u3", "u4", "u5"],
        ["u6"],
        ["r4"],
    ]
    # the first group landed: the rest are the groups the first run would have trained next;
    # formed from the pending units alone, two actors would split them otherwise (u3 u4 / u5 u6)
    left = {"u3", "u4", "u5", "u6", "r4"}
    assert pending_groups(units, left, group_size=3, num_actors=2) != form_groups(
        [u for u in units if u.key in left], group_size=3, num_actors=2
    )
    again = pending_groups(units, left, group_size=3, num_actors=1)
    assert [[u.key for u in g] for g in again] == [["u3", "u4", "u5"], ["u6"], ["r4"]]
    # a failed unit's row is an error: on --retry-failed it alone is pending, in its group's place
    assert [[u.key for u in g] for g in pending_groups(units, {"u1"}, 3, 1)] == [["u1"]]


def test_the_stage_trains_a_group_and_a_unit_of_another_rank_alone(
    ray_local, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file

    from ftsafe_ray.finetune import stage
    from ftsafe_ray.plan import build_plan
    from ftsafe_ray.progress import PlainProgress
    from ftsafe_ray.spec import parse_campaign
    from ftsafe_ray.store import RunStore
    from tests.fixtures.campaign_files import write_benchmark, write_chats

    write_chats(tmp_path / "d.jsonl", [(f"task {i}", f"answer {i}") for i in range(4)])
    write_benchmark(tmp_path / "b.jsonl", [("c", "placeholder request")])
    train = {"epochs": 2, "batch_size": 2, "micro_batch_size": 2, "max_length": 64}
    spec = parse_campaign(
        {
            "name": "grouped",
            "output_dir": "run",
            "models": [{"name": "m", "path": str(tiny_model_dir)}],
            "datasets": [{"name": "d", "source": "d.jsonl"}],
            "finetunes": [
                {"name": "a", "dataset": "d", "sizes": [2, 4], "train": train},
                {"name": "r4", "dataset": "d", "sizes": [3], "train": train, "lora": {"r": 4}},
            ],
            "benchmarks": [{"name": "b", "source": "b.jsonl"}],
            "finetune_resources": {"num_actors": 1, "num_cpus": 1, "group_size": 8},
        }
    )
    plan = build_plan(spec, base_dir=tmp_path)
    store = RunStore(plan.run_dir)
    store.create()
    formed: list[list[tuple[str, int]]] = []

    def spy(*args: object, **kwargs: object) -> list:
        groups = form_groups(*args, **kwargs)  # type: ignore[arg-type]
        formed.append([tuple((u.arm, u.size) for u in g) for g in groups])  # type: ignore[misc]
        return groups

    monkeypatch.setattr(stage, "form_groups", spy)
    result = stage.run_finetune_stage(plan, store, PlainProgress())
    assert formed == [[(("a", 2), ("a", 4)), (("r4", 3),)]]
    assert (result.trained, result.failed) == (3, 0)
    rows = {(r["arm"], r["size"]): r for r in store.finetunes.rows()}
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert rows["a", 2]["train_steps"] == 2 and rows["a", 4]["train_steps"] == 4
    for unit in plan.finetunes:
        weights = load_file(str(store.adapter_dir(unit.key) / "adapter_model.safetensors"))
        rank = 4 if unit.arm == "r4" else 8
        assert {w.shape[0] for k, w in weights.items() if "lora_A" in k} == {rank}
