"""A Parquet dataset written in shards with atomic rename, and read back deduplicated by key."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ftsafe_ray.errors import StoreError
from ftsafe_ray.store.durable import replace_durably, write_error
from ftsafe_ray.store.latest import status_mask, winner_mask
from ftsafe_ray.store.private import FILE_MODE, private_mkdir
from ftsafe_ray.store.schemas import SCHEMA_VERSION
from ftsafe_ray.store.shards import ShardCache, file_identity, read_shard, stream_shards

# Final verdict statuses: paid for and not redone on a rerun. Only "error" rows are redone,
# and only with --retry-failed. "truncated" is final: the online judge already retried it once.
DONE_STATUSES = frozenset({"ok", "unparseable", "judge_refused", "truncated"})
# A fine-tune is finished only when it trained; its only other status is "error".
FINETUNE_DONE_STATUSES = frozenset({"ok"})


class DamagedShardWarning(UserWarning):
    """A shard of a table cannot be read and is skipped."""


class ShardMoved(Exception):
    """A shard listed a moment ago is gone: compaction (store/compaction.py) replaced it with a
    shard that holds its rows, written before it was removed. The read starts again from a
    fresh listing, which sees that shard instead: no row is ever missing."""


_T = TypeVar("_T")

# Fresh listings a read takes while compactions keep replacing shards, before it gives up.
_READ_ATTEMPTS = 8


# Shards found damaged in this process, by path, with the (size, mtime) they had then: later
# reads skip them without another failed attempt and warn only once, until the file changes.
_damaged: dict[Path, tuple[int, int]] = {}
_damaged_lock = threading.Lock()


class ParquetTable:
    """One table of a run directory: `part-*.parquet` shards, each complete or absent."""

    def __init__(
        self,
        directory: Path,
        schema: pa.Schema,
        provenance: dict[str, str] | None = None,
        finished: frozenset[str] = DONE_STATUSES,
        on_write: Callable[[Path], None] | None = None,
    ):
        """`finished`: the statuses whose row beats an unfinished (error) row of the same key
        whatever their order; ignored for a table without a status column (every row counts)."""
        self.directory = Path(directory)
        self.schema = schema.with_metadata(
            {"ftsafe_ray.schema_version": SCHEMA_VERSION, **(provenance or {})}
        )
        self.finished = frozenset(finished)
        self.on_write = on_write  # called with each new shard (publishing it to object storage)
        self._has_status = "status" in self.schema.names
        self._ranking = ShardCache()  # each shard's _ranked_by columns, read once
        # The winners among them, with the shards they were worked out from.
        self._last_winners: tuple[frozenset, pa.Table] | None = None
        self._winners_lock = threading.Lock()

    def write(self, rows: list[dict[str, Any]]) -> Path | None:
        """Write rows as one new shard: a hidden temporary file renamed into place when complete."""
        if not rows:
            return None
        try:
            private_mkdir(self.directory)
        except OSError as error:
            raise write_error(self.directory, error) from None
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
        return self._place(table, now)

    def write_table(self, table: pa.Table) -> Path | None:
        """Write an Arrow table as one new shard, as `write` writes rows: a hidden temporary file
        renamed into place when complete. Columns the table lacks are null, and `created_at` is
        now where it lacks one; a column the schema does not have is an error."""
        if table.num_rows == 0:
            return None
        unknown = [name for name in table.column_names if name not in self.schema.names]
        if unknown:
            raise StoreError(f"{self.directory}: columns {unknown} are not in the table schema")
        try:
            private_mkdir(self.directory)
        except OSError as error:
            raise write_error(self.directory, error) from None
        now = time.time()
        columns: list[pa.Array | pa.ChunkedArray] = []
        try:
            for field in self.schema:
                if field.name in table.column_names:
                    columns.append(table.column(field.name).cast(field.type))
                elif field.name == "created_at":
                    stamp_now = pa.scalar(datetime.fromtimestamp(now, timezone.utc), field.type)
                    columns.append(pa.repeat(stamp_now, table.num_rows))
                else:
                    columns.append(pa.nulls(table.num_rows, field.type))
            shard = pa.Table.from_arrays(columns, schema=self.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as error:
            raise StoreError(
                f"{self.directory}: table does not match the table schema: {error}"
            ) from None
        return self._place(shard, now)

    def _place(self, shard: pa.Table, now: float) -> Path:
        """Write `shard` to a hidden temporary file, then rename it into place (complete or
        absent), and publish it; a failed write leaves nothing behind."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
        name = f"part-{stamp}-{uuid.uuid4().hex[:12]}.parquet"
        temporary = self.directory / f".inprogress-{name}"
        try:
            pq.write_table(shard, temporary)
            temporary.chmod(FILE_MODE)  # owner-only before it takes its name: see private.py
            replace_durably(temporary, self.directory / name)
        except BaseException as error:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            if isinstance(error, OSError):  # pyarrow's I/O errors are OSErrors too
                raise write_error(self.directory, error) from None
            raise
        if self.on_write is not None:
            self.on_write(self.directory / name)
        return self.directory / name

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """All rows, one per key, in key order: a finished row beats an error row whatever
        their order (an error after a success never masks it), and among rows of the same kind
        the latest `created_at` wins (a retried failure replaces its earlier error). Damaged
        shards are skipped with a warning, so their keys read as missing and are redone."""
        table = self.latest(columns and list(dict.fromkeys(["key", *columns])))
        table = table.take(pc.sort_indices(table.column("key")))
        return table.select(columns or self.schema.names)

    def latest(self, columns: list[str] | None = None) -> pa.Table:
        """The rows `read` returns, in the order they are stored (no sort by key)."""
        wanted = list(columns or self.schema.names)
        if set(wanted) <= set(self._ranked_by):
            return self._latest_ranking().select(wanted)
        table = self._read(list(dict.fromkeys([*self._ranked_by, *wanted])))
        if table.num_rows:
            mask = self._winners(table)
            if not mask.all():
                table = table.filter(pa.array(mask))
        return table.select(wanted)

    def _latest_ranking(self) -> pa.Table:
        """The winning rows' ranking columns; worked out again only when the shards changed
        (what is done, asked for again and again during a run, costs a directory listing)."""
        read_from: list[tuple[Path, tuple[int, int]]] = []
        table = self._read(self._ranked_by, read_from)
        seen = frozenset(read_from)
        with self._winners_lock:
            if self._last_winners is not None and self._last_winners[0] == seen:
                return self._last_winners[1]
        if table.num_rows:
            mask = self._winners(table)
            table = table.combine_chunks() if mask.all() else table.filter(pa.array(mask))
        with self._winners_lock:
            self._last_winners = (seen, table)
        return table

    def latest_mapped(
        self,
        columns: list[str],
        transform: Callable[[pa.Table], pa.Table],
        chunk_rows: int = 16_384,
    ) -> pa.Table:
        """`transform` of the rows `latest` returns, computed chunk by chunk as the shards are
        read (one pass), so that long columns (answers) are never all in memory: a chunk holds
        `columns` of about `chunk_rows` stored rows, and `transform` returns one row per row of
        it. Rows that lose their key are dropped from the result afterwards."""
        import duckdb

        wanted = list(dict.fromkeys([*self._ranked_by, *columns]))

        def attempt() -> tuple[list[pa.Table], list[pa.Table]]:
            files = self._files()
            try:
                chunks = (
                    stream_shards(files, self.schema, wanted, chunk_rows) if files else iter(())
                )
                return self._mapped(chunks, transform)
            except duckdb.Error:
                # A damaged, unreadable or compacted-away shard: read one by one, which skips
                # a damaged one with a warning (or stops at one it may not read).
                return self._mapped(self._chunks(wanted, chunk_rows), transform)

        parts, ranking = self._settled(attempt)
        if not parts:
            return transform(self.schema.empty_table().select(wanted))
        table = pa.concat_tables(parts)
        mask = self._winners(pa.concat_tables(ranking))
        return table if mask.all() else table.filter(pa.array(mask))

    def _mapped(
        self, chunks: Iterable[pa.Table], transform: Callable[[pa.Table], pa.Table]
    ) -> tuple[list[pa.Table], list[pa.Table]]:
        """Each chunk transformed, and each chunk's ranking columns."""
        parts, ranking = [], []
        for chunk in chunks:
            mapped = transform(chunk)
            if mapped.num_rows != chunk.num_rows:
                raise ValueError(f"transform gave {mapped.num_rows} rows for {chunk.num_rows}")
            # Copies: a column that still pointed into the chunk would keep all of it (long
            # answers included) in memory, since a reader may free a chunk only as a whole.
            every = np.arange(chunk.num_rows)
            parts.append(mapped.take(every))
            ranking.append(chunk.select(self._ranked_by).take(every))
        return parts, ranking

    def _chunks(self, columns: list[str], chunk_rows: int) -> Iterator[pa.Table]:
        """The shards' `columns` read one by one, gathered into chunks of about `chunk_rows`."""
        pending: list[pa.Table] = []
        size = 0
        for shard in self._shards(columns):
            pending.append(shard)
            size += shard.num_rows
            if size >= chunk_rows:
                yield pa.concat_tables(pending).combine_chunks()
                pending, size = [], 0
        if pending:
            yield pa.concat_tables(pending).combine_chunks()

    def shard_files(self) -> list[Path]:
        """The complete shards, in name order (damaged ones left out)."""
        return self._files()

    def _files(self) -> list[Path]:
        """The complete shards, in name order, less those already known to be damaged."""
        files = sorted(self.directory.glob("part-*.parquet")) if self.directory.is_dir() else []
        return [path for path in files if not _known_damaged(path)]

    @property
    def _ranked_by(self) -> list[str]:
        """The columns the latest-row rule ranks a key's rows by."""
        return ["key", "created_at", *(["status"] if self._has_status else [])]

    def _read(
        self, columns: list[str], read_from: list[tuple[Path, tuple[int, int]]] | None = None
    ) -> pa.Table:
        """Every stored row's `columns`, in shard order (damaged shards left out); the shards
        read and their file identities are added to `read_from`."""

        def attempt() -> list[pa.Table]:
            if read_from is not None:
                read_from.clear()
            return list(self._shards(columns, read_from))

        shards = self._settled(attempt)
        return pa.concat_tables(shards) if shards else self.schema.empty_table().select(columns)

    def _settled(self, read: Callable[[], _T]) -> _T:
        """`read()`, taken again from a fresh listing while compaction moves shards under it."""
        for _ in range(_READ_ATTEMPTS - 1):
            try:
                return read()
            except ShardMoved:
                continue
        try:
            return read()
        except ShardMoved as moved:
            raise StoreError(
                f"{self.directory}: shards kept being replaced while read ({moved}); "
                "rerun the command once compaction has finished"
            ) from None

    def _shards(
        self, columns: list[str], read_from: list[tuple[Path, tuple[int, int]]] | None = None
    ) -> Iterator[pa.Table]:
        """Each complete shard's `columns`, in name order. A damaged shard is skipped with a
        warning (once), so its keys read as missing and are redone; an unreadable one (its
        permissions) is an error: skipping it would silently redo paid work. Ranking columns
        come from the shards' kept copies (store/shards.py)."""
        files = self._files()
        ranking = set(columns) <= set(self._ranked_by)
        if ranking:
            self._ranking.keep_only(files)
        for path in files:
            identity = file_identity(path)
            shard = self._ranking.get(path, identity) if ranking else None
            if shard is None:
                try:
                    shard = read_shard(path, self.schema, self._ranked_by if ranking else columns)
                except PermissionError as denied:
                    raise StoreError(
                        f"{path}: cannot read it ({denied.strerror or denied}); fix its permissions"
                    ) from None
                except (pa.ArrowException, OSError) as damage:
                    if not path.exists():  # listed, then compacted away: not damage
                        raise ShardMoved(path.name) from None
                    _record_damaged(path, damage)
                    continue
                if ranking:
                    self._ranking.put(path, identity, shard)
            if read_from is not None:
                read_from.append((path, identity))
            yield shard.select(columns) if ranking else shard

    def _winners(self, ranking: pa.Table) -> np.ndarray:
        """Which rows win their key (store/latest.py)."""
        statuses = ranking.column("status") if self._has_status else None
        finished = self.finished if self._has_status else None
        return winner_mask(ranking.column("key"), ranking.column("created_at"), statuses, finished)

    def rows(self, columns: list[str] | None = None) -> list[dict[str, Any]]:
        """Rows as dictionaries, latest per key."""
        return self.read(columns).to_pylist()

    def done_keys(self, statuses: Iterable[str] | None = DONE_STATUSES) -> set[str]:
        """Keys whose winning row (see `read`) has one of `statuses` (None: any row at all).
        So `done_keys({"error"})` holds only keys that never finished."""
        return set(self.done_key_array(statuses).to_pylist())

    def done_key_array(self, statuses: Iterable[str] | None = DONE_STATUSES) -> pa.Array:
        """`done_keys` as an Arrow array (for columnar lookups: `pc.is_in`, `pc.index_in`)."""
        table = self.latest(["key", "status"] if self._has_status else ["key"])
        if statuses is not None and self._has_status:
            table = table.filter(pa.array(status_mask(table.column("status"), statuses)))
        return table.column("key").combine_chunks()

    def count(self) -> int:
        """Number of distinct keys."""
        table = self._read(["key"])
        return int(pc.count_distinct(table.column("key")).as_py()) if table.num_rows else 0


def _known_damaged(path: Path) -> bool:
    with _damaged_lock:
        seen = _damaged.get(path)
    return seen is not None and seen == file_identity(path)


def _record_damaged(path: Path, damage: Exception) -> None:
    identity = file_identity(path)
    with _damaged_lock:
        if _damaged.get(path) == identity:
            return
        _damaged[path] = identity
    reason = str(damage).strip().splitlines()[0] if str(damage).strip() else type(damage).__name__
    warnings.warn(
        f"{path}: damaged shard ({reason}) skipped; its rows will be redone; "
        "delete it to silence this",
        DamagedShardWarning,
        stacklevel=4,
    )


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
