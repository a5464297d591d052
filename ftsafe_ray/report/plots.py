"""PNG charts of the summaries; matplotlib is optional (`pip install ftsafe_ray[plots]`)."""

from __future__ import annotations

import functools
import importlib
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ftsafe_ray.report.files import temporary_sibling
from ftsafe_ray.report.metrics import CI, GroupSummary
from ftsafe_ray.report.render import arm_label, category_table_data, keyword_sets_of
from ftsafe_ray.store.private import FILE_MODE, private_mkdir


def _new_figure() -> Any | None:
    """A factory of Agg-backed figures, or None without matplotlib."""
    try:
        figure = importlib.import_module("matplotlib.figure")
        agg = importlib.import_module("matplotlib.backends.backend_agg")
    except ImportError:
        return None

    # Figures bound to an Agg canvas directly: no pyplot, so no global backend or figure registry.
    def new(**kwargs: Any) -> Any:
        fig = figure.Figure(**kwargs)
        agg.FigureCanvasAgg(fig)
        return fig

    return new


def _pct_ci(ci: CI | None) -> CI | None:
    return None if ci is None else (100 * ci[0], 100 * ci[1])


def _slug(text: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "none"


def _errors(values: Sequence[float], cis: Sequence[CI | None]) -> list[list[float]]:
    low = [
        v - ci[0] if ci and not math.isnan(ci[0]) else 0.0
        for v, ci in zip(values, cis, strict=True)
    ]
    high = [
        ci[1] - v if ci and not math.isnan(ci[1]) else 0.0
        for v, ci in zip(values, cis, strict=True)
    ]
    return [low, high]


def _save(fig: Any, path: Path) -> Path:
    private_mkdir(path.parent)
    tmp = temporary_sibling(path)
    try:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        os.chmod(tmp, FILE_MODE)  # owner-only before it takes its name: see store/private.py
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _label(s: GroupSummary, several_models: bool) -> str:
    label = arm_label(s)
    return f"{s.model}\n{label}" if several_models else label


def _bar_chart(
    new_figure: Any, benchmark: str | None, group: list[GroupSummary], path: Path
) -> Path:
    several_models = len({s.model for s in group}) > 1
    labels = [_label(s, several_models) for s in group]
    panels: list[tuple[str, list[float], list[CI | None], float]] = []
    for name in keyword_sets_of(group):
        points = [_asr_panel(s, name) for s in group]
        panels.append(
            (f"keyword ASR % ({name})", [v for v, _ in points], [c for _, c in points], 100.0)
        )
    if any(s.harmfulness_score is not None for s in group):
        score = [s.harmfulness_score or 0.0 for s in group]
        panels.append(
            ("harmfulness score (1–5)", score, [s.harmfulness_score_ci for s in group], 5)
        )
    width = max(4.0, 0.6 * len(group) + 1.5)
    fig = new_figure(figsize=(width * len(panels), 4))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (name, values, cis, top) in zip(axes[0], panels, strict=True):
        colors = ["tab:gray" if s.is_base else "tab:red" for s in group]
        ax.bar(range(len(values)), values, yerr=_errors(values, cis), capsize=3, color=colors)
        ax.set_xticks(range(len(values)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_ylim(0, top * 1.05)
        ax.set_ylabel(name)
        ax.set_title(f"{benchmark}: {name}")
    return _save(fig, path)


def _asr_panel(s: GroupSummary, name: str) -> tuple[float, CI | None]:
    k = s.keyword_for(name)
    if k is None or k.asr is None:
        return 0.0, None
    return 100 * k.asr, _pct_ci(k.asr_ci)


def _score_panel(s: GroupSummary) -> tuple[float, CI | None]:
    return s.harmfulness_score or 0.0, s.harmfulness_score_ci


def _category_chart(
    new_figure: Any,
    title: str,
    arms: list[str],
    cells: dict[str, dict[str, GroupSummary]],
    path: Path,
) -> Path:
    categories = list(cells)
    summaries = [s for row in cells.values() for s in row.values()]
    panels: list[tuple[str, Callable[[GroupSummary], tuple[float, CI | None]], float]] = [
        (f"keyword ASR % ({name})", functools.partial(_asr_panel, name=name), 100.0)
        for name in keyword_sets_of(summaries)
    ]
    if any(s.harmfulness_score is not None for row in cells.values() for s in row.values()):
        panels.append(("harmfulness score (1–5)", _score_panel, 5.0))
    bar = 0.8 / max(1, len(arms))
    width = max(6.0, 0.5 * len(categories) * len(arms) + 2)
    fig = new_figure(figsize=(width, 4.0 * len(panels) + 0.5))
    axes = fig.subplots(len(panels), 1, squeeze=False)
    for ax, (name, panel, top) in zip(axes[:, 0], panels, strict=True):
        for i, arm in enumerate(arms):
            points = [panel(row[arm]) if arm in row else (0.0, None) for row in cells.values()]
            values = [value for value, _ in points]
            errors = _errors(values, [ci for _, ci in points])
            xs = [j + (i - (len(arms) - 1) / 2) * bar for j in range(len(categories))]
            ax.bar(xs, values, bar, yerr=errors, capsize=2, label=arm)
        ax.set_xticks(range(len(categories)), categories, rotation=45, ha="right", fontsize=8)
        ax.set_ylim(0, top * 1.05)
        ax.set_ylabel(name)
    axes[0, 0].set_title(title)
    axes[0, 0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return _save(fig, path)


def write_plots(
    summaries_main: Sequence[GroupSummary],
    summaries_by_category: Sequence[GroupSummary],
    out_dir: Path,
) -> list[Path]:
    """Write per-benchmark and per-category bar charts as PNGs; [] when matplotlib is missing."""
    new_figure = _new_figure()
    if new_figure is None:
        return []
    out_dir = Path(out_dir)
    benchmarks: dict[str | None, list[GroupSummary]] = {}
    for s in summaries_main:
        benchmarks.setdefault(s.benchmark, []).append(s)
    paths = [
        _bar_chart(new_figure, benchmark, group, out_dir / f"asr_{_slug(benchmark)}.png")
        for benchmark, group in benchmarks.items()
    ]
    for (benchmark, model), (arms, cells) in category_table_data(summaries_by_category).items():
        path = out_dir / f"categories_{_slug(benchmark)}_{_slug(model)}.png"
        title = f"{benchmark} · {model}: by category"
        paths.append(_category_chart(new_figure, title, arms, cells, path))
    return paths
