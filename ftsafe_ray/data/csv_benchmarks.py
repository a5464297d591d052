"""Benchmark CSV files (HEx-PHI, AdvBench, HarmBench, plain CSV), read with damage checks.

Real benchmark CSVs get damaged in ways the csv module reads without complaint: a stray or
missing quote glues rows together, an unquoted comma shifts columns, a header row becomes a
prompt. Every loader here reads rows with `csv_rows`, which records each row's first physical
line and checks its quoting, and then checks the row's shape against the format, so that bad
input stops with `FILE:LINE: what is wrong; how to fix it` instead of turning into prompts.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from ftsafe_ray.data.categories import HEX_PHI_CATEGORIES
from ftsafe_ray.data.files import read_data_text
from ftsafe_ray.data.records import BenchmarkItem
from ftsafe_ray.errors import DataError

Rows = list[tuple[int, list[str]]]
CSV_FORMATS: tuple[str, ...] = ("hexphi", "advbench", "harmbench", "csv")
HEXPHI_FILE = re.compile(r"category_(\d+)$")
_HARMBENCH_NEEDED = ("Behavior", "SemanticCategory", "BehaviorID")
# Every AdvBench target opens with "Sure, here"; seen inside a goal after a comma, it is the
# target glued into the goal by a stray quote (the row then also has too few fields). Case
# and comma are matched exactly so that a goal merely quoting the phrase is not caught.
_GLUED_TARGET = re.compile(r',\s*"?Sure, here\b')
# First cells that name a column rather than ask something: a headerless HEx-PHI file that
# starts with one of these is a headered CSV given the wrong format.
_HEADER_WORDS = frozenset(
    {"goal", "prompt", "prompts", "behavior", "question", "instruction", "request", "text"}
)


def csv_rows(text: str, source: str) -> Rows:
    """Parse CSV text into (first physical line, row) pairs, skipping blank rows.

    Raises DataError naming FILE:LINE when the quoting is damaged (see `_check_quoting`).
    """
    lines = io.StringIO(text).readlines()
    reader = csv.reader(io.StringIO(text))
    rows: Rows = []
    start = 1
    try:
        for row in reader:
            end = reader.line_num
            # Only a record that spans lines or ends the file can hide a quote that swallowed
            # other rows; checking just those keeps one-line oddities readable as before.
            if end > start or end == len(lines):
                _check_quoting(lines, start, end, source)
            if any(cell.strip() for cell in row):
                rows.append((start, row))
            start = end + 1
    except csv.Error as exc:
        if "field limit" in str(exc):
            raise DataError(
                f"{source}:{start}: a field starting on this line runs past line "
                f"{reader.line_num} ({exc}); a quote opened on line {start} is probably never "
                'closed; close it (write a quote inside a quoted field as "")'
            ) from exc
        raise DataError(
            f"{source}:{reader.line_num}: bad CSV ({exc}); re-save the file as plain UTF-8 CSV"
        ) from exc
    return rows


def _check_quoting(lines: list[str], start: int, end: int, source: str) -> None:
    """Re-read one record strictly and raise DataError if its quoting is damaged.

    The lenient reader accepts two things a well-formed CSV never has, and both are how a bad
    quote merges records: a quoted field still open at the end of the file (an unterminated
    quote; everything after it became one field), and a closing quote followed by more text
    instead of a comma or the line end (the quote that "closed" the field was really the
    opening quote of a later record). A strict re-read raises on exactly those. A multi-line
    quoted field that opens and closes cleanly passes: it may be a real multi-line prompt
    (HarmBench contexts are), and nothing in it tells a merge apart, so it is left alone.
    A one-line record with text after a closing quote (`"Title" rest`) merges nothing and is
    read leniently, as before.
    """
    strict = csv.reader(io.StringIO("".join(lines[start - 1 : end])), strict=True)
    try:
        for _ in strict:
            pass
    except csv.Error as exc:
        span = f"line {start}" if end == start else f"lines {start}-{end}"
        if "unexpected end of data" in str(exc):
            raise DataError(
                f"{source}:{start}: a quote opened on this line is never closed, so {span} "
                "(to the end of the file) became one field; close the quote "
                '(write a quote inside a quoted field as "")'
            ) from None
        if end > start:
            bad = start + strict.line_num - 1
            raise DataError(
                f"{source}:{start}: damaged quoting: a quoted field opened on this line is closed "
                f"mid-text on line {bad}, so {span} were read as one record; fix the missing or "
                'stray quote (write a quote inside a quoted field as "")'
            ) from None


def detect_csv_format(rows: Rows, source: str, stem: str) -> str:
    """Pick advbench/harmbench by the header, hexphi by the category_N file name, else fail.

    Anything else must say what it is: guessing "headerless" would read a header row as a
    prompt, and joining a row's cells would glue columns into one prompt.
    """
    if not rows:
        return "hexphi"  # nothing to tell apart; the loader reports the empty benchmark
    header = [c.strip().lower() for c in rows[0][1]]
    if header[:2] == ["goal", "target"]:
        return "advbench"
    if "behavior" in header and "behaviorid" in header:
        return "harmbench"
    if HEXPHI_FILE.fullmatch(stem):
        return "hexphi"
    first = ",".join(rows[0][1]).strip()[:60]
    raise DataError(
        f'{source}: cannot tell this CSV\'s layout (first row: "{first}"); set format: csv '
        "and prompt_column: <header> for a CSV with a header row, or format: hexphi for a "
        "headerless file with one prompt per line"
    )


def load_csv_benchmark(
    path: Path,
    source: str,
    format: str,
    prompt_column: str | None = None,
    category_column: str | None = None,
) -> list[BenchmarkItem]:
    """Load one benchmark CSV in the given format ("auto" picks by header or file name)."""
    rows = csv_rows(read_data_text(path, source), source)
    fmt = detect_csv_format(rows, source, path.stem) if format == "auto" else format
    if fmt == "csv":
        return parse_plain_csv(rows, source, path.stem, prompt_column, category_column)
    if fmt == "advbench":
        return parse_advbench(rows, source, path.stem)
    if fmt == "harmbench":
        return parse_harmbench(rows, source, path.stem)
    return parse_hexphi_csv(rows, source, path.stem)


def hexphi_category(stem: str) -> str:
    """Map a HEx-PHI file stem like "category_3" to its slug; otherwise return the stem."""
    match = HEXPHI_FILE.fullmatch(stem)
    slugs = {num: slug for num, slug, _ in HEX_PHI_CATEGORIES}
    return slugs.get(int(match.group(1)), stem) if match else stem


def parse_hexphi_csv(rows: Rows, source: str, stem: str) -> list[BenchmarkItem]:
    """Parse a headerless one-prompt-per-row CSV (HEx-PHI style)."""
    if rows and rows[0][1] and rows[0][1][0].strip().lower() in _HEADER_WORDS:
        first = ",".join(rows[0][1]).strip()[:60]
        raise DataError(
            f'{source}:{rows[0][0]}: the first row ("{first}") looks like a header, but a '
            "HEx-PHI file has none; use format: advbench or harmbench for those files, or "
            "format: csv with prompt_column for another CSV with a header row"
        )
    category = hexphi_category(stem)
    # HEx-PHI has one column; a row with several cells is a prompt with unquoted commas,
    # so the cells are joined back with the commas the reader split them at.
    prompts = [",".join(row).strip() for _, row in rows]
    return [BenchmarkItem(f"{stem}-{idx}", category, p) for idx, p in enumerate(prompts)]


def parse_hexphi_dir(path: Path, source: str) -> list[BenchmarkItem]:
    """Parse a HEx-PHI directory of category_N.csv files in category order."""
    if not path.is_dir():
        raise DataError(f'{source}: format "hexphi_dir" needs a directory of category_N.csv files')
    files = [p for p in path.glob("*.csv") if HEXPHI_FILE.fullmatch(p.stem)]
    if not files:
        raise DataError(f"{source}: no category_N.csv files in this directory; add some")
    files.sort(key=lambda p: int(p.stem.split("_")[1]))
    items: list[BenchmarkItem] = []
    for f in files:
        display = f"{source.rstrip('/')}/{f.name}"
        rows = csv_rows(read_data_text(f, display), display)
        items.extend(parse_hexphi_csv(rows, display, f.stem))
    return items


def _header(rows: Rows, source: str) -> tuple[int, list[str]]:
    """Return the header's line number and its stripped column names."""
    if not rows:
        raise DataError(f"{source}: empty CSV; the first row must be a header")
    return rows[0][0], [c.strip() for c in rows[0][1]]


def _find(header: list[str], name: str) -> int | None:
    """Position of a column by exact name, else by a case-insensitive match."""
    if name.strip() in header:
        return header.index(name.strip())
    lowered = [c.lower() for c in header]
    return lowered.index(name.strip().lower()) if name.strip().lower() in lowered else None


def _header_index(
    rows: Rows, source: str, needed: tuple[str, ...], optional: tuple[str, ...]
) -> dict[str, int]:
    """Map column names to positions, raising DataError naming any missing column."""
    lineno, header = _header(rows, source)
    index: dict[str, int] = {}
    for name in needed + optional:
        pos = _find(header, name)
        if pos is not None:
            index[name] = pos
        elif name in needed:
            raise DataError(
                f'{source} line {lineno}: column "{name}" missing from the header; '
                f"the header must include {', '.join(needed)}"
            )
    return index


def _check_width(row: list[str], lineno: int, rows: Rows, source: str) -> None:
    """Raise DataError if a data row has fewer fields than the header, or extra filled ones.

    In a headered CSV a short row is the usual trace of a quote that merged fields (or rows),
    and a long one of a comma outside quotes; either way the cells no longer line up with the
    columns. Extra empty cells (a trailing comma) are harmless and allowed.
    """
    header_line, header = _header(rows, source)
    width = len(header)
    if len(row) >= width and not any(c.strip() for c in row[width:]):
        return
    got = f"{len(row)} field{'s' if len(row) != 1 else ''}"
    shape = f"the header on line {header_line} has {width} ({', '.join(header)})"
    if len(row) < width:
        fix = "a stray or missing quote merged fields; fix the quoting on this line"
    else:
        fix = 'a comma outside quotes split a field; quote fields that hold a comma ("a, b")'
    raise DataError(f"{source}:{lineno}: {got}, but {shape}; {fix}")


def _cell(row: list[str], index: dict[str, int], name: str, where: str, required: bool) -> str:
    """Return a stripped cell, raising DataError if a required cell is empty."""
    pos = index.get(name)
    value = row[pos].strip() if pos is not None and pos < len(row) else ""
    if required and not value:
        raise DataError(f'{where}: field "{name}" is empty; give every row a value')
    return value


def parse_advbench(rows: Rows, source: str, stem: str) -> list[BenchmarkItem]:
    """Parse AdvBench harmful_behaviors.csv (header goal,target; the target is never read)."""
    index = _header_index(rows, source, ("goal",), ("target",))
    items = []
    for idx, (lineno, row) in enumerate(rows[1:]):
        goal = row[index["goal"]] if index["goal"] < len(row) else ""
        if _GLUED_TARGET.search(goal):
            raise DataError(
                f'{source}:{lineno}: the goal contains ",Sure, here": its target was glued into '
                "it by a stray or missing quote; quote the goal and the target separately "
                '("goal text","Sure, here is ...")'
            )
        _check_width(row, lineno, rows, source)
        prompt = _cell(row, index, "goal", f"{source} line {lineno}", True)
        items.append(BenchmarkItem(item_id=f"{stem}-{idx}", category="advbench", prompt=prompt))
    return items


def parse_harmbench(rows: Rows, source: str, stem: str) -> list[BenchmarkItem]:
    """Parse a HarmBench behaviors CSV (Behavior, SemanticCategory, BehaviorID, ContextString)."""
    index = _header_index(rows, source, _HARMBENCH_NEEDED, ("ContextString",))
    items = []
    for lineno, row in rows[1:]:
        _check_width(row, lineno, rows, source)
        where = f"{source} line {lineno}"
        behavior = _cell(row, index, "Behavior", where, True)
        context = _cell(row, index, "ContextString", where, False)
        prompt = f"{context}\n\n---\n\n{behavior}" if context else behavior
        item_id = _cell(row, index, "BehaviorID", where, True)
        category = _cell(row, index, "SemanticCategory", where, True)
        items.append(BenchmarkItem(item_id=item_id, category=category, prompt=prompt))
    return items


def _named_column(header: list[str], lineno: int, field: str, name: str, source: str) -> int:
    """Position of the column a spec field names, or DataError listing the columns there are."""
    pos = _find(header, name)
    if pos is None:
        raise DataError(
            f'{source}:{lineno}: {field} "{name}" is not in the header; columns: '
            f"{', '.join(header)}; set {field} to one of them"
        )
    return pos


def parse_plain_csv(
    rows: Rows,
    source: str,
    stem: str,
    prompt_column: str | None,
    category_column: str | None,
) -> list[BenchmarkItem]:
    """Parse a CSV with a header row: prompts from one named column, categories from another.

    Without category_column every item's category is the file name (like a HEx-PHI file
    without a category_N name); ids are `<file stem>-<row index>`.
    """
    header_line, header = _header(rows, source)
    if prompt_column is None:
        raise DataError(
            f'{source}: format "csv" needs prompt_column, the header of the prompt column; '
            f"this file's columns: {', '.join(header)}"
        )
    index = {
        prompt_column: _named_column(header, header_line, "prompt_column", prompt_column, source)
    }
    if category_column is not None:
        index[category_column] = _named_column(
            header, header_line, "category_column", category_column, source
        )
    items = []
    for idx, (lineno, row) in enumerate(rows[1:]):
        _check_width(row, lineno, rows, source)
        where = f"{source} line {lineno}"
        prompt = _cell(row, index, prompt_column, where, True)
        category = _cell(row, index, category_column, where, True) if category_column else stem
        items.append(BenchmarkItem(item_id=f"{stem}-{idx}", category=category, prompt=prompt))
    return items
