"""The ``sqlite`` sink's sequence bookkeeping (plugins/sqlite_sink.py): where each symbol resumes,
and the trades lost for good recorded in ``trade_gaps``.

The queries and the hole arithmetic are shared with PostgreSQL (framework/resume.py); these
functions run them on the sink's connection, on the sink's own thread.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from tickwire.framework.components import TradeGap

from tickwire.framework.resume import (
    TRADE_GAPS_TABLE, complete_up_to, gap_row, held_sql, holes_in, incomplete, insert_gaps_sql, range_ids_sql,
    recorded_gaps_sql, stored_by_others_text, unstored_parts, window_ids_sql,
)
from tickwire.framework.schemas import StreamSpec, quote_identifier as q


def last_sequence_ids(conn: sqlite3.Connection, stream: StreamSpec) -> dict[str, int]:
    """Per symbol, the last trade id held without an unexplained hole below it (a hole recorded
    in ``trade_gaps`` is explained)."""
    table = q(stream.table)
    out = {}
    for part, hi, count, lowest in conn.execute(held_sql(table, stream.sequence)).fetchall():
        if incomplete(hi, count, lowest):
            ids = [i for (i,) in conn.execute(window_ids_sql(table, stream.sequence, "?"), (part, lowest))]
            recorded = conn.execute(recorded_gaps_sql(TRADE_GAPS_TABLE, "?"), (stream.name, part, lowest)).fetchall()
            hi = complete_up_to(hi, holes_in(ids), recorded)
        out[part] = hi
    return out


def record_gaps(conn: sqlite3.Connection, streams: list[StreamSpec], gaps: list[TradeGap], log: Any) -> None:
    """Insert ``gaps`` into ``trade_gaps`` in one transaction, leaving out the ids the file holds
    (another instance on the same file stored them)."""
    by_name = {stream.name: stream for stream in streams}
    # IMMEDIATE: it reads before it writes, and a deferred transaction whose snapshot another
    # process (a redundant instance on the same file) wrote past fails at once instead of
    # waiting busy_timeout_ms
    conn.execute("BEGIN IMMEDIATE")
    try:
        rows = []
        for gap in gaps:
            stream = by_name.get(gap.stream)
            parts = [gap]
            if stream is not None and stream.sequence is not None:  # record only what the file lacks
                stored = conn.execute(range_ids_sql(q(stream.table), stream.sequence, "?"),
                                      (gap.symbol, gap.first_id, gap.last_id))
                parts = unstored_parts(gap, (i for (i,) in stored))
                if parts != [gap]:
                    log.info(stored_by_others_text(gap, parts), stream=gap.stream, symbol=gap.symbol)
            rows += [gap_row(part) for part in parts]
        conn.executemany(insert_gaps_sql(TRADE_GAPS_TABLE, "?"), rows)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
