"""Adapters trained elsewhere (`adapters:` in a campaign): keyed by their files, copied into the
run directory as if the campaign had trained them, so generation, judging and resume are the
usual ones."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftsafe_ray import keys
from ftsafe_ray.errors import DataError
from ftsafe_ray.store.run_dir import ADAPTERS_DIR

if TYPE_CHECKING:
    from ftsafe_ray.spec import BaseModelSpec, CampaignSpec
    from ftsafe_ray.store import RunStore
    from ftsafe_ray.units import EvalTarget, Plan

ADAPTER_CONFIG = "adapter_config.json"
_SKIPPED = {"README.md", ".gitattributes"}  # model-card files that do not change the weights


@dataclass(frozen=True)
class TrainedAdapter:
    """One trained adapter on one base model: where its files are and its content key."""

    key: str
    model: str
    arm: str
    source: Path
    files_sha256: str

    @property
    def output_path(self) -> str:
        """Where its copy lives, relative to the run directory (where trained adapters live)."""
        return f"{ADAPTERS_DIR}/{self.key}"


def adapter_files_hash(directory: Path) -> str:
    """A SHA-256 over the adapter's files (relative names and contents), in name order."""
    if not (directory / ADAPTER_CONFIG).is_file():
        raise DataError(f"{directory}: not a LoRA adapter directory (no {ADAPTER_CONFIG})")
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory).as_posix()
        if relative in _SKIPPED or relative.startswith("."):
            continue
        digest.update(f"{relative}\n{path.stat().st_size}\n".encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def trained_adapter_targets(
    spec: CampaignSpec,
    model: BaseModelSpec,
    identity: dict[str, Any],
    base_dir: Path,
    problems: list[str],
) -> list[tuple[TrainedAdapter, EvalTarget]]:
    """The campaign's trained adapters meant for `model`, each with its evaluation target;
    a missing or malformed directory is added to `problems`."""
    from ftsafe_ray.units import EvalTarget

    found = []
    for i, entry in enumerate(spec.adapters):
        if entry.model is not None and entry.model != model.name:
            continue
        source = Path(entry.path).expanduser()
        source = (source if source.is_absolute() else base_dir / source).resolve()
        try:
            files = adapter_files_hash(source)
        except (DataError, OSError) as error:
            problems.append(f"adapters.{i}.path: {error}")
            continue
        key = keys.content_key("trained_adapter", {"model": identity, "files": files})
        adapter = TrainedAdapter(key, model.name, entry.name, source, files)
        target = EvalTarget(
            adapter_key=key,
            model=model.name,
            arm=entry.name,
            dataset=None,
            size=None,
            seed=None,
            system_prompt=entry.system_prompt or spec.system_prompt,
        )
        found.append((adapter, target))
    return found


def import_trained_adapters(plan: Plan, store: RunStore) -> int:
    """Copy every trained adapter the store lacks into it and record it as a finished
    fine-tune; return how many were copied."""
    from ftsafe_ray.store.remote import remote_output

    done = store.finetunes.done_keys({"ok"})
    copied = 0
    for adapter in plan.trained_adapters:
        if adapter.key in done and store.has_artifact(adapter.output_path):
            continue
        if adapter_files_hash(adapter.source) != adapter.files_sha256:
            raise DataError(
                f"{adapter.source}: the adapter's files changed since the campaign was planned; "
                "rerun the command"
            )
        with remote_output(store.artifact(adapter.output_path)) as out:
            shutil.copytree(adapter.source, out, dirs_exist_ok=True)
        store.finetunes.write(
            [
                {
                    "key": adapter.key,
                    "model": adapter.model,
                    "arm": adapter.arm,
                    "status": "ok",
                    "adapter_path": adapter.output_path,
                    "settings_json": json.dumps(
                        {"trained_elsewhere": str(adapter.source), "files": adapter.files_sha256},
                        sort_keys=True,
                    ),
                }
            ]
        )
        copied += 1
    return copied
