"""OHLCV candles from a trade stream: event-time windows with a watermark.

Output rows (one per symbol and window, the columns of ``candles_1m``)::

    symbol, window_start, window_end, open, high, low, close, volume, quote_volume, trade_count

``vwap`` (quote_volume / volume) and ``updated_at`` are computed by the PostgreSQL upsert, where
numeric division keeps full precision (Spark's DECIMAL(38,18) division keeps only 6 digits).

Open and close are the price of the first and last trade ordered by (trade time, trade id), with
``min_by``/``max_by`` on a struct. A trade sent twice (a producer retry, or two active-active
ingest instances) is counted once: :func:`tickwire.spark.dedup.drop_duplicate_trades` drops the
copies by primary key on this query's event-time watermark, before the aggregation. The query
runs in update mode: each batch emits the full current value of every candle it touched, so a
late trade (within the watermark) corrects its candle by an upsert; trades later than the
watermark are dropped by Spark (and counted in ``tickwire_spark_late_rows_dropped_total``).

Quote volume is exact for prices below 10^10 and quantities below 10^9 with at most 9 fractional
digits (Binance sends 8): the product is computed as DECIMAL(19,9) × DECIMAL(18,9) = DECIMAL(38,18).
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from tickwire.spark.dedup import drop_duplicate_trades
from tickwire.spark.mapping import DerivedMapping, StreamMapping

# Computed by the upsert from the staged row: VWAP with PostgreSQL's numeric division (the
# numerator's scale 24 makes the quotient exact to more than the 18 places kept).
COMPUTED_COLUMNS = {"vwap": "round(trunc(quote_volume, 24) / NULLIF(volume, 0), 18)", "updated_at": "now()"}
OUTPUT_COLUMNS = (
    "symbol", "window_start", "window_end", "open", "high", "low", "close",
    "volume", "quote_volume", "trade_count",
)


def time_column(derived: DerivedMapping, trades: StreamMapping) -> str:
    """The window's time: the mapping's ``time_column``, else ``trade_time`` when the stream has
    one (Binance candles are by trade time), else the stream's event time."""
    if derived.time_column:
        return derived.time_column
    return "trade_time" if "trade_time" in trades.column_names else trades.event_time


def candles(valid_trades: DataFrame, derived: DerivedMapping, trades: StreamMapping) -> DataFrame:
    """Streaming aggregation; run it with outputMode("update")."""
    ts = time_column(derived, trades)
    trade_id = "trade_id" if "trade_id" in trades.column_names else ts
    order = F.struct(F.col(ts), F.col(trade_id))
    deduplicated = drop_duplicate_trades(valid_trades, trades, ts, derived.watermark)
    quote = F.col("price").cast("decimal(19,9)") * F.col("quantity").cast("decimal(18,9)")
    aggregated = deduplicated.groupBy(F.window(F.col(ts), derived.interval), F.col("symbol")).agg(
        F.min_by("price", order).alias("open"),
        F.max("price").alias("high"),
        F.min("price").alias("low"),
        F.max_by("price", order).alias("close"),
        F.sum("quantity").cast("decimal(38,18)").alias("volume"),
        F.sum(quote).cast("decimal(38,18)").alias("quote_volume"),
        F.count(F.lit(1)).alias("trade_count"),
        F.max(ts).alias("__tw_last_time"),
    )
    return aggregated.select(
        "symbol",
        F.col("window.start").alias("window_start"),
        F.col("window.end").alias("window_end"),
        "open", "high", "low", "close", "volume", "quote_volume", "trade_count",
        # the latest trade time, for the end-to-end latency metric
        F.col("__tw_last_time").alias("__tw_event_time"),
    )
