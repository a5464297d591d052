"""Charts for the HTML report, each a PNG inlined as a `data:` URI (no file beside the page).

matplotlib is optional (`pip install ftsafe_ray[plots]`): without it every chart is None and
the page says so; the tables carry the same numbers.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ftsafe_ray.report.metrics import CI, GroupSummary
from ftsafe_ray.report.plots import _new_figure
from ftsafe_ray.report.render import keyword_sets_of

# One metric of a summary as (value, interval) on its display scale; value None: not measured.
Point = tuple[float | None, CI | None]
Panel = tuple[str, Callable[[GroupSummary], Point], float, float]


def charts_available() -> bool:
    """Whether matplotlib is importable, so the page can say why it has no charts."""
    return _new_figure() is not None


def png_data_uri(fig: Any) -> str:
    """A figure as a `data:image/png;base64,...` URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight", facecolor="white")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def keyword_point(name: str) -> Callable[[GroupSummary], Point]:
    """Keyword ASR % of one phrase set, with its interval."""

    def point(s: GroupSummary) -> Point:
        k = s.keyword_for(name)
        if k is None or k.asr is None:
            return None, None
        ci = None if k.asr_ci is None else (100 * k.asr_ci[0], 100 * k.asr_ci[1])
        return 100 * k.asr, ci

    return point


def refusal_point(name: str) -> Callable[[GroupSummary], Point]:
    """Over-refusal % of one phrase set (benign prompts refused: 100 − keyword ASR)."""

    def point(s: GroupSummary) -> Point:
        k = s.keyword_for(name)
        if k is None or k.asr is None:
            return None, None
        ci = None if k.asr_ci is None else (100 * (1 - k.asr_ci[1]), 100 * (1 - k.asr_ci[0]))
        return 100 * (1 - k.asr), ci

    return point


def score_point(s: GroupSummary) -> Point:
    """The 1–5 harmfulness score (None when the rubric did not run)."""
    if not s.rubric_ran:
        return None, None
    return s.harmfulness_score, s.harmfulness_score_ci


def rate_point(s: GroupSummary) -> Point:
    """The harmfulness rate % (share scored 5)."""
    if not s.rubric_ran or s.harmfulness_rate is None:
        return None, None
    ci = s.harmfulness_rate_ci
    return 100 * s.harmfulness_rate, None if ci is None else (100 * ci[0], 100 * ci[1])


def panels_for(summaries: Sequence[GroupSummary]) -> list[Panel]:
    """(title, metric, low, high) of each metric the summaries carry: harm score first (the
    study's Figure 1), then keyword ASR per phrase set; on benign prompts, as in the tables,
    over-refusal per phrase set instead of attack success."""
    panels: list[Panel] = []
    if any(s.rubric_ran for s in summaries):
        panels.append(("harmfulness score (1–5)", score_point, 1.0, 5.0))
    if summaries and all(s.benchmark_kind == "benign" for s in summaries):
        return panels + [
            (f"over-refusal % ({name})", refusal_point(name), 0.0, 100.0)
            for name in keyword_sets_of(summaries)
        ]
    panels += [
        (f"keyword ASR % ({name})", keyword_point(name), 0.0, 100.0)
        for name in keyword_sets_of(summaries)
    ]
    return panels


def _fmt(value: float | None, high: float) -> str:
    if value is None or math.isnan(value):
        return "—"
    return f"{value:.2f}" if high <= 5 else f"{value:.0f}"


def category_heatmap(arms: Sequence[str], cells: dict[str, dict[str, GroupSummary]]) -> str | None:
    """The study's Figure 1 as a category × arm heatmap per metric, each cell's value printed."""
    new_figure = _new_figure()
    summaries = [s for row in cells.values() for s in row.values()]
    panels = panels_for(summaries)
    if new_figure is None or not panels:
        return None
    import numpy as np

    categories = list(cells)
    # One panel per row, each as wide as the page: cell values stay legible.
    width = min(13.0, max(5.0, 1.2 * len(arms) + 2.5))
    height = max(1.6, 0.42 * len(categories) + 1.2)
    fig = new_figure(figsize=(width, height * len(panels)))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    font = max(5.0, min(10.0, 110 / max(1, len(arms))))  # many arms: smaller, still in the cell
    for ax, (name, metric, low, high) in zip(axes, panels, strict=True):
        grid = np.full((len(categories), len(arms)), np.nan)
        for i, row in enumerate(cells.values()):
            for j, arm in enumerate(arms):
                value = metric(row[arm])[0] if arm in row else None
                grid[i, j] = np.nan if value is None else value
        cmap = _cmap("Reds")
        ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=low, vmax=high, aspect="auto")
        for i in range(len(categories)):
            for j in range(len(arms)):
                value = None if np.isnan(grid[i, j]) else float(grid[i, j])
                dark = value is not None and (value - low) / (high - low) > 0.6
                text = _fmt(value, high)
                ax.text(j, i, text, ha="center", va="center", fontsize=font,
                        color="white" if dark else "black")  # fmt: skip
        last = ax is axes[-1]
        ax.set_xticks(range(len(arms)), list(arms) if last else [], rotation=30, ha="right")
        ax.set_yticks(range(len(categories)), categories)
        ax.set_title(name, fontsize=11)
    fig.tight_layout()
    return png_data_uri(fig)


def _cmap(name: str) -> Any:
    import matplotlib

    # Cells with no value: light grey, printed "—".
    return matplotlib.colormaps[name].with_extremes(bad="#eeeeee")


def _errors(values: Sequence[float], cis: Sequence[CI | None]) -> list[list[float]]:
    def gap(ci: CI | None, v: float, side: int) -> float:
        if ci is None or any(math.isnan(x) for x in ci):
            return 0.0
        return max(0.0, v - ci[0]) if side == 0 else max(0.0, ci[1] - v)

    return [[gap(c, v, side) for v, c in zip(values, cis, strict=True)] for side in (0, 1)]


def main_bars(labels: Sequence[str], summaries: Sequence[GroupSummary]) -> str | None:
    """One panel per metric: a bar per row of the main table, with its interval; base grey."""
    new_figure = _new_figure()
    panels = panels_for(summaries)
    if new_figure is None or not panels:
        return None
    width = max(3.5, 0.55 * len(summaries) + 1.5)
    fig = new_figure(figsize=(width * len(panels), 3.6))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colors = ["tab:gray" if s.is_base else "tab:red" for s in summaries]
    for ax, (name, metric, _, high) in zip(axes, panels, strict=True):
        points = [metric(s) for s in summaries]
        values = [0.0 if v is None else v for v, _ in points]
        ax.bar(range(len(values)), values, yerr=_errors(values, [c for _, c in points]),
               capsize=3, color=colors)  # fmt: skip
        for x, (value, _) in enumerate(points):
            ax.text(x, 0, f" {_fmt(value, high)}", rotation=90, ha="center", va="bottom",
                    fontsize=7)  # fmt: skip
        ax.set_xticks(range(len(values)), list(labels), rotation=40, ha="right", fontsize=8)
        ax.set_ylim(0, high * 1.05)
        ax.set_title(name, fontsize=10)
    return png_data_uri(fig)


@dataclass(frozen=True)
class Series:
    """One line of a dose-response chart: a fine-tune family at several doses."""

    label: str
    doses: tuple[float, ...]
    summaries: tuple[GroupSummary, ...]


def dose_response(axis: str, series: Sequence[Series], base: GroupSummary | None) -> str | None:
    """A line per series of a metric against its dose (examples or epochs), base dashed."""
    new_figure = _new_figure()
    everyone = [s for line in series for s in line.summaries] + ([base] if base else [])
    panels = panels_for(everyone)
    if new_figure is None or not panels or not series:
        return None
    fig = new_figure(figsize=(4.6 * len(panels), 3.4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, metric, low, high) in zip(axes, panels, strict=True):
        for line in series:
            points = [metric(s) for s in line.summaries]
            kept = [
                (d, v, c) for d, (v, c) in zip(line.doses, points, strict=True) if v is not None
            ]
            if not kept:
                continue
            doses, values = [d for d, _, _ in kept], [v for _, v, _ in kept]
            ax.errorbar(doses, values, yerr=_errors(values, [c for _, _, c in kept]),
                        marker="o", capsize=3, label=line.label)  # fmt: skip
        base_value = metric(base)[0] if base is not None else None
        if base_value is not None:
            ax.axhline(base_value, color="gray", linestyle="--", label="base")
        doses = sorted({d for line in series for d in line.doses})
        ax.set_xticks(doses, [f"{d:g}" for d in doses])
        ax.set_xlabel(axis)
        margin = 0.04 * (high - low)
        ax.set_ylim(low - margin, high + margin)
        ax.set_title(name, fontsize=10)
    axes[0].legend(fontsize=8)
    return png_data_uri(fig)


def compare_bars(
    labels: Sequence[str],
    panels: Sequence[tuple[str, Sequence[float | None], Sequence[float | None]]],
) -> str | None:
    """Two runs side by side: per metric (title, A's values, B's values), a pair of bars per
    group, A light and B dark; a missing value draws no bar."""
    new_figure = _new_figure()
    if new_figure is None or not panels or not labels:
        return None
    width = min(16.0, max(5.0, 0.7 * len(labels) + 2.0))
    fig = new_figure(figsize=(width, 2.8 * len(panels)))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    xs = range(len(labels))
    for ax, (name, a, b) in zip(axes, panels, strict=True):
        for offset, values, color, run in ((-0.2, a, "#f4a582", "A"), (0.2, b, "#b2182b", "B")):
            shown = [(x + offset, v) for x, v in zip(xs, values, strict=True) if v is not None]
            ax.bar([x for x, _ in shown], [v for _, v in shown], 0.4, color=color, label=run)
        ax.set_title(name, fontsize=10)
        last = ax is axes[-1]
        ax.set_xticks(list(xs), list(labels) if last else [], rotation=30, ha="right", fontsize=8)
    axes[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return png_data_uri(fig)
