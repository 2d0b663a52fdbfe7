"""The synthetic market behind the Binance simulator.

Every symbol is a seeded random walk that produces consecutive trades. All prices and quantities
are integers counted in units of 1e-8 (Binance prints 8 decimals), so the rolling-window tickers
are exact sums over the trades, never floats.

Determinism: with the same seed a symbol produces the same trades (id, price, quantity, maker
side) whatever else happens; only the times and the interleaving of symbols follow the clock.
Only the trading symbols trade, picked uniformly or by weight (a skewed market: the listings of
``sim_universe`` decide which symbols trade and how much); a halted symbol keeps its state.

History: the last ``history`` trades of each symbol are kept (column arrays, ~33 bytes a trade)
for ``historicalTrades`` and ``/_sim/trades``; a global budget keeps memory bounded when many
symbols are subscribed. Tickers come from per-minute buckets that cover the last 24 h whatever the
history size, so they stay consistent with every trade ever generated.
"""

from __future__ import annotations

import hashlib
import math
import random
from array import array
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass

from tickwire.plugins.binance.decimal8 import UNIT, fmt8, fmt_quote, round_div

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
HISTORY_BUDGET = 4_000_000  # trades kept across all symbols (~130 MB at most)


@dataclass(frozen=True)
class SymbolSpec:
    symbol: str
    price: int  # start price, units
    tick: int  # price step, units
    step: int  # quantity step, units
    qty_mean: int  # mean quantity, in steps


# Known symbols look like the real ones; any other symbol gets a seeded spec (see spec_for).
KNOWN = {
    "BTCUSDT": SymbolSpec("BTCUSDT", 43012_57000000, 1_000000, 1000, 2000),  # tick 0.01, step 0.00001
    "ETHUSDT": SymbolSpec("ETHUSDT", 2301_42000000, 1_000000, 10000, 3000),  # step 0.0001
    "SOLUSDT": SymbolSpec("SOLUSDT", 98_51000000, 1_000000, 100000, 50),  # step 0.001
    "BNBBTC": SymbolSpec("BNBBTC", 851000, 100, 100000, 1000),  # 0.00851000, tick 0.000001
}


def _seeded(seed: int, *parts: object) -> random.Random:
    digest = hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def spec_for(symbol: str, seed: int) -> SymbolSpec:
    if symbol in KNOWN:
        return KNOWN[symbol]
    rng = _seeded(seed, "spec", symbol)
    price = 10 ** rng.uniform(-1, 4)  # 0.1 .. 10000
    tick = max(1, 10 ** (math.floor(math.log10(price)) - 4 + 8))  # ~5 significant digits
    tick = int(tick)
    price_units = max(tick * 100, int(price * UNIT) // tick * tick)
    return SymbolSpec(symbol, price_units, tick, 100_000, 100)  # step 0.001


class SymbolState:
    """One symbol: its random walk, trade history and per-minute buckets."""

    __slots__ = (
        "spec", "symbol", "rng", "price", "first_id", "next_id", "last_qty", "last_maker",
        "ids", "prices", "qtys", "times", "makers", "cap", "buckets", "trade_stream",
        "generated", "sigma", "minute", "wcache",
    )

    def __init__(self, spec: SymbolSpec, seed: int, cap: int):
        self.spec = spec
        self.symbol = spec.symbol
        self.trade_stream = spec.symbol.lower() + "@trade"
        self.rng = _seeded(seed, "walk", spec.symbol)
        self.first_id = 1_000_000 + self.rng.randrange(9_000_000_000)
        self.next_id = self.first_id
        self.price = spec.price
        self.sigma = max(1.0, spec.price * 2e-5 / spec.tick)  # ~0.002% a trade, in ticks
        self.last_qty = 0
        self.last_maker = False
        self.ids = array("q")
        self.prices = array("q")
        self.qtys = array("q")
        self.times = array("q")
        self.makers = bytearray()
        self.cap = cap
        # bucket: [minute_ms, open, high, low, close, volume, quote16, first_id, last_id, prev_close]
        self.buckets: deque[list[int]] = deque()
        self.minute = -1
        self.generated = 0
        self.wcache: dict[int, tuple] = {}  # window → (start, newest bucket's minute, closed part)

    # -- generation -------------------------------------------------------------------------
    def trade(self, now_ms: int) -> tuple[int, int, int, int, bool]:
        """Make the next trade at ``now_ms``; returns (id, price, qty, time, buyer_is_maker)."""
        rng = self.rng
        spec = self.spec
        tick = spec.tick
        move = round(rng.gauss(0.0, self.sigma) + (spec.price - self.price) * 1e-4 / tick)
        price = self.price + move * tick
        if price < tick * 10:
            price = self.price + abs(move) * tick
        qty = (int(rng.expovariate(1.0 / spec.qty_mean)) + 1) * spec.step
        maker = rng.random() < 0.5
        tid = self.next_id
        self.next_id = tid + 1
        self.record(tid, price, qty, now_ms, maker)
        return tid, price, qty, now_ms, maker

    def record(self, tid: int, price: int, qty: int, time_ms: int, maker: bool) -> None:
        """Add a trade to history and buckets (also used to load replayed captures)."""
        prev = self.price if self.generated else price
        self.price = price
        self.last_qty = qty
        self.last_maker = maker
        self.generated += 1
        self.ids.append(tid)
        self.prices.append(price)
        self.qtys.append(qty)
        self.times.append(time_ms)
        self.makers.append(maker)
        if len(self.ids) > 2 * self.cap:
            self._trim()
        minute = time_ms - time_ms % MINUTE_MS
        if minute != self.minute:
            self.minute = minute
            self.buckets.append([minute, price, price, price, price, qty, price * qty, tid, tid, prev])
            horizon = minute - DAY_MS - 2 * MINUTE_MS
            while self.buckets[0][0] < horizon:
                self.buckets.popleft()
            return
        b = self.buckets[-1]
        if price > b[2]:
            b[2] = price
        elif price < b[3]:
            b[3] = price
        b[4] = price
        b[5] += qty
        b[6] += price * qty
        b[8] = tid

    def _trim(self) -> None:
        drop = len(self.ids) - self.cap
        for col in (self.ids, self.prices, self.qtys, self.times, self.makers):
            del col[:drop]

    # -- queries ----------------------------------------------------------------------------
    @property
    def last_id(self) -> int:
        return self.next_id - 1

    @property
    def retained_from(self) -> int | None:
        return self.ids[0] if self.ids else None

    def rows_at(self, start: int, limit: int | None) -> list[dict]:
        """Retained trades from index ``start`` (at most ``limit``), in Binance REST shape."""
        n = len(self.ids)
        start = min(max(0, start), n)
        end = n if limit is None else min(n, start + limit)
        ids, prices, qtys, times, makers = self.ids, self.prices, self.qtys, self.times, self.makers
        return [
            {
                "id": ids[i],
                "price": fmt8(prices[i]),
                "qty": fmt8(qtys[i]),
                "quoteQty": fmt_quote(prices[i] * qtys[i]),
                "time": times[i],
                "isBuyerMaker": bool(makers[i]),
                "isBestMatch": True,
            }
            for i in range(start, end)
        ]

    def window(self, window_ms: int, now_ms: int) -> dict | None:
        """Rolling-window aggregate over the trades with time in [O, now]; O is the start of
        the minute ``window_ms`` before now (Binance's rolling windows open on a minute, so a
        window can be up to 59 999 ms wider). None while the window holds no trade.

        The closed minutes of a window change once a minute, so their aggregate is cached and
        each ticker only adds the current minute (a 24 h window spans up to 1,441 buckets)."""
        start = now_ms - window_ms
        start -= start % MINUTE_MS
        buckets = self.buckets
        if not buckets or buckets[-1][0] < start:
            return None
        last = buckets[-1]
        cached = self.wcache.get(window_ms)
        if cached is None or cached[0] != start or cached[1] != last[0]:
            cached = self.wcache[window_ms] = (start, last[0], self._closed_minutes(start))
        first, high, low, volume, quote = cached[2]
        if first is None:
            first, high, low, volume, quote = last, last[2], last[3], 0, 0
        return {
            "O": start, "C": now_ms, "o": first[1], "h": max(high, last[2]), "l": min(low, last[3]),
            "c": last[4], "v": volume + last[5], "q16": quote + last[6], "F": first[7], "L": last[8],
            "x": first[9],
        }

    def _closed_minutes(self, start: int) -> tuple:
        """(first bucket, high, low, volume, quote16) of the buckets from ``start`` on, except
        the newest; (None, …) when there are none."""
        first = None
        high = low = 0
        volume = quote = 0
        for i in range(len(self.buckets) - 2, -1, -1):
            b = self.buckets[i]
            if b[0] < start:
                break
            if first is None:
                high, low = b[2], b[3]
            else:
                high = max(high, b[2])
                low = min(low, b[3])
            first = b
            volume += b[5]
            quote += b[6]
        return first, high, low, volume, quote


def _ticker_common(w: dict) -> dict:
    o, c = w["o"], w["c"]
    change = c - o
    pct = round_div(abs(change) * 100 * 1000, o)  # 3 decimals, half up
    pct_s = f"{'-' if change < 0 and pct else ''}{pct // 1000}.{pct % 1000:03d}"
    return {
        "p": fmt8(change),
        "P": pct_s,
        "w": fmt8(round_div(w["q16"], w["v"])) if w["v"] else "0.00000000",
        "v": fmt8(w["v"]),
        "q": fmt8(round_div(w["q16"], UNIT)),
    }


class Market:
    """Every symbol's state (``symbols``) and the ones trading now, which ``generate`` picks
    from: uniformly, or in proportion to a weight each (a skewed market)."""

    def __init__(self, symbols: list[str], seed: int, history: int = 200_000):
        self.seed = seed
        self.history = history
        self.rng = _seeded(seed, "market")
        self.symbols: dict[str, SymbolState] = {}
        self.order: list[SymbolState] = []  # every symbol ever known, in order of arrival
        self.trading: list[SymbolState] = []
        self.weights: dict[str, float] = {}  # symbol → weight, for weighted symbols
        self._cumulative: list[float] | None = None  # running sums of the weights; None: uniform
        self._trading_set: set[SymbolState] = set()
        self._weights_stale = False  # recomputed lazily: listing 1,500 symbols stays linear
        self._caps_stale = False
        for s in symbols:
            self.trade(s)

    def ensure(self, symbol: str) -> SymbolState:
        """The state of ``symbol`` (uppercase), created on first use (not trading yet)."""
        state = self.symbols.get(symbol)
        if state is None:
            state = SymbolState(spec_for(symbol, self.seed), self.seed, self.history)
            self.symbols[symbol] = state
            self.order.append(state)
            self._caps_stale = True
        return state

    def trade(self, symbol: str, weight: float | None = None) -> SymbolState:
        """Make ``symbol`` trade (from now on); ``weight`` its share relative to the others
        (None: every symbol alike)."""
        state = self.ensure(symbol)
        if weight is not None:
            self.weights[symbol] = weight
        if state not in self._trading_set:
            self.trading.append(state)
            self._trading_set.add(state)
        self._weights_stale = self._caps_stale = True
        return state

    def halt(self, symbol: str) -> None:
        """``symbol`` stops trading (its state and history stay)."""
        state = self.symbols.get(symbol)
        if state is not None and state in self._trading_set:
            self.trading.remove(state)
            self._trading_set.discard(state)
            self._weights_stale = True

    def is_trading(self, state: SymbolState) -> bool:
        return state in self._trading_set

    def _reweigh(self) -> None:
        self._weights_stale = False
        if not self.weights:
            self._cumulative = None
            return
        total, cumulative = 0.0, []
        for st in self.trading:
            total += self.weights.get(st.symbol, 1.0)
            cumulative.append(total)
        self._cumulative = cumulative

    def _rebalance_caps(self) -> None:
        """Share the history budget: evenly (never below 20,000 trades a symbol), or by weight
        (never below 2,000), so the busiest symbols keep the longest history. An explicit
        smaller ``history`` is kept as asked: tests of trades REST no longer serves need it."""
        self._caps_stale = False
        if not self.weights:
            cap = min(self.history, max(20_000, HISTORY_BUDGET // max(1, len(self.order))))
            for st in self.order:
                st.cap = cap
            return
        total = sum(self.weights.get(st.symbol, 1.0) for st in self.order)
        for st in self.order:
            share = self.weights.get(st.symbol, 1.0) / total
            st.cap = min(self.history, max(2_000, int(HISTORY_BUDGET * share)))

    def generate(self, n: int, now_ms: int) -> list[tuple[SymbolState, tuple]]:
        """The next ``n`` trades across the trading symbols (one chosen at random each time,
        uniformly or by weight)."""
        if self._caps_stale:
            self._rebalance_caps()
        if self._weights_stale:
            self._reweigh()
        trading = self.trading
        k = len(trading)
        if not k:
            return []
        rand = self.rng.random
        out = []
        append = out.append
        cumulative = self._cumulative
        if cumulative is None:
            for _ in range(n):
                st = trading[int(rand() * k)]
                append((st, st.trade(now_ms)))
        else:
            total = cumulative[-1]
            last = k - 1
            for _ in range(n):
                st = trading[min(bisect_right(cumulative, rand() * total), last)]
                append((st, st.trade(now_ms)))
        return out

    # -- payloads ---------------------------------------------------------------------------
    @staticmethod
    def trade_event(st: SymbolState, trade: tuple, event_ms: int | None = None) -> dict:
        tid, price, qty, t, maker = trade
        return {
            "e": "trade", "E": event_ms or t, "s": st.symbol, "t": tid, "p": fmt8(price),
            "q": fmt8(qty), "T": t, "m": maker, "M": True,
        }

    def ticker_1h(self, st: SymbolState, now_ms: int) -> dict | None:
        w = st.window(HOUR_MS, now_ms)
        if w is None:
            return None
        common = _ticker_common(w)
        return {
            "e": "1hTicker", "E": now_ms, "s": st.symbol, "p": common["p"], "P": common["P"],
            "o": fmt8(w["o"]), "h": fmt8(w["h"]), "l": fmt8(w["l"]), "c": fmt8(w["c"]),
            "w": common["w"], "v": common["v"], "q": common["q"], "O": w["O"], "C": w["C"],
            "F": w["F"], "L": w["L"], "n": w["L"] - w["F"] + 1,
        }

    def ticker_24h(self, st: SymbolState, now_ms: int) -> dict | None:
        w = st.window(DAY_MS, now_ms)
        if w is None:
            return None
        common = _ticker_common(w)
        tick, step, last = st.spec.tick, st.spec.step, w["c"]
        bid, ask = (last, last + tick) if st.last_maker else (last - tick, last)
        mix = w["L"] * 2654435761
        return {
            "e": "24hrTicker", "E": now_ms, "s": st.symbol, "p": common["p"], "P": common["P"],
            "w": common["w"], "x": fmt8(w["x"]), "c": fmt8(last), "Q": fmt8(st.last_qty),
            "b": fmt8(bid), "B": fmt8((mix % 997 + 1) * step), "a": fmt8(ask),
            "A": fmt8((mix % 1009 + 1) * step), "o": fmt8(w["o"]), "h": fmt8(w["h"]),
            "l": fmt8(w["l"]), "v": common["v"], "q": common["q"], "O": w["O"], "C": w["C"],
            "F": w["F"], "L": w["L"], "n": w["L"] - w["F"] + 1,
        }
