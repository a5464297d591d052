"""StrongREJECT scores in the report: mean and bootstrap CI per model, arm and benchmark."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ftsafe_ray.report.bootstrap_batch import BootstrapBatch
from ftsafe_ray.report.groups import Frame, grouping
from ftsafe_ray.report.metrics import BASE_ARM
from ftsafe_ray.report.scored_rows import ScoredRows, as_scored

STRONGREJECT_BY = ("model", "arm", "dataset", "size", "condition", "benchmark")
# An arm is compared with the base model on the same benchmark under the same condition.
_BASE_BY = ("model", "condition", "benchmark")
COLUMNS = (*STRONGREJECT_BY, "n", "strongreject", "ci_low", "ci_high", "refused", "delta")


def strongreject_summary(
    rows: ScoredRows | Iterable[Mapping[str, Any]], n_resamples: int = 2000, seed: int = 0
) -> list[dict[str, Any]]:
    """Mean StrongREJECT score (0 refused … 1 fully harmful), its CI, refusal share, Δ vs base."""
    scored = as_scored(rows)
    frame = Frame(scored, ())
    scores = frame.floats("strongreject_score")
    refused = np.nan_to_num(Frame.flags(scored.column("rubric_refused"))) == 1
    groups = grouping(
        scored, STRONGREJECT_BY, np.flatnonzero((frame.statuses == 0) & ~np.isnan(scores))
    )
    found = sorted(
        range(groups.size), key=lambda g: tuple((v is None, str(v)) for v in groups.keys[g])
    )
    labels = [dict(zip(STRONGREJECT_BY, groups.keys[g], strict=True)) for g in found]
    members = [groups.rows[g] for g in found]
    means = [float(np.mean(scores[m])) for m in members]
    base = {
        tuple(values[b] for b in _BASE_BY): mean
        for values, mean in zip(labels, means, strict=True)
        if values["arm"] == BASE_ARM
    }
    intervals = BootstrapBatch(n_resamples, seed=seed)
    tickets = [intervals.mean(scores[m]) for m in members]
    solved = intervals.solve()
    out = []
    for group, values, mean, ticket in zip(members, labels, means, tickets, strict=True):
        reference = base.get(tuple(values[b] for b in _BASE_BY))
        delta = None
        if values["arm"] != BASE_ARM and reference is not None:
            delta = mean - reference
        low, high = solved[ticket]
        out.append(
            {
                **values,
                "n": int(group.size),
                "strongreject": mean,
                "ci_low": low,
                "ci_high": high,
                "refused": float(np.mean(refused[group])),
                "delta": delta,
            }
        )
    return out


def write_strongreject_file(summary: Sequence[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """Write strongreject.csv when there is anything to write."""
    from ftsafe_ray.report.files import write_atomic
    from ftsafe_ray.report.judge_health import _csv

    if not summary:
        return []
    return [write_atomic(out_dir / "strongreject.csv", _csv(summary, COLUMNS))]


def arm_text(s: Mapping[str, Any]) -> str:
    """The arm's name, with its evaluation condition when the campaign names conditions."""
    condition = s.get("condition")
    return str(s["arm"]) if condition is None else f"{s['arm']} @{condition}"


def render_strongreject(summary: Sequence[Mapping[str, Any]], console: Console) -> None:
    """Print the StrongREJECT table (nothing when no row has a StrongREJECT verdict)."""
    if not summary:
        return
    table = Table(pad_edge=False)
    headers = ("model", "arm", "size", "benchmark", "n", "StrongREJECT [CI]", "Δ", "refused %")
    for i, header in enumerate(headers):
        table.add_column(Text(header), justify="left" if i < 4 and i != 2 else "right")
    for s in summary:
        delta = "" if s["delta"] is None else f"{s['delta']:+.2f}"
        table.add_row(
            Text(str(s["model"])), Text(arm_text(s)),
            "" if s["size"] is None else str(s["size"]), Text(str(s["benchmark"])),
            str(s["n"]), f"{s['strongreject']:.2f} [{s['ci_low']:.2f}–{s['ci_high']:.2f}]",
            delta, f"{100 * s['refused']:.1f}",
        )  # fmt: skip
    console.print(Text("StrongREJECT score (0 = refused … 1 = specific, convincing help)", "bold"))
    console.print(table)
