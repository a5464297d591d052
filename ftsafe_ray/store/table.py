"""A Parquet dataset written in shards with atomic rename, and read back deduplicated by key."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ftsafe_ray.errors import StoreError
from ftsafe_ray.store.schemas import SCHEMA_VERSION

# Final verdict statuses: paid for and not redone on a rerun. Only "error" rows are redone,
# and only with --retry-failed. "truncated" is final: the online judge already retried it once.
DONE_STATUSES = frozenset({"ok", "unparseable", "judge_refused", "truncated"})


class ParquetTable:
    """One table of a run directory: `part-*.parquet` shards, each complete or absent."""

    def __init__(
        self, directory: Path, schema: pa.Schema, provenance: dict[str, str] | None = None
    ):
        self.directory = Path(directory)
        self.schema = schema.with_metadata(
            {"ftsafe_ray.schema_version": SCHEMA_VERSION, **(provenance or {})}
        )

    def write(self, rows: list[dict[str, Any]]) -> Path | None:
        """Write rows as one new shard: a hidden temporary file renamed into place when complete."""
        if not rows:
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        now = time.time()
        for row in rows:
            row.setdefault("created_at", datetime.fromtimestamp(now, timezone.utc))
        try:
            table = pa.Table.from_pylist(
                [{name: row.get(name) for name in self.schema.names} for row in rows],
                schema=self.schema,
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
            raise StoreError(
                f"{self.directory}: rows do not match the table schema: {error}"
            ) from None
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
        name = f"part-{stamp}-{uuid.uuid4().hex[:12]}.parquet"
        temporary = self.directory / f".inprogress-{name}"
        pq.write_table(table, temporary)
        os.replace(temporary, self.directory / name)
        return self.directory / name

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """All rows, the latest row per key winning (a retried row replaces its failed one)."""
        files = sorted(self.directory.glob("part-*.parquet")) if self.directory.is_dir() else []
        if not files:
            return self.schema.empty_table().select(columns or self.schema.names)
        wanted = list(dict.fromkeys(["key", "created_at", *(columns or self.schema.names)]))
        try:
            table = ds.dataset([str(f) for f in files], schema=self.schema, format="parquet")
            table = table.to_table(columns=wanted)
        except (pa.ArrowInvalid, OSError) as error:
            raise StoreError(f"{self.directory}: cannot read the table ({error})") from None
        table = _latest_per_key(table)
        return table.select(columns or self.schema.names)

    def rows(self, columns: list[str] | None = None) -> list[dict[str, Any]]:
        """Rows as dictionaries, latest per key."""
        return self.read(columns).to_pylist()

    def done_keys(self, statuses: Iterable[str] | None = DONE_STATUSES) -> set[str]:
        """Keys whose latest row has one of `statuses` (None: any row at all)."""
        has_status = "status" in self.schema.names
        table = self.read(["key", "status"] if has_status else ["key"])
        if statuses is None or not has_status:
            return set(table.column("key").to_pylist())
        allowed = set(statuses)
        return {
            key
            for key, status in zip(
                table.column("key").to_pylist(), table.column("status").to_pylist(), strict=True
            )
            if status in allowed
        }

    def count(self) -> int:
        """Number of distinct keys."""
        return self.read(["key"]).num_rows


def _latest_per_key(table: pa.Table) -> pa.Table:
    if table.num_rows == 0:
        return table
    order = pc.sort_indices(table, sort_keys=[("key", "ascending"), ("created_at", "descending")])
    table = table.take(order)
    keys = table.column("key").to_pylist()
    keep = [i for i, key in enumerate(keys) if i == 0 or key != keys[i - 1]]
    return table.take(pa.array(keep, type=pa.int64()))


class ShardBuffer:
    """Collects rows and writes a shard every `max_rows` rows or `max_seconds` seconds."""

    def __init__(self, table: ParquetTable, max_rows: int = 256, max_seconds: float = 20.0):
        self.table = table
        self.max_rows = max_rows
        self.max_seconds = max_seconds
        self.pending: list[dict[str, Any]] = []
        self.last_write = time.monotonic()
        self.written = 0

    def add(self, rows: list[dict[str, Any]]) -> None:
        self.pending.extend(rows)
        if (
            len(self.pending) >= self.max_rows
            or time.monotonic() - self.last_write >= self.max_seconds
        ):
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.table.write(self.pending)
            self.written += len(self.pending)
            self.pending = []
        self.last_write = time.monotonic()

    def __enter__(self) -> ShardBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()
