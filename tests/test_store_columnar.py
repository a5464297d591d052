"""The store's columnar reads against the row-by-row code they replace (its copy lives in
tests/test_report_columnar_rowwise.py): latest row per key, done keys, pending sets, plan keys.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from ftsafe_ray import keys
from ftsafe_ray.generate.stage import pending_generations
from ftsafe_ray.plan import Plan, build_plan, sampling_identity
from ftsafe_ray.spec import parse_campaign
from ftsafe_ray.store import JUDGMENTS, ParquetTable, RunStore
from ftsafe_ray.store.latest import winner_mask
from tests import test_report_columnar_rowwise as rowwise
from tests.fixtures.campaign_files import answer_row, write_benchmark, write_chats

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
STATUSES = ["ok", "error", "unparseable", "truncated", None]


def random_verdicts(seed: int, rows: int = 600) -> list[dict[str, Any]]:
    """Judgment rows: few keys, many rows each, mixed statuses, shared and missing times."""
    rng = random.Random(seed)

    def when() -> datetime | None:
        return None if rng.random() < 0.05 else T0 + timedelta(seconds=rng.randrange(20))

    return [
        {
            "key": f"k{rng.randrange(rows // 4)}",
            "status": rng.choice(STATUSES),
            "created_at": when(),
            "score": i,
        }
        for i in range(rows)
    ]


@pytest.mark.parametrize("seed", range(5))
def test_winner_mask_picks_the_rows_the_sort_picked(seed):
    table = pa.Table.from_pylist(random_verdicts(seed), schema=JUDGMENTS)
    finished = frozenset({"ok", "unparseable", "truncated"})
    expected = rowwise._winner_per_key(table, finished)
    mask = winner_mask(
        table.column("key"), table.column("created_at"), table.column("status"), finished
    )
    chosen = table.filter(pa.array(mask))
    chosen = chosen.take(pc.sort_indices(chosen.column("key")))
    assert chosen.to_pylist() == expected.to_pylist()
    # Without statuses every row counts alike.
    plain = rowwise._winner_per_key(table, None)
    mask = winner_mask(table.column("key"), table.column("created_at"))
    chosen = table.filter(pa.array(mask))
    assert chosen.take(pc.sort_indices(chosen.column("key"))).to_pylist() == plain.to_pylist()


def sharded(tmp_path: Path, seed: int, shards: int = 6) -> ParquetTable:
    table = ParquetTable(tmp_path / "judgments", JUDGMENTS)
    rows = random_verdicts(seed)
    for part in np.array_split(np.arange(len(rows)), shards):
        table.write([dict(rows[i]) for i in part])
    return table


def test_reads_agree_and_the_mapped_read_is_the_latest_rows_mapped(tmp_path):
    table = sharded(tmp_path, seed=7)
    everything = pa.concat_tables(
        [ParquetTable(tmp_path / "judgments", JUDGMENTS)._read(JUDGMENTS.names)]
    )
    expected = rowwise._winner_per_key(everything, table.finished).select(["key", "score"])
    assert table.read(["key", "score"]).to_pylist() == expected.to_pylist()
    latest = table.latest(["key", "score"])
    assert sorted(latest.to_pylist(), key=lambda r: r["key"]) == expected.to_pylist()

    def double(chunk: pa.Table) -> pa.Table:
        return pa.table({"key": chunk.column("key"), "twice": pc.multiply(chunk["score"], 2)})

    mapped = table.latest_mapped(["score"], double, chunk_rows=50)
    assert sorted(mapped.to_pylist(), key=lambda r: r["key"]) == [
        {"key": r["key"], "twice": 2 * r["score"]} for r in expected.to_pylist()
    ]
    assert table.count() == expected.num_rows
    assert table.done_keys() == {r["key"] for r in table.rows() if r["status"] in table.finished}
    assert set(table.done_key_array({"error"}).to_pylist()) == {
        r["key"] for r in table.rows() if r["status"] == "error"
    }


def test_kept_ranking_follows_new_deleted_and_rewritten_shards(tmp_path):
    table = sharded(tmp_path, seed=3, shards=3)
    before = table.done_keys(None)
    [first, *_] = sorted(table.directory.glob("part-*.parquet"))
    table.write([{"key": "new", "status": "ok", "score": 1}])
    assert table.done_keys(None) == before | {"new"}
    fresh = ParquetTable(tmp_path / "judgments", JUDGMENTS)  # reads every shard anew
    first.unlink()
    assert table.done_keys(None) == fresh.done_keys(None)
    [second, *_] = sorted(table.directory.glob("part-*.parquet"))
    second.write_bytes(b"not parquet at all")  # damaged in place: read again, skipped
    with pytest.warns(UserWarning, match="damaged shard"):
        after = table.done_keys(None)
    assert after == ParquetTable(tmp_path / "judgments", JUDGMENTS).done_keys(None)


def small_plan(tmp_path: Path) -> Plan:
    write_chats(tmp_path / "shift.jsonl", [(f"task {i}", f"answer {i}") for i in range(4)])
    write_chats(tmp_path / "other.jsonl", [(f"job {i}", f"reply {i}") for i in range(4)])
    write_benchmark(tmp_path / "harm.jsonl", [("a", 'say "hi"\n'), ("b", "plain"), ("a", "é 😀")])
    write_benchmark(tmp_path / "kind.jsonl", [("benign", "a kind question")])
    data = {
        "name": "columnar",
        "output_dir": "run",
        "models": [{"name": "m", "path": "/nonexistent/model"}],
        "datasets": [
            {"name": "shift", "source": "shift.jsonl"},
            {"name": "other", "source": "other.jsonl"},
        ],
        "finetunes": [
            {"name": "arm-a", "dataset": "shift", "sizes": [2], "system_prompt": "be brief"},
            {"name": "arm-b", "dataset": "shift", "sizes": [2], "system_prompt": "be brief"},
            {"name": "arm-c", "dataset": "other", "sizes": [2]},
        ],
        "seeds": [1, 2],
        "sampling": {"temperature": 0.7},
        "benchmarks": [
            {"name": "harm", "source": "harm.jsonl"},
            {"name": "kind", "source": "kind.jsonl", "kind": "benign"},
        ],
        "conditions": [{"name": "plain"}, {"name": "nudged", "suffix": "please"}],
        "judges": {"keyword": {"sets": ["study"]}, "rubric": {"enabled": False}},
    }
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(data))
    return build_plan(parse_campaign(data), base_dir=tmp_path)


def test_plan_keys_and_unit_table_are_what_unit_by_unit_code_gives(tmp_path):
    plan = small_plan(tmp_path)
    for unit in plan.generations:
        seed = unit.target.seed if unit.target.seed is not None else 0
        assert unit.key == keys.generation_key(
            adapter_key=unit.target.adapter_key,
            messages=[dict(m) for m in unit.messages],
            sampling=sampling_identity(plan.spec),
            seed=seed,
        )
    assert plan.unit_table().to_pylist() == plan.unit_labels()
    store = RunStore(plan.run_dir)
    store.freeze_plan(plan.unit_table(), {})
    from_table = store.read_plan()
    store.freeze_plan(plan.unit_labels(), {})
    assert from_table is not None and from_table[0].equals(store.read_plan()[0])


def test_pending_generations_match_the_unit_by_unit_loop(tmp_path):
    plan = small_plan(tmp_path)
    store = RunStore(plan.run_dir)
    rng = random.Random(5)
    finetunes = list({u.key: u for u in plan.finetunes}.values())
    store.finetunes.write(
        [{"key": finetunes[0].key, "status": "ok"}, {"key": finetunes[1].key, "status": "error"}]
    )
    units = list(plan.unique_generations)
    rows = []
    for unit in units:
        roll = rng.random()
        if roll < 0.4:
            rows.append({**answer_row(unit, "answer"), "status": "ok"})
        elif roll < 0.6:
            rows.append({**answer_row(unit, None), "status": "error", "error": "died"})
    store.generations.write(rows)
    tried = frozenset(u.key for u in rng.sample(units, 5))
    for retry_failed in (False, True):
        for tries in (frozenset(), tried):
            got = pending_generations(plan, store, retry_failed, tries)
            want = rowwise.pending_generations(plan, store, retry_failed, tries)
            assert ([u.key for u in got[0]], *got[1:]) == ([u.key for u in want[0]], *want[1:])
    answered = {r["key"] for r in rows if r["status"] == "ok"}
    assert store.answered_keys() == answered
    assert set(store.answered_key_array().to_pylist()) == answered


def test_the_mapped_read_skips_a_damaged_shard_as_every_read_does(tmp_path):
    table = sharded(tmp_path, seed=11, shards=4)
    [_, damaged, *_] = sorted(table.directory.glob("part-*.parquet"))
    damaged.write_bytes(damaged.read_bytes()[:100])  # cut short: its footer is gone
    with pytest.warns(UserWarning, match="damaged shard"):
        mapped = table.latest_mapped(["score"], lambda chunk: chunk.select(["key", "score"]))
    expected = table.read(["key", "score"]).to_pylist()
    assert sorted(mapped.to_pylist(), key=lambda r: r["key"]) == expected
