"""A campaign's run directory: its three tables, its adapters, the frozen spec and a manifest."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ftsafe_ray import __version__
from ftsafe_ray.errors import StoreError
from ftsafe_ray.store.schemas import PLAN_UNITS, SCHEMA_VERSION, TABLES
from ftsafe_ray.store.table import ParquetTable

ADAPTERS_DIR = "adapters"
ALIGNED_DIR = "aligned"
PLAN_FILE = "plan.parquet"
KEYWORD_SETS_FILE = "keyword_sets.json"


class RunStore:
    """Everything a campaign writes, under one directory that DuckDB/pandas can read directly."""

    def __init__(self, root: str | Path, spec_hash: str = ""):
        self.root = Path(root)
        provenance = {"ftsafe_ray.version": __version__, "ftsafe_ray.spec_hash": spec_hash}
        self.finetunes = ParquetTable(self.root / "finetunes", TABLES["finetunes"], provenance)
        self.generations = ParquetTable(
            self.root / "generations", TABLES["generations"], provenance
        )
        self.judgments = ParquetTable(self.root / "judgments", TABLES["judgments"], provenance)
        self.adapters_dir = self.root / ADAPTERS_DIR

    def adapter_dir(self, key: str) -> Path:
        """Where the adapter with this fine-tune key lives."""
        return self.adapters_dir / key

    def create(self) -> None:
        """Make the directory tree, failing with a clear message if it cannot be written."""
        try:
            for sub in ("finetunes", "generations", "judgments", ADAPTERS_DIR):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(
                f"{self.root}: cannot create the run directory ({error.strerror})"
            ) from None

    def freeze_spec(self, spec_json: dict[str, Any], spec_hash: str) -> None:
        """Keep a copy of the spec each run used, named by its hash, and point spec.json at it."""
        self.create()
        frozen = self.root / "specs" / f"{spec_hash}.json"
        frozen.parent.mkdir(exist_ok=True)
        _atomic_write(frozen, json.dumps(spec_json, indent=2, sort_keys=True))
        _atomic_write(self.root / "spec.json", json.dumps(spec_json, indent=2, sort_keys=True))

    def freeze_plan(
        self, units: list[dict[str, Any]], keyword_sets: dict[str, dict[str, Any]]
    ) -> None:
        """Record the plan's units (key + labels) and keyword set identities beside spec.json."""
        self.create()
        table = pa.Table.from_pylist(
            [{name: unit.get(name) for name in PLAN_UNITS.names} for unit in units],
            schema=PLAN_UNITS.with_metadata({"ftsafe_ray.schema_version": SCHEMA_VERSION}),
        )
        temporary = self.root / f".{PLAN_FILE}.tmp"
        pq.write_table(table, temporary)
        os.replace(temporary, self.root / PLAN_FILE)
        _atomic_write(self.root / KEYWORD_SETS_FILE, json.dumps(keyword_sets, indent=2))

    def read_plan(self) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]] | None:
        """The last run's plan units and keyword set identities, or None (an older run dir)."""
        plan, sets = self.root / PLAN_FILE, self.root / KEYWORD_SETS_FILE
        if not plan.is_file() or not sets.is_file():
            return None
        return pq.read_table(plan).to_pylist(), json.loads(sets.read_text())

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
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
