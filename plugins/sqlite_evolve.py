"""An existing SQLite table of a stream against its schema (plugins/table_evolution.py): the
SQLite sink runs this when it opens, so a new optional column is added before the first write."""

from __future__ import annotations

import sqlite3

from tickwire.framework.schemas import StreamSpec, quote_identifier as q
from tickwire.plugins.codegen_sqlite import SQLITE_TYPES
from tickwire.plugins.table_evolution import SQLITE, TablePlan, TableShape, plan_table


def expected_shape(stream: StreamSpec) -> TableShape:
    """The table ``codegen_sqlite.ddl_for`` creates, as :func:`plan_table` compares it."""
    return TableShape({c.name: (SQLITE_TYPES[c.logical], not c.nullable) for c in stream.columns}, tuple(stream.primary_key))


def live_shape(conn: sqlite3.Connection, table: str) -> TableShape | None:
    """The table as SQLite holds it; None when it does not exist."""
    rows = conn.execute(f"PRAGMA table_info({q(table)})").fetchall()
    if not rows:
        return None
    # (cid, name, type, notnull, default, position in the primary key or 0)
    key = tuple(name for _, name, _, _, _, position in sorted(rows, key=lambda row: row[5]) if position)
    return TableShape({name: (kind, bool(not_null)) for _, name, kind, not_null, _, _ in rows}, key)


def plan_for(conn: sqlite3.Connection, stream: StreamSpec) -> TablePlan | None:
    """What to change in ``stream``'s table; None when the table does not exist yet."""
    live = live_shape(conn, stream.table)
    return None if live is None else plan_table(stream.table, expected_shape(stream), live, SQLITE)
