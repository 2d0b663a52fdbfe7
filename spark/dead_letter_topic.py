"""The dead-letter topic → PostgreSQL: what ingest could not store, in the tables users look at.

The Kafka sink puts every dead letter of ingest (a frame that failed validation, a record it
could not encode) and every range of trades lost for good on the dead-letter topic
(plugins/kafka/dead_letters.py): value = the raw frame, or for a lost range the range as JSON;
headers ``tickwire-stream``, ``tickwire-reason``, ``tickwire-plugin``, ``tickwire-received-at``.
On the Kafka → Spark path nothing else reads that topic, so this query copies it into the tables
the direct sinks fill: every record into ``dead_letters`` (with the plugin that rejected it, not
``spark``), and a lost range into ``trade_gaps`` as well (idempotent per (stream, symbol,
first_id)). One transaction per micro-batch with its batch id in ``stream_progress``, like every
query, so a replayed batch is not copied twice.
"""

from __future__ import annotations

import json

from psycopg import sql
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from tickwire.spark import records
from tickwire.spark.mapping import DEAD_LETTER_QUERY
from tickwire.spark.postgres_writer import PostgresWriter, TableTarget

QUERY = DEAD_LETTER_QUERY
GAP_REASON_PREFIX = "trade gap:"  # framework/resume.py, gap_reason_text
GAP_FIELDS = ("stream", "symbol", "first_id", "last_id", "count", "reason", "detected_at")
ISO_UTC = "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX"


def _header(name: str):
    return F.expr(f"CAST(filter(headers, h -> h.key = '{name}')[0].value AS STRING)")


def read(spark: SparkSession, topic: str, options: dict[str, str]) -> DataFrame:
    """The topic's records as (stream, reason, plugin, payload, received_at as ISO text); a record
    without tickwire's headers (written by something else) keeps its value, with a reason saying so."""
    frame = records.read_kafka(spark, topic, {**options, "includeHeaders": "true"})
    received = F.coalesce(F.to_timestamp(_header("tickwire-received-at")), F.col("timestamp"))
    return frame.select(
        _header("tickwire-stream").alias("stream"),
        F.coalesce(_header("tickwire-reason"), F.lit("on the dead-letter topic without a tickwire-reason header")).alias("reason"),
        F.coalesce(_header("tickwire-plugin"), F.lit("kafka")).alias("plugin"),
        F.col("value").cast("string").alias("payload"),
        F.date_format(received, ISO_UTC).alias("received_at"),
    )


def lost_range(reason: str | None, payload: str | None) -> tuple | None:
    """A trade_gaps row from a lost-range record (its reason and JSON value); None for any other
    dead letter, or a range whose JSON is not tickwire's."""
    if not reason or not reason.startswith(GAP_REASON_PREFIX) or not payload:
        return None
    try:
        gap = json.loads(payload)
        row = tuple(gap[field] for field in GAP_FIELDS)
    except (ValueError, TypeError, KeyError):
        return None
    if not all(isinstance(gap[f], int) and not isinstance(gap[f], bool) for f in ("first_id", "last_id", "count")):
        return None
    return row


class DeadLetterTopicWriter(PostgresWriter):
    """foreachBatch for :data:`QUERY`: the batch's records into ``dead_letters``, its lost ranges
    into ``trade_gaps`` too, in the batch's one transaction."""

    def __init__(self, dsn: str, dead_letter_table: str, progress_table: str, trade_gaps_table: str, **kwargs):
        target = TableTarget(dead_letter_table, [], [])
        super().__init__(dsn, QUERY, "", target, None, dead_letter_table, progress_table, **kwargs)
        self.trade_gaps_table = trade_gaps_table

    def collect(self, batch_df: DataFrame):
        # dead letters are few: one row each to the driver, no aggregate
        letters = [(r.stream or "", r.reason, r.plugin, r.payload, r.received_at) for r in batch_df.collect()]
        return [], letters, 0, []

    def _dead_letters(self, cur, letters) -> None:
        super()._dead_letters(cur, letters)
        gaps = [gap for gap in (lost_range(reason, payload) for _, reason, _, payload, _ in letters) if gap]
        if gaps:
            cur.executemany(
                sql.SQL("INSERT INTO {} (stream, symbol, first_id, last_id, count, reason, detected_at) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING").format(
                    sql.Identifier(self.trade_gaps_table)),
                gaps,
            )
