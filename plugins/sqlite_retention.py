"""``retention:`` for SQLite: expired rows deleted in bounded batches.

SQLite has no partitions to drop, so expiry is ``DELETE … WHERE rowid IN (SELECT rowid …
WHERE <time> < cutoff LIMIT n)``, one short transaction per batch: the writer (the sqlite sink)
and readers never wait behind one long delete. The time column is the stream's
``partition_time`` (the column PostgreSQL partitions by), times are ISO-8601 UTC text, which
compares in time order, and the cutoff is the same as PostgreSQL's: now − retention.

Run by the sqlite sink (at start and every ``retention_interval_s``, between its writes) and by
``tickwire db maintain``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import datetime, timedelta

from tickwire.framework.schemas import StreamSpec, quote_identifier as q
from tickwire.framework.timestamps import iso_ms

DELETE_BATCH_ROWS = 5000


def expiring_streams(streams: list[StreamSpec]) -> list[StreamSpec]:
    """The streams with a ``retention:`` (and so a time column to expire by)."""
    return [s for s in streams if s.retention_days is not None and s.partition_time]


def cutoff_text(stream: StreamSpec, now: datetime) -> str:
    """Rows older than this ISO time are past the stream's retention."""
    cutoff = now - timedelta(days=stream.retention_days)
    return iso_ms(int(cutoff.timestamp() * 1000))


def delete_batches(conn: sqlite3.Connection, stream: StreamSpec, now: datetime,
                   batch_rows: int = DELETE_BATCH_ROWS) -> Iterator[int]:
    """Delete the stream's expired rows, at most ``batch_rows`` per transaction; yields each
    batch's count, so a caller can pause between batches (the sink lets its writes in)."""
    statement = (f"DELETE FROM {q(stream.table)} WHERE rowid IN (SELECT rowid FROM {q(stream.table)} "
                 f"WHERE {q(stream.partition_time)} < ? LIMIT ?)")
    cutoff = cutoff_text(stream, now)
    while True:
        deleted = conn.execute(statement, [cutoff, batch_rows]).rowcount  # autocommit: one transaction
        if deleted:
            yield deleted
        if deleted < batch_rows:
            return


def time_index_ddl(stream: StreamSpec) -> list[str]:
    """The index the batches find expired rows by (streams with a retention only)."""
    if stream.retention_days is None or not stream.partition_time:
        return []
    index = q(f"{stream.table}_{stream.partition_time}_idx")
    return [f"CREATE INDEX IF NOT EXISTS {index} ON {q(stream.table)} ({q(stream.partition_time)});"]
