"""Utility ratings for the report: each planned answer's 1-10 helpfulness verdict.

A utility verdict's key also hashes the item's reference answer, which only the plan holds, so
the report finds verdicts through the answers instead: a verdict row names the answer it was
paid for, and every answer with the same prompt and text (another target that answered alike,
whose verdict was shared) gets the same rating.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ftsafe_ray.judge.utility import UTILITY_KIND, UTILITY_VERSION
from ftsafe_ray.report.metrics import GroupSummary
from ftsafe_ray.store import RunStore

_COLUMNS = ["generation_key", "judge_model", "judge_version", "status", "score", "created_at"]


def utility_scores(
    store: RunStore, rubric: Mapping[str, Any], generation_keys: pa.Array | pa.ChunkedArray
) -> pa.Array:
    """The utility score of each generation key's answer (null where it has none); when an
    answer was rated more than once (a changed reference answer), the latest rating counts."""
    verdicts = store.judgments.latest(_COLUMNS)
    keep = pc.and_(
        pc.and_(
            pc.equal(verdicts.column("judge_version"), UTILITY_VERSION),
            pc.equal(verdicts.column("judge_model"), rubric.get("model")),
        ),
        pc.equal(verdicts.column("status"), "ok"),
    )
    rated = verdicts.filter(pc.fill_null(keep, False))
    if rated.num_rows == 0:
        return pa.nulls(len(generation_keys), pa.float64())
    rated = rated.take(pc.sort_indices(rated, [("created_at", "descending")]))
    answers = store.generations.latest(["key", "prompt", "response"])
    content = pc.binary_join_element_wise(
        answers.column("prompt"), answers.column("response"), "\x00"
    ).combine_chunks()
    answer_keys = answers.column("key").combine_chunks()

    def content_of(keys: pa.Array | pa.ChunkedArray) -> pa.Array:
        return content.take(pc.index_in(keys, value_set=answer_keys))

    # index_in finds the first match: the latest rating of each answer text.
    rated_content = content_of(rated.column("generation_key"))
    at = pc.index_in(content_of(generation_keys), value_set=rated_content)
    return rated.column("score").combine_chunks().cast(pa.float64()).take(at)


def with_arm_utility(summaries: Sequence[GroupSummary]) -> list[GroupSummary]:
    """The main table's rows, each harmful or benign row carrying its arm's utility: the
    rating, CI and paired Δ of the same model, arm, dataset, size, seed and condition on the
    campaign's utility benchmark, so one row reads "harm +x, utility −y". Copied only where
    exactly one utility benchmark row matches (several utility benchmarks stay apart)."""
    identity = ("model", "arm", "dataset", "size", "seed", "condition")
    found: dict[tuple[Any, ...], list[GroupSummary]] = {}
    for s in summaries:
        if s.benchmark_kind == UTILITY_KIND:
            found.setdefault(tuple(getattr(s, name) for name in identity), []).append(s)
    out = []
    for s in summaries:
        match = found.get(tuple(getattr(s, name) for name in identity), [])
        if s.benchmark_kind == UTILITY_KIND or len(match) != 1:
            out.append(s)
            continue
        [utility] = match
        out.append(
            replace(
                s,
                n_utility=utility.n_utility,
                utility_score=utility.utility_score,
                utility_score_ci=utility.utility_score_ci,
                delta_utility_score=utility.delta_utility_score,
                delta_utility_score_ci=utility.delta_utility_score_ci,
            )
        )
    return out
