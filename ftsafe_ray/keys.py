"""Content keys: one hash of everything that determines a unit of work's result."""

from __future__ import annotations

import hashlib
import json
from typing import Any

KEY_LENGTH = 20


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal content always hashes equally."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_key(kind: str, payload: dict[str, Any]) -> str:
    """A short hex digest of a kind tag and its payload."""
    digest = hashlib.sha256(f"{kind}\n{canonical_json(payload)}".encode()).hexdigest()
    return digest[:KEY_LENGTH]


def finetune_key(
    *,
    model: dict[str, Any],
    dataset_hash: str,
    size: int | str,
    mix: list[dict[str, Any]],
    system_prompt: str | None,
    lora: dict[str, Any],
    train: dict[str, Any],
    seed: int,
) -> str:
    """Key of one LoRA fine-tune: base model, data content, recipe, hyperparameters and seed."""
    return content_key(
        "finetune",
        {
            "model": model,
            "dataset": dataset_hash,
            "size": size,
            "mix": mix,
            "system_prompt": system_prompt,
            "lora": lora,
            "train": train,
            "seed": seed,
        },
    )


def base_key(model: dict[str, Any]) -> str:
    """Key of the un-tuned base model (the baseline 'adapter')."""
    return content_key("base", {"model": model})


def generation_key(
    *, adapter_key: str, messages: list[dict[str, str]], sampling: dict[str, Any], seed: int
) -> str:
    """Key of one generation: which weights, the exact conversation and the decoding settings."""
    return content_key(
        "generation",
        {"adapter": adapter_key, "messages": messages, "sampling": sampling, "seed": seed},
    )


def verdict_key(*, judge: dict[str, Any], instruction: str, answer: str) -> str:
    """Key of one verdict: the judge's identity and settings, the instruction and the answer."""
    return content_key("verdict", {"judge": judge, "instruction": instruction, "answer": answer})
