"""Compaction: a table's many small shards merged into few large ones, with no moment at which
a reader finds a row missing or doubled.

A long run writes thousands of small shards (the generate stage every 256 answers, the online
judge every second); each costs a file open on every read. Compaction merges runs of adjacent
small shards into shards of up to `target_rows` rows, keeping every row as stored (superseded
error rows included: `--all-history` and the `*_all` SQL views still see them).

Why readers never see a row missing or doubled:
- the merged shard is written under a hidden name and renamed into place (complete or absent)
  *before* its inputs are removed, so every row is in some listed shard at every moment;
- between that rename and the removals a listing holds both copies of each row: the store's
  latest-row-per-key rule keeps exactly one (same key, time and status: identical rows);
- a reader that listed an input which is then removed finds it gone and reads again from a
  fresh listing (table.py `ShardMoved`), which holds the merged shard.

The merged shard takes the place of the last shard of its run in name order (its name is that
shard's stem plus `-c`), and keeps the rows in their stored order, so the rule's last tie-break
(the row read last wins) is unchanged. It names its inputs in its metadata: a crash between
the rename and the removals leaves inputs that the next compaction (or a mirror's sync) removes
as already merged.

Only the one driver holding the run's lock compacts (the end of `ftsafe run`, or
`ftsafe compact RUN_DIR`), so two compactions never merge the same shards.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ftsafe_ray.store.durable import replace_durably, write_error
from ftsafe_ray.store.private import FILE_MODE
from ftsafe_ray.store.shards import read_shard
from ftsafe_ray.store.table import ParquetTable

__all__ = ["COMPACTED_FROM", "CompactionResult", "compact_table", "merged_inputs"]

# Metadata key of a merged shard: the JSON list of the shard names it holds the rows of.
COMPACTED_FROM = "ftsafe_ray.compacted_from"
# A shard with fewer rows than this is worth merging.
SMALL_ROWS = 50_000
# Rows per merged shard, and per row group inside it (what a reader decodes at once).
TARGET_ROWS = 500_000
ROW_GROUP_ROWS = 65_536


@dataclass(frozen=True)
class CompactionResult:
    """What one table's compaction did."""

    table: str
    shards_before: int
    shards_after: int
    rows_merged: int
    leftovers_removed: int

    def line(self) -> str:
        """`generations: 3,907 shards → 3 (1,000,120 rows merged)`."""
        text = f"{self.table}: {self.shards_before:,} shards → {self.shards_after:,}"
        if self.rows_merged:
            text += f" ({self.rows_merged:,} rows merged)"
        if self.leftovers_removed:
            text += f"; {self.leftovers_removed} already-merged shard(s) removed"
        return text


def merged_inputs(path: Path) -> list[str]:
    """The names of the shards whose rows the shard at `path` holds ([] for a plain shard)."""
    metadata = pq.read_schema(path).metadata or {}
    names = metadata.get(COMPACTED_FROM.encode())
    return list(json.loads(names)) if names else []


def compact_table(
    table: ParquetTable,
    remove: Callable[[Path], None] | None = None,
    small_rows: int = SMALL_ROWS,
    target_rows: int = TARGET_ROWS,
) -> CompactionResult:
    """Merge runs of adjacent small shards of `table` (see the module docstring). `remove`
    deletes an input once its merged shard is in place (default: unlink it; a run on object
    storage also deletes its copy there). The merged shard is published by the table's
    `on_write`, before any input is removed."""
    remove = remove or _unlink
    files = table.shard_files()
    leftovers = _already_merged(files)
    for path in leftovers:
        remove(path)
    files = [path for path in files if path not in leftovers]
    before = len(files)
    merged_rows = 0
    after = before
    for run in _runs(files, small_rows, target_rows):
        rows = _merge(table, run)
        for path in run:
            remove(path)
        merged_rows += rows
        after -= len(run) - 1
    return CompactionResult(
        table.directory.name, before + len(leftovers), after, merged_rows, len(leftovers)
    )


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _already_merged(files: Sequence[Path]) -> set[Path]:
    """Shards that a merged shard already holds (a compaction stopped before removing them)."""
    present = {path.name: path for path in files}
    leftovers: set[Path] = set()
    for path in files:
        if path.stem.endswith("-c"):
            try:
                inputs = merged_inputs(path)
            except (pa.ArrowException, OSError):
                continue
            leftovers.update(present[name] for name in inputs if name in present)
    return leftovers


def _runs(files: Sequence[Path], small_rows: int, target_rows: int) -> list[list[Path]]:
    """Runs of adjacent (in name order) small shards, each of at most `target_rows` rows and
    at least two shards."""
    runs: list[list[Path]] = []
    current: list[Path] = []
    held = 0

    def close() -> None:
        nonlocal current, held
        if len(current) > 1:
            runs.append(current)
        current, held = [], 0

    for path in files:
        try:
            rows = pq.read_metadata(path).num_rows
        except (pa.ArrowException, OSError):
            rows = small_rows  # damaged (or gone): never merged, the readers' rule decides
        if rows >= small_rows:
            close()
            continue
        if held + rows > target_rows:
            close()
        current.append(path)
        held += rows
    close()
    return runs


def _merge(table: ParquetTable, run: list[Path]) -> int:
    """Write the rows of `run`, in order, as one shard in the place of its last shard; return
    the rows written. Each input is read into the table's current schema (older shards' missing
    columns are null), a few at a time."""
    inputs = json.dumps([path.name for path in run])
    schema = table.schema.with_metadata(
        {**(table.schema.metadata or {}), COMPACTED_FROM.encode(): inputs.encode()}
    )
    name = f"{run[-1].stem}-c.parquet"
    temporary = table.directory / f".inprogress-{name}"
    rows = 0
    try:
        with pq.ParquetWriter(temporary, schema) as writer:
            pending: list[pa.Table] = []
            held = 0
            for path in run:
                shard = read_shard(path, table.schema, table.schema.names)
                pending.append(shard)
                held += shard.num_rows
                if held >= ROW_GROUP_ROWS:
                    writer.write_table(_typed(pending, schema), row_group_size=ROW_GROUP_ROWS)
                    rows, pending, held = rows + held, [], 0
            if pending:
                writer.write_table(_typed(pending, schema), row_group_size=ROW_GROUP_ROWS)
                rows += held
        temporary.chmod(FILE_MODE)
        replace_durably(temporary, table.directory / name)
    except BaseException as error:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise write_error(table.directory, error) from None
        raise
    if table.on_write is not None:
        table.on_write(table.directory / name)
    return rows


def _typed(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    return pa.concat_tables(tables).cast(schema)
