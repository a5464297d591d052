"""A full disk and an unwritable run directory: one clear line, nothing written lost.

The faults are the kernel's own: a file-size limit (RLIMIT_FSIZE) makes every write past it fail
as a full disk does (EFBIG instead of ENOSPC, through the same code path), and a directory made
immutable (`chattr +i`, which binds root too) or, for other users, read-only refuses new files.
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from ftsafe_ray.errors import StoreError
from ftsafe_ray.store import JUDGMENTS, ParquetTable, RunStore
from ftsafe_ray.store.table import ShardBuffer
from tests.fixtures.campaign_files import write_benchmark

REPO = Path(__file__).parents[1]


@contextlib.contextmanager
def file_size_limit(max_bytes: int) -> Iterator[None]:
    """Writes past `max_bytes` in any file fail with EFBIG (Python ignores SIGXFSZ)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@contextlib.contextmanager
def unwritable(directory: Path) -> Iterator[None]:
    """No new file can be made in `directory`, for root as well."""
    if os.geteuid() == 0:
        made = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, text=True)
        if made.returncode != 0:
            pytest.skip(f"chattr +i is not supported here: {made.stderr.strip()}")
        undo = ["chattr", "-i", str(directory)]
    else:
        directory.chmod(0o500)
        undo = ["chmod", "700", str(directory)]
    try:
        yield
    finally:
        subprocess.run(undo, check=True)


def verdict_rows(start: int, n: int, text: str = "placeholder reason") -> list[dict]:
    return [
        {
            "key": f"k{i}",
            "generation_key": f"g{i}",
            "judge": "rubric",
            "status": "ok",
            "score": 1,
            "reason": text,
        }
        for i in range(start, start + n)
    ]


@pytest.mark.reliability(
    fault="The disk fills while a shard is written",
    outcome="one-line error naming the table's directory and the fix; shards already written "
    "intact, no temporary file left, the failed rows kept for the next try",
)
def test_a_full_disk_fails_the_write_in_one_line_and_keeps_what_was_written(tmp_path):
    table = ParquetTable(tmp_path / "judgments", JUDGMENTS)
    first = table.write(verdict_rows(0, 10))
    assert first is not None
    limit = first.stat().st_size + 4096
    buffer = ShardBuffer(table, max_rows=1000)
    rows = verdict_rows(10, 50)
    for row in rows:
        row["reason"] = os.urandom(2000).hex()  # incompressible: the shard outgrows the limit
    buffer.add(rows)
    with file_size_limit(limit), pytest.raises(StoreError) as failed:
        buffer.flush()
    message = str(failed.value)
    assert "\n" not in message
    assert str(table.directory) in message and "File too large" in message
    assert "free disk space" in message and "rerun" in message
    assert list(table.directory.glob(".inprogress-*")) == []
    assert sorted(table.directory.iterdir()) == [first]
    assert pq.read_table(first).num_rows == 10
    assert {row["key"] for row in table.rows()} == {f"k{i}" for i in range(10)}
    # The rows that could not be written are still pending: once there is room they land.
    assert len(buffer.pending) == 50
    buffer.flush()
    assert table.count() == 60


def test_a_full_disk_while_recording_the_spec_is_one_line_and_leaves_the_old_spec(tmp_path):
    store = RunStore(tmp_path / "run")
    store.freeze_spec({"name": "first"}, "aaaa")
    with file_size_limit(64), pytest.raises(StoreError, match=r"cannot write .*File too large"):
        store.freeze_spec({"name": "second", "padding": "x" * 1000}, "bbbb")
    assert '"first"' in (store.root / "spec.json").read_text()
    assert not list(store.root.rglob(".*.tmp"))


def write_campaign(directory: Path, model_dir: Path) -> Path:
    write_benchmark(directory / "bench.jsonl", [("c", f"placeholder ask {i}") for i in range(4)])
    spec = {
        "name": "unwritable",
        "output_dir": "run",
        "models": [{"name": "tiny", "path": str(model_dir)}],
        "benchmarks": [{"name": "b", "source": "bench.jsonl"}],
        "sampling": {"max_new_tokens": 4},
        "generation": {"num_cpus": 1},
    }
    path = directory / "campaign.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def ftsafe_run(campaign: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}
    return subprocess.run(
        [sys.executable, "-m", "ftsafe_ray.cli", "run", str(campaign)],
        cwd=campaign.parent,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.slow
@pytest.mark.reliability(
    fault="A table directory of the run becomes unwritable mid-run (`ftsafe run`, real Ray)",
    outcome="exit code 2 and one line naming the directory and the fix, no traceback; what was "
    "written reads whole, and the rerun resumes without redoing it",
)
def test_an_unwritable_table_directory_stops_the_run_with_one_line(tmp_path, tiny_model_dir):
    campaign = write_campaign(tmp_path, tiny_model_dir)
    judgments = tmp_path / "run" / "judgments"
    judgments.mkdir(parents=True)
    with unwritable(judgments):
        failed = ftsafe_run(campaign)
    assert failed.returncode == 2, failed.stderr[-3000:]
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, failed.stderr[-3000:]
    assert str(judgments) in errors[0] and "make the directory writable" in errors[0]
    assert "Traceback" not in failed.stderr
    store = RunStore(tmp_path / "run")
    answered = store.answered_keys()
    assert len(answered) == 4  # generation finished before the judge stage failed
    shards = sorted((tmp_path / "run" / "generations").glob("part-*.parquet"))
    assert all(pq.read_table(shard).num_rows for shard in shards)

    rerun = ftsafe_run(campaign)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert sorted((tmp_path / "run" / "generations").glob("part-*.parquet")) == shards
    assert {row["generation_key"] for row in store.judgments.rows()} == answered
