"""Derived kind ``candles``: OHLCV candles from a trade stream inside ``tickwire run`` (SQLite and
direct PostgreSQL profiles), with the Spark job's semantics (spark/candles.py), so both paths
write the same rows.

* **Windows**: tumbling, ``interval`` long, aligned to the epoch, by event time: the stream's
  ``trade_time`` when it has one (Binance candles are by trade time), else its event time.
* **Values**: open/close = price of the first/last trade ordered by (trade time, trade id);
  high/low; volume = Σ quantity; quote_volume = Σ price × quantity with price and quantity
  first rounded half-up to 9 places (Spark's DECIMAL(19,9) × DECIMAL(18,9)); trade_count;
  vwap = round(quote_volume / volume, 18) as PostgreSQL's numeric division computes it (the
  Spark path's upsert does it in SQL). Decimals throughout, written with 18 places like Spark's
  DECIMAL(38,18), never floats.
* **Watermark**: the newest trade time seen minus ``watermark``. A trade at or before it is
  late: it stays in the trades table but not in its candle, and is counted in
  ``tickwire_derived_late_total{derived}`` (Spark drops it the same way and counts it in
  numRowsDroppedByWatermark). A later trade within the watermark updates its candle, which is
  re-written. Windows whose end is at or before the watermark are final and leave memory.
  Spark moves its watermark once per micro-batch, this stage once per trade: a trade that is
  late by the trade-by-trade rule but arrives in the same Spark micro-batch as the trades that
  made it late may still be counted by Spark (Spark guarantees only that trades within the
  watermark are counted).
* **Duplicates**: a trade whose key (symbol, trade id) is already in its open window is counted
  once (Spark: ``dropDuplicatesWithinWatermark``).
* **Emission**: every accepted trade re-emits its candle's full value; the sinks upsert on
  (symbol, window_start) and keep the last value of a batch (Spark's update mode + upsert).
* **Restart**: exact by recomputation, not by merging. At start the engine hands over the
  stored trades of the last ``watermark + interval`` (every window that can still be open) and
  this stage replays them in arrival order (``ingested_at``, trade id), rebuilding windows,
  duplicate keys and watermark, then re-writes the open candles. Merging in the sink (min/max/sum
  upserts) is not exact: a trade delivered again after a restart would be summed twice, and open
  and close need the order of all trades. The engine commits a candle update before the trades
  batch it came from (framework/derived.py), so no candle is ever behind its stored trades.
  The replay follows the arrival order, so a stored trade that was late when it came is late in
  the replay too (the trades that made it late are stored and arrived before it) — unless both
  arrived within the same millisecond of ``ingested_at``, where trade ids break the tie.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Context, Decimal

from tickwire.framework.components import DerivedSpec
from tickwire.framework.derived import DerivedStreamSpec, derived_stream
from tickwire.framework.hookspecs import hookimpl
from tickwire.framework.schemas import StreamSpec
from tickwire.framework.timestamps import iso_ms, ms_of_iso, now_iso
from tickwire.plugins.codegen_postgres import CANDLE_COLUMNS, CANDLE_KEY

UNIT_MS = {"second": 1_000, "minute": 60_000, "hour": 3_600_000}
EXACT = Context(prec=120, rounding=ROUND_HALF_UP)
PLACES_18 = Decimal(1).scaleb(-18)
PLACES_9 = Decimal(1).scaleb(-9)
# Spark casts price to DECIMAL(19,9) and quantity to DECIMAL(18,9) for the quote volume: a
# value with more integer digits becomes NULL there and adds nothing to the sum.
PRICE_LIMIT = Decimal(10) ** 10
QUANTITY_LIMIT = Decimal(10) ** 9


def duration_ms(text: str) -> int:
    """``"1 minute"``, ``"30 seconds"``, ``"4 hours"`` (the config schema's DURATION) → ms."""
    count, unit = text.split()
    return int(count) * UNIT_MS[unit.removesuffix("s")]


def fixed(value: Decimal) -> str:
    """A decimal with 18 places, never in exponent notation (Spark's DECIMAL(38,18) text)."""
    return format(value.quantize(PLACES_18, context=EXACT), "f")


def _base10000(value: Decimal) -> tuple[int, int]:
    """(weight, first digit) of a positive value in PostgreSQL's base-10000 numeric format."""
    exponent = value.adjusted()  # 10^exponent <= value < 10^(exponent+1)
    weight = exponent // 4
    return weight, int(value.scaleb(-4 * weight, context=EXACT))


def pg_vwap(quote_volume: Decimal, volume: Decimal) -> Decimal:
    """``round(trunc(quote_volume, 24) / volume, 18)`` as PostgreSQL computes it: the division is
    rounded half-up to numeric's select_div_scale, then to 18 places."""
    weight1, first1 = _base10000(quote_volume)
    weight2, first2 = _base10000(volume)
    qweight = weight1 - weight2 - (1 if first1 <= first2 else 0)
    rscale = min(max(16 - qweight * 4, 24, 18, 0), 1000)
    quotient = EXACT.divide(quote_volume, volume).quantize(Decimal(1).scaleb(-rscale), context=EXACT)
    return quotient.quantize(PLACES_18, context=EXACT)


def _at_most_9_places(text: str) -> bool:
    dot = text.find(".")
    return dot < 0 or len(text) - dot <= 10


class Candle:
    """One open window of one symbol. Sums use the exact context (120 digits: never rounded)."""

    __slots__ = ("symbol", "start", "first", "open", "last", "close", "high", "low", "volume", "quote", "count", "keys",
                 "start_iso", "end_iso")

    def __init__(self, symbol: str, start: int, interval_ms: int):
        self.symbol, self.start = symbol, start
        self.start_iso, self.end_iso = iso_ms(start), iso_ms(start + interval_ms)
        self.first = self.last = None  # (trade time, trade id) of open / close
        self.open = self.close = self.high = self.low = None
        self.volume = self.quote = Decimal(0)
        self.count = 0
        self.keys: set[tuple] = set()

    def add(self, order: tuple, price_text: str, quantity_text: str) -> None:
        price, quantity = Decimal(price_text), Decimal(quantity_text)
        if self.first is None or order < self.first:
            self.first, self.open = order, price
        if self.last is None or order > self.last:
            self.last, self.close = order, price
        if self.high is None or price > self.high:
            self.high = price
        if self.low is None or price < self.low:
            self.low = price
        self.volume = EXACT.add(self.volume, quantity)
        if price < PRICE_LIMIT and quantity < QUANTITY_LIMIT:
            if not _at_most_9_places(price_text):
                price = price.quantize(PLACES_9, context=EXACT)
            if not _at_most_9_places(quantity_text):
                quantity = quantity.quantize(PLACES_9, context=EXACT)
            self.quote = EXACT.add(self.quote, EXACT.multiply(price, quantity))
        self.count += 1

    def row(self, updated_at: str) -> CandleRow:
        return CandleRow(self, updated_at)


class CandleRow(dict):
    """A candle's row as of one trade. The key, count and times are there at once; the decimal
    columns (formatting, the VWAP division) are rendered the first time one is read — by the
    sink, for the one row per candle of a batch it keeps — from the values frozen here."""

    __slots__ = ("_state",)
    RENDERED = ("open", "high", "low", "close", "volume", "quote_volume", "vwap")

    def __init__(self, candle: Candle, updated_at: str):
        super().__init__(symbol=candle.symbol, window_start=candle.start_iso, window_end=candle.end_iso,
                         trade_count=candle.count, updated_at=updated_at)
        self._state = (candle.open, candle.high, candle.low, candle.close, candle.volume, candle.quote)

    def __missing__(self, key: str):
        if key not in self.RENDERED:
            raise KeyError(key)
        open_, high, low, close, volume, quote = self._state
        self.update(open=fixed(open_), high=fixed(high), low=fixed(low), close=fixed(close), volume=fixed(volume),
                    quote_volume=fixed(quote), vwap=fixed(pg_vwap(quote, volume)))
        return dict.__getitem__(self, key)

    def get(self, key, default=None):
        return self[key] if key in self.RENDERED or key in self.keys() else default

    def rendered(self) -> dict:
        """The complete row as a plain dict."""
        return {k: self[k] for k in (*self.keys(), *self.RENDERED)}


class CandleDeriver:
    """The :class:`~tickwire.framework.derived.Deriver` of one ``kind: candles`` block."""

    def __init__(self, name: str, block: dict, source: StreamSpec, metrics=None):
        columns = {c.name for c in source.columns}
        missing = {"symbol", "price", "quantity"} - columns
        if missing:
            raise ValueError(f"stream {source.name!r} has no column {', '.join(sorted(missing))} for candles")
        self.name = name
        self.interval_ms = duration_ms(block["interval"])
        self.watermark_ms = duration_ms(block["watermark"])
        # the Spark job's rule (spark/candles.py time_column)
        self.time_column = "trade_time" if "trade_time" in columns else source.event_time
        self.id_column = "trade_id" if "trade_id" in columns else self.time_column
        self.key_columns = tuple(source.primary_key)
        self.recovery_span_ms = self.watermark_ms + self.interval_ms
        self.stream: DerivedStreamSpec = derived_stream(name, block["table"], CANDLE_COLUMNS, CANDLE_KEY, "window_start", source)
        self.windows: dict[tuple[str, int], Candle] = {}
        self.newest: int | None = None  # the newest trade time seen (ms)
        self.evicted_up_to: int | None = None  # windows ending at or before this are gone
        self.late = 0
        self._late_counter = late_counter(metrics, name) if metrics is not None else None

    @property
    def watermark(self) -> int | None:
        return None if self.newest is None else self.newest - self.watermark_ms

    def observe(self, record: dict) -> list[dict] | None:
        candle = self._add(record)
        return None if candle is None else [candle.row(record.get("ingested_at") or now_iso())]

    def _add(self, record: dict) -> Candle | None:
        at = ms_of_iso(record[self.time_column])
        newest = self.newest
        if newest is not None and at <= newest - self.watermark_ms:
            self.late += 1
            if self._late_counter is not None:
                self._late_counter.inc()
            return None
        symbol = record["symbol"]
        start = at - at % self.interval_ms
        candle = self.windows.get((symbol, start))
        if candle is None:
            candle = self.windows[(symbol, start)] = Candle(symbol, start, self.interval_ms)
        key = tuple(record[k] for k in self.key_columns)
        if key in candle.keys:
            return None  # the same trade again (a reconnect, a gap fill): counted once
        candle.keys.add(key)
        candle.add((at, record[self.id_column]), record["price"], record["quantity"])
        if newest is None or at > newest:
            self.newest = at
            self._evict()
        return candle

    def _evict(self) -> None:
        """Drop the windows the watermark closed (their end at or before it): they are final."""
        mark = self.newest - self.watermark_ms
        closed_up_to = mark - mark % self.interval_ms  # window ends are multiples of the interval
        if self.evicted_up_to is not None and closed_up_to <= self.evicted_up_to:
            return
        self.evicted_up_to = closed_up_to
        for key in [k for k, c in self.windows.items() if c.start + self.interval_ms <= mark]:
            del self.windows[key]

    def recover(self, records: list[dict]) -> list[dict]:
        """Replay stored trades (the last ``watermark + interval``) in arrival order; the open
        candles come back, recomputed from exactly what is stored."""
        self.windows.clear()
        self.newest = self.evicted_up_to = None
        counter, self._late_counter = self._late_counter, None  # not late now: late when they came
        try:
            for record in sorted(records, key=lambda r: (r.get("ingested_at") or "", r[self.id_column])):
                self._add(record)
        finally:
            self._late_counter = counter
        self.late = 0
        stamp = now_iso()
        return [candle.row(stamp) for candle in self.windows.values()]


def late_counter(metrics, name: str):
    """``tickwire_derived_late_total{derived}``, registered once per metrics registry."""
    from prometheus_client import Counter

    counter = getattr(metrics, "derived_late", None)
    if counter is None:
        counter = metrics.derived_late = Counter(
            "tickwire_derived_late_total",
            "Source records later than a derived stream's watermark: stored, but not in the derived rows.",
            ["derived"], registry=metrics.registry,
        )
    return counter.labels(derived=name)


@hookimpl
def tickwire_register_derived(register):
    register(DerivedSpec(
        name="candles",
        factory=CandleDeriver,
        description="OHLCV candles by event-time window with a watermark, as the Spark job computes them.",
    ))
