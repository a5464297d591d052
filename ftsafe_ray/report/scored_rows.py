"""Join the plan's units with their stored answers and verdicts: the rows the report summarises.

Labels (model, arm, benchmark, kind, category…) come from the plan, joined to stored answers
by content key, so two units that share content are computed once and counted in each of
their groups, and renaming an arm relabels without recomputing anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ftsafe_ray.judge.identity import verdict_key_for
from ftsafe_ray.store import RunStore

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
# Stored answers carry no condition (it lives in the plan): an --all-history report pools them.
_ANSWER_COLUMNS = ["key", "prompt", "response", "status", *(x for x in LABELS if x != "condition")]


def scored_rows(
    store: RunStore,
    rubric: Mapping[str, Any] | None,
    keyword_sets: Mapping[str, Mapping[str, Any]],
    units: Iterable[Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One row per planned unit with its verdicts; `units` None reports every stored answer.

    `rubric` is the rubric judge's verdict identity (None: no rubric columns); it is passed
    in, not rebuilt from the spec, because rebuilding a `module:object` rubric's identity
    imports that module (see RunStore.freeze_plan). `keyword_sets` maps each phrase set's name
    to its verdict identity. A unit is a mapping of
    `generation_key` and the LABELS; a planned unit with no stored answer is a row with
    `answered` False and no verdicts.
    """
    answers = {
        row["key"]: row
        for row in store.generations.rows(_ANSWER_COLUMNS)
        if row["status"] != "error"  # a unit whose generator died has no answer to score
    }
    if units is None:
        units = [{"generation_key": key, **row} for key, row in answers.items()]
    verdicts = {
        row["key"]: row
        for row in store.judgments.rows(
            ["key", "status", "score", "refused", "degenerate", "strongreject_score"]
        )
    }
    rows = []
    for unit in units:
        answer = answers.get(unit["generation_key"])
        keyword = {name: None for name in keyword_sets}
        verdict: Mapping[str, Any] | None = None
        degenerate = None
        if answer is not None:
            for name, identity in keyword_sets.items():
                found = verdicts.get(verdict_key_for(identity, answer))
                if found is not None:
                    keyword[name] = found["refused"]
                    degenerate = found["degenerate"]
            if rubric is not None:
                verdict = verdicts.get(verdict_key_for(rubric, answer))
        rows.append(
            {
                **{name: unit.get(name) for name in LABELS},
                "generation_key": unit["generation_key"],
                "answered": answer is not None,
                "keyword_refused": keyword,
                "degenerate": degenerate,
                "rubric_score": verdict["score"] if verdict and verdict["status"] == "ok" else None,
                "rubric_status": verdict["status"] if verdict else None,
                "rubric_refused": verdict.get("refused") if verdict else None,
                "strongreject_score": verdict.get("strongreject_score") if verdict else None,
            }
        )
    return rows
