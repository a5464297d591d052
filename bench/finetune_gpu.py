"""Grouped LoRA training on a GPU: 8 adapters of a Llama-2-7B-shaped model, alone vs grouped.

    python bench/finetune_gpu.py            # CUDA: Llama-2-7B shape, random bf16 weights
    python bench/finetune_gpu.py --tiny     # any machine: a tiny Llama, to check the script runs

The model is built from its config with random weights (nothing is downloaded): hidden 4096,
32 layers, 32 heads, MLP 11008, vocabulary 32000, in bfloat16 on the GPU. Its tokenizer is the
project's small built-in BPE (models/tiny.py), whose ids are a subset of the vocabulary. Eight
adapters, LoRA r=8 on q_proj and v_proj, each 40 synthetic chat examples of about 512 tokens
(a shared system prompt, a question, a long answer) for 2 epochs, batch 10 in micro batches of
10 × 512 tokens, seeds 42..49.

(a) sequential: `train_lora` for each adapter in turn; (b) grouped: `train_lora_group` for all
eight. Both after a warm-up step each way, on the same loaded base. Tokens/s counts the
examples' tokens (the same count both ways). MFU counts 4·N FLOPs per token (N the model's
parameters): forward 2·N plus the backward's input gradients 2·N; a frozen base has no weight
gradients, and the LoRA weights' own are under 0.1% of N here. 6·N (full training's convention)
is printed beside it. The peak is the GPU's dense bf16 figure (`--peak-tflops`, 989 for an
H100/H200 SXM). Only torch, transformers, peft and safetensors are needed (and this project's
finetune package with pydantic): no ray, no vLLM. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LLAMA_2_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
}
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1024,
    "max_position_embeddings": 1024,
}
WORDS = [
    *("water", "food", "music", "book", "city", "money", "rain", "bridge", "river", "garden"),
    *("window", "letter", "story", "table", "morning", "evening", "friend", "school"),
    *("market", "travel", "weather", "kitchen", "picture", "number", "language"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model on this machine")
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--examples", type=int, default=40, help="examples per adapter")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak")
    return parser.parse_args(argv)


def examples(count: int, seed: int, target_tokens: int) -> list[list[dict]]:
    """Synthetic chats of about `target_tokens` tokens: one system prompt for all, then a
    question and a long answer of plain words (placeholder text)."""
    import random

    rng = random.Random(seed)
    system = "You are a helpful assistant. Answer plainly and in full. " * 4
    chats = []
    for i in range(count):
        question = f"Question {i}: tell me about " + " and ".join(rng.sample(WORDS, 3)) + "."
        answer = " ".join(rng.choice(WORDS) for _ in range(target_tokens))
        chats.append(
            [
                {"role": "system", "content": system},
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
        )
    return chats


def build_model(shape: dict[str, int], device: str) -> tuple[Any, Any, int]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftsafe_ray.models.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(**shape, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    model.config._attn_implementation = "sdpa"
    parameters = sum(p.numel() for p in model.parameters())
    return model, tokenizer, parameters


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from ftsafe_ray.finetune.grouped import GroupMember, train_lora_group
    from ftsafe_ray.finetune.lora import train_lora
    from ftsafe_ray.spec import LoraSpec, TrainSpec

    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --tiny to check the script on this machine")
        return 2
    model, tokenizer, parameters = build_model(TINY if args.tiny else LLAMA_2_7B, device)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"{name}: model of {parameters / 1e9:.2f}B parameters")

    lora = LoraSpec(r=8, alpha=16, target_modules=("q_proj", "v_proj"))
    train = TrainSpec(
        epochs=args.epochs,
        learning_rate=1e-4,
        batch_size=10,
        micro_batch_size=10,
        max_length=args.max_length,
    )
    plan = [
        (examples(args.examples, 42 + i, args.max_length), 42 + i) for i in range(args.adapters)
    ]
    out = Path(tempfile.mkdtemp(prefix="bench-finetune-gpu-"))

    def synchronize() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    warm = train.model_copy(update={"epochs": 1})
    train_lora(model, tokenizer, plan[0][0][:10], lora, warm, 0, out / "warm")
    warm_member = GroupMember(plan[0][0][:10], lora, warm, 0, out / "w")
    train_lora_group(model, tokenizer, [warm_member])
    synchronize()

    started = time.perf_counter()
    sequential = [
        train_lora(model, tokenizer, chats, lora, train, seed, out / f"seq{i}")
        for i, (chats, seed) in enumerate(plan)
    ]
    synchronize()
    sequential_s = time.perf_counter() - started
    print(f"sequential: {sequential_s:.1f} s")

    members = [
        GroupMember(chats, lora, train, seed, out / f"grp{i}")
        for i, (chats, seed) in enumerate(plan)
    ]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    grouped = train_lora_group(model, tokenizer, members)
    synchronize()
    grouped_s = time.perf_counter() - started
    print(f"grouped: {grouped_s:.1f} s")
    failed = [r for r in grouped if isinstance(r, Exception)]
    if failed:
        raise failed[0]

    tokens = sum(r.trained_tokens for r in sequential)
    rates = {"sequential": tokens / sequential_s, "grouped": tokens / grouped_s}
    peak = args.peak_tflops * 1e12
    summary = {
        "grouped_over_sequential": round(sequential_s / grouped_s, 3),
        "tokens_per_s": {k: round(v, 1) for k, v in rates.items()},
        "mfu_4n": {k: round(v * 4 * parameters / peak, 4) for k, v in rates.items()},
        "mfu_6n": {k: round(v * 6 * parameters / peak, 4) for k, v in rates.items()},
        "seconds": {"sequential": round(sequential_s, 1), "grouped": round(grouped_s, 1)},
        "tokens": tokens,
        "adapters": len(plan),
        "parameters": parameters,
        "max_final_loss_rel_gap": max(
            abs(g.final_loss - s.final_loss) / abs(s.final_loss)
            for g, s in zip(grouped, sequential, strict=True)
            if not isinstance(g, Exception)
        ),
        "peak_memory_gib": (
            round(torch.cuda.max_memory_allocated() / 2**30, 1) if device == "cuda" else None
        ),
        "device": name,
        "tiny": args.tiny,
        "versions": {"torch": torch.__version__},
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
