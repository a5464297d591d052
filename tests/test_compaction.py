"""Compaction: small shards merged with no moment at which a reader sees a row missing or
doubled, locally and on object storage."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ftsafe_ray.cli import main
from ftsafe_ray.store import RunStore
from ftsafe_ray.store.compaction import compact_table, merged_inputs
from ftsafe_ray.store.run_dir import open_run

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def verdict_rows(start: int, n: int, status: str = "ok", at: int = 0) -> list[dict]:
    return [
        {
            "key": f"k{i:05d}",
            "generation_key": f"g{i}",
            "judge": "keyword",
            "status": status,
            "created_at": T0 + timedelta(seconds=at),
        }
        for i in range(start, start + n)
    ]


def filled(tmp_path: Path, shards: int = 12, rows: int = 5) -> RunStore:
    """A store whose judgments are `shards` small shards, with errors later replaced by ok rows
    and a key stored twice at the same moment (the tie the rule breaks by read order)."""
    store = RunStore(tmp_path / "run")
    store.create()
    for s in range(shards):
        store.judgments.write(verdict_rows(s * rows, rows, at=s))
    store.judgments.write(verdict_rows(0, 3, status="error", at=100))  # errors after success
    store.judgments.write(verdict_rows(1000, 2, status="error", at=1))
    store.judgments.write(verdict_rows(1000, 1, status="ok", at=2))  # a retry that succeeded
    store.judgments.write(verdict_rows(2000, 1, at=5) + verdict_rows(2000, 1, at=5))
    return store


def snapshot(store: RunStore) -> tuple[list[dict], int]:
    """What readers see: the winning rows, and every stored row."""
    return store.judgments.rows(), len(store.judgments._read(["key"]))


def test_compaction_keeps_every_row_and_what_every_reader_sees(tmp_path):
    store = filled(tmp_path)
    before_rows, before_all = snapshot(store)
    before_files = store.judgments.shard_files()
    [_, _, judgments] = store.compact(small_rows=10)
    assert (judgments.shards_before, judgments.shards_after) == (len(before_files), 1)
    assert judgments.rows_merged == before_all
    [merged] = store.judgments.shard_files()
    # The merged shard takes the place of the last input and names every input.
    assert merged.name == before_files[-1].stem + "-c.parquet"
    assert merged_inputs(merged) == [p.name for p in before_files]
    assert snapshot(store) == (before_rows, before_all)
    assert store.judgments.count() == len(before_rows)
    # A second compaction has nothing to merge.
    assert store.compact(small_rows=10)[2].shards_after == 1


def test_large_shards_stay_and_runs_between_them_merge_in_place(tmp_path):
    store = RunStore(tmp_path / "run")
    for s in range(7):
        store.judgments.write(verdict_rows(s * 100, 20 if s == 3 else 2, at=s))
    before = store.judgments.rows()
    files = store.judgments.shard_files()  # name order (within a second: by random suffix)
    large = next(i for i, p in enumerate(files) if pq.read_metadata(p).num_rows == 20)

    def merged(run: list[Path]) -> list[str]:
        return [run[-1].stem + "-c.parquet"] if len(run) > 1 else [p.name for p in run]

    expected = [*merged(files[:large]), files[large].name, *merged(files[large + 1 :])]
    compact_table(store.judgments, small_rows=10)
    assert [p.name for p in store.judgments.shard_files()] == expected
    assert store.judgments.rows() == before


def test_a_compaction_stopped_before_removing_its_inputs_doubles_nothing(tmp_path):
    store = filled(tmp_path)
    before = snapshot(store)[0]
    kept = store.judgments.shard_files()
    compact_table(store.judgments, remove=lambda path: None, small_rows=10)  # "crash"
    assert set(kept) < set(store.judgments.shard_files())
    assert store.judgments.rows() == before and store.judgments.count() == len(before)
    result = compact_table(store.judgments, small_rows=10)
    assert result.leftovers_removed == len(kept) and result.shards_after == 1
    assert store.judgments.rows() == before


def test_a_reader_that_listed_the_inputs_reads_again_and_misses_nothing(tmp_path, monkeypatch):
    """The race made certain: a read lists the shards, compaction then replaces them."""
    store = filled(tmp_path)
    expected = snapshot(store)[0]
    reader = RunStore(tmp_path / "run")
    stale = reader.judgments.shard_files()
    listed = reader.judgments._files

    calls = []

    def listing_then_compaction():
        calls.append(1)
        if len(calls) == 1:
            compact_table(store.judgments, small_rows=10)
            return stale
        return listed()

    monkeypatch.setattr(reader.judgments, "_files", listing_then_compaction)
    assert reader.judgments.rows() == expected
    assert len(calls) == 2  # read again from a fresh listing


def test_readers_during_repeated_compactions_never_see_a_row_missing_or_doubled(tmp_path):
    store = filled(tmp_path, shards=40, rows=3)
    expected = snapshot(store)[0]
    keys = {row["key"] for row in expected}
    reader = RunStore(tmp_path / "run")
    stop = threading.Event()
    seen: list[str] = []

    def read_continuously():
        while not stop.is_set():
            rows = reader.judgments.rows()
            mapped = reader.judgments.latest_mapped(["key"], lambda t: t)
            if rows != expected or {r["key"] for r in mapped.to_pylist()} != keys:
                seen.append(f"{len(rows)} rows, {mapped.num_rows} mapped")
            if mapped.num_rows != len(keys):
                seen.append(f"{mapped.num_rows} mapped rows")

    thread = threading.Thread(target=read_continuously)
    thread.start()
    try:
        for _ in range(15):
            # New small shards of rows already stored (same content): the next compaction
            # merges them with the last merged shard.
            for s in range(3):
                store.judgments.write(verdict_rows(s * 3, 3, at=s))
            store.compact(small_rows=10_000)
    finally:
        stop.set()
        thread.join()
    assert seen == []
    assert len(store.judgments.shard_files()) == 1


def test_ftsafe_compact_merges_a_run_directory(tmp_path, capsys):
    store = filled(tmp_path)
    before = snapshot(store)
    assert main(["compact", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert "judgments:" in out and "→ 1" in out
    assert snapshot(RunStore(store.root)) == before


def test_ftsafe_compact_refuses_a_run_another_driver_holds(tmp_path, capsys):
    from ftsafe_ray.store.lock import RunLock

    store = filled(tmp_path)
    with RunLock(store.root, "campaign"):
        assert main(["compact", str(store.root)]) == 2
    assert "error:" in capsys.readouterr().err
    assert len(store.judgments.shard_files()) > 1


def test_compaction_on_object_storage_replaces_the_inputs_there_and_in_mirrors(
    s3_server, tmp_path, monkeypatch
):
    uri = s3_server.make_bucket("compact") + "/runs/a"
    monkeypatch.setenv("FTSAFE_CACHE_DIR", str(tmp_path / "node-a"))
    first = open_run(uri)
    for s in range(6):
        first.judgments.write(verdict_rows(s * 4, 4, at=s))
    expected = first.judgments.rows()
    # A second machine's mirror holds the small shards.
    monkeypatch.setenv("FTSAFE_CACHE_DIR", str(tmp_path / "node-b"))
    second = open_run(uri)
    assert second.judgments.rows() == expected
    monkeypatch.setenv("FTSAFE_CACHE_DIR", str(tmp_path / "node-a"))
    first.compact(small_rows=10)
    remote = [k for k in s3_server.keys(uri) if k.startswith("judgments/")]
    assert len(remote) == 1 and remote[0].endswith("-c.parquet")
    # A fresh machine reads the merged shard; the old mirror drops the inputs it replaced.
    monkeypatch.setenv("FTSAFE_CACHE_DIR", str(tmp_path / "node-c"))
    assert open_run(uri).judgments.rows() == expected
    monkeypatch.setenv("FTSAFE_CACHE_DIR", str(tmp_path / "node-b"))
    again = open_run(uri)
    assert again.judgments.rows() == expected
    assert [p.name for p in again.judgments.shard_files()] == [remote[0].split("/")[-1]]


def test_a_mirror_syncing_while_the_bucket_is_compacted_misses_nothing(
    s3_server, tmp_path, monkeypatch
):
    """An object listed, then compacted away before its download: the sync lists again."""
    uri = s3_server.make_bucket("compact-race") + "/runs/a"
    monkeypatch.setenv("FTSAFE_CACHE_DIR", str(tmp_path / "node-a"))
    first = open_run(uri)
    for s in range(4):
        first.judgments.write(verdict_rows(s * 4, 4, at=s))
    expected = first.judgments.rows()
    monkeypatch.setenv("FTSAFE_CACHE_DIR", str(tmp_path / "node-b"))
    second = RunStore(tmp_path / "node-b-mirror", remote=uri)
    assert second.remote is not None
    files = second.remote.files

    listings = []

    def listing_then_compaction(relative: str = "") -> list[str]:
        listed = files(relative)
        listings.append(listed)
        if len(listings) == 1:
            monkeypatch.setenv("FTSAFE_CACHE_DIR", str(tmp_path / "node-a"))
            first.compact(small_rows=10)
            monkeypatch.setenv("FTSAFE_CACHE_DIR", str(tmp_path / "node-b"))
        return listed

    monkeypatch.setattr(second.remote, "files", listing_then_compaction)
    second.sync_down()
    assert len(listings) == 2
    assert second.judgments.rows() == expected
    assert len(second.judgments.shard_files()) == 1


@pytest.mark.parametrize("rows", [3])
def test_merged_shards_keep_older_schema_rows_readable(tmp_path, rows):
    """A shard written before a column existed is merged with that column null."""
    store = RunStore(tmp_path / "run")
    old = verdict_rows(0, rows)
    store.judgments.write(old)
    path = store.judgments.shard_files()[0]
    table = pq.read_table(path).drop_columns(["reason"])
    pq.write_table(table, path)
    store.judgments.write(verdict_rows(rows, rows))
    before = store.judgments.rows()
    compact_table(RunStore(tmp_path / "run").judgments, small_rows=10)
    assert RunStore(tmp_path / "run").judgments.rows() == before
