"""`ftsafe sql`: DuckDB views of a run directory, one row per key exactly as the store reads it.

Each table gets two views: `generations` (the row the store's rule picks per key: a finished
row beats an error whatever their order, then the latest `created_at`, then the row read last)
and `generations_all` (every stored row). Only complete shards (`part-*.parquet`) are read,
never a crash's hidden `.inprogress-*` files, and a table with no shard is an empty view with
the table's columns. `plan` is `plan.parquet`, when the run has one.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import pyarrow.parquet as pq

from ftsafe_ray.errors import FtsafeError, StoreError
from ftsafe_ray.store.run_dir import PLAN_FILE, open_run
from ftsafe_ray.store.table import ParquetTable

if TYPE_CHECKING:
    import duckdb
    from rich.console import Console

__all__ = ["MAX_SHOWN_ROWS", "connect", "interactive", "run_query", "winner_query"]

MAX_SHOWN_ROWS = 1000  # rows printed per query; a longer result says it was cut


def connect(run_dir: str | Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the run's views (see the module docstring); an
    `s3://`/`gs://` run is read from its local mirror, filled first."""
    try:
        import duckdb
    except ImportError:
        raise FtsafeError("`ftsafe sql` needs DuckDB: pip install duckdb") from None
    store = open_run(run_dir)
    if not store.root.is_dir():
        raise StoreError(f"{run_dir}: no such run directory")
    connection = duckdb.connect(":memory:")
    for name, table in (
        ("finetunes", store.finetunes),
        ("generations", store.generations),
        ("judgments", store.judgments),
    ):
        _create_views(connection, name, table)
    plan = store.root / PLAN_FILE
    if plan.is_file():
        connection.sql(f"CREATE VIEW plan AS SELECT * FROM read_parquet({_literal(plan)})")
    return connection


def winner_query(source: str, columns: Iterable[str], finished: Iterable[str] | None) -> str:
    """SQL picking one row per key from `source` (which has `filename` and `file_row_number`
    columns) by the store's rule (store/table.py `_winner_per_key`); `finished`: the statuses
    that beat an error, None for a table without statuses."""
    order = []
    if finished is not None:
        statuses = ", ".join(_literal(status) for status in sorted(finished))
        order.append(f"coalesce(status IN ({statuses}), false) DESC")
    # Rows written together share a timestamp: the one read last (shards in name order, rows
    # in file order) wins, as in the store.
    order += ["created_at DESC NULLS LAST", "filename DESC", "file_row_number DESC"]
    return (
        f"SELECT {', '.join(_identifier(c) for c in columns)} FROM {source} "
        f"QUALIFY row_number() OVER (PARTITION BY key ORDER BY {', '.join(order)}) = 1"
    )


def _create_views(connection: duckdb.DuckDBPyConnection, name: str, table: ParquetTable) -> None:
    import duckdb

    columns = table.schema.names
    empty = f"_{name}_columns"
    # An empty relation with the table's exact types: the view's columns when there is no
    # shard, and the null filler for columns older shards lack.
    connection.register(empty, table.schema.empty_table())
    select_columns = ", ".join(_identifier(c) for c in columns)
    files = _shards(table.directory)
    raw = f"SELECT *, NULL::VARCHAR AS filename, NULL::BIGINT AS file_row_number FROM {empty}"
    if files:
        try:
            connection.sql(f"DESCRIBE SELECT * FROM {_read_parquet(files)}").fetchall()
        except duckdb.Error:
            files = _readable(files)
        if files:
            raw = f"{raw} UNION ALL BY NAME SELECT * FROM {_read_parquet(files)}"
    connection.sql(f"CREATE VIEW _{name}_raw AS {raw}")
    connection.sql(f"CREATE VIEW {name}_all AS SELECT {select_columns} FROM _{name}_raw")
    finished = table.finished if "status" in columns else None
    connection.sql(f"CREATE VIEW {name} AS {winner_query(f'_{name}_raw', columns, finished)}")


def _shards(directory: Path) -> list[Path]:
    """A table's complete shards, as the store lists them."""
    return sorted(directory.glob("part-*.parquet")) if directory.is_dir() else []


def _readable(files: list[Path]) -> list[Path]:
    """The shards whose footer reads; the others are named on stderr and left out, as the
    store skips a damaged shard."""
    good = []
    for path in files:
        try:
            pq.read_metadata(path)
        except (OSError, ValueError) as damage:
            reason = str(damage).strip().splitlines()[0] if str(damage).strip() else "unreadable"
            print(f"warning: {path}: damaged shard ({reason}) left out", file=sys.stderr)
        else:
            good.append(path)
    return good


def _read_parquet(files: list[Path]) -> str:
    paths = ", ".join(_literal(path) for path in files)
    return f"read_parquet([{paths}], union_by_name = true, filename = true, file_row_number = true)"


def _literal(value: object) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def run_query(connection: duckdb.DuckDBPyConnection, query: str, console: Console) -> None:
    """Run SQL and print its result as a table (at most MAX_SHOWN_ROWS rows); a DuckDB error
    becomes a one-line FtsafeError."""
    import duckdb

    try:
        relation = connection.sql(query)
        if relation is None:  # DuckDB 1.x: a statement without a result (CREATE VIEW, SET)
            return
        columns = list(relation.columns)
        # Through the relation, not a cursor: nothing is left open on the connection, and
        # only the rows shown are computed and converted.
        rows = relation.limit(MAX_SHOWN_ROWS + 1).fetchall()
    except duckdb.Error as error:
        raise FtsafeError(f"sql: {_one_line(error)}") from None
    console.print(_rich_table(columns, rows[:MAX_SHOWN_ROWS]))
    if len(rows) > MAX_SHOWN_ROWS:
        console.print(f"(first {MAX_SHOWN_ROWS} rows shown; add a LIMIT or an aggregate)")
    else:
        console.print(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")


def interactive(
    connection: duckdb.DuckDBPyConnection, console: Console, stdin: TextIO | None = None
) -> None:
    """Read statements ending with `;` and print each result, until `.quit` or end of input."""
    stdin = stdin or sys.stdin
    prompt = stdin.isatty()
    if prompt:
        console.print(
            "views: finetunes, generations, judgments (latest row per key), *_all (every row)"
            ", plan; end a statement with ;  .quit to leave"
        )
    buffer: list[str] = []
    while True:
        if prompt:
            console.print("sql> " if not buffer else "...> ", end="")
        line = stdin.readline()
        if not line:
            break
        if not buffer and line.strip() in (".quit", ".exit"):
            break
        buffer.append(line)
        text = "".join(buffer).strip()
        if not text.endswith(";"):
            if not text:
                buffer = []
            continue
        buffer = []
        try:
            run_query(connection, text, console)
        except FtsafeError as error:
            console.print(f"error: {error}", markup=False)


def _one_line(error: Exception) -> str:
    """DuckDB's message up to its SQL excerpt (`LINE 1: ...`), on one line."""
    lines = []
    for line in str(error).splitlines():
        if line.startswith("LINE "):
            break
        if line.strip():
            lines.append(line.strip())
    return " ".join(lines) or type(error).__name__


def _rich_table(columns: list[str], rows: list[tuple[Any, ...]]) -> Any:
    from rich.table import Table
    from rich.text import Text

    # Text, not str: an answer holding "[bold]" is data, not rich markup.
    table = Table()
    for column in columns:
        table.add_column(Text(column), overflow="fold")
    for row in rows:
        table.add_row(
            *(Text("NULL", style="dim") if value is None else Text(str(value)) for value in row)
        )
    return table
