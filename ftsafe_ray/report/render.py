"""Rich tables: one per benchmark and model, plus per-category tables for harmful benchmarks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ftsafe_ray.report.metrics import CI, GroupSummary

MISSING = "—"


@dataclass(frozen=True)
class Cell:
    """One formatted table cell; `harm` is +1/-1 when the cell is a Δ towards more/less harm."""

    text: str
    harm: int = 0


def fmt_pct(value: float | None) -> str:
    """A share as a percentage with one decimal, or an em dash when missing."""
    return MISSING if value is None or math.isnan(value) else f"{100 * value:.1f}"


def fmt_score(value: float | None) -> str:
    """A 1–5 score with two decimals, or an em dash when missing."""
    return MISSING if value is None or math.isnan(value) else f"{value:.2f}"


def fmt_with_ci(value: float | None, ci: CI | None, *, pct: bool) -> str:
    """A point estimate and its interval: `85.0 [81–89]` for shares, `4.52 [4.40–4.63]`."""
    if value is None:
        return MISSING
    if pct:
        text = fmt_pct(value)
        if ci is None or any(math.isnan(v) for v in ci):
            return text
        # Whole-percent bounds keep the column narrow; the CSV keeps full precision.
        return f"{text} [{100 * ci[0]:.0f}–{100 * ci[1]:.0f}]"
    if ci is None or any(math.isnan(v) for v in ci):
        return fmt_score(value)
    return f"{fmt_score(value)} [{fmt_score(ci[0])}–{fmt_score(ci[1])}]"


def fmt_delta(value: float | None, *, pct: bool, harmful: bool = True) -> Cell:
    """A signed difference from base; `harm` marks the direction when higher means more harm."""
    if value is None or math.isnan(value):
        return Cell(MISSING)
    text = f"{100 * value:+.1f}" if pct else f"{value:+.2f}"
    shown = float(text)
    return Cell(text, harm=(shown > 0) - (shown < 0) if harmful else 0)


def fmt_judge(s: GroupSummary) -> str:
    """Rubric verdict counts, naming only the non-zero failure kinds: `116 ok · 4 unp`."""
    if not s.rubric_ran:
        return MISSING
    parts = [f"{s.n_ok} ok"]
    for count, label in (
        (s.n_unparseable, "unp"),
        (s.n_judge_refused, "ref"),
        (s.n_error, "err"),
        (s.n_unjudged, "pending"),
    ):
        if count:
            parts.append(f"{count} {label}")
    return " · ".join(parts)


def arm_label(s: GroupSummary) -> str:
    """The arm name with its size and seed when set, e.g. `harmful·100`."""
    label = s.arm or MISSING
    if s.size is not None:
        label += f"·{s.size}"
    if s.seed is not None:
        label += f"·s{s.seed}"
    return label


@dataclass(frozen=True)
class Layout:
    """Which optional identity columns a per-benchmark table needs."""

    dataset: bool
    seed: bool


def table_layout(summaries: Sequence[GroupSummary]) -> Layout:
    """Show dataset only when an arm has several, seed only when rows are split by it."""
    datasets: dict[tuple, set] = {}
    for s in summaries:
        datasets.setdefault((s.model, s.arm), set()).add(s.dataset)
    return Layout(
        dataset=any(len(v) > 1 for v in datasets.values()),
        seed=bool(summaries) and "seed" in summaries[0].by,
    )


def main_headers(kind: str | None, layout: Layout) -> list[str]:
    """Column headers of a per-benchmark table."""
    return [
        "arm",
        *(["dataset"] if layout.dataset else []),
        "size",
        *(["seed"] if layout.seed else []),
        "n",
        "kw ASR % [CI]",
        "Δ",
        "over-refusal %" if kind == "benign" else "refusal %",
        "degen %",
        "harm score [CI]",
        "Δ",
        "harm % [CI]",
        "Δ",
        "judge",
    ]


def main_cells(s: GroupSummary, layout: Layout) -> list[Cell]:
    """The cells of one summary's row in a per-benchmark table, in header order."""
    harmful = s.benchmark_kind != "benign"
    rubric = s.rubric_ran

    def delta(value: float | None, *, pct: bool, of_rubric: bool = False) -> Cell:
        if s.is_base:
            return Cell("")
        if of_rubric and not rubric:
            return Cell(MISSING)
        return fmt_delta(value, pct=pct, harmful=harmful)

    def rubric_cell(value: float | None, ci: CI | None, *, pct: bool) -> Cell:
        return Cell(fmt_with_ci(value, ci, pct=pct) if rubric else MISSING)

    return [
        Cell(s.arm or MISSING),
        *([Cell(s.dataset or "")] if layout.dataset else []),
        Cell("" if s.size is None else str(s.size)),
        *([Cell("" if s.seed is None else str(s.seed))] if layout.seed else []),
        Cell(str(s.n)),
        Cell(fmt_with_ci(s.keyword_asr, s.keyword_asr_ci, pct=True)),
        delta(s.delta_keyword_asr, pct=True),
        Cell(fmt_pct(s.refusal_rate)),
        Cell(fmt_pct(s.degenerate_rate)),
        rubric_cell(s.harmfulness_score, s.harmfulness_score_ci, pct=False),
        delta(s.delta_harmfulness_score, pct=False, of_rubric=True),
        rubric_cell(s.harmfulness_rate, s.harmfulness_rate_ci, pct=True),
        delta(s.delta_harmfulness_rate, pct=True, of_rubric=True),
        Cell(fmt_judge(s)),
    ]


TableKey = tuple[str | None, str | None]


def by_benchmark_and_model(summaries: Sequence[GroupSummary]) -> dict[TableKey, list[GroupSummary]]:
    """Summaries split into one table per (benchmark, model), keeping their order."""
    out: dict[TableKey, list[GroupSummary]] = {}
    for s in sorted(summaries, key=lambda s: (str(s.benchmark), str(s.model))):
        out.setdefault((s.benchmark, s.model), []).append(s)
    return out


LEGEND = (
    "Δ: change from the base model on the same benchmark. kw ASR: share of answers with no "
    "refusal phrase. Harm score: mean 1–5 rubric score of verdicts judged ok; harm %: share "
    "scored 5. Judge: unp = unparseable, ref = judge refused, err = error. "
    f"{MISSING}: rubric judge not run."
)


def main_caption(summaries: Sequence[GroupSummary]) -> str:
    """Seeds and interval of a per-benchmark table: `Seeds pooled: 42, 43. [CI]: 95% ...`."""
    first = summaries[0]
    seeds = sorted({seed for s in summaries for seed in s.seeds})
    if "seed" in first.by:
        pooled = "One row per seed."
    elif len(seeds) > 1:
        pooled = f"Seeds pooled: {', '.join(map(str, seeds))} (n counts every seed's answers)."
    else:
        pooled = f"Seeds pooled: {seeds[0]}." if seeds else "Seeds pooled."
    return f"{pooled} [CI]: {round(100 * first.confidence)}% bootstrap interval."


def category_table_data(
    summaries: Sequence[GroupSummary],
) -> dict[tuple[str | None, str | None], tuple[list[str], dict[str, dict[str, GroupSummary]]]]:
    """Per (benchmark, model) of harmful benchmarks: arm labels and category → arm → summary."""
    out: dict[tuple, tuple[list[str], dict[str, dict[str, GroupSummary]]]] = {}
    for s in summaries:
        if s.benchmark_kind == "benign":
            continue
        arms, cells = out.setdefault((s.benchmark, s.model), ([], {}))
        label = arm_label(s)
        if label not in arms:
            arms.append(label)
        cells.setdefault(s.category or MISSING, {})[label] = s
    return out


def category_cell(s: GroupSummary | None) -> str:
    """Keyword ASR % and, when judged, the harm score: `85.0 / 4.52`."""
    if s is None:
        return MISSING
    asr = fmt_pct(s.keyword_asr)
    return f"{asr} / {fmt_score(s.harmfulness_score)}" if s.rubric_ran else asr


def _text(cell: Cell) -> Text:
    style = {1: "bold red", -1: "green"}.get(cell.harm, "")
    return Text(cell.text, style=style)


def main_title(key: TableKey, summaries: Sequence[GroupSummary]) -> str:
    """Benchmark, its kind and the model: `hexphi (harmful) · org/model`."""
    benchmark, model = key
    kind = summaries[0].benchmark_kind
    title = f"{benchmark} ({kind})" if kind else str(benchmark)
    return f"{title} · {model}" if model is not None else title


_WRAPPING = {"arm", "dataset", "kw ASR % [CI]", "harm score [CI]", "harm % [CI]"}


def _main_table(summaries: list[GroupSummary]) -> Table:
    layout = table_layout(summaries)
    table = Table(box=box.SIMPLE_HEAD, padding=0, pad_edge=False)
    for header in main_headers(summaries[0].benchmark_kind, layout):
        left = header in ("arm", "dataset", "judge")
        # Interval cells wrap at the space before "[", so a narrow console stacks them.
        table.add_column(
            Text(header),
            justify="left" if left else "right",
            no_wrap=header not in _WRAPPING,
            overflow="fold",
        )
    for s in summaries:
        table.add_row(*(_text(c) for c in main_cells(s, layout)))
    return table


def category_title(benchmark: str | None, model: str | None) -> str:
    """Heading of a per-category table."""
    return f"{benchmark} · {model}: keyword ASR % / harm score by category"


def _category_tables(summaries: Sequence[GroupSummary]) -> list[tuple[str, Table]]:
    tables = []
    for (benchmark, model), (arms, cells) in category_table_data(summaries).items():
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        table.add_column(Text("category"), overflow="fold")
        for arm in arms:
            table.add_column(Text(arm), justify="right", overflow="fold")
        # Text, not str: names from user data must not be read as rich markup.
        for category, row in cells.items():
            table.add_row(Text(category), *(Text(category_cell(row.get(arm))) for arm in arms))
        tables.append((category_title(benchmark, model), table))
    return tables


def render_tables(
    summaries_main: Sequence[GroupSummary],
    summaries_by_category: Sequence[GroupSummary],
    console: Console,
) -> None:
    """Print one table per benchmark and model, then per-category tables of harmful ones."""
    if not summaries_main and not summaries_by_category:
        console.print("No scored rows to report.")
        return
    # Titles and captions print as their own lines: inside a Table they wrap to its width.
    for key, group in by_benchmark_and_model(summaries_main).items():
        console.print(Text(main_title(key, group), style="bold"))
        console.print(_main_table(group))
        console.print(Text(main_caption(group), style="dim"))
        console.print()
    if summaries_main:
        console.print(Text(LEGEND, style="dim"))
        console.print()
    for title, table in _category_tables(summaries_by_category):
        console.print(Text(title, style="bold"))
        console.print(table)
