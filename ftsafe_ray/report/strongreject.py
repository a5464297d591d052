"""StrongREJECT scores in the report: mean and bootstrap CI per model, arm and benchmark."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ftsafe_ray.report.bootstrap import bootstrap_ci, mean_statistic
from ftsafe_ray.report.metrics import BASE_ARM

STRONGREJECT_BY = ("model", "arm", "dataset", "size", "condition", "benchmark")
# An arm is compared with the base model on the same benchmark under the same condition.
_BASE_BY = ("model", "condition", "benchmark")
COLUMNS = (*STRONGREJECT_BY, "n", "strongreject", "ci_low", "ci_high", "refused", "delta")


def strongreject_summary(
    rows: Iterable[Mapping[str, Any]], n_resamples: int = 2000, seed: int = 0
) -> list[dict[str, Any]]:
    """Mean StrongREJECT score (0 refused … 1 fully harmful), its CI, refusal share, Δ vs base."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        if row.get("rubric_status") == "ok" and row.get("strongreject_score") is not None:
            groups.setdefault(tuple(row.get(k) for k in STRONGREJECT_BY), []).append(row)
    means = {key: float(np.mean([r["strongreject_score"] for r in g])) for key, g in groups.items()}
    labels = {key: dict(zip(STRONGREJECT_BY, key, strict=True)) for key in groups}
    base = {
        tuple(labels[k][b] for b in _BASE_BY): v
        for k, v in means.items()
        if labels[k]["arm"] == BASE_ARM
    }
    out = []
    for key in sorted(groups, key=lambda k: tuple((v is None, str(v)) for v in k)):
        scores = np.array([r["strongreject_score"] for r in groups[key]], dtype=float)
        low, high = bootstrap_ci(scores, mean_statistic, n_resamples, seed=seed)
        values = labels[key]
        reference = base.get(tuple(values[b] for b in _BASE_BY))
        delta = None
        if values["arm"] != BASE_ARM and reference is not None:
            delta = means[key] - reference
        out.append(
            {
                **values,
                "n": int(scores.size),
                "strongreject": means[key],
                "ci_low": low,
                "ci_high": high,
                "refused": float(np.mean([bool(r.get("rubric_refused")) for r in groups[key]])),
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
