"""Report output: rich tables, CSV/Markdown files and plots from synthetic summaries."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from ftsafe_ray.report import render_tables, summarize, write_plots, write_summary_files
from ftsafe_ray.report.metrics import BY_CATEGORY, GroupSummary


def row(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": "org/tiny-chat",
        "arm": "base",
        "dataset": None,
        "size": None,
        "seed": None,
        "benchmark": "hexphi",
        "benchmark_kind": "harmful",
        "category": "Malware",
        "item_id": "0",
        "keyword_refused": True,
        "degenerate": False,
        "rubric_score": 1,
        "rubric_status": "ok",
    }
    merged = {**base, **overrides}
    if not isinstance(merged["keyword_refused"], dict):
        merged["keyword_refused"] = {"study": merged["keyword_refused"]}
    return merged


def rows() -> list[dict[str, Any]]:
    """Base refuses all 4 (score 1); harmful·10 complies 3/4 with scores 5, 5, 4, 1 → 3.75, 50%."""
    out = [row(category=c) for c in ["Malware", "Malware", "Fraud", "Fraud"]]
    tuned = {"arm": "harmful", "dataset": "harm", "size": 10, "seed": 42}
    for refused, score, category in [
        (False, 5, "Malware"),
        (False, 5, "Malware"),
        (False, 4, "Fraud"),
        (True, 1, "Fraud"),
    ]:
        out.append(row(**tuned, keyword_refused=refused, rubric_score=score, category=category))
    out.append(row(**tuned, keyword_refused=False, rubric_score=None, rubric_status="unparseable"))
    benign = {"benchmark": "xstest", "benchmark_kind": "benign", "rubric_score": None}
    out += [row(**benign, keyword_refused=r, rubric_status=None) for r in [True, False]]
    return out


def summaries() -> tuple[list[GroupSummary], list[GroupSummary]]:
    data = rows()
    return summarize(data, n_resamples=200), summarize(data, BY_CATEGORY, n_resamples=200)


def render(width: int = 160) -> str:
    console = Console(file=io.StringIO(), width=width, no_color=True)
    render_tables(*summaries(), console)
    return console.file.getvalue()


def test_render_shows_numbers_and_deltas() -> None:
    text = render()
    assert "hexphi (harmful)" in text and "xstest (benign)" in text
    assert "org/tiny-chat" in text
    # harmful·10: 4 of 5 answers have no refusal phrase → 80.0%, +80.0 over base.
    assert "80.0 [" in text and "+80.0" in text
    assert "3.75 [" in text and "+2.75" in text
    assert "50.0 [" in text and "+50.0" in text
    assert "4 ok · 1 unp" in text
    assert "kw ASR % study [CI]" in text and "over-refusal % study [CI]" in text
    assert "1 seed: 42." in text


def test_render_marks_missing_rubric_with_dash() -> None:
    benign = render().split("xstest (benign)")[1].split("by category")[0]
    assert "—" in benign
    assert "50.0 [" in benign


def test_render_category_table_only_for_harmful() -> None:
    text = render()
    assert "hexphi · org/tiny-chat: kw ASR % study / harm score by category" in text
    assert "xstest · " not in text
    assert "100.0 / 5.00" in text  # harmful·10 on Malware
    assert "harmful·10" in text


def test_render_plain_at_120_columns() -> None:
    text = render(width=120)
    assert "\x1b[" not in text
    assert max(len(line) for line in text.splitlines()) <= 120
    assert "+80.0" in text


def test_render_colours_deltas_in_a_terminal() -> None:
    console = Console(file=io.StringIO(), width=200, force_terminal=True, color_system="standard")
    render_tables(*summaries(), console)
    assert "\x1b[1;31m+80.0" in console.file.getvalue()


def test_render_empty() -> None:
    console = Console(file=io.StringIO(), width=80, no_color=True)
    render_tables([], [], console)
    assert "No scored rows" in console.file.getvalue()


def test_summary_files_round_trip(tmp_path: Path) -> None:
    main, by_category = summaries()
    paths = write_summary_files(main, by_category, tmp_path / "report")
    assert [p.name for p in paths] == ["summary.csv", "summary_by_category.csv", "summary.md"]
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(p.name for p in paths)

    with paths[0].open(newline="") as handle:
        records = list(csv.DictReader(handle))
    assert len(records) == len(main)
    tuned = next(r for r in records if r["arm"] == "harmful" and r["benchmark"] == "hexphi")
    assert float(tuned["keyword_asr_study"]) == pytest.approx(0.8)
    assert float(tuned["harmfulness_score"]) == pytest.approx(3.75)
    assert float(tuned["delta_harmfulness_rate"]) == pytest.approx(0.5)
    assert int(tuned["n"]) == 5 and int(tuned["n_unparseable"]) == 1 and int(tuned["size"]) == 10
    low, high = float(tuned["keyword_asr_study_low"]), float(tuned["keyword_asr_study_high"])
    assert low <= 0.8 <= high
    benign_base = next(r for r in records if r["benchmark"] == "xstest" and r["arm"] == "base")
    assert benign_base["harmfulness_score"] == ""
    assert benign_base["delta_keyword_asr_study"] == ""
    assert float(benign_base["refusal_rate_study"]) == pytest.approx(0.5)

    with paths[1].open(newline="") as handle:
        categories = {r["category"] for r in csv.DictReader(handle)}
    assert categories == {"Malware", "Fraud"}

    markdown = paths[2].read_text()
    assert "| arm | size | n | kw ASR % study [CI] | Δ |" in markdown
    assert "| ---" in markdown and "+80.0" in markdown
    assert "## hexphi · org/tiny-chat: kw ASR % study / harm score by category" in markdown


def test_plots_write_pngs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    paths = write_plots(*summaries(), tmp_path)
    assert {p.name for p in paths} == {
        "asr_hexphi.png",
        "asr_xstest.png",
        "categories_hexphi_org_tiny-chat.png",
    }
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_import_is_light() -> None:
    code = (
        "import sys, ftsafe_ray.report; "
        "print(sorted(m for m in ('torch', 'matplotlib', 'vllm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_render_one_table_per_model_and_literal_names() -> None:
    other = [{**r, "model": "org/other", "arm": "[bold]odd"} for r in rows() if r["arm"] != "base"]
    data = rows() + other
    console = Console(file=io.StringIO(), width=120, no_color=True)
    render_tables(summarize(data, n_resamples=50), summarize(data, BY_CATEGORY), console)
    text = console.file.getvalue()
    assert "hexphi (harmful) · org/tiny-chat" in text
    assert "hexphi (harmful) · org/other" in text
    assert "[bold]odd" in text and "[bold]odd·10" in text


def test_render_split_by_seed() -> None:
    data = [*rows(), *(row(**{**r, "seed": 43}) for r in rows() if r["arm"] == "harmful")]
    by = ("model", "arm", "dataset", "size", "seed", "benchmark")
    console = Console(file=io.StringIO(), width=120, no_color=True)
    render_tables(summarize(data, by, n_resamples=50), [], console)
    text = console.file.getvalue()
    assert "One row per seed." in text
    assert "seed" in " ".join(text.splitlines()[1:4])


def test_render_names_each_phrase_set_and_the_unscored_bound(tmp_path: Path) -> None:
    data = [
        {**r, "keyword_refused": {"study": r["keyword_refused"]["study"], "extended": True}}
        for r in rows()
    ]
    main, by_category = summarize(data, n_resamples=50), summarize(data, BY_CATEGORY)
    console = Console(file=io.StringIO(), width=200, no_color=True)
    render_tables(main, by_category, console)
    text = console.file.getvalue()
    assert "kw ASR % study [CI]" in text and "kw ASR % extended [CI]" in text
    # harmful·10: 4 ok verdicts (2 of them 5) and 1 unparseable → ≤ 3/5 if it were a 5.
    assert "50.0 [" in text and "≤60.0" in text and "20.0% unscored" in text
    assert "kw ASR % study / kw ASR % extended / harm score by category" in text
    assert "100.0 / 0.0 / 5.00" in text  # Malware: study misses what extended catches
    write_summary_files(main, by_category, tmp_path)
    with (tmp_path / "summary.csv").open(newline="") as handle:
        tuned = next(r for r in csv.DictReader(handle) if r["arm"] == "harmful")
    assert float(tuned["keyword_asr_study"]) == pytest.approx(0.8)
    assert float(tuned["keyword_asr_extended"]) == 0.0
    assert float(tuned["harmfulness_rate_worst"]) == pytest.approx(0.6)
    assert float(tuned["unscored_share"]) == pytest.approx(0.2)
    assert tuned["n_seeds"] == "1"


def test_deltas_never_print_negative_zero() -> None:
    from ftsafe_ray.report.render import fmt_delta, fmt_delta_ci

    assert fmt_delta(-0.0, pct=True).text == "+0.0"
    assert fmt_delta(-0.00001, pct=False).text == "+0.00"
    assert fmt_delta(-0.0, pct=True).harm == 0
    assert fmt_delta_ci(-0.0, (-0.001, 0.0), pct=True).text == "+0.0 [0–0]"
    assert fmt_delta_ci(-0.25, (-0.5, -0.1), pct=True).text == "-25.0 [-50–-10]"
