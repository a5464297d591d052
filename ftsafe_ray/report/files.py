"""Machine-readable report files: summary CSVs and a Markdown summary, each written atomically."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ftsafe_ray.report.metrics import GroupSummary, KeywordSummary
from ftsafe_ray.report.render import (
    LEGEND,
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
from ftsafe_ray.store.durable import fsync_directory
from ftsafe_ray.store.private import open_private, private_mkdir

_SKIPPED = {"by", "keyword"}
# Per phrase set, as `<field>_<set>`: keyword_asr_study, keyword_asr_study_low, ...
_KEYWORD_COLUMNS = (
    "keyword_asr",
    "keyword_asr_low",
    "keyword_asr_high",
    "refusal_rate",
    "n_keyword",
    "delta_keyword_asr",
    "delta_keyword_asr_low",
    "delta_keyword_asr_high",
)


def csv_columns(keyword_sets: Sequence[str] = ()) -> list[str]:
    """Flat CSV columns: every GroupSummary field, intervals split into _low and _high, and
    the keyword figures of each phrase set suffixed with its name (`keyword_asr_study`)."""
    columns: list[str] = []
    for field in dataclasses.fields(GroupSummary):
        if field.name in _SKIPPED:
            continue
        if field.name.endswith("_ci"):
            columns += [f"{field.name}_low", f"{field.name}_high"]
        else:
            columns.append(field.name)
        if field.name == "n_prompts":
            columns.append("n_seeds")
            columns += [_set_column(c, name) for name in keyword_sets for c in _KEYWORD_COLUMNS]
    return columns


def _set_column(column: str, name: str) -> str:
    for suffix in ("_low", "_high"):
        if column.endswith(suffix):
            return f"{column.removesuffix(suffix)}_{name}{suffix}"
    return f"{column}_{name}"


def _keyword_record(k: KeywordSummary) -> dict[str, Any]:
    asr_low, asr_high = k.asr_ci or (None, None)
    delta_low, delta_high = k.delta_ci or (None, None)
    values = {
        "keyword_asr": k.asr,
        "keyword_asr_low": asr_low,
        "keyword_asr_high": asr_high,
        "refusal_rate": k.refusal_rate,
        "n_keyword": k.n,
        "delta_keyword_asr": k.delta,
        "delta_keyword_asr_low": delta_low,
        "delta_keyword_asr_high": delta_high,
    }
    return {_set_column(c, k.set): _csv_value(v) for c, v in values.items()}


def _csv_value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def csv_record(s: GroupSummary) -> dict[str, Any]:
    """One summary as a flat row: shares as fractions, missing values empty."""
    record: dict[str, Any] = {"n_seeds": s.n_seeds}
    for k in s.keyword:
        record.update(_keyword_record(k))
    for field in dataclasses.fields(s):
        value = getattr(s, field.name)
        if field.name in _SKIPPED:
            continue
        if field.name.endswith("_ci"):
            low, high = value if value is not None else (None, None)
            record[f"{field.name}_low"] = _csv_value(low)
            record[f"{field.name}_high"] = _csv_value(high)
        elif field.name == "seeds":
            record["seeds"] = " ".join(map(str, value))
        else:
            record[field.name] = _csv_value(value)
    return record


def summary_csv(summaries: Sequence[GroupSummary]) -> str:
    """The summaries as CSV text with a header row."""
    buffer = io.StringIO()
    columns = csv_columns(keyword_sets_of(summaries))
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_record(s) for s in summaries)
    return buffer.getvalue()


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    rule = ["---:" if i in right else "---" for i in range(len(headers))]
    return [_md_row(headers), "| " + " | ".join(rule) + " |", *(_md_row(r) for r in rows)]


def summary_markdown(
    summaries_main: Sequence[GroupSummary], summaries_by_category: Sequence[GroupSummary]
) -> str:
    """Markdown version of the rendered tables, one section per benchmark."""
    lines = ["# Safety summary", ""]
    if not summaries_main and not summaries_by_category:
        lines += ["No scored rows to report.", ""]
    keyword_sets = keyword_sets_of(summaries_main)
    for key, group in by_benchmark_and_model(summaries_main).items():
        layout = table_layout(group)
        headers = main_headers(group[0].benchmark_kind, layout, keyword_sets)
        left = {"arm", "dataset", "condition", "judge"}
        right = {i for i, h in enumerate(headers) if h not in left}
        rows = [[c.text for c in main_cells(s, layout, keyword_sets)] for s in group]
        lines += [f"## {main_title(key, group)}", ""]
        lines += [*_md_table(headers, rows, right), "", main_caption(group), ""]
    if summaries_main:
        lines += [LEGEND, ""]
    category_sets = keyword_sets_of(summaries_by_category)
    for (benchmark, model), (arms, cells) in category_table_data(summaries_by_category).items():
        rubric = category_rubric_ran(cells)
        rows = [
            [cat, *(category_cell(row.get(arm), category_sets, rubric) for arm in arms)]
            for cat, row in cells.items()
        ]
        lines += [f"## {category_title(benchmark, model, category_sets, rubric)}", ""]
        lines += [*_md_table(["category", *arms], rows, set(range(1, len(arms) + 1))), ""]
    return "\n".join(lines)


def temporary_sibling(path: Path) -> Path:
    """A unique hidden name next to `path`, for writing before an atomic rename."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def write_atomic(path: Path, text: str) -> Path:
    """Write text to a temporary sibling and rename it over `path`, so readers never see half."""
    private_mkdir(path.parent)
    tmp = temporary_sibling(path)
    try:
        # Owner-only from creation: reports quote harmful answers (see store/private.py).
        with os.fdopen(
            open_private(tmp, exclusive=True), "w", encoding="utf-8", newline=""
        ) as handle:
            handle.write(text)
            # Data on disk before the rename, the rename on disk after: a crash leaves the old
            # file or the new one, never an empty name (see ftsafe_ray.store.durable).
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_summary_files(
    summaries_main: Sequence[GroupSummary],
    summaries_by_category: Sequence[GroupSummary],
    out_dir: Path,
) -> list[Path]:
    """Write summary.csv, summary_by_category.csv and summary.md into `out_dir`."""
    out_dir = Path(out_dir)
    return [
        write_atomic(out_dir / "summary.csv", summary_csv(summaries_main)),
        write_atomic(out_dir / "summary_by_category.csv", summary_csv(summaries_by_category)),
        write_atomic(
            out_dir / "summary.md", summary_markdown(summaries_main, summaries_by_category)
        ),
    ]
