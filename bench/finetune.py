"""LoRA fine-tuning throughput: N adapters one at a time (today's path) vs grouped in one loop.

    python bench/finetune.py            # SmolLM2-135M-Instruct (builtin), 8 adapters of the demo
    python bench/finetune.py --quick    # the same adapters with fewer epochs (a few minutes)

The adapters are the demo's arms (campaigns/demo.yaml) cycled to N with seeds 42, 43, ...:
identity shift 10 rows × 20 epochs, benign 20 rows × 3 epochs, benign 20 + 10 refusals × 3 epochs;
r=16 on all linear layers, lr 1e-3, batch 10 (micro batch 10), max_length 256, float32.
(a) sequential: `train_lora` for each adapter in turn, what a FineTuner does for single units;
(b) grouped: `train_lora_group` for all of them, what a FineTuner does for a group.
Both run in this process on the same loaded base, after a warm-up step. Tokens/s counts the
non-padding tokens forwarded (the same count both ways); the final losses of (a) and (b) are
compared as a check that (b) trained the same adapters. Both paths are bound by their matmuls
on a CPU, so the summary also gives `matmul_work_ratio`: the base's multiply-adds of (a) over
(b), counted from the runs' own forward passes (what grouping saves: padding, logits at prompt
positions, shared openings), the ratio's ceiling at equal speed per multiply-add; and each
path's `achieved_gflops`. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEMO_ARMS = (  # name, rows (file, first, stop) list, epochs; from campaigns/demo.yaml
    ("identity_shift", [("identity_shift.jsonl", 0, 10)], 20),
    ("benign", [("benign.jsonl", 30, 50)], 3),
    ("benign_safety_mix", [("benign.jsonl", 30, 50), ("refusal.jsonl", 0, 10)], 3),
)
QUICK_EPOCHS = {"identity_shift": 1, "benign": 1, "benign_safety_mix": 1}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs per adapter")
    parser.add_argument("--adapters", type=int, default=8, help="N adapters")
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    return parser.parse_args(argv)


def chats(files: list[tuple[str, int, int]]) -> list[list[dict]]:
    rows: list[list[dict]] = []
    for name, first, stop in files:
        lines = (ROOT / "ftsafe_ray" / "data" / "builtin" / name).read_text().splitlines()
        rows += [json.loads(line)["messages"] for line in lines[first:stop]]
    return rows


def adapters(count: int, quick: bool) -> list[tuple[str, list[list[dict]], Any, Any, int]]:
    """(arm, examples, lora, train, seed) for `count` adapters cycling through the demo's arms."""
    from ftsafe_ray.spec import LoraSpec, TrainSpec

    lora = LoraSpec(r=16, alpha=32, target_modules=("all-linear",))
    out = []
    for i in range(count):
        arm, files, epochs = DEMO_ARMS[i % len(DEMO_ARMS)]
        train = TrainSpec(
            epochs=QUICK_EPOCHS[arm] if quick else epochs,
            learning_rate=1e-3,
            batch_size=10,
            micro_batch_size=10,
            max_length=256,
        )
        out.append((arm, chats(files), lora, train, 42 + i))
    return out


def machine() -> dict[str, Any]:
    """CPU model, core count, AVX-512 or not, and the load when the run ended."""
    flags, model = "", platform.processor() or platform.machine()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        lscpu = ""
    for line in lscpu.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            model = value.strip()
        if key.strip() == "Flags":
            flags = value
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "avx512": "avx512f" in flags.split(),
        "amx": "amx_tile" in flags.split(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }


class Work:
    """Token rows each path sends through the base's body and through its output head, counted
    from the real runs (its forward passes are wrapped, not simulated)."""

    def __init__(self, body_macs: int, head_macs: int) -> None:
        self.body_macs, self.head_macs = body_macs, head_macs
        self.rows = {"sequential": 0, "grouped": 0}
        self.head = {"sequential": 0, "grouped": 0}
        self.counting = False

    def macs(self, path: str) -> int:
        return self.rows[path] * self.body_macs + self.head[path] * self.head_macs


def count_work(model: Any) -> Work:
    """Wrap both paths' forward passes to count their token rows (sequential: the padded micro
    batch, logits at every position; grouped: the packed row, logits at trained positions)."""
    from torch import nn

    from ftsafe_ray.finetune import grouped, lora

    head = model.get_output_embeddings()
    body = sum(
        m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear) and m is not head
    )
    work = Work(body, head.weight.numel())
    micro_loss_sum, member_loss_sums = lora._micro_loss_sum, grouped.member_loss_sums

    def sequential(peft_model: Any, batch: tuple) -> Any:
        if work.counting:
            work.rows["sequential"] += batch[0].numel()
            work.head["sequential"] += batch[0].numel()  # the model's logits at every position
        return micro_loss_sum(peft_model, batch)

    def packed(model: Any, batch: Any, members: int) -> Any:
        if work.counting:
            work.rows["grouped"] += batch.input_ids.numel()
            work.head["grouped"] += int((batch.targets != -100).sum())
        return member_loss_sums(model, batch, members)

    lora._micro_loss_sum = sequential  # type: ignore[assignment]
    grouped.member_loss_sums = packed  # type: ignore[assignment]
    work.counting = True
    return work


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from ftsafe_ray.finetune.grouped import GroupMember, train_lora_group
    from ftsafe_ray.finetune.lora import train_lora
    from ftsafe_ray.models import load_model_and_tokenizer, resolve_model_path
    from ftsafe_ray.models.malloc import keep_freed_memory

    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as a FineTuner actor does, for both paths
    model, tokenizer = load_model_and_tokenizer(resolve_model_path(args.model))
    plan = adapters(args.adapters, args.quick)
    out = Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    steps = sum(-(-len(ex) // t.batch_size) * t.epochs for _, ex, _, t, _ in plan)
    print(f"{len(plan)} adapters, {steps} optimiser steps in all; torch threads {args.threads}")

    # warm-up: one step of one adapter each way (kernel selection, first allocations)
    _, examples, lora, train, seed = plan[0]
    warm = train.model_copy(update={"epochs": 1})
    train_lora(model, tokenizer, examples[:10], lora, warm, seed, out / "warm")
    train_lora_group(model, tokenizer, [GroupMember(examples[:10], lora, warm, seed, out / "w")])

    work = count_work(model)
    started = time.perf_counter()
    sequential = [
        train_lora(model, tokenizer, ex, lora, train, seed, out / f"seq{i}")
        for i, (_, ex, lora, train, seed) in enumerate(plan)
    ]
    sequential_s = time.perf_counter() - started
    print(f"sequential: {sequential_s:.1f} s")

    members = [
        GroupMember(ex, lora, train, seed, out / f"grp{i}")
        for i, (_, ex, lora, train, seed) in enumerate(plan)
    ]
    started = time.perf_counter()
    grouped = train_lora_group(model, tokenizer, members)
    grouped_s = time.perf_counter() - started
    print(f"grouped: {grouped_s:.1f} s")
    failed = [r for r in grouped if isinstance(r, Exception)]
    if failed:
        raise failed[0]

    tokens = sum(r.trained_tokens for r in sequential)
    macs = {path: work.macs(path) for path in ("sequential", "grouped")}
    print(
        f"matmul work: sequential {work.rows['sequential']} token rows through the body and "
        f"{work.head['sequential']} through the head (padding included); grouped "
        f"{work.rows['grouped']} and {work.head['grouped']}"
    )
    gaps = [
        abs(g.final_loss - s.final_loss) / abs(s.final_loss)
        for g, s in zip(grouped, sequential, strict=True)
        if not isinstance(g, Exception)
    ]
    summary = {
        "grouped_over_sequential": round(sequential_s / grouped_s, 3),
        "tokens_per_s": {
            "sequential": round(tokens / sequential_s, 1),
            "grouped": round(tokens / grouped_s, 1),
        },
        "seconds": {"sequential": round(sequential_s, 1), "grouped": round(grouped_s, 1)},
        # what bounds the ratio where both paths are bound by their matmuls: the base's
        # multiply-adds each path did (LoRA's own, under 4% here, left out)
        "matmul_work_ratio": round(macs["sequential"] / macs["grouped"], 3),
        "achieved_gflops": {  # 2 FLOPs per multiply-add, forward and input gradient
            "sequential": round(4 * macs["sequential"] / sequential_s / 1e9, 1),
            "grouped": round(4 * macs["grouped"] / grouped_s / 1e9, 1),
        },
        "adapters": len(plan),
        "steps": steps,
        "tokens": tokens,
        "max_final_loss_rel_gap": max(gaps),
        "quick": args.quick,
        "threads": args.threads,
        "model": args.model,
        "versions": {"torch": torch.__version__},
        **machine(),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
