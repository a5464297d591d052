"""Two runs side by side: groups joined by their labels, each metric of A and B and B − A.

Labels, not keys, join the runs: the point of comparing is that something that changes keys
(a model revision, a recipe, a judge) changed between them. A group only one run has is listed
with the other side empty.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ftsafe_ray.report.metrics import GroupSummary
from ftsafe_ray.report.render import MISSING, arm_label, keyword_sets_of

JOIN_KEYS = ("model", "arm", "dataset", "size", "seed", "condition", "benchmark", "category")
Label = tuple[object, ...]


@dataclass(frozen=True)
class Metric:
    """A compared figure: its column name, how to read it off a summary, and its scale."""

    name: str
    read: Callable[[GroupSummary], float | None]
    pct: bool


def _keyword(name: str) -> Callable[[GroupSummary], float | None]:
    def read(s: GroupSummary) -> float | None:
        k = s.keyword_for(name)
        return None if k is None else k.asr

    return read


def compared_metrics(a: Sequence[GroupSummary], b: Sequence[GroupSummary]) -> list[Metric]:
    """Keyword ASR of every phrase set either run has, then the rubric figures."""
    sets = dict.fromkeys([*keyword_sets_of(a), *keyword_sets_of(b)])
    return [
        *(Metric(f"kw ASR % {name}", _keyword(name), True) for name in sets),
        Metric("harm score", lambda s: s.harmfulness_score if s.rubric_ran else None, False),
        Metric("harm %", lambda s: s.harmfulness_rate if s.rubric_ran else None, True),
    ]


@dataclass(frozen=True)
class ComparedRow:
    """One group of labels with its summary in each run (None: that run has no such group)."""

    label: Label
    a: GroupSummary | None
    b: GroupSummary | None

    @property
    def model(self) -> object:
        return self.label[0]

    @property
    def benchmark(self) -> object:
        return self.label[JOIN_KEYS.index("benchmark")]

    def arm(self) -> str:
        """The arm label (`harmful·10 @trigger`) of whichever side has the group."""
        side = self.a or self.b
        return arm_label(side) if side is not None else MISSING

    def values(self, metric: Metric) -> tuple[float | None, float | None, float | None]:
        """The metric in A, in B, and B − A (None where either is missing)."""
        a = _finite(metric.read(self.a)) if self.a is not None else None
        b = _finite(metric.read(self.b)) if self.b is not None else None
        return a, b, None if a is None or b is None else b - a


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def label_of(s: GroupSummary) -> Label:
    """The labels a group is joined by across runs."""
    return tuple(getattr(s, key) for key in JOIN_KEYS)


def compare_summaries(a: Sequence[GroupSummary], b: Sequence[GroupSummary]) -> list[ComparedRow]:
    """Groups of A in A's order, each joined to B's group of the same labels; then B's others."""
    by_label_b = {label_of(s): s for s in b}
    seen: set[Label] = set()
    rows = []
    for s in a:
        label = label_of(s)
        seen.add(label)
        rows.append(ComparedRow(label, s, by_label_b.get(label)))
    rows += [ComparedRow(label_of(s), None, s) for s in b if label_of(s) not in seen]
    return rows


def fmt_value(value: float | None, pct: bool) -> str:
    """A figure of one run: `85.0` for shares, `4.52` for scores, `—` when missing."""
    if value is None:
        return MISSING
    return f"{100 * value:.1f}" if pct else f"{value:.2f}"


def fmt_change(value: float | None, pct: bool) -> str:
    """B − A, signed; a change that rounds to nothing shows no sign."""
    if value is None:
        return MISSING
    text = f"{100 * value:.1f}" if pct else f"{value:.2f}"
    if float(text) == 0:
        return text.removeprefix("-")
    return text if text.startswith("-") else f"+{text}"


def compare_headers(metrics: Sequence[Metric]) -> list[str]:
    """Columns of a comparison table: the group's labels, then A, B and B−A per metric."""
    return ["model", "benchmark", "arm", "n A", "n B",
            *(h for m in metrics for h in (f"{m.name} A", "B", "B−A"))]  # fmt: skip


def compare_cells(row: ComparedRow, metrics: Sequence[Metric]) -> list[str]:
    """A comparison row's cells, in `compare_headers` order."""
    cells = [
        str(row.model),
        str(row.benchmark),
        row.arm(),
        MISSING if row.a is None else str(row.a.n_answers),
        MISSING if row.b is None else str(row.b.n_answers),
    ]
    for metric in metrics:
        a, b, change = row.values(metric)
        cells += [
            fmt_value(a, metric.pct),
            fmt_value(b, metric.pct),
            fmt_change(change, metric.pct),
        ]
    return cells


def render_comparison(
    rows: Sequence[ComparedRow], metrics: Sequence[Metric], names: tuple[str, str], console: Console
) -> None:
    """Print the comparison as one rich table; user labels are Text, never markup."""
    if not rows:
        console.print("No scored rows in either run.")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
    for i, header in enumerate(compare_headers(metrics)):
        table.add_column(Text(header), justify="left" if i < 3 else "right", overflow="fold")
    for row in rows:
        table.add_row(*(Text(c) for c in compare_cells(row, metrics)))
    console.print(Text(f"A = {names[0]}   B = {names[1]}", style="bold"))
    console.print(table)
    only_a = sum(r.b is None for r in rows)
    only_b = sum(r.a is None for r in rows)
    console.print(
        Text(
            f"Groups joined by model, arm, dataset, size, seed, condition and benchmark. "
            f"{only_a} group(s) only in A, {only_b} only in B. Shares in %; B−A in points.",
            style="dim",
        )
    )
