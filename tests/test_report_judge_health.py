"""Judge health in the report: status counts, Cohen's kappa and the confusion table."""

from __future__ import annotations

import csv

import pytest
from rich.console import Console

from ftsafe_ray.report.judge_health import (
    cohens_kappa,
    judge_agreement,
    render_judge_tables,
    status_counts,
    write_judge_files,
)


def row(model="m", category="a", keyword=True, score=1, status="ok", refused=None):
    return {
        "model": model, "dataset": None, "benchmark": "b", "category": category,
        "keyword_refused": {"study": keyword}, "rubric_score": score, "rubric_status": status,
        "rubric_refused": refused,
    }  # fmt: skip


def test_kappa_by_hand():
    # 2x2 table: both yes 20, a only 5, b only 10, both no 15 (n = 50).
    a = [True] * 25 + [False] * 25
    b = [True] * 20 + [False] * 5 + [True] * 10 + [False] * 15
    # p_o = 0.7, p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5 → kappa 0.4
    assert cohens_kappa(a, b) == pytest.approx(0.4)
    assert cohens_kappa([True, False], [True, False]) == pytest.approx(1.0)
    assert cohens_kappa([True, False], [False, True]) == pytest.approx(-1.0)
    assert cohens_kappa([True, True], [True, True]) == 1.0
    assert cohens_kappa([], []) is None
    with pytest.raises(ValueError):
        cohens_kappa([True], [])


def test_agreement_confusion_counts_only_rows_both_judges_rated():
    rows = [
        row(keyword=True, score=1),  # both refused
        row(keyword=True, score=5),  # keyword only
        row(keyword=False, score=2),  # rubric only
        row(keyword=False, score=4),  # neither
        row(keyword=False, score=3),  # neither
        row(keyword=False, score=None, status="unparseable"),  # skipped
        row(keyword=None, score=5),  # skipped: no keyword verdict
        row(model="sr", keyword=True, score=None, refused=True),  # StrongREJECT-style flag
    ]
    by_model = {a.model: a for a in judge_agreement(rows, ["study"])}
    assert {a.keyword_set for a in by_model.values()} == {"study"}
    m = by_model["m"]
    assert (m.n, m.both_refused, m.keyword_only_refused, m.rubric_only_refused) == (5, 1, 1, 1)
    assert m.neither_refused == 2 and m.observed_agreement == pytest.approx(0.6)
    assert m.kappa == pytest.approx(cohens_kappa([1, 1, 0, 0, 0], [1, 0, 1, 0, 0]))
    assert by_model["sr"].both_refused == 1


def test_status_counts_per_group_and_files(tmp_path):
    rows = [
        row(category="a"),
        row(category="a", status="error", score=None),
        row(category="b", status="judge_refused", score=None),
        row(category="b", status=None, score=None),
    ]
    counts = {c["category"]: c for c in status_counts(rows)}
    assert (counts["a"]["ok"], counts["a"]["error"]) == (1, 1)
    assert (counts["b"]["judge_refused"], counts["b"]["unjudged"]) == (1, 1)
    health, agreement = write_judge_files(rows, tmp_path, ["study"])
    lines = list(csv.DictReader(health.open()))
    assert [(r["category"], r["error"]) for r in lines] == [("a", "1"), ("b", "0")]
    [model] = list(csv.DictReader(agreement.open()))
    assert model["keyword_set"] == "study" and model["model"] == "m" and model["n"] == "1"

    console = Console(width=120, record=True)
    render_judge_tables(rows, console, ["study"])
    text = console.export_text()
    assert "judge health" in text and "κ" in text


def test_strongreject_scores_get_a_table_a_ci_and_a_delta(tmp_path):
    from ftsafe_ray.report.strongreject import strongreject_summary

    def sr(arm, score, refused=False):
        return {**row(score=None, refused=refused), "arm": arm, "size": None,
                "strongreject_score": score}  # fmt: skip

    rows = [sr("base", 0.0, True), sr("base", 0.25), sr("shift", 1.0), sr("shift", 0.5)]
    rows.append(row(score=3))  # a hexphi verdict: not a StrongREJECT row
    base, shift = strongreject_summary(rows, n_resamples=200)
    assert (base["arm"], base["n"], base["strongreject"], base["refused"]) == (
        "base",
        2,
        0.125,
        0.5,
    )
    assert shift["strongreject"] == 0.75 and shift["delta"] == pytest.approx(0.625)
    assert shift["ci_low"] <= 0.75 <= shift["ci_high"]
    files = write_judge_files(rows, tmp_path, ["study"])
    assert [f.name for f in files][-1] == "strongreject.csv"
    console = Console(width=140, record=True)
    render_judge_tables(rows, console, ["study"])
    assert "StrongREJECT" in console.export_text()
    assert strongreject_summary([row()]) == []


def test_agreement_is_per_keyword_set():
    rows = [
        {**row(score=1), "keyword_refused": {"study": False, "extended": True}},
        {**row(score=1), "keyword_refused": {"study": False, "extended": True}},
        {**row(score=5), "keyword_refused": {"study": False, "extended": False}},
    ]
    study, extended = judge_agreement(rows, ["study", "extended"])
    assert (study.keyword_set, study.rubric_only_refused, study.neither_refused) == ("study", 2, 1)
    assert (extended.keyword_set, extended.both_refused, extended.kappa) == ("extended", 2, 1.0)
