"""Duplicates dropped by key before writing and before aggregating (active-active ingest).

Two (or more) tickwire instances may ingest the same symbols at once, so Kafka holds every
event once per instance. The copies are dropped by the stream's primary key
(``x-tickwire.primary_key`` of its schema, in the mapping: a trade is symbol + trade_id, a ticker
symbol + event_time):

* **event queries** (trades, tickers → their tables): by default (``--dedup-window "0 seconds"``)
  they keep no state: the writer's ``INSERT … ON CONFLICT DO NOTHING`` drops every copy and
  counts it. That halves the per-batch cost (no shuffle, no state store, no watermark;
  spark/README.md, "Latency"). A positive window drops the copies in Spark first, with
  ``dropDuplicatesWithinWatermark`` on a processing-time clock (``current_timestamp()``: one value
  per batch, replayed with the batch after a crash): a copy that reaches Spark within the window
  of the first is dropped there, a later one by the key. A processing-time watermark never
  declares a row late, so no event is ever dropped for its age: an event-time watermark would
  drop from the table a trade whose only copy arrives after newer trades moved the watermark past
  it. A checkpoint keeps the kind of plan it started with (:func:`window_for_checkpoint`).
* **candles**: :func:`drop_duplicate_trades` on the candle's own event-time watermark
  (``derived.watermark`` on trade time), in the same query as the aggregation (an aggregate
  cannot lean on the table's key); a trade behind that watermark is not counted (it is still
  stored by the event query), and is counted in ``tickwire_spark_late_rows_dropped_total``.

Dead letters are never merged: their key is their Kafka position (partition:offset), unique per
record.
"""

from __future__ import annotations

import re

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from tickwire.spark import DEFAULT_DEDUP_WINDOW, STATEFUL_CHECKPOINT_WINDOW
from tickwire.spark.mapping import StreamMapping
from tickwire.spark.records import KAFKA_POSITION, REASON

SEEN_AT = "__tw_seen_at"
LETTER_ID = "__tw_letter_id"


def is_off(window: str) -> bool:
    """True for a zero window ("0 seconds"): the event queries keep no state, PostgreSQL's key
    (``ON CONFLICT DO NOTHING``) drops every copy, and the writer counts them."""
    return re.fullmatch(r"\s*0+(\.0*)?\s*[A-Za-z]*\s*", window) is not None


def window_for_checkpoint(window: str, has_offsets: bool, has_state: bool) -> tuple[str, str | None]:
    """The window an event query runs with: ``window``, unless its checkpoint was started with the
    other kind of plan — Spark can neither add a stateful operator to a checkpoint that has none
    nor drop one it has, so the checkpoint's kind wins. Returns the window and, when it differs
    from ``window``, why (for the log)."""
    if not has_offsets:
        return window, None
    if has_state and is_off(window):
        return STATEFUL_CHECKPOINT_WINDOW, (
            f"its checkpoint holds de-duplication state (started with a window), so it keeps a "
            f"{STATEFUL_CHECKPOINT_WINDOW} window; a new --checkpoint-dir starts it without state")
    if not has_state and not is_off(window):
        return "0 seconds", (
            f"its checkpoint was started without de-duplication state, so it keeps none (not {window}); "
            f"a new --checkpoint-dir starts it with the window")
    return window, None


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
