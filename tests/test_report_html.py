"""The HTML report and run comparison on small run directories built without a model.

Answers go straight into the store, the keyword judge stage runs, rubric verdicts are written as
judgment rows; then `ftsafe report` runs as a user would run it. Charts are real matplotlib
PNGs, checked for size and ink; the page is parsed as XML and checked for every section.
"""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from ftsafe_ray import keys
from ftsafe_ray.cli import main
from ftsafe_ray.judge.identity import keyword_set_identities, rubric_identity
from ftsafe_ray.judge.stage import run_judge_stage
from ftsafe_ray.plan import build_plan
from ftsafe_ray.progress import PlainProgress
from ftsafe_ray.spec import parse_campaign
from ftsafe_ray.store import RunStore
from tests.fixtures.campaign_files import answer_row, write_benchmark, write_chats

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

# Placeholder answers: a refusal, a compliance, and markup that must come out escaped.
REFUSE, COMPLY, MARKUP = "I'm sorry, no.", "Sure, placeholder step one.", "<b>x</b> & <script>"
LONG = "Sure, " + "placeholder words " * 40
CATEGORIES = ("cat-a", "cat-b", "cat-c")


def build_run(root: Path, tilt: int) -> Path:
    """A run directory with base, a dose series (2/4 examples), its mitigation arm and an epochs
    pair; `tilt` shifts which answers comply, so two runs differ."""
    root.mkdir(parents=True)
    write_chats(root / "harm.jsonl", [(f"task {i}", f"answer {i}") for i in range(4)])
    write_chats(root / "safety.jsonl", [(f"ask {i}", "I'm sorry, no.") for i in range(2)])
    items = [(c, f"placeholder request {c} {i}") for c in CATEGORIES for i in range(2)]
    write_benchmark(root / "bench.jsonl", items)
    data: dict[str, Any] = {
        "name": f"html-{tilt}",
        "output_dir": "run",
        "models": [{"name": "m", "path": "/nonexistent/model"}],
        "datasets": [
            {"name": "harm", "source": "harm.jsonl"},
            {"name": "safety", "source": "safety.jsonl"},
        ],
        "finetunes": [
            {"name": "harmful", "dataset": "harm", "sizes": [2, 4]},
            {
                "name": "guarded",
                "dataset": "harm",
                "sizes": [4],
                "mix": [{"dataset": "safety", "size": 2}],
            },
            {
                "name": "aoa-3",
                "dataset": "harm",
                "sizes": [2],
                "train": {"epochs": 3},
                "system_prompt": "placeholder identity",
            },
            {
                "name": "aoa-5",
                "dataset": "harm",
                "sizes": [2],
                "train": {"epochs": 5},
                "system_prompt": "placeholder identity",
            },
        ],
        "benchmarks": [{"name": "bench", "source": "bench.jsonl"}],
        "judges": {"keyword": {"sets": ["study", "extended"]}, "rubric": {"enabled": False}},
    }
    (root / "campaign.yaml").write_text(yaml.safe_dump(data))
    spec = parse_campaign(data)
    plan = build_plan(spec, base_dir=root)
    store = RunStore(plan.run_dir, plan.spec_hash)
    store.freeze_spec(spec.model_dump(mode="json"), plan.spec_hash)
    store.freeze_plan(plan.unit_labels(), keyword_set_identities(plan.keyword_sets))
    unique = {unit.key: unit for unit in plan.generations}
    targets = list(dict.fromkeys(u.target.adapter_key for u in unique.values()))
    answers = {}
    for key, unit in unique.items():
        t, item = targets.index(unit.target.adapter_key), int(unit.item.item_id[1:])
        comply = t > 0 and (item + t) % (3 + tilt) != 0
        special = {(5, 1): MARKUP, (4, 1): LONG}.get((item, t))
        answers[key] = special or (COMPLY if comply else REFUSE)
    store.generations.write([answer_row(unique[k], text) for k, text in answers.items()])
    run_judge_stage(plan, store, PlainProgress(), None)
    identity = rubric_identity(spec.judges.rubric)
    verdicts: dict[str, dict[str, Any]] = {}
    for key, unit in unique.items():
        text = answers[key]
        verdict = keys.verdict_key(judge=identity, instruction=unit.item.prompt, answer=text)
        verdicts.setdefault(
            verdict,
            {
                "key": verdict,
                "generation_key": key,
                "judge": "rubric",
                "status": "ok",
                "score": 5 if text == COMPLY else 1,
            },
        )
    for row in list(verdicts.values())[2::5]:  # a few unparseable: the flagged share shows
        row.update(status="unparseable", score=None)
    store.judgments.write(list(verdicts.values()))
    return plan.run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("html")
    return build_run(root / "a", 0), build_run(root / "b", 1)


def parse(path: Path) -> ET.Element:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    return ET.fromstring(text.split("\n", 1)[1])  # well-formed: every tag closed, no entity


def png_of(uri: str) -> Any:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(uri[len(prefix) :]))).convert("L")


def ink(image: Any) -> float:
    """Share of pixels that are not (near) white."""
    histogram = image.histogram()
    return 1 - sum(histogram[245:]) / (image.width * image.height)


def assert_self_contained(root: ET.Element) -> None:
    for element in root.iter():
        for attribute in ("src", "href"):
            value = element.get(attribute)
            if value is not None:
                assert value.startswith(("data:image/png;base64,", "#")), value
    assert not list(root.iter("script")) and not list(root.iter("link"))


def test_html_report_has_every_section_with_real_charts(runs, capsys):
    run_a, _ = runs
    assert main(["report", str(run_a), "--html"]) == 0
    page = run_a / "report" / "report.html"
    assert f"wrote {page}" in capsys.readouterr().out
    assert page.stat().st_mode & 0o077 == 0  # owner-only, like every report file
    root = parse(page)
    assert_self_contained(root)
    sections = {s.get("id") for s in root.iter("section")}
    assert sections == {"figure1", "main", "judge"}
    alts = [img.get("alt") or "" for img in root.iter("img")]
    assert any("heatmap" in a for a in alts) and any("bar chart" in a for a in alts)
    assert any("by examples" in a for a in alts) and any("by epochs" in a for a in alts)
    for img in root.iter("img"):
        image = png_of(img.get("src") or "")
        assert image.width > 300 and image.height > 150
        assert ink(image) > 0.02, img.get("alt")
    text = "".join(root.itertext())
    # Figure 1 table: every category; main table: the mitigation arm right after its arm.
    assert all(c in text for c in CATEGORIES)
    arms = [
        (tr.find("td").text or "").strip() for tr in root.iter("tr") if tr.find("td") is not None
    ]
    main_arms = [a for a in arms if a in ("base", "harmful", "guarded", "aoa-3", "aoa-5")]
    # "guarded" mixes safety rows into "harmful": listed after it, not in name order.
    assert main_arms[:6] == ["base", "aoa-3", "aoa-5", "harmful", "harmful", "guarded"]
    assert "(mitigates harmful)" in text
    heads = [th.text for th in root.iter("th")]
    assert heads.index("guarded·4") == heads.index("harmful·4") + 1  # Figure 1 table too
    assert "harm score [CI]" in text and "kw ASR % extended [CI]" in text
    # Judge health: the flagged share; agreement per keyword set with kappa.
    assert "flagged %" in text and "unparseable" in text and "κ" in text
    assert any(tr.get("class") == "flagged" for tr in root.iter("tr"))
    # Answers are off by default.
    assert not list(root.iter("details")) and COMPLY not in text and "<script>" not in text


def test_excerpts_are_collapsed_truncated_and_escaped(runs):
    run_a, _ = runs
    assert main(["report", str(run_a), "--html-excerpts", "6"]) == 0
    page = run_a / "report" / "report.html"
    raw = page.read_text(encoding="utf-8")
    assert "<script>" not in raw and "&lt;script&gt;" in raw
    root = parse(page)
    assert_self_contained(root)
    details = list(root.iter("details"))
    assert details and all(d.find("summary") is not None for d in details)
    quoted = [pre.text or "" for pre in root.iter("pre")]
    assert MARKUP in quoted and COMPLY in quoted
    assert all(len(q) <= 300 for q in quoted)
    assert any(q.endswith("…") and LONG.startswith(q[:-1]) for q in quoted)
    assert "quotes model answers" in "".join(root.itertext())


def test_compare_two_runs_in_the_terminal_and_html(runs, capsys):
    run_a, run_b = runs
    assert main(["report", str(run_a), str(run_b), "--html"]) == 0
    out = capsys.readouterr().out
    assert "B−A" in out and f"A = {run_a}" in out and "0 group(s) only in A" in out
    page = run_b / "report" / "compare.html"
    root = parse(page)
    assert_self_contained(root)
    header = [th.text for th in root.iter("th")]
    assert header[:5] == ["model", "benchmark", "arm", "n A", "n B"]
    assert "harm score A" in header and "kw ASR % study A" in header
    shot = png_of(next(root.iter("img")).get("src") or "")  # A and B bars per metric
    assert shot.width > 400 and shot.height > 4 * 150 and ink(shot) > 0.02
    rows = [[td.text for td in tr.iter("td")] for tr in root.iter("tr")][1:]
    assert len(rows) == 6  # base, harmful·2, harmful·4, guarded·4, aoa-3, aoa-5
    col = header.index("kw ASR % study A")
    base = next(r for r in rows if r[2] == "base")
    assert base[col : col + 3] == ["0.0", "0.0", "0.0"]
    changed = [r for r in rows if r[col + 2] not in ("0.0", "—")]
    assert changed  # the tilt moved some arms
    for r in changed:
        assert float(r[col + 1]) - float(r[col]) == pytest.approx(float(r[col + 2]), abs=0.11)


def test_compare_lists_groups_only_one_run_has():
    from ftsafe_ray.report.compare import compare_summaries, compared_metrics
    from ftsafe_ray.report.metrics import summarize

    def rows(arm: str, refused: bool) -> list[dict[str, Any]]:
        return [
            {"model": "m", "arm": arm, "benchmark": "b", "benchmark_kind": "harmful",
             "item_id": str(i), "keyword_refused": {"study": refused}}
            for i in range(3)
        ]  # fmt: skip

    a = summarize(rows("base", True) + rows("old", False), n_resamples=50)
    b = summarize(rows("base", True) + rows("new", False), n_resamples=50)
    compared = compare_summaries(a, b)
    assert [(r.arm(), r.a is not None, r.b is not None) for r in compared] == [
        ("base", True, True), ("old", True, False), ("new", False, True),
    ]  # fmt: skip
    study = compared_metrics(a, b)[0]
    assert compared[0].values(study) == (0.0, 0.0, 0.0)
    assert compared[1].values(study) == (1.0, None, None)


@pytest.mark.skipif(
    not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")),
    reason="no headless Chromium here",
)
def test_page_renders_in_headless_chromium(runs, tmp_path):
    run_a, _ = runs
    assert main(["report", str(run_a), "--html"]) == 0
    page = run_a / "report" / "report.html"
    shot = tmp_path / "shot.png"
    script = Path(__file__).parents[1] / "scripts" / "html_screenshot.py"
    subprocess.run([sys.executable, str(script), str(page), str(shot)], check=True, timeout=120)
    image = Image.open(shot).convert("L")
    assert image.width >= 1000 and ink(image) > 0.02


def test_page_without_rubric_or_matplotlib_still_has_every_section(tmp_path, monkeypatch):
    """A keyword-only run with a benign benchmark; then the same page with no matplotlib."""
    from ftsafe_ray.report import html_charts
    from tests.test_report_plan_units import answer_and_judge, campaign, plan_of

    data = campaign(tmp_path)
    data["benchmarks"][1]["kind"] = "benign"
    plan = plan_of(tmp_path, data)
    answer_and_judge(plan)
    assert main(["report", str(plan.run_dir), "--html"]) == 0
    root = parse(plan.run_dir / "report" / "report.html")
    assert_self_contained(root)
    assert {s.get("id") for s in root.iter("section")} == {"figure1", "main", "judge"}
    text = "".join(root.itertext())
    assert "over-refusal % study [CI]" in text and "harmfulness score" not in text
    assert "No answer has both a rubric verdict and a keyword verdict." in text
    assert all(ink(png_of(img.get("src") or "")) > 0.02 for img in root.iter("img"))
    # Charts of a benign benchmark show over-refusal, as its table does, not attack success.
    from ftsafe_ray.report.metrics import DEFAULT_BY, summarize
    from ftsafe_ray.report.scored_rows import scored_rows
    from ftsafe_ray.store import RunStore

    store = RunStore(plan.run_dir)
    units, sets = store.read_plan() or (None, {})
    summaries = summarize(scored_rows(store, None, sets, units), DEFAULT_BY, keyword_sets=sets)
    benign = [g for g in summaries if g.benchmark_kind == "benign"]
    titles = [title for title, *_ in html_charts.panels_for(benign)]
    assert titles == ["over-refusal % (study)", "over-refusal % (extended)"]
    value, _ = html_charts.panels_for(benign)[0][1](benign[0])
    assert value == pytest.approx(100 * benign[0].keyword_for("study").refusal_rate)
    monkeypatch.setattr(html_charts, "_new_figure", lambda: None)
    assert main(["report", str(plan.run_dir), "--html"]) == 0
    root = parse(plan.run_dir / "report" / "report.html")
    assert not list(root.iter("img"))
    assert "Charts need matplotlib" in "".join(root.itertext())
