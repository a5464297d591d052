"""Keyword judging of many answers at once: the verdicts `keyword_verdict` gives and the keys
`verdict_key_for` gives, row for row, at columnar speed.

The answers go once into a temporary Arrow file that worker processes (`ChunkPool`) map into
memory, a batch of CHUNK_ROWS answers per call. First the workers compute every answer's
verdict keys, so that what is judged already is skipped; then the verdicts of the rest, which
come back as columns and are written in large shards.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ftsafe_ray.judge.chunk_pool import ChunkPool, default_workers
from ftsafe_ray.judge.degenerate_columnar import degenerate_reasons
from ftsafe_ray.judge.identity import KEYWORD, keyword_identity
from ftsafe_ray.judge.keyword import KeywordSet
from ftsafe_ray.judge.keyword_columnar import phrase_matches
from ftsafe_ray.keys import verdict_key_columns
from ftsafe_ray.progress import Progress
from ftsafe_ray.store.durable import write_error

# Answers per worker call, verdict rows per shard written, and answers per worker started.
CHUNK_ROWS = 16_384
SHARD_ROWS = 262_144
ROWS_PER_WORKER = 50_000


@dataclass(frozen=True)
class KeywordTodo:
    """What each phrase set still has to judge: answer rows, ascending (one per verdict key
    not judged yet), and their verdict keys."""

    sets: tuple[KeywordSet, ...]
    rows: tuple[np.ndarray, ...]
    keys: tuple[pa.Array, ...]

    @property
    def total(self) -> int:
        """Verdicts to write, all sets together."""
        return sum(len(rows) for rows in self.rows)


def judge_keywords(
    answers: pa.Table,
    keyword_sets: Sequence[KeywordSet],
    done: pa.Array,
    progress: Progress,
    write: Callable[[pa.Table], Any],
    workers: int | None = None,
) -> int:
    """Judge `answers` ("key", "prompt", "response"; no null response) under each set, skipping
    verdict keys in `done`; `write` each shard of verdict rows. Reports to `progress` as the
    stage "keyword"; returns the number of verdicts written. `workers`: processes to use
    (default: one per core when there are enough answers; 0: none)."""
    if workers is None:
        workers = default_workers(answers.num_rows, ROWS_PER_WORKER)
    generation_keys = answers.column("key").combine_chunks()
    with ChunkPool(workers) as pool, answers_file(answers) as path:
        todo = keyword_todo(path, generation_keys, keyword_sets, done, pool)
        progress.start("keyword", total=todo.total)
        for shard in keyword_verdict_shards(path, generation_keys, todo, pool):
            write(shard)
            progress.advance("keyword", shard.num_rows)
    progress.finish("keyword")
    return todo.total


@contextlib.contextmanager
def answers_file(answers: pa.Table) -> Iterator[str]:
    """The answers' prompts and responses as a temporary Arrow IPC file in record batches of
    CHUNK_ROWS rows, which workers map instead of receiving copies; deleted after."""
    try:
        holder = tempfile.TemporaryDirectory(prefix="ftsafe-keyword-")
    except OSError as error:
        raise write_error(Path(tempfile.gettempdir()), error) from None
    with holder as directory:
        path = str(Path(directory) / "answers.arrow")
        try:
            _write_batches(answers.select(["prompt", "response"]), path)
        except OSError as error:  # pyarrow's I/O errors are OSErrors too
            raise write_error(Path(directory), error) from None
        try:
            yield path
        finally:
            _mapped.cache_clear()  # unmap it here too, before the file goes


def _write_batches(table: pa.Table, path: str) -> None:
    """`table` as an Arrow IPC file of CHUNK_ROWS-row record batches."""
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        for start in range(0, table.num_rows, CHUNK_ROWS):
            chunk = [column.slice(start, CHUNK_ROWS).combine_chunks() for column in table]
            writer.write_batch(pa.RecordBatch.from_arrays(chunk, schema=table.schema))


def keyword_todo(
    path: str,
    generation_keys: pa.Array,
    keyword_sets: Sequence[KeywordSet],
    done: pa.Array,
    pool: ChunkPool,
) -> KeywordTodo:
    """Per set, the answers of the file at `path` (with these generation keys, which are
    distinct) whose verdict key is not in `done`, one answer per verdict key."""
    identities = [keyword_identity(s) for s in keyword_sets]
    batches = -(-len(generation_keys) // CHUNK_ROWS)
    calls = ((identities, path, index) for index in range(batches))
    found: list[list[pa.Array]] = [[] for _ in keyword_sets]
    for batch_keys in pool.map(_keys_of_batch, calls):
        for keys, new in zip(found, batch_keys, strict=True):
            keys.append(new)
    every = [pa.chunked_array(keys, pa.string()).combine_chunks() for keys in found]
    todo = [_first_unjudged(keys, generation_keys, done) for keys in every]
    return KeywordTodo(
        tuple(keyword_sets),
        tuple(todo),
        tuple(keys.take(pa.array(rows)) for keys, rows in zip(every, todo, strict=True)),
    )


def keyword_verdict_shards(
    path: str,
    generation_keys: pa.Array,
    todo: KeywordTodo,
    pool: ChunkPool,
    shard_rows: int = SHARD_ROWS,
) -> Iterator[pa.Table]:
    """The verdict rows of `todo` (judgments columns), in tables of about `shard_rows` rows.

    Work goes out a file batch at a time; an answer's degenerate flag is computed once,
    whatever the number of phrase sets."""
    batches = -(-len(generation_keys) // CHUNK_ROWS)
    # Where each batch starts among each set's (ascending) rows.
    cuts = [np.searchsorted(rows, np.arange(batches + 1) * CHUNK_ROWS) for rows in todo.rows]
    busy = [i for i in range(batches) if any(cut[i + 1] > cut[i] for cut in cuts)]
    spans = [[(int(cut[i]), int(cut[i + 1])) for cut in cuts] for i in busy]
    calls = (
        (
            todo.sets,
            path,
            index,
            [todo.rows[s][lo:hi] - index * CHUNK_ROWS for s, (lo, hi) in enumerate(span)],
        )
        for index, span in zip(busy, spans, strict=True)
    )
    pending: list[pa.Table] = []
    held = 0
    results = pool.map(_verdicts_of_batch, calls)
    for span, (degenerate, matched) in zip(spans, results, strict=True):
        for s, (lo, hi) in enumerate(span):
            keys = todo.keys[s].slice(lo, hi - lo)
            generations = generation_keys.take(pa.array(todo.rows[s][lo:hi]))
            pending.append(
                _verdict_table(todo.sets[s], keys, generations, matched[s], degenerate[s])
            )
            held += hi - lo
        if held >= shard_rows:
            yield pa.concat_tables(pending)
            pending, held = [], 0
    if held:
        yield pa.concat_tables(pending)


@functools.lru_cache(maxsize=1)
def _mapped(path: str) -> pa.ipc.RecordBatchFileReader:
    """The answers file, mapped into memory once per process."""
    return pa.ipc.open_file(pa.memory_map(path))


def _keys_of_batch(identities: list[dict[str, Any]], path: str, index: int) -> list[pa.Array]:
    """Verdict keys of a file batch's answers under each identity (run in a worker)."""
    batch = _mapped(path).get_batch(index)
    return verdict_key_columns(identities, batch.column("prompt"), batch.column("response"))


def _verdicts_of_batch(
    keyword_sets: tuple[KeywordSet, ...], path: str, index: int, places: list[np.ndarray]
) -> tuple[list[pa.Array], list[pa.Array]]:
    """For each set, the degenerate reasons and matched phrases of the answers at its `places`
    in file batch `index` (run in a worker)."""
    responses = _mapped(path).get_batch(index).column("response")
    union = np.unique(np.concatenate(places))
    texts = responses.take(pa.array(union))
    degenerate = degenerate_reasons(texts)
    reasons, matched = [], []
    for keyword_set, where in zip(keyword_sets, places, strict=True):
        # A set judging every answer of the batch (the usual case) needs no copy of them.
        pick = None if len(where) == len(union) else pa.array(np.searchsorted(union, where))
        reasons.append(degenerate if pick is None else degenerate.take(pick))
        matched.append(phrase_matches(texts if pick is None else texts.take(pick), keyword_set))
    return reasons, matched


def _first_unjudged(keys: pa.Array, generation_keys: pa.Array, done: pa.Array) -> np.ndarray:
    """Rows whose verdict key is not in `done`, ascending: per such key, the row with the
    smallest generation key, which the row-by-row stage met first (it read in key order)."""
    judged = pc.is_in(keys, value_set=done).to_numpy(zero_copy_only=False)
    fresh = np.flatnonzero(~judged)
    if pc.count_distinct(keys).as_py() == len(keys):
        return fresh
    picked = pa.array(fresh)
    firsts = (
        pa.table({"key": keys.take(picked), "generation_key": generation_keys.take(picked)})
        .group_by("key", use_threads=False)
        .aggregate([("generation_key", "min")])
        .column("generation_key_min")
    )
    rows = pc.index_in(firsts, value_set=generation_keys).to_numpy(zero_copy_only=False)
    return np.sort(rows)


def _verdict_table(
    keyword_set: KeywordSet,
    keys: pa.Array,
    generation_keys: pa.Array,
    matched: pa.Array,
    degenerate: pa.Array,
) -> pa.Table:
    """Judgments rows as the row-by-row stage wrote them: the reason is the matched phrase,
    else (no phrase, or an empty one) the degenerate reason."""
    size = len(keys)
    names_phrase = pc.fill_null(pc.not_equal(matched, ""), False)
    return pa.table(
        {
            "key": keys,
            "generation_key": generation_keys,
            "judge": pa.repeat(KEYWORD, size),
            "judge_model": pa.repeat(keyword_set.name, size),
            "judge_version": pa.repeat(keyword_set.version, size),
            "status": pa.repeat("ok", size),
            "refused": pc.is_valid(matched),
            "degenerate": pc.is_valid(degenerate),
            "reason": pc.if_else(names_phrase, matched, degenerate),
            "attempts": pa.repeat(0, size),
        }
    )
