"""Sink ``postgres``: store normalized records in PostgreSQL, exactly once per primary key.

Per batch, in one transaction: COPY the records into a temporary staging table shaped like the
target (``LIKE … ON COMMIT DELETE ROWS``), then ``INSERT … SELECT … ON CONFLICT (key) DO
NOTHING``. Tickers and trades are immutable events, so a row that is already there is a
duplicate, never an update. ``write()`` returns after COMMIT: that is the acknowledgement.
(The statements, and the reading of PostgreSQL's errors: plugins/postgres_writer.py.)

Because the insert ignores existing keys, replaying a batch is harmless. That is what makes the
retry loop safe: when the connection drops (even during COMMIT, when we cannot know whether it
committed) the sink reconnects with exponential backoff and writes the whole batch again. While
it waits, ``write()`` does not return, the engine's bounded queue fills, and the source is slowed
down: nothing received is lost.

A record PostgreSQL rejects (a value out of range, a NULL key…) would make the whole batch fail
forever, so after such an error the batch is written row by row and the rejected rows go to
``dead_letters`` with PostgreSQL's reason, in the same transaction.

Resume: ``last_sequence_ids`` reads, per symbol, the last trade id the table holds
(framework/resume.py); ``write_gaps`` records trades lost for good in ``trade_gaps`` (both
queries: plugins/postgres_gaps.py).

Tables come from ``tickwire db migrate`` (plugins/postgres_migrate.py); ``open()`` checks they
exist and says so if not (plugins/postgres_table_checks.py). A day-partitioned table (plugins/postgres_partitions.py) gets the
partition of a day the first time a batch holds a row of that day; until then, or if creating it
fails, such rows land in its DEFAULT partition: a missing partition never fails a batch. Connect as the ``tickwire_writer`` role, never as a superuser.

A server that cannot be reached at start does not hold the start-up: ``open()`` tries once,
refuses what retrying cannot fix (wrong password, missing table or privilege: an error at
start), and otherwise logs that the server is unreachable and returns; the first write then
connects with the same backoff, and checks the tables before writing. The run starts and can be
stopped (the engine cancels a write still retrying at its ``shutdown_timeout_s``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import date, datetime, timedelta, timezone

from tickwire.framework.backoff import Backoff
from tickwire.framework.components import DeadLetter, RunContext, SinkSpec, TradeGap
from tickwire.framework.derived import keep_last_per_key
from tickwire.framework.extras import POSTGRES
from tickwire.framework.hookspecs import hookimpl
from tickwire.framework.options import with_defaults
from tickwire.framework.schemas import StreamSpec, quote_identifier as q
from tickwire.framework.timestamps import iso_ns
from tickwire.plugins.postgres_gaps import last_sequence_ids, record_gaps
from tickwire.plugins.postgres_table_checks import PostgresSinkError, check_tables
from tickwire.plugins.postgres_writer import (
    DEAD_LETTER_TABLE, TableWriter, copy_dead_letters, first_line, is_configuration_failure, psycopg, sql,
)

SINK_TYPE = "postgres"
DSN_VARIABLE = "TICKWIRE_PG_DSN"

OPTIONS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "dsn": {
            "type": "string",
            "description": (
                "libpq URI or key=value string of the writer role (tickwire_writer). Keep the "
                "password out of streams.yaml: write `dsn: ${TICKWIRE_PG_DSN}`. When omitted, "
                "TICKWIRE_PG_DSN is read from the environment at start-up."
            ),
            "examples": ["${TICKWIRE_PG_DSN}"],
        },
        "schema": {
            "type": "string",
            "pattern": "^[a-z_][a-z0-9_]{0,62}$",
            "default": "public",
            "description": "PostgreSQL schema holding the stream tables and dead_letters.",
        },
        "connect_timeout_seconds": {
            "type": "integer",
            "minimum": 1,
            "default": 10,
            "description": "How long one connection attempt may take before it counts as failed.",
        },
        "retry_initial_seconds": {
            "type": "number",
            "exclusiveMinimum": 0,
            "default": 0.5,
            "description": "First wait before reconnecting after the server went away; doubles per failure.",
        },
        "retry_max_seconds": {
            "type": "number",
            "exclusiveMinimum": 0,
            "default": 10,
            "description": "Longest wait between reconnection attempts. The sink never gives up on a batch.",
        },
        "application_name": {
            "type": "string",
            "default": "tickwire",
            "description": "Shown in pg_stat_activity, to tell tickwire's connections apart.",
        },
    },
}


class PostgresSink:
    """The sink's lifecycle: one connection, one transaction at a time, reconnecting with backoff."""

    supports_dead_letters = True

    def __init__(self, name: str, options: dict, ctx: RunContext):
        self.name = name
        self.ctx = ctx
        self.log = ctx.log
        options = with_defaults(OPTIONS_SCHEMA, options)  # complete already when the engine builds it
        self.schema = options["schema"]
        self.dsn = options.get("dsn") or os.environ.get(DSN_VARIABLE)  # no default: the environment's
        if not self.dsn:
            raise PostgresSinkError(
                f"sink {name!r} (postgres): no connection string; set {DSN_VARIABLE} in the "
                f"environment or `dsn: ${{{DSN_VARIABLE}}}` in its options"
            )
        self.connect_timeout = options["connect_timeout_seconds"]
        self.retry_initial = options["retry_initial_seconds"]
        self.retry_max = options["retry_max_seconds"]
        self.application_name = options["application_name"]
        self._connection: psycopg.AsyncConnection | None = None
        self._staging_created: set[str] = set()  # per connection: temp tables die with it
        self._writers: dict[str, TableWriter] = {}
        self._partition_days: dict[str, set[date]] = {}  # per stream: days whose partition exists
        # one connection, one transaction at a time, even if the engine writes streams concurrently
        self._lock = asyncio.Lock()
        self._tables_checked = False
        self._dead_letter_table = sql.Identifier(self.schema, DEAD_LETTER_TABLE)

    # -- Sink protocol ------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and check the tables exist; a server that does not answer is not waited for
        (the writes connect, with backoff), a refusal retrying cannot fix is an error now."""
        async with self._lock:
            try:
                await self._connect()
            except (psycopg.OperationalError, psycopg.InterfaceError) as error:
                if is_configuration_failure(error):
                    raise PostgresSinkError(f"sink {self.name!r} (postgres): cannot connect: {first_line(error)}") from error
                await self._drop_connection()
                self.log.warning(
                    "postgres unreachable at start; records wait in the engine's queue while the writes "
                    "retry with backoff", error=first_line(error), retry_max_seconds=self.retry_max,
                )
                return
            await self._call_with_reconnect(None, _tables_only)  # checks them on connecting

    async def write(self, stream: StreamSpec, records: list[dict]) -> None:
        if not records:
            return
        records = keep_last_per_key(stream, records)
        writer = self._writer_for(stream)
        started = time.monotonic()
        async with self._lock:
            inserted, rejected = await self._call_with_reconnect(
                stream.name, lambda conn: self._write_batch(conn, writer, records)
            )
        duplicates = len(records) - inserted - rejected
        if duplicates:
            self.ctx.metrics.duplicates_dropped.labels(stream=stream.name).inc(duplicates)
        self.log.debug(
            "batch committed", stream=stream.name, records=len(records), inserted=inserted,
            rejected=rejected, duplicates=duplicates, seconds=round(time.monotonic() - started, 4),
        )

    async def write_dead_letters(self, letters: list[DeadLetter]) -> None:
        if not letters:
            return
        async with self._lock:
            await self._call_with_reconnect(None, lambda conn: self._store_dead_letters(conn, letters))

    async def last_sequence_ids(self, stream: StreamSpec) -> dict[str, int] | None:
        """Sink protocol (optional): per symbol, the last trade id held without an unexplained
        hole below it; None for a stream without a sequence."""
        if stream.sequence is None:
            return None
        async with self._lock:
            return await self._call_with_reconnect(stream.name, lambda conn: last_sequence_ids(conn, self.schema, stream))

    async def tail_records(self, stream: StreamSpec, column: str, span_ms: int) -> list[dict]:
        """Sink protocol (optional, framework/derived.py): the stored records of ``stream``
        whose ``column`` is within ``span_ms`` of its newest value, as normalized records
        (decimals as text, times as ISO-8601 UTC with milliseconds)."""
        table = f"{q(self.schema)}.{q(stream.table)}"
        columns = stream.columns
        select = ", ".join(
            f"to_char({q(c.name)} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')" if c.logical == "timestamp_ms"
            else f"{q(c.name)}::text" if c.logical == "decimal" else q(c.name)
            for c in columns
        )
        query = (f"SELECT {select} FROM {table} WHERE {q(column)} >= "
                 f"(SELECT max({q(column)}) FROM {table}) - make_interval(secs => %s)")

        async def read(conn: psycopg.AsyncConnection) -> list[dict]:
            rows = await (await conn.execute(query, [span_ms / 1000])).fetchall()
            return [dict(zip((c.name for c in columns), row)) for row in rows]

        async with self._lock:
            return await self._call_with_reconnect(stream.name, read)

    async def write_gaps(self, gaps: list[TradeGap]) -> None:
        """Sink protocol (optional): record trades lost for good in ``trade_gaps`` — only the
        ids the table does not hold: a redundant instance may have stored the others."""
        if not gaps:
            return
        async with self._lock:
            await self._call_with_reconnect(
                gaps[0].stream, lambda conn: record_gaps(conn, self.schema, self.ctx.streams, gaps, self.log)
            )

    async def close(self) -> None:
        async with self._lock:
            if self._connection is not None:
                await self._connection.close()
                self._connection = None

    # -- the write path -----------------------------------------------------------------------

    def _writer_for(self, stream: StreamSpec) -> TableWriter:
        writer = self._writers.get(stream.name)
        if writer is None:
            writer = self._writers[stream.name] = TableWriter.for_stream(stream, self.schema)
        return writer

    async def _write_batch(
        self, conn: psycopg.AsyncConnection, writer: TableWriter, records: list[dict]
    ) -> tuple[int, int]:
        """COPY + INSERT … ON CONFLICT DO NOTHING in one transaction; returns (inserted, rejected)."""
        await self._ensure_partitions(conn, writer, records)
        await self._ensure_staging(conn, writer)
        try:
            return await writer.copy_batch(conn, records), 0
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as error:
            self.log.warning(
                "postgres rejected a batch; writing it row by row to find the bad records",
                stream=writer.stream, error=first_line(error),
            )
            return await self._write_row_by_row(conn, writer, records)

    async def _ensure_partitions(self, conn: psycopg.AsyncConnection, writer: TableWriter, records: list[dict]) -> None:
        """Before a batch, the day partitions its rows need (once per day and process): made by
        ``tickwire_ensure_partition``, in a transaction of its own. If that fails the batch is
        still written: its rows land in the DEFAULT partition, and `tickwire db maintain` moves
        them to their day later. Days beyond tomorrow (UTC) are left to the DEFAULT partition
        too, so a record with a wild future time cannot create partitions at will."""
        if writer.ensure_partition is None:
            return
        known = self._partition_days.setdefault(writer.stream, set())
        tomorrow = datetime.now(timezone.utc).date() + timedelta(days=1)
        for day in sorted(writer.days(records) - known):
            if day > tomorrow:
                continue
            try:
                cursor = await conn.execute(writer.ensure_partition, [writer.qualified_table, day])
                if (await cursor.fetchone())[0]:
                    self.log.info("partition created on demand", stream=writer.stream, day=day.isoformat())
            except (psycopg.OperationalError, psycopg.InterfaceError):
                raise  # the connection: the retry loop reconnects
            except psycopg.Error as error:
                self.log.warning("cannot create the day's partition; the rows go to the DEFAULT partition "
                                 "until `tickwire db maintain` runs", stream=writer.stream, day=day.isoformat(),
                                 error=first_line(error))
            known.add(day)

    async def _ensure_staging(self, conn: psycopg.AsyncConnection, writer: TableWriter) -> None:
        # Created outside the batch transaction (autocommit), so a rolled-back batch does not
        # take the staging table with it.
        if writer.stream not in self._staging_created:
            await conn.execute(writer.create_staging)
            self._staging_created.add(writer.stream)

    async def _write_row_by_row(
        self, conn: psycopg.AsyncConnection, writer: TableWriter, records: list[dict]
    ) -> tuple[int, int]:
        inserted = 0
        rejected: list[DeadLetter] = []
        async with conn.transaction():
            for record in records:
                try:
                    inserted += await writer.insert_row(conn, record)
                except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as error:
                    rejected.append(DeadLetter(
                        stream=writer.stream,
                        reason=f"postgres rejected the record: {first_line(error)}",
                        plugin=f"{SINK_TYPE}:{self.name}",
                        raw=json.dumps(record, default=str, ensure_ascii=False),
                        received_at=record.get("ingested_at") or iso_ns(),
                    ))
            if rejected:
                await copy_dead_letters(conn, self._dead_letter_table, rejected)
        for letter in rejected:
            self.ctx.metrics.dead_letters.labels(stream=letter.stream).inc()
            self.log.warning("record dead-lettered", stream=letter.stream, reason=letter.reason)
        return inserted, len(rejected)

    async def _store_dead_letters(self, conn: psycopg.AsyncConnection, letters: list[DeadLetter]) -> None:
        async with conn.transaction():
            await copy_dead_letters(conn, self._dead_letter_table, letters)

    async def _check_tables(self, conn: psycopg.AsyncConnection) -> None:
        await check_tables(conn, self.name, self.schema, self._my_streams())
        self._tables_checked = True

    def _my_streams(self) -> list[StreamSpec]:
        return [stream for stream in self.ctx.streams if not stream.sinks or self.name in stream.sinks]

    # -- connection handling ------------------------------------------------------------------

    async def _call_with_reconnect(self, stream_name: str | None, operation):
        """Run ``operation(connection)``; on a lost or refused connection, reconnect with
        exponential backoff and run it again, until it succeeds or we are cancelled. A refusal
        retrying cannot fix (credentials, a missing database or role) is a PostgresSinkError."""
        backoff = Backoff(self.retry_initial, self.retry_max, jitter=0.0)
        while True:
            try:
                conn = await self._connect()
                if not self._tables_checked:
                    await self._check_tables(conn)
                return await operation(conn)
            except psycopg.errors.UndefinedTable as error:
                raise PostgresSinkError(
                    f"sink {self.name!r} (postgres), stream {stream_name!r}: {first_line(error)}; "
                    "create the tables with `tickwire db migrate`"
                ) from error
            except (psycopg.OperationalError, psycopg.InterfaceError) as error:
                message = first_line(error)
                if is_configuration_failure(error):
                    raise PostgresSinkError(f"sink {self.name!r} (postgres): cannot connect: {message}") from error
                delay = backoff.next_delay()
                await self._drop_connection()
                self.log.warning(
                    "postgres unavailable; retrying", stream=stream_name, attempt=backoff.attempt,
                    retry_in_seconds=delay, error=message,
                )
                await asyncio.sleep(delay)

    async def _connect(self) -> psycopg.AsyncConnection:
        if self._connection is not None and not self._connection.closed:
            return self._connection
        self._connection = await psycopg.AsyncConnection.connect(
            self.dsn,
            autocommit=True,  # every write is an explicit conn.transaction() block
            connect_timeout=self.connect_timeout,  # libpq takes whole seconds
            application_name=self.application_name,
            # notice a server that vanished without closing the socket (network loss)
            keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
        )
        self._staging_created.clear()
        return self._connection

    async def _drop_connection(self) -> None:
        if self._connection is not None:
            try:
                await self._connection.close()
            except psycopg.Error:
                pass  # it is already broken; we only release the socket
            self._connection = None


async def _tables_only(_conn: psycopg.AsyncConnection) -> None:
    """The operation of open(): nothing beyond what every connection does first."""


@hookimpl
def tickwire_register_sinks(register) -> None:
    register(SinkSpec(
        name=SINK_TYPE,
        factory=PostgresSink,
        description="PostgreSQL tables (COPY + INSERT … ON CONFLICT DO NOTHING, one transaction per batch)",
        config_schema=OPTIONS_SCHEMA,
        supports_dead_letters=True,
        stores_derived=True,
        requires=POSTGRES,
    ))
