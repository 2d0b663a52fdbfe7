"""``sqlite`` sink: the embedded default store (profile ``local``), no server needed.

* WAL journal and ``synchronous=NORMAL``: other processes (``sqlite3 data/tickwire.db``,
  Grafana's SQLite plugin, a notebook) read while tickwire writes; a commit survives a crash of
  tickwire (an OS crash may lose the last commits, never corrupt the file).
* Tables come from ``tickwire.plugins.codegen_sqlite.ddl_for`` — the same DDL ``tickwire generate
  sqlite`` prints — created if missing; an existing table gets the optional columns a newer
  schema adds, and a breaking difference stops the start with the manual steps
  (plugins/table_evolution.py, docs/schema-evolution.md).
* Idempotent: ``INSERT … ON CONFLICT DO NOTHING`` on the schema's primary key, so a replay or an
  overlap (reconnect, gap fill) never duplicates a row; skipped rows are counted in
  ``tickwire_duplicates_dropped_total``.
* One transaction per batch — a single multi-row ``INSERT`` (far cheaper on the GIL than
  ``executemany``; the statements: plugins/sqlite_inserts.py) — on one connection owned by one
  dedicated thread, so the event loop keeps reading while SQLite writes.
* Decimals are TEXT, stored exactly as received and read back equal.
* Dead letters go to the ``dead_letters`` table; trades lost for good to ``trade_gaps``.
* Resume: ``last_sequence_ids`` reads, per symbol, the last trade id held (framework/resume.py;
  the queries on this file, and the recording of ``trade_gaps``: plugins/sqlite_gaps.py).
* Retention: streams with ``retention:`` lose their expired rows at start and every
  ``retention_interval_s``, in bounded DELETE batches queued between the writes
  (plugins/sqlite_retention.py); each pass is logged with its count.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path

from tickwire.framework.components import BadRecords, DeadLetter, PermanentError, RunContext, SinkSpec, TradeGap, TransientError
from tickwire.framework.derived import keep_last_per_key
from tickwire.framework.hookspecs import hookimpl
from tickwire.framework.options import with_defaults
from tickwire.framework.threads import DedicatedThread
from tickwire.framework.schemas import StreamSpec, quote_identifier as q
from tickwire.framework.timestamps import iso_ms, ms_of_iso
from tickwire.plugins.codegen_sqlite import DEAD_LETTERS_DDL, TRADE_GAPS_DDL, ddl_for
from tickwire.plugins.sqlite_evolve import plan_for
from tickwire.plugins.sqlite_gaps import last_sequence_ids, record_gaps
from tickwire.plugins.sqlite_inserts import InsertStatements
from tickwire.plugins.sqlite_retention import DELETE_BATCH_ROWS, delete_batches, expiring_streams

CONFIG_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "path": {
            "type": "string",
            "default": "data/tickwire.db",
            "description": "Database file; relative to the config file's folder. Parent folders are created.",
        },
        "synchronous": {
            "enum": ["OFF", "NORMAL", "FULL"],
            "default": "NORMAL",
            "description": "PRAGMA synchronous. NORMAL with WAL: durable against process crashes, fast.",
        },
        "checkpoint_interval_s": {
            "type": "number",
            "exclusiveMinimum": 0,
            "default": 1.0,
            "description": "Seconds between WAL checkpoints, run on their own connection so commits never wait for them.",
        },
        "retention_interval_s": {
            "type": "number",
            "minimum": 1,
            "default": 3600,
            "description": "Seconds between two passes deleting the rows past their stream's `retention:` "
            "(the first pass runs at start).",
        },
        "busy_timeout_ms": {
            "type": "integer",
            "minimum": 0,
            "default": 5000,
            "description": "How long a write waits for a lock held by another connection before failing "
            "(the engine then retries the batch).",
        },
    },
}


class SQLiteSink:
    supports_dead_letters = True

    def __init__(self, name: str, options: dict, ctx: RunContext):
        self.name = name
        self.ctx = ctx
        options = with_defaults(CONFIG_SCHEMA, options)  # complete already when the engine builds it
        path = Path(options["path"]).expanduser()
        self.path = path if path.is_absolute() else Path(ctx.config_dir) / path
        self.synchronous = options["synchronous"]
        self.busy_timeout_ms = int(options["busy_timeout_ms"])
        self.checkpoint_interval_s = float(options["checkpoint_interval_s"])
        self.retention_interval_s = float(options["retention_interval_s"])
        self._retention_task: asyncio.Task | None = None
        self._checkpointer: WalCheckpointer | None = None
        self._conn: sqlite3.Connection | None = None
        self._thread = DedicatedThread(f"sqlite-{name}")
        self._inserts = InsertStatements()
        self._dup_counters: dict[str, object] = {}

    def describe(self) -> str:
        return f"SQLite {self.path}"

    async def open(self) -> None:
        self._thread.start()
        await self._thread.call(self._open_sync)
        if expiring_streams(self.ctx.streams):
            self._retention_task = asyncio.create_task(self._retention_loop(), name=f"sqlite-{self.name}-retention")

    # -- retention ------------------------------------------------------------------------------

    async def _retention_loop(self) -> None:
        while True:
            try:
                await self.apply_retention()
            except sqlite3.Error as exc:  # a locked or full database: the next pass tries again
                self.ctx.log.warning("retention pass failed; retrying at the next interval", error=str(exc))
            await asyncio.sleep(self.retention_interval_s)

    async def apply_retention(self, now: datetime | None = None) -> dict[str, int]:
        """Delete every stream's expired rows, one bounded batch per call on the sink's thread
        (writes queued meanwhile go in between); returns the rows deleted per stream."""
        now = now or datetime.now(timezone.utc)
        deleted: dict[str, int] = {}
        for stream in expiring_streams(self.ctx.streams):
            batches = delete_batches(self._conn, stream, now, DELETE_BATCH_ROWS)
            total = 0
            while (count := await self._thread.call(next, batches, 0)):
                total += count
            deleted[stream.name] = total
            if total:
                self.ctx.log.info("retention: expired rows deleted", stream=stream.name, table=stream.table,
                                  rows=total, retention_days=stream.retention_days)
        return deleted

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise RuntimeError(f"{self.path}: cannot switch to WAL journal mode (got {mode})")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        self._inserts.max_vars = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        conn.execute("BEGIN IMMEDIATE")  # two processes creating the tables at once take turns
        try:
            for stream in self.ctx.streams:
                self._evolve_table(conn, stream)
                for statement in ddl_for(stream):
                    conn.execute(statement)
            conn.execute(DEAD_LETTERS_DDL)
            conn.execute(TRADE_GAPS_DDL)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            conn.close()
            raise
        conn.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer below does it, off the commit path
        self._conn = conn
        self._checkpointer = WalCheckpointer(self.path, self.checkpoint_interval_s, self.busy_timeout_ms)
        self._checkpointer.start()

    def _evolve_table(self, conn: sqlite3.Connection, stream: StreamSpec) -> None:
        """Bring an existing table to the stream's schema in place (new optional columns), or
        refuse a breaking difference with the manual steps (plugins/table_evolution.py)."""
        plan = plan_for(conn, stream)
        if plan is None:
            return
        if plan.refusals:
            raise PermanentError(f"sink {self.name!r} (sqlite), stream {stream.name!r}: table {stream.table} in "
                                 f"{self.path} does not match {stream.schema_path.name}: " + " | ".join(plan.refusals))
        for statement in plan.statements():
            conn.execute(statement)
        if plan.changes_anything or plan.kept:
            self.ctx.log.info(f"table {stream.table}: {plan.summary()}", stream=stream.name, sink=self.name)

    async def write(self, stream: StreamSpec, records: list[dict]) -> None:
        records = keep_last_per_key(stream, records)
        try:
            inserted = await self._thread.call(self._inserts.insert, self._conn, stream, records)
        except sqlite3.Error as exc:
            raise classified(exc, self.path) from exc
        duplicates = len(records) - inserted
        if duplicates > 0:
            counter = self._dup_counters.get(stream.name)
            if counter is None:
                counter = self._dup_counters[stream.name] = self.ctx.metrics.duplicates_dropped.labels(stream=stream.name)
            counter.inc(duplicates)

    async def write_dead_letters(self, letters: list[DeadLetter]) -> None:
        try:
            await self._thread.call(self._write_dead_sync, letters)
        except sqlite3.Error as exc:
            raise classified(exc, self.path) from exc

    def _write_dead_sync(self, letters: list[DeadLetter]) -> None:
        conn = self._conn
        conn.execute("BEGIN")
        try:
            conn.executemany(
                "INSERT INTO dead_letters (stream, reason, plugin, payload, received_at) VALUES (?, ?, ?, ?, ?)",
                [(d.stream, d.reason, d.plugin, d.raw, d.received_at) for d in letters],
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    async def last_sequence_ids(self, stream: StreamSpec) -> dict[str, int] | None:
        """Sink protocol (optional): per symbol, the last trade id held without an unexplained
        hole below it; None for a stream without a sequence."""
        if stream.sequence is None:
            return None
        return await self._thread.call(last_sequence_ids, self._conn, stream)

    async def tail_records(self, stream: StreamSpec, column: str, span_ms: int) -> list[dict]:
        """Sink protocol (optional, framework/derived.py): the stored records of ``stream``
        whose ``column`` is within ``span_ms`` of its newest value, as normalized records."""
        return await self._thread.call(self._tail_records_sync, stream, column, span_ms)

    def _tail_records_sync(self, stream: StreamSpec, column: str, span_ms: int) -> list[dict]:
        conn, table = self._conn, q(stream.table)
        (newest,) = conn.execute(f"SELECT max({q(column)}) FROM {table}").fetchone()
        if newest is None:
            return []
        since = iso_ms(ms_of_iso(newest) - span_ms)  # ISO text of one shape: compares as the time does
        names = [c.name for c in stream.columns]
        cursor = conn.execute(f"SELECT {', '.join(map(q, names))} FROM {table} WHERE {q(column)} >= ?", (since,))
        return [dict(zip(names, row)) for row in cursor]

    async def write_gaps(self, gaps: list[TradeGap]) -> None:
        """Sink protocol (optional): record trades lost for good in ``trade_gaps``."""
        try:
            await self._thread.call(record_gaps, self._conn, self.ctx.streams, gaps, self.ctx.log)
        except sqlite3.Error as exc:
            raise classified(exc, self.path) from exc

    async def close(self) -> None:
        if self._retention_task is not None:
            self._retention_task.cancel()
            await asyncio.gather(self._retention_task, return_exceptions=True)
            self._retention_task = None
        if not self._thread.running:
            return
        try:
            if self._conn is not None:
                await self._thread.call(self._close_sync)
        finally:
            self._thread.stop()

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        try:
            conn.execute("PRAGMA optimize")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()


def classified(exc: sqlite3.Error, path: Path) -> Exception:
    """What a failed write means for the engine (framework/components.py). A full disk, a
    read-only file or a lock are retried (an operator can free space or fix permissions; the
    batch waits, the source is slowed down); a record SQLite refuses (a value it cannot bind, a
    constraint) goes to the dead letters; anything else is retried as before."""
    if isinstance(exc, (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.DataError)):
        return BadRecords(f"SQLite refused the batch: {exc}")
    message = str(exc)
    if "readonly" in message or "read-only" in message:
        return TransientError(f"{message} ({path}: retried until it is writable)")
    if "disk is full" in message or "disk I/O error" in message:
        return TransientError(f"{message} ({path}: retried until the disk has space)")
    return TransientError(message)


class WalCheckpointer(threading.Thread):
    """Copies the WAL into the database file on a connection of its own, every ``interval``
    seconds. With SQLite's auto-checkpoint the writer did this (copy + fsync) inside a commit,
    now and then for hundreds of milliseconds; a PASSIVE checkpoint blocks neither the writer nor
    readers, so commits stay short."""

    def __init__(self, path, interval: float, busy_timeout_ms: int):
        super().__init__(name=f"sqlite-checkpoint-{Path(path).name}", daemon=True)
        self.path, self.interval, self.busy_timeout_ms = path, interval, busy_timeout_ms
        self._stopping = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
            while not self._stopping.wait(self.interval):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.OperationalError:
                    pass  # busy: the next round copies what this one could not
        finally:
            conn.close()

    def stop(self) -> None:
        self._stopping.set()
        self.join()


@hookimpl
def tickwire_register_sinks(register):
    register(
        SinkSpec(
            name="sqlite",
            factory=SQLiteSink,
            description="Embedded SQLite file (WAL): idempotent upserts on the primary key, exact decimals as TEXT.",
            config_schema=CONFIG_SCHEMA,
            supports_dead_letters=True,
            stores_derived=True,
        )
    )
