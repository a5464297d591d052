"""A campaign's run directory: its three tables, its adapters, the frozen spec and a manifest."""

from __future__ import annotations

import contextlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ftsafe_ray import __version__
from ftsafe_ray.errors import StoreError
from ftsafe_ray.store.compaction import CompactionResult, compact_table, merged_inputs
from ftsafe_ray.store.durable import fsync_directory, replace_durably, write_error
from ftsafe_ray.store.private import FILE_MODE, open_private, private_mkdir, restrict_tree
from ftsafe_ray.store.remote import RemoteDir, is_remote, mirror_path
from ftsafe_ray.store.schemas import PLAN_UNITS, SCHEMA_VERSION, TABLES
from ftsafe_ray.store.table import FINETUNE_DONE_STATUSES, ParquetTable

__all__ = ["RunStore", "open_remote_table", "open_run", "plan_table", "restrict_tree"]

ADAPTERS_DIR = "adapters"
ALIGNED_DIR = "aligned"
PLAN_FILE = "plan.parquet"
KEYWORD_SETS_FILE = "keyword_sets.json"
RUBRIC_IDENTITY_FILE = "rubric_identity.json"
_SHARD_DIRS = ("finetunes", "generations", "judgments")


def open_run(location: str | Path, spec_hash: str = "") -> RunStore:
    """The run directory at a local path, or the local mirror of one on object storage, filled
    from it (`ftsafe report s3://…` reads there)."""
    if is_remote(str(location)):
        store = RunStore(mirror_path(str(location)), spec_hash, remote=str(location))
        store.sync_down()
        return store
    return RunStore(location, spec_hash)


def open_remote_table(
    location: str, schema: pa.Schema, provenance: dict[str, str] | None = None
) -> ParquetTable:
    """A table directory on object storage (a shared verdict cache, say), read through a local
    mirror of its shards; each shard written is published there at once."""
    remote = RemoteDir(location)
    local = mirror_path(location)
    for relative in remote.files():
        if relative.startswith("part-") and not (local / relative).exists():
            remote.fetch(relative, local / relative)

    def publish(path: Path) -> None:
        remote.publish(path, path.name)

    return ParquetTable(local, schema, provenance, on_write=publish)


class _Vanished(Exception):
    """An object listed a moment ago is gone from object storage (compacted away)."""


class RunStore:
    """Everything a campaign writes, under one directory that DuckDB/pandas can read directly."""

    def __init__(self, root: str | Path, spec_hash: str = "", remote: str | None = None):
        """`remote`: the object-storage URI this directory mirrors (store/remote.py); every
        file written here is then published there, and `sync_down` fills the mirror."""
        self.root = Path(root)
        self.remote = RemoteDir(remote) if remote else None
        provenance = {"ftsafe_ray.version": __version__, "ftsafe_ray.spec_hash": spec_hash}
        publish = self.publish if self.remote else None
        self.finetunes = ParquetTable(
            self.root / "finetunes",
            TABLES["finetunes"],
            provenance,
            FINETUNE_DONE_STATUSES,
            on_write=publish,
        )
        self.generations = ParquetTable(
            self.root / "generations", TABLES["generations"], provenance, on_write=publish
        )
        self.judgments = ParquetTable(
            self.root / "judgments", TABLES["judgments"], provenance, on_write=publish
        )
        self.adapters_dir = self.root / ADAPTERS_DIR

    @property
    def location(self) -> str:
        """Where the run lives: its object-storage URI, or its local path."""
        return self.remote.uri if self.remote else str(self.root)

    def artifact(self, relative: str) -> str:
        """Where a trained artifact (an adapter, an aligned model) lives: a URI actors upload
        to and fetch from when the run is on object storage, else its local path."""
        return self.remote.join(relative) if self.remote else str(self.root / relative)

    def adapter_location(self, key: str) -> str:
        """Where the adapter with this fine-tune key lives (see `artifact`)."""
        return self.artifact(f"{ADAPTERS_DIR}/{key}")

    def has_artifact(self, relative: str) -> bool:
        """Whether a trained artifact exists whole."""
        if self.remote:
            return self.remote.has_tree(relative)
        return (self.root / relative).is_dir()

    def publish(self, path: Path) -> None:
        """Upload a file just written under the mirror to the run's object storage."""
        if self.remote is not None:
            self.remote.publish(path, path.relative_to(self.root).as_posix())

    def sync_down(self) -> int:
        """Fill the local mirror from object storage: new shards, and every record (JSON, plan)
        afresh; adapters and models stay remote (actors fetch them). Returns files copied.

        A shard that a compaction elsewhere removed between the listing and its download is
        looked for again in a fresh listing, which holds the merged shard that replaced it
        (uploaded before its inputs were removed); shards the mirror holds that a fetched
        merged shard replaces are removed here too."""
        if self.remote is None:
            return 0
        self.create()
        copied = [0]
        for attempt in range(8):
            try:
                self._sync_down_once(copied, tolerate=attempt < 7)
                break
            except _Vanished:
                continue
        return copied[0]

    def _sync_down_once(self, copied: list[int], tolerate: bool) -> None:
        """One pass of `sync_down`, counting files copied in `copied[0]`."""
        assert self.remote is not None
        merged: list[Path] = []
        for relative in self.remote.files():
            top = relative.split("/", 1)[0]
            if top in (ADAPTERS_DIR, ALIGNED_DIR, "report"):
                continue
            local = self.root / relative
            if top in _SHARD_DIRS and local.exists():
                continue  # shards never change once written
            try:
                self.remote.fetch(relative, local)
            except StoreError:
                if tolerate and top in _SHARD_DIRS and not self.remote.exists(relative):
                    raise _Vanished(relative) from None
                raise
            if top in _SHARD_DIRS and local.stem.endswith("-c"):
                merged.append(local)
            copied[0] += 1
        for path in merged:
            for name in merged_inputs(path):
                (path.parent / name).unlink(missing_ok=True)

    def compact(self, small_rows: int | None = None) -> list[CompactionResult]:
        """Merge each table's small shards (store/compaction.py); on object storage the merged
        shard is uploaded before its inputs are deleted there and here. The caller holds the
        run's lock."""
        results = []
        for table in (self.finetunes, self.generations, self.judgments):
            kwargs = {} if small_rows is None else {"small_rows": small_rows}
            results.append(compact_table(table, remove=self._remove_shard, **kwargs))
        return results

    def _remove_shard(self, path: Path) -> None:
        if self.remote is not None:
            self.remote.delete(path.relative_to(self.root).as_posix())
        path.unlink(missing_ok=True)

    def sync_up(self) -> int:
        """Publish every file of the mirror the store lacks (report files and records always;
        shards, which never change, only when missing). Returns files uploaded."""
        if self.remote is None:
            return 0
        held = set(self.remote.files())
        uploaded = 0
        for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
            relative = path.relative_to(self.root).as_posix()
            top = relative.split("/", 1)[0]
            if path.name.startswith(".") or top in (ADAPTERS_DIR, ALIGNED_DIR):
                continue  # locks, temporary files; artifacts are published by their actor
            if top in _SHARD_DIRS and relative in held:
                continue
            self.remote.publish(path, relative)
            uploaded += 1
        return uploaded

    def answered_keys(self) -> set[str]:
        """Generation keys with an answer: every stored key but those whose row is an error."""
        return set(self.answered_key_array().to_pylist())

    def answered_key_array(self) -> pa.Array:
        """`answered_keys` as an Arrow array (for columnar lookups)."""
        table = self.generations.latest(["key", "status"])
        answered = pc.fill_null(pc.not_equal(table.column("status"), "error"), True)
        return table.filter(answered).column("key").combine_chunks()

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
        self.publish(frozen)
        self.publish(self.root / "spec.json")

    def freeze_plan(
        self,
        units: pa.Table | list[dict[str, Any]],
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
        table = plan_table(units)
        temporary = self.root / f".{PLAN_FILE}.tmp"
        try:
            pq.write_table(table, temporary)
            os.chmod(temporary, FILE_MODE)  # owner-only before it takes its name
            replace_durably(temporary, self.root / PLAN_FILE)
        except OSError as error:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            raise write_error(self.root / PLAN_FILE, error) from None
        self.publish(self.root / PLAN_FILE)
        _atomic_write(self.root / KEYWORD_SETS_FILE, json.dumps(keyword_sets, indent=2))
        self.publish(self.root / KEYWORD_SETS_FILE)
        identity = self.root / RUBRIC_IDENTITY_FILE
        if rubric is None:
            # Not knowing the rubric is recorded by absence, so a stale identity from an
            # earlier run never labels this run's verdicts.
            identity.unlink(missing_ok=True)
            if self.remote is not None:
                self.remote.delete(RUBRIC_IDENTITY_FILE)
        else:
            _atomic_write(identity, json.dumps(rubric, indent=2, sort_keys=True))
            self.publish(identity)

    def read_plan(self) -> tuple[pa.Table, dict[str, dict[str, Any]]] | None:
        """The last run's plan units (a table of PLAN_UNITS columns; older plans may lack
        some) and keyword set identities, or None (an older run dir)."""
        plan, sets = self.root / PLAN_FILE, self.root / KEYWORD_SETS_FILE
        if not plan.is_file() or not sets.is_file():
            return None
        return pq.read_table(plan), json.loads(sets.read_text())

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
        self.publish(self.root / "manifest.json")

    def read_manifest(self) -> dict[str, Any]:
        """The manifest, or {} if the run never finished a stage."""
        path = self.root / "manifest.json"
        return json.loads(path.read_text()) if path.is_file() else {}


def plan_table(units: pa.Table | list[dict[str, Any]]) -> pa.Table:
    """Plan units (a table, or one mapping per unit) as a PLAN_UNITS table; a column the
    units lack is null."""
    schema = PLAN_UNITS.with_metadata({"ftsafe_ray.schema_version": SCHEMA_VERSION})
    if not isinstance(units, pa.Table):
        rows = [{name: unit.get(name) for name in PLAN_UNITS.names} for unit in units]
        return pa.Table.from_pylist(rows, schema=schema)
    columns = [
        units.column(f.name).cast(f.type)
        if f.name in units.column_names
        else pa.nulls(units.num_rows, f.type)
        for f in PLAN_UNITS
    ]
    return pa.Table.from_arrays(columns, schema=schema)


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
