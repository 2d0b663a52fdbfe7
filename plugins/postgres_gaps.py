"""The ``postgres`` sink's sequence bookkeeping (plugins/postgres_sink.py): where each symbol
resumes, and the trades lost for good recorded in ``trade_gaps``.

The queries and the hole arithmetic are shared with SQLite (framework/resume.py); these
coroutines run them on the sink's connection, inside its reconnect loop.
"""

from __future__ import annotations

from typing import Any

from tickwire.framework.components import TradeGap
from tickwire.framework.resume import (
    TRADE_GAPS_TABLE, complete_up_to, gap_row, held_sql, holes_in, incomplete, insert_gaps_sql, range_ids_sql,
    recorded_gaps_sql, stored_by_others_text, unstored_parts, window_ids_sql,
)
from tickwire.framework.schemas import StreamSpec, quote_identifier as q
from tickwire.plugins.postgres_writer import psycopg


async def last_sequence_ids(conn: psycopg.AsyncConnection, schema: str, stream: StreamSpec) -> dict[str, int]:
    """Per symbol, the last trade id held without an unexplained hole below it (a hole recorded
    in ``trade_gaps`` is explained)."""
    table = f"{q(schema)}.{q(stream.table)}"
    gaps = f"{q(schema)}.{q(TRADE_GAPS_TABLE)}"
    out = {}
    rows = await (await conn.execute(held_sql(table, stream.sequence))).fetchall()
    for part, hi, count, lowest in rows:
        if incomplete(hi, count, lowest):
            cursor = await conn.execute(window_ids_sql(table, stream.sequence, "%s"), [part, lowest])
            ids = [i for (i,) in await cursor.fetchall()]
            cursor = await conn.execute(recorded_gaps_sql(gaps, "%s"), [stream.name, part, lowest])
            hi = complete_up_to(hi, holes_in(ids), await cursor.fetchall())
        out[part] = int(hi)
    return out


async def record_gaps(conn: psycopg.AsyncConnection, schema: str, streams: list[StreamSpec], gaps: list[TradeGap],
                      log: Any) -> None:
    """Insert ``gaps`` into ``trade_gaps`` in one transaction, leaving out the ids the table holds
    (a redundant instance stored them)."""
    table = f"{q(schema)}.{q(TRADE_GAPS_TABLE)}"
    async with conn.transaction():
        rows = [gap_row(part) for gap in gaps for part in await _unstored_parts(conn, schema, streams, gap, log)]
        async with conn.cursor() as cursor:
            await cursor.executemany(insert_gaps_sql(table, "%s"), rows)


async def _unstored_parts(conn: psycopg.AsyncConnection, schema: str, streams: list[StreamSpec], gap: TradeGap,
                          log: Any) -> list[TradeGap]:
    stream = next((s for s in streams if s.name == gap.stream), None)
    if stream is None or stream.sequence is None:
        return [gap]
    table = f"{q(schema)}.{q(stream.table)}"
    cursor = await conn.execute(range_ids_sql(table, stream.sequence, "%s"), [gap.symbol, gap.first_id, gap.last_id])
    parts = unstored_parts(gap, (i for (i,) in await cursor.fetchall()))
    if parts != [gap]:
        log.info(stored_by_others_text(gap, parts), stream=gap.stream, symbol=gap.symbol)
    return parts
