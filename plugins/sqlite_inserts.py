"""How the ``sqlite`` sink turns a batch into multi-row INSERT statements (plugins/sqlite_sink.py).

Rows become one ``INSERT … ON CONFLICT DO NOTHING`` per ``ROWS_PER_STATEMENT`` rows (a derived
stream's rows: ``ON CONFLICT (key) DO UPDATE``), padded to one of a few statement sizes so every
statement stays in the connection's statement cache; a batch larger than one statement is one
transaction. Runs on the sink's own thread.
"""

from __future__ import annotations

import sqlite3
from itertools import chain
from operator import itemgetter

from tickwire.framework.schemas import StreamSpec, quote_identifier as q

# Rows per INSERT statement. executemany() releases and re-takes the GIL around every row's
# sqlite3_step, and while the event loop thread is busy each re-take can wait up to a whole
# switch interval (5 ms): a 1,000-row batch then takes seconds of wall time. A batch of up to
# ROWS_PER_STATEMENT rows is therefore ONE multi-row INSERT in autocommit mode (one statement is
# one transaction): one GIL round trip per batch. Measured with a busy event loop: executemany
# 17k rows/s (p99 1.25 s per 1,000 rows); 250-row statements in BEGIN/COMMIT 56k rows/s; one
# statement per batch the best in the full pipeline (bench/sqlite_bench.py).
ROWS_PER_STATEMENT = 5000


def statement_rows(n: int, most: int) -> int:
    """The row count of the statement that writes ``n`` rows: ``n`` up to 16, above that ``n``
    rounded up to a quarter of its power of two (20, 24, 28, 32, 40, 48…), at most ``most``.

    Adaptive batching makes batch sizes vary, and preparing a multi-row INSERT costs about twice
    running it (~1.8 µs per row measured): with a handful of sizes every statement stays in the
    connection's statement cache. The rows past ``n`` repeat the last row; on a table with a
    primary key they conflict with it and insert nothing, so the count inserted stays exact."""
    if n <= 16:
        return n
    step = 1 << ((n - 1).bit_length() - 3)
    return min(most, -(-n // step) * step)


class InsertStatements:
    """The INSERT statements of one sink's tables, built once per table and statement size.

    ``max_vars`` is SQLite's bound-parameter limit; the sink sets the real one when it opens."""

    def __init__(self, rows_per_statement: int = ROWS_PER_STATEMENT, max_vars: int = 999):
        self.rows_per_statement = rows_per_statement
        self.max_vars = max_vars
        self.sql: dict[tuple[str, int], str] = {}
        self._row_shapes: dict[str, tuple[str, itemgetter, tuple]] = {}

    def insert(self, conn: sqlite3.Connection, stream: StreamSpec, records: list[dict]) -> int:
        """Write ``records`` of ``stream`` in one transaction; the rows inserted (a replayed row
        that its primary key already holds is not)."""
        table, getter, cols = self._row_shape(stream)
        try:
            rows = list(map(getter, records))
        except KeyError:  # a record without every column (no normalize in the chain?): NULLs
            rows = [tuple(r.get(c) for c in cols) for r in records]
        upsert_key = tuple(stream.primary_key) if getattr(stream, "upsert", False) else ()
        per_statement = max(1, min(self.rows_per_statement, self.max_vars // max(1, len(cols))))
        if len(rows) <= per_statement:
            # one statement in autocommit mode is one transaction: a single GIL round trip
            return self._insert(conn, table, cols, rows, per_statement, upsert_key)
        inserted = 0
        conn.execute("BEGIN")
        try:
            for i in range(0, len(rows), per_statement):
                inserted += self._insert(conn, table, cols, rows[i : i + per_statement], per_statement, upsert_key)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return inserted

    def _row_shape(self, stream: StreamSpec) -> tuple[str, itemgetter, tuple]:
        shape = self._row_shapes.get(stream.name)
        if shape is None:
            cols = tuple(c.name for c in stream.columns)
            getter = itemgetter(*cols) if len(cols) > 1 else (lambda r, c=cols[0]: (r[c],))
            shape = self._row_shapes[stream.name] = (stream.table, getter, cols)
        return shape

    def _insert(self, conn: sqlite3.Connection, table: str, cols: tuple, rows: list[tuple], most: int,
                upsert_key: tuple = ()) -> int:
        """One multi-row INSERT of ``rows`` (padded to :func:`statement_rows`); rows inserted.
        Padding repeats the last row, which its primary key makes a no-op: every table has its
        schema's key (x-tickwire requires one; the sink refuses at open a table without it). An
        upsert is never padded: a repeated row would count as a second change."""
        size = len(rows) if upsert_key else statement_rows(len(rows), most)
        params = list(chain.from_iterable(rows))
        if size > len(rows):
            params.extend(rows[-1] * (size - len(rows)))
        return conn.execute(self._insert_sql(table, cols, size, upsert_key), params).rowcount

    def _insert_sql(self, table: str, cols: tuple, rows: int, upsert_key: tuple = ()) -> str:
        key = (table, rows)
        sql = self.sql.get(key)
        if sql is None:
            if len(self.sql) > 256:  # upserts (derived rows) are not padded: keep the cache small
                self.sql.clear()
            one = "(" + ", ".join("?" * len(cols)) + ")"
            conflict = "ON CONFLICT DO NOTHING"
            if upsert_key:  # a derived stream: its rows are recomputed values (framework/derived.py)
                updates = ", ".join(f"{q(c)} = excluded.{q(c)}" for c in cols if c not in upsert_key)
                conflict = f"ON CONFLICT ({', '.join(map(q, upsert_key))}) DO UPDATE SET {updates}"
            sql = self.sql[key] = (
                f'INSERT INTO {q(table)} ({", ".join(map(q, cols))}) VALUES {", ".join([one] * rows)} {conflict}'
            )
        return sql
