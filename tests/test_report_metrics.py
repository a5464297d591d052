"""Report metrics on synthetic scored rows, against hand-computed values."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from ftsafe_ray.report.metrics import (
    BY_CATEGORY,
    bootstrap_ci,
    harmfulness_rate,
    harmfulness_score,
    keyword_asr,
    mean_statistic,
    refusal_rate,
    summarize,
)


def row(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": "m",
        "arm": "base",
        "dataset": None,
        "size": None,
        "seed": None,
        "benchmark": "hexphi",
        "benchmark_kind": "harmful",
        "category": "cat-a",
        "item_id": "0",
        "keyword_refused": True,
        "degenerate": False,
        "rubric_score": 1,
        "rubric_status": "ok",
    }
    return {**base, **overrides}


def tuned(**overrides: Any) -> dict[str, Any]:
    return row(**{"arm": "harmful", "dataset": "harm", "size": 10, "seed": 42, **overrides})


def scenario() -> list[dict[str, Any]]:
    """Base: ASR 1/4, score 1.25, rate 0. Tuned: ASR 4/6, scores [5, 5, 3, 1] → 3.5 and 0.5."""
    base = [
        row(keyword_refused=r, rubric_score=s, category=c)
        for r, s, c in [
            (True, 1, "cat-a"),
            (True, 1, "cat-a"),
            (True, 1, "cat-b"),
            (False, 2, "cat-b"),
        ]
    ]
    harmful = [
        tuned(keyword_refused=False, rubric_score=5, category="cat-a"),
        tuned(keyword_refused=False, rubric_score=5, category="cat-a", degenerate=True),
        tuned(keyword_refused=False, rubric_score=3, category="cat-b"),
        tuned(keyword_refused=True, rubric_score=1, category="cat-b"),
        tuned(keyword_refused=False, rubric_score=None, rubric_status="unparseable"),
        tuned(keyword_refused=True, rubric_score=None, rubric_status="judge_refused"),
    ]
    return base + harmful


def test_scores_by_hand() -> None:
    assert harmfulness_score([1, 5, 5, 3]) == pytest.approx(3.5)
    assert harmfulness_rate([1, 5, 5, 3]) == pytest.approx(0.5)
    assert keyword_asr([True, False, False, False]) == pytest.approx(0.75)
    assert refusal_rate([True, False, False, False]) == pytest.approx(0.25)


def test_empty_inputs_are_nan() -> None:
    for metric in (harmfulness_score, harmfulness_rate, keyword_asr, refusal_rate):
        assert math.isnan(metric([]))


def test_bootstrap_degenerate_cases() -> None:
    assert all(math.isnan(v) for v in bootstrap_ci([], mean_statistic))
    assert bootstrap_ci([3.0], mean_statistic) == (3.0, 3.0)
    assert bootstrap_ci([2.0, 2.0, 2.0], mean_statistic) == (2.0, 2.0)


def test_bootstrap_contains_estimate_and_narrows_with_n() -> None:
    rng = np.random.default_rng(1)
    small = rng.integers(1, 6, size=20).astype(float)
    large = rng.integers(1, 6, size=5000).astype(float)  # several resample blocks
    widths = []
    for values in (small, large):
        low, high = bootstrap_ci(values, mean_statistic)
        assert low <= values.mean() <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 8


def test_bootstrap_is_deterministic_per_seed() -> None:
    values = [1, 5, 5, 3, 2, 4, 1, 5]
    assert bootstrap_ci(values, mean_statistic, seed=7) == bootstrap_ci(
        values, mean_statistic, seed=7
    )
    assert bootstrap_ci(values, mean_statistic, seed=7) != bootstrap_ci(
        values, mean_statistic, seed=8
    )


def test_bootstrap_accepts_one_sample_statistics() -> None:
    values = [1.0, 2.0, 3.0, 10.0]
    low, high = bootstrap_ci(values, lambda x: float(np.median(x)), n_resamples=200)
    assert 1.0 <= low <= high <= 10.0


def test_bootstrap_rejects_bad_confidence() -> None:
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1, 2], mean_statistic, confidence=95)


def test_summarize_main_table_by_hand() -> None:
    base, harmful = summarize(scenario())
    assert (base.arm, harmful.arm) == ("base", "harmful")
    assert base.n == 4 and harmful.n == 6
    assert base.keyword_asr == pytest.approx(0.25)
    assert base.harmfulness_score == pytest.approx(1.25)
    assert base.harmfulness_rate == 0.0
    assert harmful.keyword_asr == pytest.approx(4 / 6)
    assert harmful.refusal_rate == pytest.approx(2 / 6)
    assert harmful.degenerate_rate == pytest.approx(1 / 6)
    assert harmful.n_scored == 4
    assert harmful.harmfulness_score == pytest.approx(3.5)
    assert harmful.harmfulness_rate == pytest.approx(0.5)
    assert harmful.delta_keyword_asr == pytest.approx(4 / 6 - 0.25)
    assert harmful.delta_harmfulness_score == pytest.approx(3.5 - 1.25)
    assert harmful.delta_harmfulness_rate == pytest.approx(0.5)
    assert base.delta_keyword_asr is None and base.delta_harmfulness_score is None
    assert harmful.seeds == (42,)
    assert harmful.over_refusal_rate is None


def test_summarize_counts_rubric_statuses() -> None:
    rows = [
        tuned(rubric_status=status, rubric_score=5 if status == "ok" else None)
        for status in ["ok", "ok", "unparseable", "judge_refused", "error", "error", None]
    ]
    (s,) = summarize(rows)
    assert (s.n_ok, s.n_unparseable, s.n_judge_refused, s.n_error, s.n_unjudged) == (2, 1, 1, 2, 1)
    assert s.n_scored == 2 and s.harmfulness_score == 5.0
    assert s.rubric_ran


def test_cis_bracket_estimates() -> None:
    for s in summarize(scenario()):
        for value, ci in [
            (s.keyword_asr, s.keyword_asr_ci),
            (s.harmfulness_score, s.harmfulness_score_ci),
            (s.harmfulness_rate, s.harmfulness_rate_ci),
        ]:
            assert ci is not None and ci[0] <= value <= ci[1]


def test_no_base_gives_no_delta() -> None:
    (s,) = summarize([r for r in scenario() if r["arm"] != "base"])
    assert s.delta_keyword_asr is None
    assert s.delta_harmfulness_score is None
    assert s.delta_harmfulness_rate is None


def test_rubric_not_run() -> None:
    (s,) = summarize([tuned(rubric_score=None, rubric_status=None) for _ in range(3)])
    assert not s.rubric_ran
    assert s.n_scored == 0
    assert s.harmfulness_score is None and s.harmfulness_score_ci is None
    assert s.keyword_asr == 0.0


def test_benign_over_refusal() -> None:
    rows = [
        row(benchmark="xstest", benchmark_kind="benign", keyword_refused=r, rubric_status=None)
        for r in [True, False, False, False, False]
    ]
    (s,) = summarize(rows)
    assert s.benchmark_kind == "benign"
    assert s.over_refusal_rate == pytest.approx(0.2)


def test_per_category_deltas_use_same_category_base() -> None:
    by_cat = {(s.arm, s.category): s for s in summarize(scenario(), BY_CATEGORY)}
    # cat-b: base scores [1, 2] → 1.5; tuned [3, 1] → 2.0 (its unscored rows have category cat-a).
    tuned_b = by_cat[("harmful", "cat-b")]
    assert tuned_b.harmfulness_score == pytest.approx(2.0)
    assert tuned_b.delta_harmfulness_score == pytest.approx(0.5)
    assert tuned_b.delta_keyword_asr == pytest.approx(0.5 - 0.5)
    assert by_cat[("harmful", "cat-a")].delta_harmfulness_rate == pytest.approx(2 / 2)


def test_split_by_seed_pools_base_across_seeds() -> None:
    rows = [*scenario(), tuned(seed=43, keyword_refused=True, rubric_score=1)]
    by = ("model", "arm", "dataset", "size", "seed", "benchmark")
    summaries = summarize(rows, by)
    assert [(s.arm, s.seed) for s in summaries] == [
        ("base", None),
        ("harmful", 42),
        ("harmful", 43),
    ]
    assert summaries[2].delta_keyword_asr == pytest.approx(0.0 - 0.25)
    pooled = summarize(rows)[1]
    assert pooled.seed is None and pooled.seeds == (42, 43) and pooled.n == 7


def test_rows_without_keyword_verdict_are_left_out_of_asr() -> None:
    (s,) = summarize([tuned(keyword_refused=None), tuned(keyword_refused=False)])
    assert s.n == 2 and s.n_keyword == 1 and s.keyword_asr == 1.0


def test_summarize_is_deterministic() -> None:
    assert summarize(scenario()) == summarize(scenario())


def test_summarize_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="colour"):
        summarize(scenario(), ("model", "colour"))
