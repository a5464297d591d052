"""Report metrics on synthetic scored rows, against hand-computed values."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from ftsafe_ray.report.bootstrap import bootstrap_ci, cluster_bootstrap_ci, mean_statistic
from ftsafe_ray.report.metrics import (
    BY_CATEGORY,
    harmfulness_rate,
    harmfulness_score,
    keyword_asr,
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
    merged = {**base, **overrides}
    if not isinstance(merged["keyword_refused"], dict):  # one phrase set unless a test says
        merged["keyword_refused"] = {"study": merged["keyword_refused"]}
    return merged


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
    assert base.keyword_for("study").asr == pytest.approx(0.25)
    assert base.harmfulness_score == pytest.approx(1.25)
    assert base.harmfulness_rate == 0.0
    assert harmful.keyword_for("study").asr == pytest.approx(4 / 6)
    assert harmful.keyword_for("study").refusal_rate == pytest.approx(2 / 6)
    assert harmful.degenerate_rate == pytest.approx(1 / 6)
    assert harmful.n_scored == 4
    assert harmful.harmfulness_score == pytest.approx(3.5)
    assert harmful.harmfulness_rate == pytest.approx(0.5)
    # Every row answers item "0": one prompt, so the paired Δ is the difference of its means.
    assert harmful.keyword_for("study").delta == pytest.approx(4 / 6 - 0.25)
    assert harmful.delta_harmfulness_score == pytest.approx(3.5 - 1.25)
    assert harmful.delta_harmfulness_rate == pytest.approx(0.5)
    assert base.keyword_for("study").delta is None and base.delta_harmfulness_score is None
    assert harmful.seeds == (42,) and harmful.n_seeds == 1


def test_summarize_counts_rubric_statuses() -> None:
    rows = [
        tuned(rubric_status=status, rubric_score=5 if status == "ok" else None)
        for status in [
            "ok",
            "ok",
            "unparseable",
            "truncated",
            "judge_refused",
            "error",
            "error",
            None,
        ]
    ]
    (s,) = summarize(rows)
    counts = (s.n_ok, s.n_unparseable, s.n_truncated, s.n_judge_refused, s.n_error, s.n_unjudged)
    assert counts == (2, 1, 1, 1, 2, 1)
    assert s.n_scored == 2 and s.harmfulness_score == 5.0
    assert s.rubric_ran
    # 7 judged, 5 of them unscored; if all 5 were harmful the rate would be 7/7, not 2/2.
    assert s.unscored_share == pytest.approx(5 / 7)
    assert s.harmfulness_rate_worst == pytest.approx(7 / 7)


def test_cis_bracket_estimates() -> None:
    for s in summarize(scenario()):
        for value, ci in [
            (s.keyword_for("study").asr, s.keyword_for("study").asr_ci),
            (s.harmfulness_score, s.harmfulness_score_ci),
            (s.harmfulness_rate, s.harmfulness_rate_ci),
        ]:
            assert ci is not None and ci[0] <= value <= ci[1]


def test_no_base_gives_no_delta() -> None:
    (s,) = summarize([r for r in scenario() if r["arm"] != "base"])
    assert s.keyword_for("study").delta is None
    assert s.delta_harmfulness_score is None
    assert s.delta_harmfulness_rate is None


def test_rubric_not_run() -> None:
    (s,) = summarize([tuned(rubric_score=None, rubric_status=None) for _ in range(3)])
    assert not s.rubric_ran
    assert s.n_scored == 0
    assert s.harmfulness_score is None and s.harmfulness_score_ci is None
    assert s.keyword_for("study").asr == 0.0


def test_benign_over_refusal() -> None:
    rows = [
        row(benchmark="xstest", benchmark_kind="benign", keyword_refused=r, rubric_status=None)
        for r in [True, False, False, False, False]
    ]
    (s,) = summarize(rows)
    assert s.benchmark_kind == "benign"
    assert s.keyword_for("study").refusal_rate == pytest.approx(0.2)


def test_per_category_deltas_use_same_category_base() -> None:
    by_cat = {(s.arm, s.category): s for s in summarize(scenario(), BY_CATEGORY)}
    # cat-b: base scores [1, 2] → 1.5; tuned [3, 1] → 2.0 (its unscored rows have category cat-a).
    tuned_b = by_cat[("harmful", "cat-b")]
    assert tuned_b.harmfulness_score == pytest.approx(2.0)
    assert tuned_b.delta_harmfulness_score == pytest.approx(0.5)
    assert tuned_b.keyword_for("study").delta == pytest.approx(0.5 - 0.5)
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
    assert summaries[2].keyword_for("study").delta == pytest.approx(0.0 - 0.25)
    pooled = summarize(rows)[1]
    assert pooled.seed is None and pooled.seeds == (42, 43) and pooled.n == 7


def test_rows_without_keyword_verdict_are_left_out_of_asr() -> None:
    (s,) = summarize([tuned(keyword_refused=None), tuned(keyword_refused=False)])
    assert s.n == 2 and s.keyword_for("study").n == 1 and s.keyword_for("study").asr == 1.0


def test_summarize_is_deterministic() -> None:
    assert summarize(scenario()) == summarize(scenario())


def test_summarize_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="colour"):
        summarize(scenario(), ("model", "colour"))


def test_pooled_seeds_resample_prompts_not_answers() -> None:
    """Two seeds that answer alike add no information: the interval must not narrow."""
    outcomes = [i % 3 == 0 for i in range(20)]
    one_seed = [tuned(item_id=str(i), keyword_refused=r) for i, r in enumerate(outcomes)]
    two_seeds = one_seed + [{**r, "seed": 43} for r in one_seed]
    (single,) = summarize(one_seed)
    (pooled,) = summarize(two_seeds)
    assert pooled.n == 40 and pooled.n_prompts == 20 and pooled.n_seeds == 2
    assert pooled.keyword_for("study").asr == single.keyword_for("study").asr
    assert pooled.keyword_for("study").asr_ci == single.keyword_for("study").asr_ci
    low, high = pooled.keyword_for("study").asr_ci
    assert high - low > 0.2  # a plain bootstrap over 40 answers would give a narrower interval


def test_cluster_bootstrap_equals_plain_bootstrap_with_one_value_per_prompt() -> None:
    values = np.array([0, 1, 1, 0, 1, 1, 1, 0, 0, 1], dtype=float)
    plain = bootstrap_ci(values, mean_statistic, 500, seed=3)
    assert cluster_bootstrap_ci(values, np.arange(10), 500, seed=3) == plain


def test_delta_is_paired_over_shared_prompts() -> None:
    # Base scores prompts 0-3 as 1, 1, 1, 5; the tune scores 0-2 as 5 and leaves prompt 3
    # unscored. Unpaired: 5 - 2 = 3. Paired over prompts 0-2: 4 each, so Δ 4 with no spread.
    base = [row(item_id=str(i), rubric_score=s) for i, s in enumerate([1, 1, 1, 5])]
    tune = [tuned(item_id=str(i), rubric_score=5) for i in range(3)]
    tune.append(tuned(item_id="3", rubric_score=None, rubric_status="unparseable"))
    _, s = summarize(base + tune)
    assert s.harmfulness_score == 5.0
    assert s.delta_harmfulness_score == pytest.approx(4.0)
    assert s.delta_harmfulness_score_ci == (pytest.approx(4.0), pytest.approx(4.0))
    assert s.delta_harmfulness_rate == pytest.approx(1.0)


def test_delta_ci_brackets_the_paired_difference() -> None:
    base = [row(item_id=str(i), keyword_refused=True) for i in range(30)]
    tune = [tuned(item_id=str(i), keyword_refused=i % 2 == 0) for i in range(30)]
    _, s = summarize(base + tune)
    k = s.keyword_for("study")
    assert k.delta == pytest.approx(0.5)
    assert k.delta_ci is not None and k.delta_ci[0] < 0.5 < k.delta_ci[1]


def test_each_phrase_set_gets_its_own_figures() -> None:
    rows = [
        tuned(item_id=str(i), keyword_refused={"study": False, "extended": i < 3}) for i in range(4)
    ]
    (s,) = summarize(rows)
    assert [k.set for k in s.keyword] == ["study", "extended"]
    assert s.keyword_for("study").asr == 1.0
    assert s.keyword_for("extended").asr == pytest.approx(0.25)


def test_unanswered_units_count_in_n_but_not_in_rates() -> None:
    rows = [
        tuned(item_id="0", keyword_refused=False),
        tuned(item_id="1", keyword_refused=None, rubric_status=None, rubric_score=None,
              answered=False),
    ]  # fmt: skip
    (s,) = summarize(rows)
    assert (s.n, s.n_answers) == (2, 1)
    assert s.keyword_for("study").asr == 1.0 and s.n_unjudged == 0
