"""Reading the shards of a table: one file at a time, and the small columns of each kept.

Tables are read shard by shard: a run holds thousands of small shards, and pyarrow's dataset
scanner costs more per file than opening each one directly (about half the time at a million
rows in 4,000 shards). Reading one file at a time also finds a damaged shard by itself.

The columns that decide which row wins its key (key, created_at, status) are read again and
again during a run (what is done, what is pending); shards never change once written, so
those columns are kept per shard, and a later read opens only the shards that are new.

A pass over every stored row of long columns (the answers, for the report) goes through DuckDB
instead: its reader decodes many shards at once on every core while this process works on
what it has read (a million answers in 4,000 shards: a third of the time).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["ShardCache", "file_identity", "read_shard", "stream_shards"]


def read_shard(path: Path, schema: pa.Schema, columns: list[str]) -> pa.Table:
    """A shard's `columns`, typed as in `schema`; a column an older shard lacks is all null.
    Raises what pyarrow raises for a file it cannot read."""
    with pq.ParquetFile(path, pre_buffer=False) as shard:
        present = set(shard.schema_arrow.names)
        table = shard.read(columns=[c for c in columns if c in present], use_threads=False)
        rows = shard.metadata.num_rows
    arrays: list[pa.Array | pa.ChunkedArray] = []
    for name in columns:
        kind = schema.field(name).type
        if name not in present:
            arrays.append(pa.nulls(rows, kind))
            continue
        column = table.column(name)
        arrays.append(column if column.type == kind else column.cast(kind))
    return pa.Table.from_arrays(arrays, names=columns)


def stream_shards(
    files: list[Path], schema: pa.Schema, columns: list[str], chunk_rows: int
) -> Iterator[pa.Table]:
    """Every row of `files`, in file order then row order, as tables of about `chunk_rows`
    rows with `columns` typed as in `schema` (a column older shards lack is null), read by
    DuckDB. Raises duckdb.Error for a file it cannot read: read those one by one to find it."""
    import duckdb

    typed = pa.schema([schema.field(name) for name in columns])
    paths = ", ".join(_literal(str(path)) for path in files)
    selected = ", ".join(_identifier(name) for name in columns)
    connection = duckdb.connect(":memory:")
    try:
        # Rows come in the order of the files, then of their rows: the latest-row rule's
        # tie-break (the row read last wins) depends on it.
        connection.sql("SET preserve_insertion_order = true")
        relation = connection.sql(
            f"SELECT {selected} FROM read_parquet([{paths}], union_by_name = true)"
        )
        for batch in relation.to_arrow_reader(chunk_rows):
            yield pa.Table.from_batches([batch]).cast(typed)
    finally:
        connection.close()


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class ShardCache:
    """Tables read from shards, each kept with the identity (size, mtime) its file had: shards
    are written once, under a new name, and never change."""

    def __init__(self) -> None:
        self._tables: dict[Path, tuple[tuple[int, int], pa.Table]] = {}
        self._lock = threading.Lock()

    def get(self, path: Path, identity: tuple[int, int]) -> pa.Table | None:
        """The table kept for `path`, if it was read from the file as it is now."""
        with self._lock:
            kept = self._tables.get(path)
        return kept[1] if kept is not None and kept[0] == identity else None

    def put(self, path: Path, identity: tuple[int, int], table: pa.Table) -> None:
        with self._lock:
            self._tables[path] = (identity, table)

    def keep_only(self, paths: list[Path]) -> None:
        """Forget the shards not in `paths` (deleted since)."""
        wanted = set(paths)
        with self._lock:
            self._tables = {p: kept for p, kept in self._tables.items() if p in wanted}


def file_identity(path: Path) -> tuple[int, int]:
    """A file's size and modification time: what changes when it is rewritten."""
    try:
        stat = path.stat()
    except OSError:
        return (-1, -1)
    return (stat.st_size, stat.st_mtime_ns)
