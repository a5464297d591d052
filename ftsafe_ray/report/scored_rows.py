"""Join the plan's units with their stored answers and verdicts: the rows the report summarises.

Labels (model, arm, benchmark, kind, category…) come from the plan, joined to stored answers
by content key, so two units that share content are computed once and counted in each of
their groups, and renaming an arm relabels without recomputing anything.

The join is columnar: stored answers are read a batch at a time (their text is only needed to
compute verdict keys), and plan units, answers and verdicts meet through Arrow hash lookups.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ftsafe_ray.report.verdict_keys import verdict_key_columns
from ftsafe_ray.store import RunStore

__all__ = ["LABELS", "ScoredRows", "as_scored", "scored_rows"]

LABELS = (
    "model",
    "arm",
    "dataset",
    "size",
    "seed",
    "benchmark",
    "benchmark_kind",
    "condition",
    "category",
    "item_id",
)
_INT_LABELS = ("size", "seed")
# Stored answers carry no condition (it lives in the plan): an --all-history report pools them.
_STORED_LABELS = [x for x in LABELS if x != "condition"]
_VERDICT_COLUMNS = [
    "key",
    "judge",
    "status",
    "score",
    "refused",
    "degenerate",
    "strongreject_score",
]
# Columns of a ScoredRows table beside the labels and one `keyword:<set>` column per phrase set.
VERDICT_FIELDS: dict[str, pa.DataType] = {
    "generation_key": pa.string(),
    "answered": pa.bool_(),
    "degenerate": pa.bool_(),
    "rubric_score": pa.float64(),
    "rubric_status": pa.string(),
    "rubric_refused": pa.bool_(),
    "strongreject_score": pa.float64(),
    "utility_score": pa.float64(),
}
KEYWORD_PREFIX = "keyword:"


@dataclass(frozen=True)
class ScoredRows:
    """One row per planned unit with its verdicts, as Arrow columns.

    Columns: the LABELS; `generation_key`; `answered` (False for a unit with no stored answer
    yet); `keyword:<set>` per phrase set (whether the answer refused by that set, null when not
    judged); `degenerate`; the rubric verdict's `rubric_score` (null unless judged ok),
    `rubric_status`, `rubric_refused` and `strongreject_score`; `utility_score` (1-10, answers
    to utility benchmarks).
    """

    table: pa.Table
    keyword_sets: tuple[str, ...]
    _codes: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    def __len__(self) -> int:
        return self.table.num_rows

    def column(self, name: str) -> pa.ChunkedArray:
        """A column by name; a label or verdict field the table lacks reads as all null."""
        if name in self.table.column_names:
            return self.table.column(name)
        kind = VERDICT_FIELDS.get(name, pa.int64() if name in _INT_LABELS else pa.string())
        return pa.chunked_array([pa.nulls(len(self), kind)])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The rows in the report's dictionary form (see `from_dicts`), one at a time: for
        small tables and tests."""
        verdicts = [name for name in VERDICT_FIELDS if name != "generation_key"]
        for row in self.table.to_pylist():
            yield {
                **{name: row.get(name) for name in (*LABELS, "generation_key")},
                "keyword_refused": {s: row.get(KEYWORD_PREFIX + s) for s in self.keyword_sets},
                **{name: row.get(name) for name in verdicts},
            }

    def codes(self, *names: str) -> np.ndarray:
        """A dense integer per distinct value of the columns `names` (null is a value), one
        per row; computed once per set of names."""
        key = "\0".join(names)
        found = self._codes.get(key)
        if found is None:
            found = self._codes[key] = (
                _codes(self.column(names[0]))
                if len(names) == 1
                else combined([self.codes(name) for name in names], len(self))
            )
        return found

    def keyword(self, name: str) -> pa.ChunkedArray:
        """Whether each answer refused by the phrase set `name` (null: not judged by it)."""
        return self.column(KEYWORD_PREFIX + name)

    @classmethod
    def from_dicts(
        cls, rows: Iterable[Mapping[str, Any]], keyword_sets: Sequence[str] | None = None
    ) -> ScoredRows:
        """Rows in the report's dictionary form (`keyword_refused` maps each set's name to a
        flag); `keyword_sets` defaults to the sets the rows name, in order of appearance."""
        rows = list(rows)
        names: dict[str, None] = dict.fromkeys(keyword_sets or ())
        if keyword_sets is None:
            for row in rows:
                names.update(dict.fromkeys(row.get("keyword_refused") or {}))
        columns: dict[str, pa.Array] = {
            name: _label_array(name, [row.get(name) for row in rows]) for name in LABELS
        }
        columns["generation_key"] = pa.array(
            [row.get("generation_key") for row in rows], pa.string()
        )
        columns["answered"] = pa.array([bool(row.get("answered", True)) for row in rows])
        for name in names:
            flags = [(row.get("keyword_refused") or {}).get(name) for row in rows]
            columns[KEYWORD_PREFIX + name] = _flags(flags)
        columns["degenerate"] = _flags([row.get("degenerate") for row in rows])
        columns["rubric_score"] = pa.array([row.get("rubric_score") for row in rows], pa.float64())
        columns["rubric_status"] = pa.array([row.get("rubric_status") for row in rows], pa.string())
        columns["rubric_refused"] = _flags([row.get("rubric_refused") for row in rows])
        columns["strongreject_score"] = pa.array(
            [row.get("strongreject_score") for row in rows], pa.float64()
        )
        columns["utility_score"] = pa.array(
            [row.get("utility_score") for row in rows], pa.float64()
        )
        return cls(pa.table(columns), tuple(names))


def _codes(column: pa.ChunkedArray) -> np.ndarray:
    """A dense integer per distinct value of a column (null is a value), one per row."""
    array = column.combine_chunks()
    if pa.types.is_null(array.type):
        return np.zeros(len(array), dtype=np.int64)
    indices = pc.dictionary_encode(array, null_encoding="encode").indices
    return np.asarray(indices.to_numpy(zero_copy_only=False), dtype=np.int64)


def combined(parts: Sequence[np.ndarray], rows: int) -> np.ndarray:
    """One dense code per distinct combination of the parts' codes (small integers)."""
    out = np.zeros(rows, dtype=np.int64)
    span = 1
    for part in parts:
        width = int(part.max(initial=0)) + 1
        if span * width >= 1 << 62:  # renumber densely before the product could overflow
            _, out = np.unique(out, return_inverse=True)
            out, span = out.reshape(-1), int(out.max(initial=0)) + 1
        out = out * width + part
        span *= width
    _, out = np.unique(out, return_inverse=True)
    return out.reshape(-1)


def as_scored(
    rows: ScoredRows | Iterable[Mapping[str, Any]], keyword_sets: Sequence[str] | None = None
) -> ScoredRows:
    """Scored rows as they are, or built from the report's dictionary form."""
    return rows if isinstance(rows, ScoredRows) else ScoredRows.from_dicts(rows, keyword_sets)


def _label_array(name: str, values: list[Any]) -> pa.Array:
    array = pa.array(values)
    return _nulls(name, len(array)) if pa.types.is_null(array.type) else array


def _flags(values: list[Any]) -> pa.Array:
    return pa.array([None if v is None else bool(v) for v in values], pa.bool_())


def scored_rows(
    store: RunStore,
    rubric: Mapping[str, Any] | None,
    keyword_sets: Mapping[str, Mapping[str, Any]],
    units: pa.Table | Iterable[Mapping[str, Any]] | None = None,
) -> ScoredRows:
    """One row per planned unit with its verdicts; `units` None reports every stored answer.

    `rubric` is the rubric judge's verdict identity (None: no rubric columns); it is passed
    in, not rebuilt from the spec, because rebuilding a `module:object` rubric's identity
    imports that module (see RunStore.freeze_plan). `keyword_sets` maps each phrase set's name
    to its verdict identity. `units` holds `generation_key` and the LABELS (a table, or
    mappings); a planned unit with no stored answer is a row with `answered` False and no
    verdicts.
    """
    verdicts = store.judgments.latest(_VERDICT_COLUMNS)
    identities = {f"{KEYWORD_PREFIX}{name}": identity for name, identity in keyword_sets.items()}
    if rubric is not None:
        identities["rubric"] = rubric
    judged = set(verdicts.column("judge").unique().to_pylist())
    # Only a judge with stored verdicts can have verdicts to find (each verdict row names the
    # judge whose identity its key hashes): no keys are computed for the others.
    hashed = {
        name: identity
        for name, identity in identities.items()
        if "judge" not in identity or identity["judge"] in judged
    }
    answers = _answers(store, hashed, with_labels=units is None)
    planned = _unit_table(units, answers)
    at_answer = pc.index_in(_one(planned, "generation_key"), value_set=_one(answers, "key"))
    rows = planned.num_rows
    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        name: planned.column(name) if name in planned.column_names else _nulls(name, rows)
        for name in LABELS
    }
    columns["generation_key"] = planned.column("generation_key")
    columns["answered"] = pc.is_valid(at_answer)
    found = {
        name: _verdict_at(answers, name, verdicts, at_answer) if name in hashed else None
        for name in identities
    }
    columns.update(_keyword_columns(keyword_sets, found, verdicts, rows))
    columns.update(_rubric_columns(found.get("rubric"), verdicts, rows))
    if rubric is not None:
        from ftsafe_ray.report.utility import utility_scores

        columns["utility_score"] = utility_scores(store, rubric, columns["generation_key"])
    return ScoredRows(pa.table(columns).combine_chunks(), tuple(keyword_sets))


def _unit_table(
    units: pa.Table | Iterable[Mapping[str, Any]] | None, answers: pa.Table
) -> pa.Table:
    """The units to report as a table: the plan's, or (None) every stored answer's."""
    if units is None:
        return answers.rename_columns(
            ["generation_key" if c == "key" else c for c in answers.column_names]
        )
    return units if isinstance(units, pa.Table) else pa.Table.from_pylist(list(units))


def _answers(
    store: RunStore, identities: Mapping[str, Mapping[str, Any]], with_labels: bool
) -> pa.Table:
    """Every stored answer (error rows, which have none, left out) with the key of its verdict
    under each judge identity (a column named as in `identities`); with its stored labels and
    in key order when `with_labels`. Answer texts are read a chunk at a time and dropped once
    hashed."""
    labels = _STORED_LABELS if with_labels else []

    def verdict_keys(chunk: pa.Table) -> pa.Table:
        hashed = verdict_key_columns(
            list(identities.values()), chunk.column("prompt"), chunk.column("response")
        )
        kept = {name: chunk.column(name) for name in ["key", "status", *labels]}
        return pa.table({**kept, **dict(zip(identities, hashed, strict=True))})

    table = store.generations.latest_mapped(["prompt", "response", *labels], verdict_keys)
    table = table.filter(pc.fill_null(pc.not_equal(table.column("status"), "error"), True))
    # Every stored answer is reported in key order (the order `RunStore.rows` gives).
    return table.take(pc.sort_indices(table.column("key"))) if with_labels else table


def _verdict_at(answers: pa.Table, name: str, verdicts: pa.Table, at_answer: pa.Array) -> pa.Array:
    """For each unit, the row of `verdicts` holding its answer's verdict under the judge
    identity `name` (null: no answer, or no verdict)."""
    at_verdict = pc.index_in(_one(answers, name), value_set=_one(verdicts, "key"))
    return at_verdict.take(at_answer)


def _keyword_columns(
    keyword_sets: Mapping[str, Any],
    found: Mapping[str, pa.Array | None],
    verdicts: pa.Table,
    rows: int,
) -> dict[str, pa.Array]:
    """`keyword:<set>` per set, and `degenerate`: the flag stored with the last set's verdict
    found (each keyword verdict carries it)."""
    columns: dict[str, pa.Array] = {}
    degenerate: pa.Array = pa.nulls(rows, pa.bool_())
    for name in keyword_sets:
        at = found[KEYWORD_PREFIX + name]
        if at is None:
            columns[KEYWORD_PREFIX + name] = pa.nulls(rows, pa.bool_())
            continue
        columns[KEYWORD_PREFIX + name] = _one(verdicts, "refused").take(at)
        degenerate = pc.if_else(pc.is_valid(at), _one(verdicts, "degenerate").take(at), degenerate)
    columns["degenerate"] = degenerate
    return columns


def _rubric_columns(at: pa.Array | None, verdicts: pa.Table, rows: int) -> dict[str, pa.Array]:
    """The rubric verdict's fields; its score only when it was judged ok."""
    if at is None:
        return {name: pa.nulls(rows, VERDICT_FIELDS[name]) for name in _RUBRIC_FIELDS}
    status = _one(verdicts, "status").take(at)
    score = _one(verdicts, "score").take(at).cast(pa.float64())
    return {
        "rubric_score": pc.if_else(pc.equal(status, "ok"), score, pa.scalar(None, pa.float64())),
        "rubric_status": status,
        "rubric_refused": _one(verdicts, "refused").take(at),
        "strongreject_score": _one(verdicts, "strongreject_score").take(at),
    }


_RUBRIC_FIELDS = ("rubric_score", "rubric_status", "rubric_refused", "strongreject_score")


def _one(table: pa.Table, name: str) -> pa.Array:
    """A column as one contiguous array."""
    return table.column(name).combine_chunks()


def _nulls(name: str, rows: int) -> pa.Array:
    return pa.nulls(rows, pa.int64() if name in _INT_LABELS else pa.string())
