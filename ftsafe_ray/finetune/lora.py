"""Train one LoRA adapter on a base model held for many fine-tunes, and leave the base untouched."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ftsafe_ray.finetune.tokenize import IGNORE_INDEX, tokenize_chat_for_training
from ftsafe_ray.spec import LoraSpec, TrainSpec
from ftsafe_ray.store.private import restrict_tree

PROVENANCE_FILE = "ftsafe_ray_provenance.json"
ProgressFn = Callable[[int, int, float], None]


@dataclass(frozen=True)
class TrainResult:
    """What one fine-tune did; trained_tokens counts non-padding tokens forwarded, all epochs."""

    steps: int
    epochs: int
    examples: int
    trained_tokens: int
    first_loss: float
    final_loss: float
    seconds: float


def lora_config(lora: LoraSpec) -> Any:
    """The peft LoraConfig for a LoraSpec ('all-linear' passes through as peft's shorthand)."""
    from peft import LoraConfig

    targets = list(lora.target_modules)
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        bias="none",
        task_type="CAUSAL_LM",
    )


def _pad_batch(rows: list[tuple[list[int], list[int]]], pad_id: int, device: Any) -> tuple:
    """Right-pad a micro batch into input_ids, attention_mask and labels tensors."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (row_ids, row_labels) in enumerate(rows):
        ids[i, : len(row_ids)] = torch.tensor(row_ids)
        mask[i, : len(row_ids)] = 1
        labels[i, : len(row_labels)] = torch.tensor(row_labels)
    return ids.to(device), mask.to(device), labels.to(device)


def at_least_float32(logits: Any) -> Any:
    """Logits for the loss: bf16/fp16 ones in float32; float64 ones (tests) kept as they are."""
    import torch

    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def autocast_dtype(tensor: Any) -> Any:
    """The dtype autocast computes matmuls in on `tensor`'s device, or None where it is off."""
    import torch

    device = tensor.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None


def _micro_loss_sum(model: Any, batch: tuple) -> Any:
    """Summed next-token cross-entropy over labelled positions of one micro batch."""
    import torch.nn.functional as F

    ids, mask, labels = batch
    logits = at_least_float32(model(input_ids=ids, attention_mask=mask).logits[:, :-1])
    targets = labels[:, 1:]
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def train_lora(
    model: Any,
    tokenizer: Any,
    examples: list[list[dict]],
    lora: LoraSpec,
    train: TrainSpec,
    seed: int,
    out_dir: Path,
    progress: ProgressFn | None = None,
    revision: str | None = None,
) -> TrainResult:
    """Fit a LoRA adapter on chat examples, save it to out_dir, then strip it from the model.

    `revision` is the hub revision the base was loaded at; the adapter's config records it, so
    peft loads the same base weights for it.
    """
    import torch
    from peft import get_peft_model

    if not examples:
        raise ValueError("train_lora needs at least one example")
    started = time.perf_counter()
    rows = [tokenize_chat_for_training(tokenizer, ex, train.max_length) for ex in examples]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    micro = min(train.micro_batch_size, train.batch_size)
    mixed_precision = train.mixed_precision == "bf16"
    steps_per_epoch = math.ceil(len(rows) / train.batch_size)
    total_steps = steps_per_epoch * train.epochs

    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, lora_config(lora), revision=revision)
    try:
        params = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=train.learning_rate, weight_decay=train.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=1, gamma=train.lr_decay_per_epoch
        )
        peft_model.train()
        order_rng = random.Random(seed)
        step, tokens, losses = 0, 0, []
        for _epoch in range(train.epochs):
            order = list(range(len(rows)))
            order_rng.shuffle(order)
            for begin in range(0, len(order), train.batch_size):
                batch_rows = [rows[i] for i in order[begin : begin + train.batch_size]]
                labelled = sum(
                    sum(1 for x in labels[1:] if x != IGNORE_INDEX) for _, labels in batch_rows
                )
                optimizer.zero_grad(set_to_none=True)
                step_loss = 0.0
                for m in range(0, len(batch_rows), micro):
                    batch = _pad_batch(batch_rows[m : m + micro], pad_id, device)
                    tokens += int(batch[1].sum())
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed_precision):
                        loss = _micro_loss_sum(peft_model, batch) / max(labelled, 1)
                    loss.backward()
                    step_loss += float(loss.detach())
                optimizer.step()
                step += 1
                losses.append(step_loss)
                if progress is not None:
                    progress(step, total_steps, step_loss)
            scheduler.step()
        result = TrainResult(
            steps=step,
            epochs=train.epochs,
            examples=len(rows),
            trained_tokens=tokens,
            first_loss=losses[0],
            final_loss=losses[-1],
            seconds=time.perf_counter() - started,
        )
        record = _provenance(model, revision, lora, train, seed, result)
        _save_adapter(peft_model, Path(out_dir), record)
    finally:
        peft_model.unload()
        for name, p in model.named_parameters():
            p.requires_grad_(requires_grad.get(name, p.requires_grad))
        model.train(was_training)
        torch.random.set_rng_state(rng_state)
    return result


def _save_adapter(peft_model: Any, out_dir: Path, provenance: dict[str, Any]) -> None:
    """Write adapter and provenance into a temporary sibling directory, then rename into place."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        peft_model.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
        # peft writes with the default mode; an adapter trained to comply is as sensitive as
        # the answers it gives, so it lands owner-only like the rest of the run directory.
        restrict_tree(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _package_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for name in ("ftsafe_ray", "torch", "transformers", "peft", "tokenizers", "safetensors"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def _provenance(
    model: Any,
    revision: str | None,
    lora: LoraSpec,
    train: TrainSpec,
    seed: int,
    result: TrainResult,
) -> dict[str, Any]:
    """Versions, settings, seed and result recorded next to the adapter."""
    return {
        "base_model": getattr(model.config, "_name_or_path", None),
        "base_revision": revision,
        "packages": _package_versions(),
        "lora": lora.model_dump(mode="json"),
        "train": train.model_dump(mode="json"),
        "seed": seed,
        "result": asdict(result),
    }
