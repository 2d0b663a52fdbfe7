"""The foreachBatch writer: one micro-batch → one PostgreSQL transaction, retried until it lands.

For each batch of a query (on the driver):

1. one Spark job renders valid rows to CSV (``to_csv``) and joins them into one COPY payload, in
   the JVM (no Python object per row), and returns the dead-letter rows (reason, raw value, Kafka
   timestamp); a key repeated in the batch is resolved by the insert (``ON CONFLICT``);
2. in ONE transaction: skip the batch if ``(query, batch_id)`` is already in the progress table
   (a batch replayed after a crash); else COPY the rows into a temp table, ``INSERT … ON CONFLICT
   (key) DO NOTHING`` (events) or ``DO UPDATE`` (candles), insert the dead letters, and record
   ``(query, batch_id)``;
3. on a connection error (server down, restarting, network) reconnect and retry with exponential
   backoff for up to ``retry_seconds``; only then the batch fails (and the job restarts the query
   from its checkpoint).

After the commit, every row's commit time − event time is observed
(:meth:`tickwire.spark.job_metrics.SparkMetrics.observe_commit`): for an event table, of the
rows the insert added (``RETURNING`` their event time), not of the copies the key dropped. A
batch with nothing to write (every row a duplicate, or a no-data batch that only advances a
watermark) skips PostgreSQL.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from tickwire.spark.records import KAFKA_TS, RAW, REASON

if TYPE_CHECKING:
    from tickwire.spark.job_metrics import SparkMetrics

log = logging.getLogger("tickwire.spark")

# PostgreSQL reads these: timestamps as ISO with zone, NULL as an unquoted empty field.
CSV_OPTIONS = {
    "timestampFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX",
    "timestampNTZFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSSSS",
    "dateFormat": "yyyy-MM-dd",
    "nullValue": "",
    "emptyValue": '""',
    "quoteAll": "false",
    "escape": '"',
}
EVENT_TIME = "__tw_event_time"


@dataclass
class TableTarget:
    """Where and how a query's rows land."""

    table: str
    columns: list[str]
    primary_key: list[str]
    upsert: bool = False  # DO UPDATE (candles) instead of DO NOTHING (events)
    computed: dict[str, str] | None = None  # extra column → SQL over the staged columns


def _text(value: str | None) -> str:
    """PostgreSQL text cannot hold NUL: keep it visible as the JSON escape."""
    return "" if value is None else value.replace("\x00", "\\u0000")


class PostgresWriter:
    """Callable for ``DataStreamWriter.foreachBatch``; one per query, one connection each."""

    def __init__(
        self,
        dsn: str,
        query: str,
        stream: str,
        target: TableTarget,
        event_time: str | None,
        dead_letter_table: str,
        progress_table: str,
        metrics: SparkMetrics | None = None,
        retry_seconds: float = 600.0,
        has_dead_letters: bool = True,
    ):
        self.dsn = dsn
        self.query = query
        self.stream = stream
        self.target = target
        self.event_time = event_time
        self.dead_letter_table = dead_letter_table
        self.progress_table = progress_table
        self.metrics = metrics
        self.retry_seconds = retry_seconds
        self.has_dead_letters = has_dead_letters
        self._conn: psycopg.Connection | None = None
        self._payload_sql: sql.Composable | None = None
        self._aggregates: list[Column] | None = None
        self._lock = threading.Lock()
        self.batches_written = 0
        self.batches_skipped = 0
        self.inserted = 0  # rows the last committed batch inserted (the others were copies)
        # an event table tells which rows it took (the copies are not commits to time); an
        # upserted candle row is always written, its time comes from Spark
        self._returns_event_time = not target.upsert and event_time is not None and event_time in target.columns
        self.inserted_event_times: list[float] = []

    # -- Spark side ---------------------------------------------------------------------------

    def __call__(self, batch_df: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        rows, letters, count, event_times = self.collect(batch_df)
        if not rows and not letters:
            # nothing to write (a batch whose rows were all duplicates, or one Spark runs only to
            # advance a watermark): no PostgreSQL round trip, and a replay would write nothing too
            return
        collected = time.monotonic()
        with self._lock:
            committed = self.write_with_retry(batch_id, rows, letters)
        log.info("query %s batch %s: %d rows, %d dead letters: Spark %.2fs, PostgreSQL %.2fs",
                 self.query, batch_id, count, len(letters), collected - started, time.monotonic() - collected)
        if self._returns_event_time:
            event_times = self.inserted_event_times
        if committed and self.metrics is not None and event_times:
            self.metrics.observe_commit(self.stream, self.query, event_times)
        if committed and self.metrics is not None and count > self.inserted and not self.target.upsert:
            # copies the de-duplication stage did not see (a zero or passed window): dropped by the key
            self.metrics.duplicates_dropped.labels(stream=self.stream, query=self.query).inc(count - self.inserted)

    def collect(self, batch_df: DataFrame) -> tuple[list[tuple[str, None]], list[tuple], int, list[float]]:
        """One Spark job, aggregated in the JVM: the valid rows come back as ONE string of CSV
        lines (the COPY payload, no Python object per row), their event times as one list (for
        the latency histogram), and the dead letters (reason, raw value, Kafka timestamp).

        Rows repeated within the batch are not removed here: ``INSERT … ON CONFLICT DO NOTHING``
        keeps the first of them, and an upsert target stages its rows with ``DISTINCT ON`` the
        key."""
        if self._aggregates is None:
            self._aggregates = self.aggregates(REASON in batch_df.columns)
        (text, count, event_times, dead_rows), = batch_df.agg(*self._aggregates).collect()
        rows = [(text, None)] if count else []
        return rows, [(self.stream, d.r, "spark", d.v, d.t) for d in dead_rows], count, event_times

    def aggregates(self, has_reason: bool) -> list[Column]:
        """The batch's four aggregates; built once per writer (the same every batch), as every
        expression built in Python is a round trip to the JVM."""
        t = self.target
        reason = F.col(REASON) if has_reason else F.lit(None).cast("string")
        ok = reason.isNull()
        timed = self.event_time and not self._returns_event_time  # else PostgreSQL returns them
        event_time = F.col(self.event_time).cast("double") if timed else F.lit(None).cast("double")
        dead = (F.col(RAW), F.col(KAFKA_TS)) if has_reason else (F.lit(None), F.lit(None))
        line = F.when(ok, F.to_csv(F.struct(*[F.col(f"`{c}`") for c in t.columns]), CSV_OPTIONS))
        return [
            F.concat_ws("\n", F.collect_list(line)),  # collect_list skips the NULLs (dead letters)
            F.count(line),
            F.collect_list(F.when(ok, event_time)),
            F.collect_list(F.when(~ok, F.struct(reason.alias("r"), dead[0].alias("v"), dead[1].alias("t")))),
        ]

    # -- PostgreSQL side ----------------------------------------------------------------------

    def write_with_retry(self, batch_id: int, rows, letters) -> bool:
        """Write the batch; True if this call committed it, False if it was already there."""
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.5
        attempt = 0
        while True:
            attempt += 1
            try:
                return self.write(batch_id, rows, letters)
            except (psycopg.OperationalError, psycopg.InterfaceError) as error:
                self.close()
                if time.monotonic() + delay > deadline:
                    log.error("query %s batch %s: PostgreSQL still failing after %d attempts: %s",
                              self.query, batch_id, attempt, error)
                    raise
                log.warning("query %s batch %s: PostgreSQL error (attempt %d), retrying in %.1fs: %s",
                            self.query, batch_id, attempt, delay, str(error).strip())
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def write(self, batch_id: int, rows, letters) -> bool:
        conn = self._connection()
        t = self.target
        with conn.transaction():
            cur = conn.cursor()
            cur.execute(
                sql.SQL("SELECT 1 FROM {} WHERE query = %s AND batch_id = %s").format(
                    sql.Identifier(self.progress_table)),
                (self.query, batch_id),
            )
            if cur.fetchone():
                self.batches_skipped += 1
                log.info("query %s batch %s: already committed, skipped", self.query, batch_id)
                return False
            self.inserted, self.inserted_event_times = self._copy_and_insert(cur, rows) if rows else (0, [])
            if letters:
                self._dead_letters(cur, letters)
            cur.execute(
                sql.SQL("INSERT INTO {} (query, batch_id, committed_at) VALUES (%s, %s, now())").format(
                    sql.Identifier(self.progress_table)),
                (self.query, batch_id),
            )
        self.batches_written += 1
        return True

    def _copy_and_insert(self, cur: psycopg.Cursor, rows) -> tuple[int, list[float]]:
        """COPY the batch into a staging table, then insert it by key; the number of rows inserted
        and, for an event table, their event times (epoch seconds)."""
        t = self.target
        stage = sql.Identifier(f"tw_stage_{t.table}")
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in t.columns)
        cur.execute(
            sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
                stage, cols, sql.Identifier(t.table))
        )
        with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(stage, cols)) as copy:
            copy.write("\n".join(line for line, _ in rows))
            copy.write("\n")
        computed = t.computed or {}
        insert_cols = list(t.columns) + list(computed)
        select_items = [sql.Identifier(c) for c in t.columns] + [sql.SQL(expr) for expr in computed.values()]
        key = sql.SQL(", ").join(sql.Identifier(c) for c in t.primary_key)
        if t.upsert:
            updates = sql.SQL(", ").join(
                sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
                for c in insert_cols if c not in t.primary_key
            )
            conflict = sql.SQL("DO UPDATE SET {}").format(updates)
        else:
            conflict = sql.SQL("DO NOTHING")
        # DO UPDATE cannot touch a row twice in one statement: one staged row per key
        distinct = sql.SQL("DISTINCT ON ({}) ").format(key) if t.upsert else sql.SQL("")
        # DO NOTHING names no target: on a day-partitioned table the key also holds the
        # partition column (plugins/postgres_partitions.py), on an older plain table it does not
        target = sql.SQL("({}) ").format(key) if t.upsert else sql.SQL("")
        returning = (sql.SQL(" RETURNING extract(epoch FROM {})::float8").format(sql.Identifier(self.event_time))
                     if self._returns_event_time else sql.SQL(""))
        cur.execute(
            sql.SQL("INSERT INTO {} ({}) SELECT {}{} FROM {} ON CONFLICT {}{}{}").format(
                sql.Identifier(t.table),
                sql.SQL(", ").join(sql.Identifier(c) for c in insert_cols),
                distinct,
                sql.SQL(", ").join(select_items),
                stage, target, conflict, returning,
            )
        )
        if self._returns_event_time:
            times = [row[0] for row in cur.fetchall()]
            return len(times), times
        return cur.rowcount, []

    def _dead_letters(self, cur: psycopg.Cursor, letters) -> None:
        """``letters``: (stream, reason, plugin, raw value, received at) each."""
        if self._payload_sql is None:
            cur.execute(
                "SELECT data_type FROM information_schema.columns "
                "WHERE table_name = %s AND column_name = 'payload' ORDER BY table_schema = current_schema() DESC",
                (self.dead_letter_table,),
            )
            found = cur.fetchone()
            kind = found[0] if found else "text"
            self._payload_sql = {
                "bytea": sql.SQL("convert_to(%s, 'UTF8')"),
                "jsonb": sql.SQL("to_jsonb(%s::text)"),
                "json": sql.SQL("to_json(%s::text)"),
            }.get(kind, sql.SQL("%s"))
        cur.executemany(
            sql.SQL(
                "INSERT INTO {} (stream, reason, plugin, payload, received_at) VALUES (%s, %s, %s, {}, COALESCE(%s::timestamptz, now()))"
            ).format(sql.Identifier(self.dead_letter_table), self._payload_sql),
            [(stream, _text(reason), plugin, _text(raw), received) for stream, reason, plugin, raw, received in letters],
        )

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5,
                                         application_name=f"tickwire-spark-{self.query}")
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close
                pass
