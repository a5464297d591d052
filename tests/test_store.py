"""Parquet tables: durable atomic shards, one winning row per key, damaged shards skipped."""

import random
import re
import shutil
import subprocess
import sys
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ftsafe_ray.errors import StoreError
from ftsafe_ray.store import (
    DONE_STATUSES,
    SCHEMA_VERSION,
    DamagedShardWarning,
    RunStore,
    ShardBuffer,
)


def test_rows_round_trip_with_provenance(tmp_path):
    store = RunStore(tmp_path / "run", spec_hash="abc")
    store.create()
    path = store.generations.write([{"key": "k1", "prompt": "p", "response": "r", "size": 3}])
    assert path.name.startswith("part-") and path.suffix == ".parquet"
    metadata = pq.read_schema(path).metadata
    assert metadata[b"ftsafe_ray.spec_hash"] == b"abc"
    assert metadata[b"ftsafe_ray.schema_version"] == SCHEMA_VERSION.encode()
    [row] = store.generations.rows()
    assert (row["key"], row["response"], row["size"]) == ("k1", "r", 3)
    # plain pyarrow reads the directory as one dataset
    assert pq.read_table(tmp_path / "run" / "generations").num_rows == 1


def test_latest_row_per_key_wins_and_done_keys_by_status(tmp_path):
    store = RunStore(tmp_path)
    store.judgments.write([{"key": "a", "status": "error"}, {"key": "b", "status": "error"}])
    store.judgments.write([{"key": "a", "status": "ok", "score": 5}])
    rows = {r["key"]: r for r in store.judgments.rows()}
    assert rows["a"]["status"] == "ok" and rows["a"]["score"] == 5
    assert store.judgments.done_keys() == {"a"}
    assert store.judgments.done_keys({"error"}) == {"b"}
    assert store.judgments.count() == 2


def test_no_temporary_files_left_and_hidden_ones_ignored(tmp_path):
    store = RunStore(tmp_path)
    store.finetunes.write([{"key": "x", "status": "ok"}])
    # a crash mid-write leaves a hidden in-progress file: readers must not see it
    (tmp_path / "finetunes" / ".inprogress-part-broken.parquet").write_bytes(b"garbage")
    assert store.finetunes.done_keys({"ok"}) == {"x"}
    assert [p.name for p in (tmp_path / "finetunes").glob("part-*")] != []


def test_bad_rows_raise_a_store_error_and_write_nothing(tmp_path):
    store = RunStore(tmp_path)
    with pytest.raises(StoreError, match="do not match the table schema"):
        store.generations.write([{"key": "k", "size": "not a number"}])
    assert store.generations.rows() == []


def test_shard_buffer_flushes_by_size_and_on_exit(tmp_path):
    store = RunStore(tmp_path)
    with ShardBuffer(store.generations, max_rows=2, max_seconds=3600) as buffer:
        buffer.add([{"key": "1"}, {"key": "2"}])
        assert store.generations.count() == 2
        buffer.add([{"key": "3"}])
        assert store.generations.count() == 2
    assert store.generations.count() == 3
    assert len(list((tmp_path / "generations").glob("part-*.parquet"))) == 2


def test_empty_table_reads_as_empty_with_schema(tmp_path):
    table = RunStore(tmp_path).judgments.read()
    assert table.num_rows == 0 and "score" in table.column_names


def at(second: int) -> datetime:
    return datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=second)


@pytest.mark.reliability(
    fault="An error row written after a success for the same key (a failed retry, a second driver)",
    outcome="the finished row stays the row of record",
)
def test_an_error_after_a_success_never_masks_it(tmp_path):
    store = RunStore(tmp_path)
    store.judgments.write([{"key": "a", "status": "ok", "score": 4, "created_at": at(1)}])
    store.judgments.write([{"key": "a", "status": "error", "error": "boom", "created_at": at(2)}])
    store.finetunes.write([{"key": "f", "status": "ok", "adapter_path": "x", "created_at": at(1)}])
    store.finetunes.write([{"key": "f", "status": "error", "error": "oom", "created_at": at(2)}])
    [verdict] = store.judgments.rows()
    assert (verdict["status"], verdict["score"]) == ("ok", 4)
    assert store.judgments.done_keys() == {"a"} and store.judgments.done_keys({"error"}) == set()
    [finetune] = store.finetunes.rows()
    assert (finetune["status"], finetune["adapter_path"]) == ("ok", "x")
    assert store.finetunes.done_keys({"error"}) == set()


@pytest.mark.parametrize("final", ["unparseable", "truncated", "judge_refused"])
def test_every_final_verdict_status_beats_a_later_error(tmp_path, final):
    store = RunStore(tmp_path)
    store.judgments.write([{"key": "a", "status": final, "created_at": at(1)}])
    store.judgments.write([{"key": "a", "status": "error", "created_at": at(2)}])
    assert [r["status"] for r in store.judgments.rows()] == [final]
    assert store.judgments.done_keys() == {"a"}


def test_among_rows_of_one_kind_the_latest_created_at_wins_whatever_the_shard_order(tmp_path):
    store = RunStore(tmp_path)
    # written in reverse: shard order must not matter, only created_at
    store.finetunes.write([{"key": "f", "status": "error", "error": "second", "created_at": at(2)}])
    store.finetunes.write([{"key": "f", "status": "error", "error": "first", "created_at": at(1)}])
    store.judgments.write([{"key": "a", "status": "ok", "score": 5, "created_at": at(2)}])
    store.judgments.write([{"key": "a", "status": "unparseable", "created_at": at(1)}])
    store.generations.write([{"key": "g", "response": "new", "created_at": at(2)}])
    store.generations.write([{"key": "g", "response": "old", "created_at": at(1)}])
    assert [r["error"] for r in store.finetunes.rows()] == ["second"]
    assert store.finetunes.done_keys({"error"}) == {"f"}
    assert [(r["status"], r["score"]) for r in store.judgments.rows()] == [("ok", 5)]
    assert [r["response"] for r in store.generations.rows()] == ["new"]


def test_rows_written_together_share_a_timestamp_and_the_later_one_wins(tmp_path):
    store = RunStore(tmp_path)
    store.generations.write([{"key": "g", "response": "first"}, {"key": "g", "response": "last"}])
    assert [r["response"] for r in store.generations.rows()] == ["last"]


def test_winner_per_key_matches_the_rule_on_a_large_shuffled_table(tmp_path):
    rng = random.Random(7)
    statuses = ["ok", "error", "unparseable", "error", None]
    rows = [
        {"key": f"k{rng.randrange(3000)}", "status": rng.choice(statuses), "created_at": at(i)}
        for i in range(20_000)
    ]
    rng.shuffle(rows)
    store = RunStore(tmp_path)
    for start in range(0, len(rows), 5000):
        store.judgments.write([dict(row) for row in rows[start : start + 5000]])
    expected: dict[str, tuple[bool, datetime, str | None]] = {}
    for row in rows:  # the rule, spelled out: finished first, then the latest
        rank = (row["status"] in DONE_STATUSES, row["created_at"], row["status"])
        if row["key"] not in expected or rank[:2] > expected[row["key"]][:2]:
            expected[row["key"]] = rank
    got = {r["key"]: (r["status"], r["created_at"]) for r in store.judgments.rows()}
    assert got == {key: (status, when) for key, (_, when, status) in expected.items()}
    assert store.judgments.done_keys() == {k for k, v in expected.items() if v[0]}
    assert store.judgments.done_keys({"error"}) == {
        k for k, v in expected.items() if v[2] == "error"
    }


@pytest.mark.reliability(
    fault="A shard emptied or torn (power loss, full disk)",
    outcome="skipped with one warning naming the file; the other rows read; its rows are redone",
)
@pytest.mark.parametrize("damage", ["half", "empty"])
def test_a_damaged_shard_is_skipped_with_one_warning_naming_it(tmp_path, damage):
    store = RunStore(tmp_path)
    store.generations.write([{"key": "a", "response": "r"}, {"key": "b", "response": "r"}])
    bad = store.generations.write([{"key": "c", "response": "r"}])
    size = bad.stat().st_size
    with bad.open("r+b") as handle:
        handle.truncate(size // 2 if damage == "half" else 0)
    with pytest.warns(DamagedShardWarning) as caught:
        keys = store.generations.done_keys(None)
    assert keys == {"a", "b"}  # c reads as missing, so it is redone
    [warning] = caught
    message = str(warning.message)
    assert message.startswith(f"{bad}: damaged shard (") and "\n" not in message
    assert "its rows will be redone; delete it to silence this" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per file: later reads stay quiet
        assert [r["key"] for r in store.generations.rows()] == ["a", "b"]
    bad.unlink()
    assert store.generations.count() == 2


_DURABLE_WRITES = """
import sys
from pathlib import Path
from ftsafe_ray.report.files import write_atomic
from ftsafe_ray.store import RunStore

root = Path(sys.argv[1])
store = RunStore(root, spec_hash="h")
store.generations.write([{"key": "k", "response": "placeholder"}])
store.freeze_spec({"name": "placeholder"}, "h")
store.freeze_plan([], {})
store.write_manifest()
write_atomic(root / "report" / "summary.md", "placeholder")
"""


@pytest.mark.reliability(
    fault="Power loss just after a write",
    outcome="each shard and JSON file is fsynced before its atomic rename, its directory after",
)
def test_every_rename_follows_an_fsync_of_its_file_and_precedes_one_of_its_directory(tmp_path):
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    root = (tmp_path / "run").resolve()
    log = tmp_path / "strace.log"
    result = subprocess.run(
        [strace, "-f", "-y", "-s", "4096", "-o", str(log),
         "-e", "trace=fsync,fdatasync,rename,renameat,renameat2",
         sys.executable, "-c", _DURABLE_WRITES, str(root)],
        capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0 and "ptrace" in result.stderr.lower():
        pytest.skip(f"strace cannot trace here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    events: list[tuple[str, ...]] = []
    for line in log.read_text().splitlines():
        if synced := re.search(r"f(?:data)?sync\(\d+<([^>]*)>\) = 0", line):
            events.append(("fsync", synced.group(1)))
        elif re.search(r"\brename(at2?)?\(", line) and line.rstrip().endswith("= 0"):
            source, target = re.findall(r'"([^"]*)"', line)[:2]
            events.append(("rename", source, target))
    renames = [(i, e[1], e[2]) for i, e in enumerate(events) if e[0] == "rename"]
    targets = {Path(target).relative_to(root).as_posix() for _, _, target in renames}
    assert {"spec.json", "plan.parquet", "manifest.json", "report/summary.md"} <= targets
    assert any(t.startswith("generations/part-") for t in targets)
    for i, source, target in renames:
        assert ("fsync", source) in events[:i], f"{source} renamed before it was synced"
        parent = str(Path(target).parent)
        assert ("fsync", parent) in events[i + 1 :], f"{parent} not synced after the rename"
