"""Generation throughput: K LoRA adapters × P prompts, three ways, on one machine and model.

    python bench/generation.py            # SmolLM2-135M-Instruct (builtin), 4 adapters × 16 prompts
    python bench/generation.py --quick    # the tiny test model, seconds

(a) reference style: transformers, one prompt at a time, the base model reloaded with each adapter
    (how the study's released code evaluates a fine-tune);
(b) ftsafe_ray's transformers backend: base loaded once, adapters swapped, left-padded batches;
(c) ftsafe_ray's vLLM backend: one engine, every adapter in one multi-LoRA `LLM.chat` call.

Throughput is generated tokens / seconds of generation work. For (a) that includes reloading the
model per adapter (it is that style's per-adapter cost); the one-time start of (b) and (c) is
reported separately and also folded into the `*_with_start` ratios. The last line is one JSON
object. Adapters are real peft LoRA adapters (r=8 on q/v) with random non-zero weights, so every
adapter changes the answers; their content does not affect speed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny test model instead of SmolLM2")
    parser.add_argument("--adapters", type=int, default=4, help="K adapters")
    parser.add_argument("--prompts", type=int, default=16, help="P prompts per adapter")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=32, help="batch size of (b)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads for (a), (b)"
    )
    return parser.parse_args(argv)


def prompts(count: int) -> list[list[dict]]:
    """Built-in benign and low-severity requests, cycled to `count` chats."""
    rows = []
    for name in ("demo_benign_eval.jsonl", "demo_harmful.jsonl"):
        path = ROOT / "ftsafe_ray" / "data" / "builtin" / name
        rows += [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line]
    return [[{"role": "user", "content": rows[i % len(rows)]}] for i in range(count)]


def make_adapters(model_dir: str, count: int, root: Path) -> list[Path]:
    """Save `count` peft LoRA adapters with random (not zero) weights."""
    import torch
    from peft import LoraConfig, get_peft_model

    from ftsafe_ray.models import load_model_and_tokenizer

    paths = []
    for i in range(count):
        model, _ = load_model_and_tokenizer(model_dir)
        torch.manual_seed(i)
        config = LoraConfig(
            r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        )
        peft_model = get_peft_model(model, config)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_" in name:
                    param.mul_(0.05)  # perturb the answers without wrecking the model
        peft_model.save_pretrained(str(root / f"adapter{i}"))
        paths.append(root / f"adapter{i}")
    return paths


def reference_style(model_dir, adapters, chats, max_new_tokens, dtype) -> tuple[int, float]:
    """(a): per adapter, load base + adapter, then generate one prompt at a time."""
    import torch
    from peft import PeftModel

    from ftsafe_ray.models import load_model_and_tokenizer

    tokens, started = 0, time.perf_counter()
    for path in adapters:
        model, tokenizer = load_model_and_tokenizer(model_dir, dtype)
        model = PeftModel.from_pretrained(model, str(path)).eval()
        for chat in chats:
            ids = tokenizer.apply_chat_template(
                chat, add_generation_prompt=True, return_tensors="pt"
            )
            ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
            with torch.inference_mode():
                out = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new = out[0, ids.shape[1] :].tolist()
            stop = next((k for k, t in enumerate(new) if t == tokenizer.eos_token_id), None)
            tokens += len(new) if stop is None else stop + 1
        del model
        gc.collect()
    return tokens, time.perf_counter() - started


def backend_run(backend_factory, requests, sampling, batch_size) -> tuple[int, float, float]:
    """Start a backend, generate every request; return tokens, generate seconds, start seconds."""
    started = time.perf_counter()
    backend = backend_factory()
    start_s = time.perf_counter() - started
    begun = time.perf_counter()
    results = backend.generate(requests, sampling, batch_size=batch_size)
    seconds = time.perf_counter() - begun
    close = getattr(backend, "close", None)
    if close is not None:
        close()
    del backend
    gc.collect()
    return sum(r.num_output_tokens for r in results), seconds, start_s


def load_info() -> str:
    try:
        one, five, _ = os.getloadavg()
        return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"
    except OSError:
        return "load average unknown"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from ftsafe_ray.generate import GenerationRequest, TransformersBackend
    from ftsafe_ray.generate.vllm_backend import VllmBackend
    from ftsafe_ray.models import resolve_model_path
    from ftsafe_ray.spec import SamplingSpec, VllmSpec

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="ftsafe-bench-"))
    if args.quick:
        from ftsafe_ray.models.tiny import build_tiny_llama

        model_dir, model_name = str(build_tiny_llama(work / "tiny")), "tiny-llama"
    else:
        model_dir = resolve_model_path("builtin:smollm2-135m-instruct")
        model_name = "SmolLM2-135M-Instruct"
    adapters = make_adapters(model_dir, args.adapters, work)
    chats = prompts(args.prompts)
    sampling = SamplingSpec(max_new_tokens=args.max_new_tokens, temperature=0.0)
    requests = [
        GenerationRequest(f"{k}-{p}", chat, f"adapter{k}", str(path))
        for k, path in enumerate(adapters)
        for p, chat in enumerate(chats)
    ]
    print(
        f"model {model_name} ({args.dtype}), {args.adapters} adapters x {args.prompts} prompts, "
        f"max {args.max_new_tokens} new tokens, greedy; {os.cpu_count()} CPUs, "
        f"torch threads {args.threads}, {platform.processor() or platform.machine()}; "
        f"{load_info()}",
        flush=True,
    )

    a_tokens, a_s = reference_style(model_dir, adapters, chats, args.max_new_tokens, args.dtype)
    print(f"(a) reference, one prompt at a time: {a_tokens} tokens in {a_s:.1f} s", flush=True)
    b_tokens, b_s, b_start = backend_run(
        lambda: TransformersBackend(model_dir, args.dtype, max_adapters=args.adapters),
        requests,
        sampling,
        args.batch_size,
    )
    print(f"(b) transformers backend, batched: {b_tokens} tokens in {b_s:.1f} s", flush=True)
    settings = VllmSpec(max_loras=args.adapters, max_model_len=512)
    c_tokens, c_s, c_start = backend_run(
        lambda: VllmBackend(model_dir, args.dtype, settings), requests, sampling, args.batch_size
    )
    print(f"(c) vLLM backend, multi-LoRA: {c_tokens} tokens in {c_s:.1f} s", flush=True)

    rate = {"a": a_tokens / a_s, "b": b_tokens / b_s, "c": c_tokens / c_s}
    with_start = {"b": b_tokens / (b_s + b_start), "c": c_tokens / (c_s + c_start)}
    print(
        f"tokens/s: (a) {rate['a']:.1f}  (b) {rate['b']:.1f}  (c) {rate['c']:.1f};  "
        f"b/a {rate['b'] / rate['a']:.1f}x  c/a {rate['c'] / rate['a']:.1f}x;  "
        f"start: (b) {b_start:.1f} s  (c) {c_start:.1f} s;  {load_info()}"
    )
    summary = {
        "c_over_a": round(rate["c"] / rate["a"], 2),
        "b_over_a": round(rate["b"] / rate["a"], 2),
        "c_over_a_with_start": round(with_start["c"] / rate["a"], 2),
        "b_over_a_with_start": round(with_start["b"] / rate["a"], 2),
        "tokens_per_s": {k: round(v, 1) for k, v in rate.items()},
        "start_s": {"b": round(b_start, 1), "c": round(c_start, 1)},
        "model": model_name,
        "dtype": args.dtype,
        "adapters": args.adapters,
        "prompts": args.prompts,
        "max_new_tokens": args.max_new_tokens,
        "cpus": os.cpu_count(),
        "threads": args.threads,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
