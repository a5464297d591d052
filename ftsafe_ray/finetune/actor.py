"""The fine-tune actor: loads a base model once and trains many LoRA adapters with it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import traceback
from pathlib import Path
from typing import Any


def unit_row(unit: Any) -> dict[str, Any]:
    """The finetunes-table columns that name a unit (a fine-tune or an alignment)."""
    return {
        "key": unit.key,
        "model": unit.model,
        "arm": unit.arm,
        "dataset": unit.dataset,
        "size": unit.size,
        "seed": unit.seed,
        "adapter_path": unit.output_path,
        "train_examples": len(unit.examples),
    }


class FineTuner:
    """Holds one base model for its lifetime; `train` one adapter per call."""

    def __init__(
        self,
        model_path: str,
        dtype: str,
        num_threads: int | None = None,
        revision: str | None = None,
    ):
        from ftsafe_ray.models.malloc import keep_freed_memory
        from ftsafe_ray.models.resolve import resolve_model_path, use_torch_threads

        use_torch_threads(num_threads)
        keep_freed_memory()  # steps reuse their activations' memory (models/malloc.py)
        self.dtype = dtype
        self.revision = revision
        self.model_path = resolve_model_path(model_path)
        self._load()

    def _load(self) -> None:
        from ftsafe_ray.models.resolve import load_model_and_tokenizer

        self.model, self.tokenizer = load_model_and_tokenizer(
            self.model_path, self.dtype, self.revision
        )

    def train(self, unit: Any, adapter_dir: str, counter: Any = None) -> dict[str, Any]:
        """Train the unit's adapter into adapter_dir; return its finetunes-table row.

        Through the packed loop as a group of one (no padding, shared openings laid down once,
        logits only where trained: grouped.py); `train_group` trains with `train_lora` what
        that loop cannot take (LoRA dropout)."""
        [row] = self.train_group([unit], [adapter_dir], counter)
        return row

    def train_alone(self, unit: Any, adapter_dir: str, counter: Any = None) -> dict[str, Any]:
        """Train the unit's adapter with `train_lora` (padded micro batches, peft's layers)."""
        from ftsafe_ray.finetune.lora import train_lora
        from ftsafe_ray.store.remote import remote_output

        row = _settings_row(unit)
        started = time.monotonic()
        try:
            # On object storage: trained into this node's cache, then uploaded (remote.py).
            with remote_output(adapter_dir) as local_dir:
                result = train_lora(
                    self.model,
                    self.tokenizer,
                    [list(example) for example in unit.examples],
                    unit.lora,
                    unit.train,
                    unit.seed,
                    local_dir,
                    progress=_reporter(counter, unit.key),
                    revision=self.revision,
                )
        except Exception as error:  # a failed fine-tune is a stored row, not a lost campaign
            return _error_row(row, error, started)
        return _ok_row(row, result)

    def train_group(
        self, units: list[Any], adapter_dirs: list[str], counter: Any = None
    ) -> list[dict[str, Any]]:
        """Train the units' adapters together in one loop (grouped.py), each as `train` would;
        return their rows in order. Units that cannot share a loop train one after another."""
        from ftsafe_ray.finetune.grouped import GroupMember, UngroupableError, train_lora_group
        from ftsafe_ray.store.remote import remote_output

        rows = [_settings_row(unit) for unit in units]
        started = time.monotonic()
        outputs = [contextlib.ExitStack() for _ in units]
        try:
            members = [
                GroupMember(
                    examples=[list(example) for example in unit.examples],
                    lora=unit.lora,
                    train=unit.train,
                    seed=unit.seed,
                    out_dir=output.enter_context(remote_output(adapter_dir)),
                    progress=_reporter(counter, unit.key),
                )
                for unit, adapter_dir, output in zip(units, adapter_dirs, outputs, strict=True)
            ]
            results = train_lora_group(self.model, self.tokenizer, members, self.revision)
        except UngroupableError:
            for output in outputs:
                output.close()
            return [
                self.train_alone(u, d, counter) for u, d in zip(units, adapter_dirs, strict=True)
            ]
        except Exception as error:  # the whole group failed: one error row per unit
            for output in outputs:
                with contextlib.suppress(Exception):
                    output.close()
            return [_error_row(row, error, started) for row in rows]
        done = []
        for row, output, result in zip(rows, outputs, results, strict=True):
            try:
                output.close()  # on object storage: uploads what was saved
            except Exception as error:
                result = error
            if isinstance(result, Exception):
                done.append(_error_row(row, result, started))
            else:
                done.append(_ok_row(row, result))
        return done

    def align(self, unit: Any, model_dir: str, counter: Any = None) -> dict[str, Any]:
        """Train the alignment LoRA, merge it into the base and save the merged model (built in
        this node's cache and uploaded when `model_dir` is on object storage)."""
        from ftsafe_ray.store.remote import remote_output

        with remote_output(model_dir) as out:
            return self._align(unit, out, counter)

    def _align(self, unit: Any, out: Path, counter: Any) -> dict[str, Any]:
        from peft import PeftModel

        from ftsafe_ray.store.private import private_mkdir, restrict_tree

        private_mkdir(out.parent)  # aligned/: owner-only like the rest of the run directory
        work = out.with_name(f".inprogress-{out.name}")
        shutil.rmtree(work, ignore_errors=True)
        row = self.train(unit, str(work / "alignment_adapter"), counter)
        if row["status"] == "ok" and not (work / "alignment_adapter").is_dir():
            row.update(status="error", error="the alignment adapter was not written")
        if row["status"] != "ok":
            shutil.rmtree(work, ignore_errors=True)
            return row
        merged = PeftModel.from_pretrained(self.model, str(work / "alignment_adapter"))
        merged = merged.merge_and_unload()
        merged.save_pretrained(str(work))
        self.tokenizer.save_pretrained(str(work))
        restrict_tree(work)  # transformers writes with the default mode; see store/private.py
        shutil.rmtree(out, ignore_errors=True)
        os.replace(work, out)
        self._load()  # the held model now carries the merge; later calls need the plain base
        return row


def _settings_row(unit: Any) -> dict[str, Any]:
    """A unit's row before training: what names it and the settings it is trained with."""
    return {
        **unit_row(unit),
        "settings_json": json.dumps(
            {
                "lora": unit.lora.model_dump(mode="json"),
                "train": unit.train.model_dump(mode="json"),
                "system_prompt": unit.system_prompt,
            },
            sort_keys=True,
        ),
    }


def _error_row(row: dict[str, Any], error: BaseException, started: float) -> dict[str, Any]:
    trace = "".join(traceback.format_exception(error, limit=5))
    return {
        **row,
        "status": "error",
        "error": f"{type(error).__name__}: {error}\n{trace}",
        "train_seconds": time.monotonic() - started,
    }


def _ok_row(row: dict[str, Any], result: Any) -> dict[str, Any]:
    return {
        **row,
        "status": "ok",
        "node": _node_id(),
        "train_steps": result.steps,
        "trained_tokens": result.trained_tokens,
        "first_loss": result.first_loss,
        "final_loss": result.final_loss,
        "train_seconds": result.seconds,
    }


def _node_id() -> str | None:
    """The Ray node this process runs on (None outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def _reporter(counter: Any, key: str) -> Any:
    """A train_lora progress callback that tells the driver's step counter (fire and forget)."""
    if counter is None:
        return None

    def report(step: int, _total: int, _loss: float) -> None:
        counter.report.remote(key, step)

    return report
