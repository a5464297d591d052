"""Parquet tables: atomic shards, latest row per key, readable by plain pyarrow."""

import pyarrow.parquet as pq
import pytest

from ftsafe_ray.errors import StoreError
from ftsafe_ray.store import SCHEMA_VERSION, RunStore, ShardBuffer


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
