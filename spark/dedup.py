"""Duplicates dropped by key before writing and before aggregating (active-active ingest).

Two (or more) tickwire instances may ingest the same symbols at once, so Kafka holds every
event once per instance. Every query drops the copies with Spark's stateful
``dropDuplicatesWithinWatermark`` on the stream's primary key (``x-tickwire.primary_key`` of its
schema, in the mapping: a trade is symbol + trade_id, a ticker symbol + event_time). The state,
one entry per key seen, is bounded by a watermark, so it never grows without limit:

* **event queries** (trades, tickers → their tables): the dedup clock is the micro-batch's
  processing time (``current_timestamp()``: one value per batch, replayed with the batch after a
  crash), with ``window`` of delay (``--dedup-window``, default 30 seconds). A copy that reaches
  Spark within that window of the first is dropped here (active-active instances receive the same
  event within milliseconds of each other); a later copy (an instance that spooled
  for longer) is still resolved by the writer's ``ON CONFLICT DO NOTHING``. A processing-time
  watermark never declares a row late, so no event is ever dropped for its age: an event-time
  watermark would drop from the table a trade whose only copy arrives after newer trades moved the
  watermark past it. A zero window (``--dedup-window "0 seconds"``) keeps no state at all: the
  writer's key drops every copy and counts it (the lowest per-batch cost, spark/README.md).
* **candles**: :func:`drop_duplicate_trades` on the candle's own event-time watermark
  (``derived.watermark`` on trade time), in the same query as the aggregation; a trade behind that
  watermark is not counted (it is still stored by the event query), and is counted in
  ``tickwire_spark_late_rows_dropped_total``.

Dead letters are never merged: their key is their Kafka position (partition:offset), unique per
record.
"""

from __future__ import annotations

import re

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from tickwire.spark import DEFAULT_DEDUP_WINDOW
from tickwire.spark.mapping import StreamMapping
from tickwire.spark.records import KAFKA_POSITION, REASON

SEEN_AT = "__tw_seen_at"
LETTER_ID = "__tw_letter_id"


def is_off(window: str) -> bool:
    """True for a zero window ("0 seconds"): the event queries keep no state, PostgreSQL's key
    (``ON CONFLICT DO NOTHING``) drops every copy, and the writer counts them."""
    return re.fullmatch(r"\s*0+(\.0*)?\s*[A-Za-z]*\s*", window) is not None


def drop_duplicate_events(parsed: DataFrame, stream: StreamMapping, window: str = DEFAULT_DEDUP_WINDOW) -> DataFrame:
    """``parsed`` (records.parse) with every valid event once per ``window`` of processing time;
    ``parsed`` as is when the window is zero (:func:`is_off`)."""
    if is_off(window):
        return parsed
    keyed = parsed.withColumn(SEEN_AT, F.current_timestamp()).withColumn(
        LETTER_ID, F.when(F.col(REASON).isNotNull(), F.col(KAFKA_POSITION))
    )
    deduplicated = keyed.withWatermark(SEEN_AT, window).dropDuplicatesWithinWatermark(
        [*stream.primary_key, LETTER_ID]
    )
    return deduplicated.drop(SEEN_AT, LETTER_ID)


def drop_duplicate_trades(valid: DataFrame, stream: StreamMapping, time_column: str, watermark: str) -> DataFrame:
    """Valid rows once per key, on the event-time watermark the aggregation after it uses."""
    return valid.withWatermark(time_column, watermark).dropDuplicatesWithinWatermark(list(stream.primary_key))
