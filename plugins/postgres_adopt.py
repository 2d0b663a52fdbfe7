"""``tickwire db migrate --adopt``: upgrade, in place, a database the original pipeline created
(docs/migrating.md), keeping its rows; then the ordinary migration runs in the same transaction.

Per stream table that exists with another layout (read from ``information_schema``):

1. **The time that changed meaning.** The original's ``trades.event_time`` held the trade time
   ``T`` as BIGINT milliseconds; tickwire's holds the event time ``E`` and ``T`` is
   ``trade_time``. A table of a stream with both columns that has a BIGINT ``event_time`` and no
   ``trade_time`` gets ``event_time`` renamed to ``trade_time``: the trade time stays the trade
   time.
2. **Types.** BIGINT/INTEGER milliseconds → TIMESTAMPTZ (``to_timestamp(ms / 1000.0)``, exact to
   the millisecond); DOUBLE PRECISION/REAL → NUMERIC (PostgreSQL's float8 → numeric keeps the 15
   significant digits a double holds: the value the original stored, not more).
3. **New columns** are added, then filled where the row says what they are: a missing time
   column from the row's other time (``event_time`` = ``trade_time`` — the original never stored
   ``E``; ``ingested_at`` = the event time); a column no row can tell stays NULL in the adopted
   rows and keeps no NOT NULL (reported). Every other column tickwire requires gets NOT NULL.
4. **Key.** A table without a primary key gets tickwire's (refused, with the duplicate keys'
   count, when rows repeat a key); a different key is refused with the manual step.
5. Columns tickwire does not know stay; one that is NOT NULL without a default loses NOT NULL
   (tickwire's inserts do not name it).

Everything is one transaction: a refusal changes nothing. What was done is reported line by line.
"""

from __future__ import annotations

from dataclasses import dataclass

from tickwire.framework.schemas import StreamSpec
from tickwire.plugins.postgres_partitions import stream_plan

INTEGER_TYPES = {"bigint", "integer", "smallint"}
FLOAT_TYPES = {"double precision", "real"}
# what fills a new column in the adopted rows: column → the expression over the row
BACKFILL = {"event_time": "trade_time", "ingested_at": "event_time"}


class AdoptRefused(Exception):
    """A layout ``--adopt`` cannot convert safely; the message says the manual step."""


@dataclass(frozen=True)
class Existing:
    name: str
    data_type: str
    nullable: bool
    has_default: bool


def adopt(conn, streams: list[StreamSpec], report, sql) -> None:
    """Convert the tables of ``streams`` that exist in another layout (see the module
    docstring), in the caller's transaction; ``report(line)`` says what was done."""
    for stream in streams:
        columns = _columns(conn, stream.table)
        if columns:
            _adopt_table(conn, stream, columns, report, sql)


def _columns(conn, table: str) -> dict[str, Existing]:
    rows = conn.execute(
        "SELECT column_name, data_type, is_nullable = 'YES', column_default IS NOT NULL FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position", [table]).fetchall()
    return {name: Existing(name, kind, nullable, default) for name, kind, nullable, default in rows}


def _adopt_table(conn, stream: StreamSpec, existing: dict[str, Existing], report, sql) -> None:
    table = sql.Identifier(stream.table)
    wanted = {c.name: c for c in stream.columns}
    say = lambda what: report(f"adopt {stream.table}: {what}")  # noqa: E731
    time_meaning_changed = (
        "trade_time" in wanted and "event_time" in wanted and "trade_time" not in existing
        and "event_time" in existing and existing["event_time"].data_type in INTEGER_TYPES
    )
    if time_meaning_changed:
        conn.execute(sql.SQL("ALTER TABLE {} RENAME COLUMN event_time TO trade_time").format(table))
        existing["trade_time"] = existing.pop("event_time")
        say("event_time (the trade time T, ms) renamed to trade_time")
    for name, have in list(existing.items()):
        column = wanted.get(name)
        if column is None:
            if not have.nullable and not have.has_default:
                conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL").format(table, sql.Identifier(name)))
                say(f"{name} kept (tickwire does not write it); NOT NULL dropped so tickwire's inserts work")
            continue
        if column.logical == "timestamp_ms" and have.data_type in INTEGER_TYPES:
            conn.execute(sql.SQL("ALTER TABLE {0} ALTER COLUMN {1} TYPE TIMESTAMPTZ USING to_timestamp({1} / 1000.0)")
                         .format(table, sql.Identifier(name)))
            say(f"{name} {have.data_type} ms -> timestamptz")
        elif column.logical == "decimal" and have.data_type in FLOAT_TYPES:
            conn.execute(sql.SQL("ALTER TABLE {0} ALTER COLUMN {1} TYPE NUMERIC USING {1}::numeric")
                         .format(table, sql.Identifier(name)))
            say(f"{name} {have.data_type} -> numeric")
    for name, column in wanted.items():
        if name in existing:
            continue
        conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(table, sql.Identifier(name), sql.SQL(_pg_type(column.logical))))
        source = BACKFILL.get(name)
        if source is not None and (source in existing or source in wanted):
            conn.execute(sql.SQL("UPDATE {} SET {} = {}").format(table, sql.Identifier(name), sql.Identifier(source)))
            say(f"{name} added, filled from {source}")
        else:
            say(f"{name} added")
        existing[name] = Existing(name, _pg_type(column.logical).lower(), True, False)
    for name, column in wanted.items():
        if column.nullable or not existing[name].nullable:
            continue
        (missing,) = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {} IS NULL").format(table, sql.Identifier(name))).fetchone()
        if missing:
            say(f"{name}: NULL in {missing} adopted rows (the original did not record it); left nullable")
        else:
            conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET NOT NULL").format(table, sql.Identifier(name)))
    _adopt_key(conn, stream, table, say, sql)


def _adopt_key(conn, stream: StreamSpec, table, say, sql) -> None:
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = to_regclass(%s) AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)",
        [f'"{stream.table}"']).fetchall()
    have = [name for (name,) in rows]
    want = list(stream.primary_key)
    plan = stream_plan(stream)
    if have == want or (plan is not None and have == list(plan.key)):  # a second --adopt: already day-partitioned
        return
    if have:
        raise AdoptRefused(
            f"table {stream.table}: primary key ({', '.join(have)}), tickwire needs ({', '.join(want)}); "
            f"drop the old key by hand (ALTER TABLE {stream.table} DROP CONSTRAINT …) and run --adopt again")
    key = sql.SQL(", ").join(sql.Identifier(c) for c in want)
    (repeated,) = conn.execute(sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} GROUP BY {} HAVING count(*) > 1) d")
                               .format(table, key)).fetchone()
    if repeated:
        raise AdoptRefused(f"table {stream.table}: {repeated} keys ({', '.join(want)}) repeat; remove the duplicates "
                           "by hand (keep one row per key) and run --adopt again")
    conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(table, key))
    say(f"primary key ({', '.join(want)}) added")


def _pg_type(logical: str) -> str:
    from tickwire.plugins.codegen_postgres import PG_TYPES

    return PG_TYPES[logical]
