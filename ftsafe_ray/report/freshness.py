"""Whether a run directory's report files still describe what it holds.

`ftsafe run` ends by writing the report files. A rerun with nothing new to do would draw the
same charts again from the same rows, and at a million answers the charts (PNG files and the
HTML page) take longer than all the rest of the rerun. So the files are written with a record
of their inputs (`report/.inputs.json`): every table's shards (name, size, modification time:
shards never change once written), the content of the records the report reads (spec, plan,
keyword sets, rubric identity: every run writes them again, mostly with the same bytes), the
report's options and the code that draws it. When a rerun finds the same inputs, it keeps the
files.

An input is read before and after the report is computed; when the two differ (a run writing
beside `ftsafe report`), no record is kept, so the next report draws everything again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ftsafe_ray import __version__
from ftsafe_ray.keys import content_key

INPUTS_FILE = ".inputs.json"
_TABLES = ("finetunes", "generations", "judgments")
_RECORDS = ("spec.json", "plan.parquet", "keyword_sets.json", "rubric_identity.json")


def report_inputs(run_dir: Path, options: dict[str, object]) -> str:
    """A fingerprint of everything the report files of `run_dir` are computed from."""
    files: list[tuple[str, int, int]] = []
    for table in _TABLES:
        directory = run_dir / table
        if directory.is_dir():
            files += [_stat(path, run_dir) for path in sorted(directory.glob("part-*.parquet"))]
    records = {name: _digest(run_dir / name) for name in _RECORDS}
    code = sorted(_stat(path, path.parent) for path in Path(__file__).parent.glob("*.py"))
    return content_key(
        "report-inputs",
        {
            "shards": files,
            "records": records,
            "options": options,
            "version": __version__,
            "code": code,
        },
    )


def current_files(out_dir: Path, inputs: str) -> list[Path] | None:
    """The report files written from exactly these inputs, if they are all still there."""
    try:
        record = json.loads((out_dir / INPUTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("inputs") != inputs:
        return None
    files = [out_dir / name for name in record.get("files", [])]
    return files if files and all(path.is_file() for path in files) else None


def record_inputs(out_dir: Path, inputs: str, files: list[Path]) -> None:
    """Say which inputs `files` (in `out_dir`) were written from."""
    from ftsafe_ray.report.files import write_atomic

    record = {"inputs": inputs, "files": [path.name for path in files]}
    write_atomic(out_dir / INPUTS_FILE, json.dumps(record, indent=1) + "\n")


def _digest(path: Path) -> str | None:
    """The sha256 of a file's bytes (None when it is missing)."""
    try:
        with path.open("rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return None


def _stat(path: Path, root: Path) -> tuple[str, int, int]:
    try:
        stat = path.stat()
    except OSError:
        return (path.relative_to(root).as_posix(), -1, -1)
    return (path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns)
