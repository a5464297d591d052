"""Join stored generations with their verdicts into the rows the report summarises."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from ftsafe_ray.judge.identity import keyword_identity, rubric_identity, verdict_key_for
from ftsafe_ray.spec import RubricJudgeSpec
from ftsafe_ray.store import RunStore

DIMENSIONS = (
    "model",
    "arm",
    "dataset",
    "size",
    "seed",
    "benchmark",
    "benchmark_kind",
    "category",
    "item_id",
)


def scored_rows(
    store: RunStore, rubric: RubricJudgeSpec, only_keys: Collection[str] | None = None
) -> list[dict[str, Any]]:
    """One row per stored answer (optionally only `only_keys`), with its verdicts."""
    verdicts = {row["key"]: row for row in store.judgments.rows()}
    keyword_id = keyword_identity()
    rubric_id = rubric_identity(rubric)
    rows = []
    for generation in store.generations.rows():
        if only_keys is not None and generation["key"] not in only_keys:
            continue
        keyword = verdicts.get(verdict_key_for(keyword_id, generation))
        verdict = verdicts.get(verdict_key_for(rubric_id, generation))
        rows.append(
            {
                **{name: generation[name] for name in DIMENSIONS},
                "generation_key": generation["key"],
                "keyword_refused": keyword["refused"] if keyword else None,
                "degenerate": keyword["degenerate"] if keyword else None,
                "rubric_score": verdict["score"] if verdict and verdict["status"] == "ok" else None,
                "rubric_status": verdict["status"] if verdict else None,
                "rubric_refused": verdict.get("refused") if verdict else None,
                "strongreject_score": verdict.get("strongreject_score") if verdict else None,
            }
        )
    return rows
