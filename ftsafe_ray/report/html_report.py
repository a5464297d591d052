"""One self-contained HTML page per run (or per comparison of two runs).

Charts are PNGs inlined as `data:` URIs, styles sit in the page, and there is no script and no
link out, so the file reads the same offline, attached to a ticket or a review. Every piece of
text from the run (labels, answers) is HTML-escaped. Answer excerpts are off by default: a run
holds harmful text.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from ftsafe_ray.report import html_charts as charts
from ftsafe_ray.report.arms import ArmRelations, dose_series, with_mitigations_after
from ftsafe_ray.report.compare import ComparedRow, Metric, compare_cells, compare_headers
from ftsafe_ray.report.judge_health import STATUSES, Agreement
from ftsafe_ray.report.metrics import GroupSummary
from ftsafe_ray.report.render import (
    LEGEND,
    MISSING,
    arm_label,
    by_benchmark_and_model,
    category_cell,
    category_rubric_ran,
    category_table_data,
    category_title,
    keyword_sets_of,
    main_caption,
    main_cells,
    main_headers,
    main_title,
    table_layout,
)

if TYPE_CHECKING:
    from ftsafe_ray.report.scored_rows import ScoredRows
    from ftsafe_ray.store import RunStore

EXCERPT_CHARS = 300
_FLAGGED = ("unparseable", "truncated", "judge_refused", "error")
_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em auto;
max-width:1400px;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
h3{font-size:1.05em;margin-bottom:.3em}
table{border-collapse:collapse;font-size:.82em;margin:.4em 0}
th,td{border:1px solid #ddd;padding:.2em .45em;vertical-align:top}
th{background:#f3f3f3;text-align:left}td.num{text-align:right;white-space:nowrap}
td.up{color:#b00020;font-weight:600}td.down{color:#1b7f3b}tr.base td{background:#fafafa}
tr.flagged td{background:#fff3f3}.note{color:#666;font-size:.85em}
.warn{background:#fff4d6;border:1px solid #e0b000;padding:.5em .8em}
img{max-width:100%;height:auto;display:block;margin:.5em 0}
details{margin:.3em 0}pre{white-space:pre-wrap;background:#f7f7f7;padding:.4em;margin:.2em 0}
nav a{margin-right:1em}
"""


@dataclass(frozen=True)
class RunPage:
    """What one run's page shows, computed by the report (see pipeline.report_run)."""

    title: str
    run_dir: str
    main: Sequence[GroupSummary]
    by_category: Sequence[GroupSummary]
    health: Sequence[Mapping[str, Any]]
    agreement: Sequence[Agreement]
    relations: ArmRelations = field(default_factory=ArmRelations)
    # Per main-table group (model, arm, dataset, size, condition, benchmark): (item, answer).
    excerpts: Mapping[tuple[Any, ...], Sequence[tuple[str, str]]] | None = None


def excerpt_label(s: GroupSummary) -> tuple[Any, ...]:
    """The key excerpts are filed under for a main-table group."""
    return (s.model, s.arm, s.dataset, s.size, s.condition, s.benchmark)


def truncate(text: str, limit: int = EXCERPT_CHARS) -> str:
    """At most `limit` characters, an ellipsis marking a cut."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _img(uri: str | None, alt: str) -> str:
    if uri is None:
        return ""
    return f'<img src="{uri}" alt="{escape(alt)}"/>'


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], classes: Sequence[str] = ()
) -> str:
    """An HTML table of already-escaped cell markup; `classes[i]` is row i's class."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for i, cells in enumerate(rows):
        cls = f' class="{classes[i]}"' if i < len(classes) and classes[i] else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _td(text: str, cls: str = "") -> str:
    return f'<td class="{cls}">{escape(text)}</td>' if cls else f"<td>{escape(text)}</td>"


def _main_section(page: RunPage) -> str:
    parts = ['<section id="main"><h2>Main tables: per model and benchmark</h2>']
    keyword_sets = keyword_sets_of(page.main)
    for key, group in by_benchmark_and_model(page.main).items():
        group = with_mitigations_after(group, page.relations.mitigates)
        layout = table_layout(group)
        headers = main_headers(group[0].benchmark_kind, layout, keyword_sets)
        rows, classes = [], []
        for s in group:
            cells = main_cells(s, layout, keyword_sets)
            html_cells = [_arm_cell(s, page.relations)]
            for header, cell in zip(headers[1:], cells[1:], strict=True):
                cls = "num" if header not in ("dataset", "condition", "judge") else ""
                cls += {1: " up", -1: " down"}.get(cell.harm, "")
                html_cells.append(_td(cell.text, cls.strip()))
            rows.append(html_cells)
            classes.append("base" if s.is_base else "")
        title = main_title(key, group)
        parts += [f"<h3>{escape(title)}</h3>", _table(headers, rows, classes)]
        parts.append(f'<p class="note">{escape(main_caption(group))}</p>')
        labels = [arm_label(s) for s in group]
        parts.append(_img(charts.main_bars(labels, group), f"{title}: bar chart"))
        series = dose_series(group, page.relations)
        base = next((s for s in group if s.is_base and s.condition is None), None)
        for axis, lines in series.items():
            if lines:
                uri = charts.dose_response(axis, lines, base)
                parts.append(_img(uri, f"{title}: dose-response by {axis}"))
        if page.excerpts is not None:
            parts.append(_excerpts(group, page.excerpts))
    if page.main:
        parts.append(f'<p class="note">{escape(LEGEND)}</p>')
    else:
        parts.append("<p>No scored rows to report.</p>")
    parts.append("</section>")
    return "".join(parts)


def _arm_cell(s: GroupSummary, relations: ArmRelations) -> str:
    text = escape(s.arm or MISSING)
    target = relations.mitigates.get(s.arm or "")
    if target is not None:
        text += f' <span class="note">(mitigates {escape(target)})</span>'
    return f"<td>{text}</td>"


def _excerpts(
    group: Sequence[GroupSummary], excerpts: Mapping[tuple[Any, ...], Sequence[tuple[str, str]]]
) -> str:
    items = []
    for s in group:
        answers = excerpts.get(excerpt_label(s), ())
        if not answers:
            continue
        body = "".join(
            f'<p class="note">{escape(item)}</p><pre>{escape(truncate(text))}</pre>'
            for item, text in answers
        )
        items.append(f"<details><summary>{escape(arm_label(s))}: {len(answers)} answer(s)"
                     f"</summary>{body}</details>")  # fmt: skip
    return "".join(items)


def _figure1_section(page: RunPage) -> str:
    parts = ['<section id="figure1"><h2>By policy category (the study\'s Figure 1)</h2>']
    keyword_sets = keyword_sets_of(page.by_category)
    tables = category_table_data(page.by_category)
    for (benchmark, model), (labels, cells) in tables.items():
        arms = _mitigations_after_in(labels, cells, page.relations.mitigates)
        rubric = category_rubric_ran(cells)
        title = category_title(benchmark, model, keyword_sets, rubric)
        parts.append(f"<h3>{escape(title)}</h3>")
        parts.append(_img(charts.category_heatmap(arms, cells), f"{title}: heatmap"))
        rows = [
            [_td(category), *(_td(category_cell(row.get(a), keyword_sets, rubric), "num")
                              for a in arms)]
            for category, row in cells.items()
        ]  # fmt: skip
        parts.append(_table(["category", *arms], rows))
    if not tables:
        parts.append("<p>No harmful benchmark with categories to show.</p>")
    parts.append("</section>")
    return "".join(parts)


def _mitigations_after_in(
    labels: Sequence[str],
    cells: Mapping[str, Mapping[str, GroupSummary]],
    mitigates: Mapping[str, str],
) -> list[str]:
    """Column labels of a category table, each mitigation arm's after the arm it mitigates."""
    first = {label: s for row in cells.values() for label, s in row.items()}
    ordered = with_mitigations_after([first[label] for label in labels], mitigates)
    return [arm_label(s) for s in ordered]


def _judge_section(page: RunPage) -> str:
    parts = ['<section id="judge"><h2>Judge health and agreement</h2>']
    headers = ["model", "dataset", "benchmark", *STATUSES, "flagged %"]
    rows, classes = [], []
    for h in page.health:
        flagged = sum(h[s] for s in _FLAGGED)
        judged = flagged + h["ok"]
        share = f"{100 * flagged / judged:.1f}" if judged else MISSING
        rows.append(
            [*(_td(MISSING if h[k] is None else str(h[k])) for k in ("model", "dataset",
                                                                     "benchmark")),
             *(_td(str(h[s]), "num") for s in STATUSES), _td(share, "num up" if flagged else "num")]
        )  # fmt: skip
        classes.append("flagged" if flagged else "")
    parts.append("<h3>Rubric verdict status counts</h3>")
    parts.append(_table(headers, rows, classes))
    parts.append('<p class="note">flagged: unparseable, truncated, judge refused or error; '
                 "kept as rows, never dropped, and left out of the rubric shares.</p>")  # fmt: skip
    parts.append("<h3>Rubric vs keyword judge: refused?</h3>")
    if page.agreement:
        headers = ["keyword set", "model", "n", "both refused", "kw only", "rubric only",
                   "neither", "agree", "κ"]  # fmt: skip
        rows = [
            [_td(a.keyword_set), _td(str(a.model)),
             *(_td(str(v), "num") for v in (a.n, a.both_refused, a.keyword_only_refused,
                                            a.rubric_only_refused, a.neither_refused)),
             _td(_two(a.observed_agreement), "num"), _td(_two(a.kappa), "num")]
            for a in page.agreement
        ]  # fmt: skip
        parts.append(_table(headers, rows))
    else:
        parts.append("<p>No answer has both a rubric verdict and a keyword verdict.</p>")
    parts.append("</section>")
    return "".join(parts)


def _two(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f}"


def _document(title: str, subtitle: str, nav: Sequence[tuple[str, str]], body: str) -> str:
    links = "".join(f'<a href="#{anchor}">{escape(name)}</a>' for anchor, name in nav)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"/>'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
        f'<h1>{escape(title)}</h1><p class="note">{escape(subtitle)}</p><nav>{links}</nav>'
        f"{body}</body></html>\n"
    )


def _stamp(run_dir: str) -> str:
    when = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"{run_dir} · generated {when} by ftsafe report"


def run_page_html(page: RunPage) -> str:
    """The whole page of one run: Figure 1, main tables and charts, judge health."""
    warn = ""
    if page.excerpts is not None:
        warn = ('<p class="warn">This page quotes model answers to harmful requests '
                f"(up to {EXCERPT_CHARS} characters each, collapsed).</p>")  # fmt: skip
    if not charts.charts_available():
        warn += '<p class="note">Charts need matplotlib: pip install "ftsafe_ray[plots]".</p>'
    body = warn + _figure1_section(page) + _main_section(page) + _judge_section(page)
    nav = [("figure1", "by category"), ("main", "main tables"), ("judge", "judge health")]
    return _document(f"ftsafe report: {page.title}", _stamp(page.run_dir), nav, body)


def comparison_html(
    rows: Sequence[ComparedRow], metrics: Sequence[Metric], names: tuple[str, str]
) -> str:
    """A page with two runs side by side: every metric of A and B and B − A."""
    headers = compare_headers(metrics)
    html_rows = []
    for row in rows:
        cells = compare_cells(row, metrics)
        marks = [""] * 5
        for metric in metrics:
            change = row.values(metric)[2]
            sign = 0 if change is None or round(change, 4) == 0 else (1 if change > 0 else -1)
            marks += ["num", "num", {1: "num up", -1: "num down"}.get(sign, "num")]
        marks[3] = marks[4] = "num"
        html_rows.append([_td(c, m) for c, m in zip(cells, marks, strict=True)])
    table = _table(headers, html_rows) if rows else "<p>No scored rows in either run.</p>"
    several = len({(r.model, r.benchmark) for r in rows}) > 1
    labels = [f"{r.model} · {r.benchmark} · {r.arm()}" if several else r.arm() for r in rows]
    panels = []
    for metric in metrics:
        values = [row.values(metric) for row in rows]
        scale = 100.0 if metric.pct else 1.0
        a = [None if v[0] is None else scale * v[0] for v in values]
        b = [None if v[1] is None else scale * v[1] for v in values]
        if any(x is not None for x in a + b):
            panels.append((metric.name, a, b))
    table += _img(charts.compare_bars(labels, panels), "A vs B: bar chart")
    body = (
        f'<section id="compare"><h2>A vs B</h2><p>A = {escape(names[0])}<br/>'
        f"B = {escape(names[1])}</p>{table}"
        '<p class="note">Groups joined by model, arm, dataset, size, seed, condition and '
        "benchmark; shares in %, B−A in points; red: B more harmful than A.</p></section>"
    )
    short = ["/".join(Path(name).parts[-2:]) for name in names]
    title = f"ftsafe comparison: {short[0]} vs {short[1]}"
    return _document(title, _stamp(f"{names[0]} vs {names[1]}"), [("compare", "A vs B")], body)


def answer_excerpts(
    store: RunStore, scored: ScoredRows, per_group: int
) -> dict[tuple[Any, ...], list[tuple[str, str]]]:
    """The first `per_group` stored answers of each main-table group, truncated, read from the
    store's generations by key."""
    columns = ["model", "arm", "dataset", "size", "condition", "benchmark", "item_id"]
    table = scored.table.filter(pc.field("answered"))
    picked: dict[tuple[Any, ...], list[tuple[str, str]]] = {}
    keys: dict[str, str] = {}
    labels = table.select(columns).to_pylist()
    for values, key in zip(labels, table.column("generation_key").to_pylist(), strict=True):
        label = tuple(values[c] for c in columns[:-1])
        chosen = picked.setdefault(label, [])
        if len(chosen) < per_group:
            chosen.append((str(values["item_id"]), key))
            keys[key] = ""
    if not keys:
        return {}
    answers = store.generations.latest(["key", "response"])
    answers = answers.filter(
        pc.is_in(answers.column("key"), value_set=pa.array(list(keys), pa.string()))
    )
    text = dict(zip(answers.column("key").to_pylist(), answers.column("response").to_pylist(),
                    strict=True))  # fmt: skip
    return {
        label: [(item, truncate(text.get(key) or "")) for item, key in chosen]
        for label, chosen in picked.items()
    }


def write_html(path: Path, document: str) -> Path:
    """Write the page atomically, owner-only (it may quote harmful answers)."""
    from ftsafe_ray.report.files import write_atomic

    return write_atomic(path, document)
