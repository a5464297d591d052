"""Fine-tunes that failed, with why: a rejected API job shows the provider's reason."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

COLUMNS = ("model", "arm", "size", "seed", "job_id", "error")


def finetune_errors(store: Any, keys: Collection[str] | None = None) -> list[dict[str, Any]]:
    """The failed fine-tunes of a run directory (of `keys` only, when given), in key order."""
    table = store.finetunes.read(["key", "status", *COLUMNS])
    return [
        row
        for row in table.to_pylist()
        if row["status"] == "error" and (keys is None or row["key"] in keys)
    ]


def render_finetune_errors(rows: list[dict[str, Any]], console: Console) -> None:
    """Print one line per failed fine-tune (nothing when none failed)."""
    if not rows:
        return
    table = Table(pad_edge=False)
    for column in COLUMNS:
        table.add_column(Text(column), overflow="fold")
    for row in rows:
        table.add_row(*(Text("—" if row[c] is None else str(row[c])) for c in COLUMNS))
    console.print(Text("Fine-tunes that failed (not evaluated)", style="bold"))
    console.print(table)
