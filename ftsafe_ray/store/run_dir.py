"""A campaign's run directory: its three tables, its adapters, the frozen spec and a manifest."""

from __future__ import annotations

import contextlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ftsafe_ray import __version__
from ftsafe_ray.errors import StoreError
from ftsafe_ray.store.durable import fsync_directory, replace_durably, write_error
from ftsafe_ray.store.private import FILE_MODE, open_private, private_mkdir, restrict_tree
from ftsafe_ray.store.schemas import PLAN_UNITS, SCHEMA_VERSION, TABLES
from ftsafe_ray.store.table import FINETUNE_DONE_STATUSES, ParquetTable

__all__ = ["RunStore", "restrict_tree"]

ADAPTERS_DIR = "adapters"
ALIGNED_DIR = "aligned"
PLAN_FILE = "plan.parquet"
KEYWORD_SETS_FILE = "keyword_sets.json"
RUBRIC_IDENTITY_FILE = "rubric_identity.json"


class RunStore:
    """Everything a campaign writes, under one directory that DuckDB/pandas can read directly."""

    def __init__(self, root: str | Path, spec_hash: str = ""):
        self.root = Path(root)
        provenance = {"ftsafe_ray.version": __version__, "ftsafe_ray.spec_hash": spec_hash}
        self.finetunes = ParquetTable(
            self.root / "finetunes", TABLES["finetunes"], provenance, FINETUNE_DONE_STATUSES
        )
        self.generations = ParquetTable(
            self.root / "generations", TABLES["generations"], provenance
        )
        self.judgments = ParquetTable(self.root / "judgments", TABLES["judgments"], provenance)
        self.adapters_dir = self.root / ADAPTERS_DIR

    def answered_keys(self) -> set[str]:
        """Generation keys with an answer: every stored key but those whose row is an error."""
        return self.generations.done_keys(None) - self.failed_generation_keys()

    def failed_generation_keys(self) -> set[str]:
        """Generation keys whose winning row is an error (redone only with --retry-failed)."""
        return self.generations.done_keys({"error"})

    def adapter_dir(self, key: str) -> Path:
        """Where the adapter with this fine-tune key lives."""
        return self.adapters_dir / key

    def create(self) -> None:
        """Make the directory tree, failing with a clear message if it cannot be written.

        Directories this creates are owner-only (see store/private.py: the run holds harmful
        outputs); existing ones keep their mode, so a run shared on purpose stays shared.
        """
        try:
            private_mkdir(self.root)
            for sub in ("finetunes", "generations", "judgments", ADAPTERS_DIR):
                private_mkdir(self.root / sub)
        except OSError as error:
            raise StoreError(
                f"{self.root}: cannot create the run directory ({error.strerror})"
            ) from None

    def freeze_spec(self, spec_json: dict[str, Any], spec_hash: str) -> None:
        """Keep a copy of the spec each run used, named by its hash, and point spec.json at it."""
        self.create()
        frozen = self.root / "specs" / f"{spec_hash}.json"
        try:
            private_mkdir(frozen.parent)
        except OSError as error:
            raise write_error(frozen.parent, error) from None
        _atomic_write(frozen, json.dumps(spec_json, indent=2, sort_keys=True))
        _atomic_write(self.root / "spec.json", json.dumps(spec_json, indent=2, sort_keys=True))

    def freeze_plan(
        self,
        units: list[dict[str, Any]],
        keyword_sets: dict[str, dict[str, Any]],
        rubric: dict[str, Any] | None = None,
    ) -> None:
        """Record the plan's units (key + labels) and its judges' verdict identities beside
        spec.json: the keyword sets' and, when known, the rubric judge's.

        The report reads the rubric identity from here instead of rebuilding it from the
        spec: rebuilding a `module:object` rubric's identity imports that module, and the
        report must import nothing named by a run directory it is pointed at.
        """
        self.create()
        table = pa.Table.from_pylist(
            [{name: unit.get(name) for name in PLAN_UNITS.names} for unit in units],
            schema=PLAN_UNITS.with_metadata({"ftsafe_ray.schema_version": SCHEMA_VERSION}),
        )
        temporary = self.root / f".{PLAN_FILE}.tmp"
        try:
            pq.write_table(table, temporary)
            os.chmod(temporary, FILE_MODE)  # owner-only before it takes its name
            replace_durably(temporary, self.root / PLAN_FILE)
        except OSError as error:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            raise write_error(self.root / PLAN_FILE, error) from None
        _atomic_write(self.root / KEYWORD_SETS_FILE, json.dumps(keyword_sets, indent=2))
        identity = self.root / RUBRIC_IDENTITY_FILE
        if rubric is None:
            # Not knowing the rubric is recorded by absence, so a stale identity from an
            # earlier run never labels this run's verdicts.
            identity.unlink(missing_ok=True)
        else:
            _atomic_write(identity, json.dumps(rubric, indent=2, sort_keys=True))

    def read_plan(self) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]] | None:
        """The last run's plan units and keyword set identities, or None (an older run dir)."""
        plan, sets = self.root / PLAN_FILE, self.root / KEYWORD_SETS_FILE
        if not plan.is_file() or not sets.is_file():
            return None
        return pq.read_table(plan).to_pylist(), json.loads(sets.read_text())

    def read_rubric_identity(self) -> dict[str, Any] | None:
        """The rubric judge's verdict identity the last run recorded, or None if it recorded
        none (an older run directory, or a rubric that could not be loaded)."""
        path = self.root / RUBRIC_IDENTITY_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    def write_manifest(self, **fields: Any) -> None:
        """Summary of the last run: versions, counts, timings."""
        manifest = {
            "ftsafe_ray_version": __version__,
            "schema_version": SCHEMA_VERSION,
            "updated_at": datetime.now(timezone.utc).isoformat(),
            **fields,
        }
        _atomic_write(self.root / "manifest.json", json.dumps(manifest, indent=2, default=str))

    def read_manifest(self) -> dict[str, Any]:
        """The manifest, or {} if the run never finished a stage."""
        path = self.root / "manifest.json"
        return json.loads(path.read_text()) if path.is_file() else {}


def _atomic_write(path: Path, text: str) -> None:
    """Write an owner-only file through a temporary sibling, so readers never see half."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with os.fdopen(open_private(temporary), "w", encoding="utf-8") as handle:
            handle.write(text)
            # Durable as well as atomic: data on disk before the rename, the rename after it.
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        fsync_directory(path.parent)
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise write_error(path, error) from None
