"""The partition plan: which PostgreSQL tables are range-partitioned by day, on which column,
with which key — one place, used by the generated DDL (plugins/codegen_postgres.py), ``tickwire
db migrate`` / ``tickwire db maintain`` (plugins/postgres_maintain.py) and the postgres sink
(plugins/postgres_writer.py). The Spark writer inserts into the parent table and needs nothing.

Layout of a partitioned table ``trades``:

* the parent ``trades`` — ``PARTITION BY RANGE (trade_time)``; readers and writers only ever
  name it;
* one partition per UTC day, ``trades_p20261129`` = ``[2026-11-29 00:00Z, 2026-11-30 00:00Z)``;
* ``trades_default`` — the DEFAULT partition, a safety net: a row whose day has no partition yet
  lands there instead of failing the batch. ``tickwire_ensure_partition`` (and so ``db
  maintain``) moves such rows into their day's partition when it creates it.

The partition column. A partitioned table's primary key must contain the partition column, so
the stored key is the schema's key plus that column (:func:`storage_key`). ``ON CONFLICT`` then
stays exact only if a given event always carries the same value in that column. For tickers the
key already is ``(symbol, event_time)``. For trades it is not the event time ``E``: a trade
filled from REST (``historicalTrades``, plugins/binance/rest.py) has no ``E`` and gets ``E = T``,
while the WebSocket sent it with ``E = T + a few ms`` — the same trade with two event times would
become two rows. The trade time ``T`` is the same on every path, so trades are partitioned by
``trade_time`` (``x-tickwire.partition_time`` in schemas/trade.schema.json; the dashboards filter
trades on ``trade_time`` too, so their time ranges prune partitions). Candles: ``window_start``.

Index on time: a btree on ``(symbol, <time>)`` per partition (measured against BRIN in
bench/partitions_bench.py; figures in bench/README.md).

``tickwire_ensure_partition(parent, day)`` is a SECURITY DEFINER function, so the writer role
(which may not create tables) can create a missing day's partition on demand, and nothing else:
it only acts on a range-partitioned table the caller may INSERT into, only creates the one
partition of that day, and runs with a fixed search_path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from tickwire.framework.schemas import StreamSpec, quote_identifier as q

CANDLE_TIME_COLUMN = "window_start"
ENSURE_FUNCTION = "tickwire_ensure_partition"
DEFAULT_SUFFIX = "_default"
DAY_FORMAT = "%Y%m%d"
# Index on the time column alone, per partition; chosen by bench/partitions_bench.py.
TIME_INDEX_METHOD = "btree"


@dataclass(frozen=True)
class TablePlan:
    """One day-partitioned table: its time column, stored key and retention."""

    table: str
    time_column: str
    key: tuple[str, ...]  # the schema's key plus the time column: what ON CONFLICT names
    retention_days: int | None = None
    has_symbol: bool = True

    @property
    def default_partition(self) -> str:
        return self.table + DEFAULT_SUFFIX

    def partition(self, day: date) -> str:
        return f"{self.table}_p{day.strftime(DAY_FORMAT)}"

    def day_of(self, partition: str) -> date | None:
        """The day a partition named by this plan holds; None for any other name."""
        match = re.fullmatch(re.escape(self.table) + r"_p(\d{8})", partition)
        return datetime.strptime(match.group(1), DAY_FORMAT).date() if match else None

    def expired_before(self, now: datetime) -> datetime | None:
        """Rows older than this are past retention (None: kept for ever)."""
        return None if self.retention_days is None else now - timedelta(days=self.retention_days)


def storage_key(key: list[str] | tuple[str, ...], time_column: str | None) -> tuple[str, ...]:
    """The primary key as stored: a partitioned table's key must include its partition column."""
    return tuple(key) + ((time_column,) if time_column and time_column not in key else ())


def stream_plan(stream: StreamSpec) -> TablePlan | None:
    column = stream.partition_time
    if column is None:
        return None
    return TablePlan(stream.table, column, storage_key(stream.primary_key, column),
                     stream.retention_days, any(c.name == "symbol" for c in stream.columns))


def candle_plan(block: dict) -> TablePlan:
    return TablePlan(block["table"], CANDLE_TIME_COLUMN, ("symbol", CANDLE_TIME_COLUMN), retention_days(block.get("retention")))


def plans(config) -> list[TablePlan]:
    """Every day-partitioned table of a config, streams first (DDL order)."""
    out = [plan for plan in map(stream_plan, config.streams.values()) if plan is not None]
    return out + [candle_plan(block) for block in config.derived.values()]


def retention_days(text: str | None) -> int | None:
    """``"30 days"`` → 30 (the config schema has checked the shape)."""
    return int(text.split()[0]) if text else None


def utc_day(moment: datetime) -> date:
    return moment.astimezone(timezone.utc).date()


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


# -- DDL ---------------------------------------------------------------------------------------


def partitioned_ddl(plan: TablePlan) -> list[str]:
    """After the parent's ``CREATE TABLE … PARTITION BY``: the DEFAULT partition and the time
    indexes (declared on the parent, so every partition, present and future, gets them)."""
    table, column = q(plan.table), q(plan.time_column)
    statements = [f"CREATE TABLE IF NOT EXISTS {q(plan.default_partition)} PARTITION OF {table} DEFAULT;"]
    if plan.has_symbol and plan.key[:2] != ("symbol", plan.time_column):  # else the key's index serves
        index = q(f"{plan.table}_symbol_{plan.time_column}_idx")
        statements.append(f"CREATE INDEX IF NOT EXISTS {index} ON {table} ({q('symbol')}, {column});")
    index = q(f"{plan.table}_{plan.time_column}_idx")
    statements.append(f"CREATE INDEX IF NOT EXISTS {index} ON {table} USING {TIME_INDEX_METHOD} ({column});")
    return statements


def partition_clause(plan: TablePlan) -> str:
    return f" PARTITION BY RANGE ({q(plan.time_column)})"


# Rows of the DEFAULT partition that belong to the new day are moved into it in the same
# transaction (PostgreSQL refuses to create a partition while the default holds its rows).
ENSURE_FUNCTION_DDL = f"""CREATE OR REPLACE FUNCTION {ENSURE_FUNCTION}(parent regclass, day date) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $ensure$
DECLARE
    schema_name name;
    table_name name;
    time_column name;
    partition_name text := NULL;
    default_name text;
    low timestamptz := day::timestamp AT TIME ZONE 'UTC';
    high timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
    default_has_rows boolean := false;
BEGIN
    SELECT n.nspname, c.relname, a.attname INTO schema_name, table_name, time_column
      FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_partitioned_table p ON p.partrelid = c.oid
      JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = p.partattrs[0]
     WHERE c.oid = parent AND p.partstrat = 'r' AND p.partnatts = 1;
    IF table_name IS NULL THEN
        RAISE EXCEPTION '{ENSURE_FUNCTION}: % is not partitioned by range on one column', parent;
    END IF;
    -- session_user: the role that called, not this function's owner
    IF NOT has_table_privilege(session_user, parent, 'INSERT') THEN
        RAISE EXCEPTION '{ENSURE_FUNCTION}: % may not insert into %', session_user, parent
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    partition_name := table_name || '_p' || to_char(day, 'YYYYMMDD');
    IF to_regclass(format('%I.%I', schema_name, partition_name)) IS NOT NULL THEN
        RETURN false;
    END IF;
    -- concurrent callers for the same table queue here; the loser finds the partition made.
    -- (Asked of pg_class with this statement's snapshot: the name cache behind to_regclass
    -- may not have seen the winner's commit yet.)
    PERFORM pg_advisory_xact_lock(1952804207, parent::oid::int);
    IF EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = schema_name AND c.relname = partition_name) THEN
        RETURN false;
    END IF;
    default_name := table_name || '{DEFAULT_SUFFIX}';
    IF to_regclass(format('%I.%I', schema_name, default_name)) IS NOT NULL THEN
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I.%I WHERE %I >= $1 AND %I < $2)',
                       schema_name, default_name, time_column, time_column)
           INTO default_has_rows USING low, high;
    END IF;
    IF default_has_rows THEN
        EXECUTE format('ALTER TABLE %I.%I DETACH PARTITION %I.%I', schema_name, table_name, schema_name, default_name);
    END IF;
    EXECUTE format('CREATE TABLE %I.%I PARTITION OF %I.%I FOR VALUES FROM (%L) TO (%L)',
                   schema_name, partition_name, schema_name, table_name, low, high);
    IF default_has_rows THEN
        EXECUTE format('WITH moved AS (DELETE FROM %I.%I WHERE %I >= $1 AND %I < $2 RETURNING *) '
                       'INSERT INTO %I.%I SELECT * FROM moved',
                       schema_name, default_name, time_column, time_column, schema_name, partition_name)
           USING low, high;
        EXECUTE format('ALTER TABLE %I.%I ATTACH PARTITION %I.%I DEFAULT', schema_name, table_name, schema_name, default_name);
    END IF;
    RETURN true;
END
$ensure$;"""


def function_ddl() -> list[str]:
    """The on-demand partition function; only roles granted EXECUTE (the writer) may call it."""
    return [
        ENSURE_FUNCTION_DDL,
        f"REVOKE ALL ON FUNCTION {ENSURE_FUNCTION}(regclass, date) FROM PUBLIC;",
        f"COMMENT ON FUNCTION {ENSURE_FUNCTION}(regclass, date) IS 'Creates the day partition of a tickwire table "
        "(moving its rows out of the DEFAULT partition); returns false if it existed.';",
    ]
