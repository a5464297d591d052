"""`ftsafe sql`: DuckDB views showing exactly the rows the store reads, and the CLI around them."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ftsafe_ray import sql
from ftsafe_ray.errors import FtsafeError
from ftsafe_ray.progress import report_console
from ftsafe_ray.store import RunStore
from ftsafe_ray.store.schemas import PLAN_UNITS, TABLES

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def build_run(root: Path) -> RunStore:
    """Every way a key gets several rows, written in an order that makes the naive
    "last row wins" wrong; plus a shard from before `status` existed and a crash's leftover."""
    store = RunStore(root, spec_hash="h")
    store.create()
    generations = store.generations
    # g_fixed: an ok answer, then a later error for the same key: the ok one still wins.
    generations.write(
        [{"key": "g_fixed", "status": "ok", "response": "old ok", "created_at": at(1)}]
    )
    generations.write([{"key": "g_fixed", "status": "error", "error": "died", "created_at": at(9)}])
    # g_retried: an error retried into an ok row.
    generations.write([{"key": "g_retried", "status": "error", "created_at": at(1)}])
    generations.write([{"key": "g_retried", "status": "ok", "response": "ok", "created_at": at(2)}])
    # g_newer: two ok rows, the newer one written first: created_at wins, not the write order.
    generations.write([{"key": "g_newer", "status": "ok", "response": "new", "created_at": at(5)}])
    generations.write([{"key": "g_newer", "status": "ok", "response": "old", "created_at": at(3)}])
    # g_tie: two rows written together share a timestamp: the one read last wins.
    generations.write(
        [
            {"key": "g_tie", "status": "ok", "response": "first", "created_at": at(4)},
            {"key": "g_tie", "status": "ok", "response": "second", "created_at": at(4)},
            {"key": "g_failed", "status": "error", "error": "died twice", "created_at": at(4)},
        ]
    )
    # A schema-2 shard: no status, error or node columns (its answers read as null status).
    old = pa.table(
        {
            "key": ["g_old", "g_old_then_error"],
            "response": ["from v2", "from v2"],
            "created_at": pa.array([at(0), at(0)], type=pa.timestamp("us", tz="UTC")),
        }
    )
    pq.write_table(old, root / "generations" / "part-00000000T000000-old.parquet")
    generations.write([{"key": "g_old_then_error", "status": "error", "created_at": at(6)}])
    (root / "generations" / ".inprogress-part-x.parquet").write_bytes(b"garbage, not parquet")

    store.judgments.write(
        [
            {"key": "j_parse", "status": "unparseable", "created_at": at(1)},
            {"key": "j_err", "status": "error", "created_at": at(1)},
            {"key": "j_newer", "status": "ok", "score": 1, "created_at": at(1)},
        ]
    )
    store.judgments.write(
        [
            {"key": "j_parse", "status": "error", "created_at": at(2)},
            {"key": "j_err", "status": "truncated", "created_at": at(2)},
            {"key": "j_newer", "status": "ok", "score": 5, "created_at": at(2)},
        ]
    )
    store.finetunes.write([{"key": "f1", "status": "ok", "train_steps": 3, "created_at": at(1)}])
    store.finetunes.write([{"key": "f1", "status": "error", "error": "oom", "created_at": at(2)}])
    store.finetunes.write([{"key": "f2", "status": "error", "created_at": at(1)}])
    return store


def view_rows(connection: Any, query: str) -> list[dict[str, Any]]:
    relation = connection.sql(query)
    return [dict(zip(relation.columns, row, strict=True)) for row in relation.fetchall()]


@pytest.fixture
def run(tmp_path: Path) -> RunStore:
    return build_run(tmp_path / "run")


@pytest.mark.parametrize("table", ["finetunes", "generations", "judgments"])
def test_views_hold_exactly_the_rows_the_store_reads(run: RunStore, table: str) -> None:
    connection = sql.connect(run.root)
    expected = {row["key"]: row for row in getattr(run, table).rows()}
    got = {row["key"]: row for row in view_rows(connection, f"SELECT * FROM {table}")}
    assert got == expected
    assert list(next(iter(got.values()))) == TABLES[table].names
    shards = sorted((run.root / table).glob("part-*.parquet"))
    stored = sum(pq.read_metadata(path).num_rows for path in shards)
    [(count,)] = connection.sql(f"SELECT count(*) FROM {table}_all").fetchall()
    assert count == stored > len(expected)


def test_the_store_rule_as_read_through_the_view(run: RunStore) -> None:
    rows = {r["key"]: r for r in view_rows(sql.connect(run.root), "SELECT * FROM generations")}
    assert rows["g_fixed"]["response"] == "old ok"  # a finished row beats a later error
    assert rows["g_retried"]["status"] == "ok"
    assert rows["g_newer"]["response"] == "new"  # created_at, not the shard's name
    assert rows["g_tie"]["response"] == "second"
    assert rows["g_failed"]["status"] == "error"
    assert (rows["g_old"]["status"], rows["g_old"]["node"]) == (None, None)
    # A null status is no finished status: the store lets the later error win, and so do we.
    assert rows["g_old_then_error"]["status"] == "error"


def test_a_table_without_shards_is_an_empty_view_with_its_columns(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.create()
    store.generations.write([{"key": "g", "status": "ok"}])
    (store.root / "judgments" / ".inprogress-part-y.parquet").write_bytes(b"crash")
    connection = sql.connect(store.root)
    for name in ("judgments", "judgments_all", "finetunes"):
        relation = connection.sql(f"SELECT * FROM {name}")
        assert relation.fetchall() == []
        schema = TABLES[name.removesuffix("_all")]
        assert relation.columns == schema.names
    [(status,)] = connection.sql("SELECT any_value(status) FROM judgments").fetchall()
    assert status is None  # typed columns: aggregates work on an empty table


def test_plan_view_when_the_run_has_a_plan(run: RunStore) -> None:
    assert "plan" not in {r[0] for r in sql.connect(run.root).sql("SHOW TABLES").fetchall()}
    run.freeze_plan([{"generation_key": "g_fixed", "arm": "base"}], {})
    rows = view_rows(sql.connect(run.root), "SELECT * FROM plan")
    assert [(r["generation_key"], r["arm"]) for r in rows] == [("g_fixed", "base")]
    assert list(rows[0]) == PLAN_UNITS.names


def test_a_damaged_shard_is_left_out_with_a_warning(run: RunStore, capsys: Any) -> None:
    (run.root / "finetunes" / "part-99999999T999999-bad.parquet").write_bytes(b"not parquet")
    rows = view_rows(sql.connect(run.root), "SELECT key, status FROM finetunes ORDER BY key")
    assert rows == [{"key": "f1", "status": "ok"}, {"key": "f2", "status": "error"}]
    assert "part-99999999T999999-bad.parquet: damaged shard" in capsys.readouterr().err


def test_readme_duckdb_query_matches_the_store(run: RunStore) -> None:
    """README's plain DuckDB query: no temporary files, the store's winner for every key."""
    readme = (ROOT / "README.md").read_text()
    [query] = re.findall(r"```sql\n(.*?)```", readme, flags=re.S)
    import duckdb

    query = query.replace("runs/demo/", f"{run.root}/")
    got = {r["key"]: (r["status"], r["response"]) for r in view_rows(duckdb.connect(), query)}
    expected = {r["key"]: (r["status"], r["response"]) for r in run.generations.rows()}
    assert got == expected


def test_interactive_prompt_reads_statements_until_quit(run: RunStore) -> None:
    out = io.StringIO()
    console = report_console(out)
    script = io.StringIO(
        "SELECT count(*) AS answers\n  FROM generations\n WHERE status = 'ok';\n"
        "SELECT nope FROM nowhere;\n"
        ".quit\n"
        "SELECT 'never run';\n"
    )
    sql.interactive(sql.connect(run.root), console, stdin=script)
    text = out.getvalue()
    assert re.search(r"answers.*\n.*\n.*\b4\b", text, flags=re.S)
    [error] = [line for line in text.splitlines() if line.startswith("error:")]
    assert "nowhere" in error
    assert "never run" not in text


def test_query_errors_are_one_line(run: RunStore) -> None:
    with pytest.raises(FtsafeError) as caught:
        sql.run_query(sql.connect(run.root), "SELEC 1", report_console(io.StringIO()))
    assert "\n" not in str(caught.value) and str(caught.value).startswith("sql: ")


def test_cli_runs_one_query(run: RunStore) -> None:
    command = [sys.executable, "-m", "ftsafe_ray.cli", "sql", str(run.root), "-c"]
    done = subprocess.run(
        [*command, "SELECT key, response FROM generations WHERE key = 'g_newer'"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "g_newer" in done.stdout and "new" in done.stdout and "old" not in done.stdout
    failed = subprocess.run(
        [*command, "SELECT * FROM missing_table"], capture_output=True, text=True, timeout=60
    )
    assert failed.returncode == 2
    assert failed.stderr.count("\n") == 1 and failed.stderr.startswith("error: sql: ")


def test_cli_names_a_missing_run_directory(tmp_path: Path) -> None:
    with pytest.raises(FtsafeError, match="no such run directory"):
        sql.connect(tmp_path / "nowhere")
