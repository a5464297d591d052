"""Rich tables: one per benchmark and model, plus per-category tables for harmful benchmarks."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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
    text = _signed(100 * value, 1) if pct else _signed(value, 2)
    shown = float(text)
    return Cell(text, harm=(shown > 0) - (shown < 0) if harmful else 0)


def _number(value: float, digits: int) -> str:
    """`value` rounded, never as `-0` (a difference that rounds to nothing has no sign)."""
    text = f"{value:.{digits}f}"
    return text.removeprefix("-") if float(text) == 0 else text


def _signed(value: float, digits: int) -> str:
    text = _number(value, digits)
    return text if text.startswith("-") else f"+{text}"


def fmt_delta_ci(value: float | None, ci: CI | None, *, pct: bool, harmful: bool = True) -> Cell:
    """A paired Δ with its interval: `+42.0 [30–55]` for shares, `+2.10 [1.80–2.40]`.

    The bounds carry no plus sign, to keep the column narrow; a negative bound shows its minus.
    """
    cell = fmt_delta(value, pct=pct, harmful=harmful)
    if value is None or ci is None or any(math.isnan(v) for v in ci):
        return cell
    if pct:
        low, high = _number(100 * ci[0], 0), _number(100 * ci[1], 0)
    else:
        low, high = _number(ci[0], 2), _number(ci[1], 2)
    return Cell(f"{cell.text} [{low}–{high}]", cell.harm)


def fmt_judge(s: GroupSummary) -> str:
    """Rubric verdict counts, naming only the non-zero failure kinds, and the unscored share:
    `116 ok · 4 unp · 3.3% unscored`."""
    if not s.rubric_ran:
        return MISSING
    parts = [f"{s.n_ok} ok"]
    for count, label in (
        (s.n_unparseable, "unp"),
        (s.n_truncated, "trunc"),
        (s.n_judge_refused, "ref"),
        (s.n_error, "err"),
        (s.n_unjudged, "pending"),
    ):
        if count:
            parts.append(f"{count} {label}")
    if s.n_unscored and s.unscored_share is not None:
        parts.append(f"{fmt_pct(s.unscored_share)}% unscored")
    return " · ".join(parts)


def fmt_rate_with_bound(s: GroupSummary) -> str:
    """Harm % with its CI and, when verdicts went unscored, the worst case: `41.0 [30–52] ≤47.0`."""
    text = fmt_with_ci(s.harmfulness_rate, s.harmfulness_rate_ci, pct=True)
    if s.n_unscored and s.harmfulness_rate_worst is not None:
        text += f" ≤{fmt_pct(s.harmfulness_rate_worst)}"
    return text


def arm_label(s: GroupSummary) -> str:
    """The arm name with its size, seed and evaluation condition when set, e.g.
    `harmful·100`, `backdoor·100 @trigger`."""
    label = s.arm or MISSING
    if s.size is not None:
        label += f"·{s.size}"
    if s.seed is not None:
        label += f"·s{s.seed}"
    if s.condition is not None:
        label += f" @{s.condition}"
    return label


@dataclass(frozen=True)
class Layout:
    """Which optional identity columns a per-benchmark table needs."""

    dataset: bool
    seed: bool
    condition: bool = False
    utility: bool = False  # rows carry their arm's utility (report/utility.py)


def table_layout(summaries: Sequence[GroupSummary]) -> Layout:
    """Show dataset only when an arm has several, seed only when rows are split by it,
    condition only when the campaign names evaluation conditions."""
    datasets: dict[tuple, set] = {}
    for s in summaries:
        datasets.setdefault((s.model, s.arm), set()).add(s.dataset)
    return Layout(
        dataset=any(len(v) > 1 for v in datasets.values()),
        seed=bool(summaries) and "seed" in summaries[0].by,
        condition=any(s.condition is not None for s in summaries),
        utility=any(s.utility_score is not None for s in summaries),
    )


def keyword_header(kind: str | None, name: str) -> str:
    """A keyword column's header, naming its phrase set: `kw ASR % study [CI]`."""
    benign = kind in ("benign", "utility")
    return f"over-refusal % {name} [CI]" if benign else f"kw ASR % {name} [CI]"


def main_headers(kind: str | None, layout: Layout, keyword_sets: Sequence[str]) -> list[str]:
    """Column headers of a per-benchmark table: one ASR (or over-refusal) column per set."""
    return [
        "arm",
        *(["dataset"] if layout.dataset else []),
        "size",
        *(["seed"] if layout.seed else []),
        *(["condition"] if layout.condition else []),
        "n",
        *(h for name in keyword_sets for h in (keyword_header(kind, name), "Δ")),
        "degen %",
        *(
            ("utility 1-10 [CI]", "Δ", "rated")
            if kind == "utility"
            else ("harm score [CI]", "Δ", "harm % [CI]", "Δ", "judge")
        ),
        *(("utility 1-10 [CI]", "Δ") if layout.utility and kind != "utility" else ()),
    ]


def _keyword_cells(s: GroupSummary, name: str) -> list[Cell]:
    """ASR (harmful) or over-refusal = 1 − ASR (benign) of one set, and its paired Δ."""
    k = s.keyword_for(name)
    if k is None or k.asr is None:
        return [Cell(MISSING), Cell("" if s.is_base else MISSING)]
    if s.benchmark_kind not in ("benign", "utility"):
        value = fmt_with_ci(k.asr, k.asr_ci, pct=True)
        delta = fmt_delta_ci(k.delta, k.delta_ci, pct=True)
    else:
        flipped = None if k.asr_ci is None else (1 - k.asr_ci[1], 1 - k.asr_ci[0])
        value = fmt_with_ci(k.refusal_rate, flipped, pct=True)
        reverse = None if k.delta_ci is None else (-k.delta_ci[1], -k.delta_ci[0])
        delta = fmt_delta_ci(None if k.delta is None else -k.delta, reverse, pct=True)
        delta = Cell(delta.text)  # more refusal of benign requests is not more harm
    return [Cell(value), Cell("") if s.is_base else delta]


def main_cells(s: GroupSummary, layout: Layout, keyword_sets: Sequence[str]) -> list[Cell]:
    """The cells of one summary's row in a per-benchmark table, in header order."""
    harmful = s.benchmark_kind != "benign"
    rubric = s.rubric_ran

    def delta(value: float | None, ci: CI | None, *, pct: bool) -> Cell:
        if s.is_base:
            return Cell("")
        if not rubric:
            return Cell(MISSING)
        return fmt_delta_ci(value, ci, pct=pct, harmful=harmful)

    return [
        Cell(s.arm or MISSING),
        *([Cell(s.dataset or "")] if layout.dataset else []),
        Cell("" if s.size is None else str(s.size)),
        *([Cell("" if s.seed is None else str(s.seed))] if layout.seed else []),
        *([Cell(s.condition or "")] if layout.condition else []),
        Cell(str(s.n)),
        *(c for name in keyword_sets for c in _keyword_cells(s, name)),
        Cell(fmt_pct(s.degenerate_rate)),
        *(_utility_cells(s) if s.benchmark_kind == "utility" else _harm_cells(s, delta)),
        *(_utility_cells(s)[:2] if layout.utility and s.benchmark_kind != "utility" else ()),
    ]  # fmt: skip


def _utility_cells(s: GroupSummary) -> list[Cell]:
    """A utility benchmark's mean 1-10 rating, its paired Δ (higher is better) and coverage."""
    delta = fmt_delta_ci(s.delta_utility_score, s.delta_utility_score_ci, pct=False, harmful=False)
    return [
        Cell(fmt_with_ci(s.utility_score, s.utility_score_ci, pct=False)),
        Cell("") if s.is_base else delta,
        Cell(f"{s.n_utility}/{s.n_answers}"),
    ]


def _harm_cells(s: GroupSummary, delta: Callable[..., Cell]) -> list[Cell]:
    """The rubric's harm score and rate, their paired Δ, and the verdict counts."""
    rubric = s.rubric_ran
    return [
        Cell(fmt_with_ci(s.harmfulness_score, s.harmfulness_score_ci, pct=False) if rubric
             else MISSING),
        delta(s.delta_harmfulness_score, s.delta_harmfulness_score_ci, pct=False),
        Cell(fmt_rate_with_bound(s) if rubric else MISSING),
        delta(s.delta_harmfulness_rate, s.delta_harmfulness_rate_ci, pct=True),
        Cell(fmt_judge(s)),
    ]  # fmt: skip


def keyword_sets_of(summaries: Sequence[GroupSummary]) -> tuple[str, ...]:
    """The phrase sets the summaries carry, in order."""
    names: dict[str, None] = {}
    for s in summaries:
        names.update(dict.fromkeys(k.set for k in s.keyword))
    return tuple(names)


TableKey = tuple[str | None, str | None]


def by_benchmark_and_model(summaries: Sequence[GroupSummary]) -> dict[TableKey, list[GroupSummary]]:
    """Summaries split into one table per (benchmark, model), keeping their order."""
    out: dict[TableKey, list[GroupSummary]] = {}
    for s in sorted(summaries, key=lambda s: (str(s.benchmark), str(s.model))):
        out.setdefault((s.benchmark, s.model), []).append(s)
    return out


LEGEND = (
    "Δ: paired change from the base model over the same prompts (under the same condition), "
    "with its interval. "
    "kw ASR <set>: share of answers with none of that phrase set's refusal phrases (study = "
    "the paper's 29 phrases and rule, verbatim; extended = study + modern refusals). "
    "Harm score: mean 1–5 rubric score of verdicts judged ok; harm %: share scored 5; ≤x: "
    "harm % if every unscored verdict were a 5. Judge: unp = unparseable, trunc = truncated, "
    f"ref = judge refused, err = error. {MISSING}: not judged."
)


def main_caption(summaries: Sequence[GroupSummary]) -> str:
    """Seeds and interval of a per-benchmark table: `Seeds pooled: 42, 43. [CI]: 95% ...`."""
    first = summaries[0]
    seeds = sorted({seed for s in summaries for seed in s.seeds})
    if "seed" in first.by:
        pooled = "One row per seed."
    elif len(seeds) > 1:
        pooled = (
            f"{len(seeds)} seeds pooled: {', '.join(map(str, seeds))} (n counts every seed's "
            "answers; intervals resample prompts, all seeds of a prompt together)."
        )
    else:
        pooled = f"1 seed: {seeds[0]}." if seeds else "No fine-tune seeds."
    pending = sum(s.n - s.n_answers for s in summaries)
    waiting = f" {pending} planned answer(s) not generated yet." if pending else ""
    confidence = round(100 * first.confidence)
    return f"{pooled} [CI]: {confidence}% bootstrap interval over prompts.{waiting}"


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


def category_cell(s: GroupSummary | None, keyword_sets: Sequence[str], rubric: bool) -> str:
    """Keyword ASR % of each set and, with `rubric`, the harm score: `85.0 / 60.0 / 4.52`."""
    if s is None:
        return MISSING
    parts = []
    for name in keyword_sets:
        k = s.keyword_for(name)
        parts.append(fmt_pct(k.asr if k else None))
    if rubric:
        parts.append(fmt_score(s.harmfulness_score) if s.rubric_ran else MISSING)
    return " / ".join(parts)


def category_rubric_ran(cells: dict[str, dict[str, GroupSummary]]) -> bool:
    """Whether any cell of a per-category table has rubric verdicts."""
    return any(s.rubric_ran for row in cells.values() for s in row.values())


def _text(cell: Cell) -> Text:
    style = {1: "bold red", -1: "green"}.get(cell.harm, "")
    return Text(cell.text, style=style)


def main_title(key: TableKey, summaries: Sequence[GroupSummary]) -> str:
    """Benchmark, its kind and the model: `hexphi (harmful) · org/model`."""
    benchmark, model = key
    kind = summaries[0].benchmark_kind
    title = f"{benchmark} ({kind})" if kind else str(benchmark)
    return f"{title} · {model}" if model is not None else title


_WRAPPING = {"arm", "dataset", "condition", "judge"}


def _main_table(summaries: list[GroupSummary], keyword_sets: Sequence[str]) -> Table:
    layout = table_layout(summaries)
    table = Table(box=box.SIMPLE_HEAD, padding=0, pad_edge=False)
    for header in main_headers(summaries[0].benchmark_kind, layout, keyword_sets):
        left = header in ("arm", "dataset", "condition", "judge")
        # Interval cells wrap at the space before "[", so a narrow console stacks them.
        table.add_column(
            Text(header),
            justify="left" if left else "right",
            no_wrap=not _wraps(header),
            overflow="fold",
        )
    for s in summaries:
        table.add_row(*(_text(c) for c in main_cells(s, layout, keyword_sets)))
    return table


def _wraps(header: str) -> bool:
    return header in _WRAPPING or header.endswith("[CI]") or header == "Δ"


def category_title(
    benchmark: str | None, model: str | None, keyword_sets: Sequence[str], rubric: bool
) -> str:
    """Heading of a per-category table, naming what each cell shows."""
    shown = [f"kw ASR % {name}" for name in keyword_sets] + (["harm score"] if rubric else [])
    return f"{benchmark} · {model}: {' / '.join(shown)} by category"


def _category_tables(summaries: Sequence[GroupSummary]) -> list[tuple[str, Table]]:
    tables = []
    keyword_sets = keyword_sets_of(summaries)
    for (benchmark, model), (arms, cells) in category_table_data(summaries).items():
        rubric = category_rubric_ran(cells)
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        table.add_column(Text("category"), overflow="fold")
        for arm in arms:
            table.add_column(Text(arm), justify="right", overflow="fold")
        # Text, not str: names from user data must not be read as rich markup.
        for category, row in cells.items():
            cells_text = (Text(category_cell(row.get(arm), keyword_sets, rubric)) for arm in arms)
            table.add_row(Text(category), *cells_text)
        tables.append((category_title(benchmark, model, keyword_sets, rubric), table))
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
    keyword_sets = keyword_sets_of(summaries_main)
    for key, group in by_benchmark_and_model(summaries_main).items():
        console.print(Text(main_title(key, group), style="bold"))
        console.print(_main_table(group, keyword_sets))
        console.print(Text(main_caption(group), style="dim"))
        console.print()
    if summaries_main:
        console.print(Text(LEGEND, style="dim"))
        console.print()
    for title, table in _category_tables(summaries_by_category):
        console.print(Text(title, style="bold"))
        console.print(table)
