"""The live market on the wire: trades and tickers of the synthetic market (:mod:`.market`),
rendered once with orjson and queued to every subscriber of their stream.

Trades come at ``rate`` per second across all symbols (0: as fast as the trade subscribers
read them); tickers every ``ticker_interval`` seconds per subscribed ticker stream of a trading
symbol (a delisted symbol falls silent). Only subscribed streams cost rendering: a market of
1,500 symbols with three subscribed streams renders no more than the three.
"""

from __future__ import annotations

import asyncio

import orjson

from tickwire.plugins.binance.market import Market, SymbolState
from tickwire.plugins.binance.sim_config import STREAM_RE, now_ms
from tickwire.plugins.binance.sim_connections import Connection, Hub


class MarketFeed:
    """Runs the market and delivers its events through the hub; two loops, started by the server."""

    def __init__(self, hub: Hub):
        self.hub = hub
        self.cfg = hub.cfg
        self.market = hub.market
        self._prefix: dict[str, bytes] = {}  # stream → b'{"stream":"<stream>","data":'
        self._tickers: dict[str, tuple[str, bool, bytes]] = {}  # stream → (SYMBOL, is 24 h, prefix)

    def _deliver_trades(self, batch: list[tuple[SymbolState, tuple]]) -> int:
        subs = self.hub.subs
        prefix = self._prefix
        trade_event = Market.trade_event
        dumps = orjson.dumps
        delivered = 0
        for st, trade in batch:
            stream = st.trade_stream
            conns = subs.get(stream)
            if conns:
                raw = dumps(trade_event(st, trade))
                pre = prefix.get(stream)
                if pre is None:
                    pre = prefix[stream] = b'{"stream":"%s","data":' % stream.encode()
                combined = pre + raw + b"}"
                for c in tuple(conns):
                    c.data(raw, combined, stream)
                delivered += 1
        return delivered

    def _trade_clients(self) -> list[Connection]:
        return [c for c in self.hub.conns.values() if not c.closed and any(s.endswith("@trade") for s in c.streams)]

    async def trades(self) -> None:
        """Generate and deliver trades forever, paced at ``rate`` (or unpaced at rate 0)."""
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        if cfg.rate <= 0:
            await self._trades_unpaced()
            return
        tick = 0.01 if cfg.rate >= 100 else max(0.01, min(0.1, 1.0 / cfg.rate))
        start = loop.time()
        made = 0
        while True:
            await asyncio.sleep(tick)
            due = int((loop.time() - start) * cfg.rate) - made
            if due > cfg.rate:  # more than a second behind: skip ahead, report it
                self.hub.counters["rate_shortfall"] += due - int(cfg.rate)
                made += due - int(cfg.rate)
                due = int(cfg.rate)
            n = min(due, 50_000)
            if n <= 0:
                continue
            self._deliver_trades(self.market.generate(n, now_ms()))
            made += n
            self.hub.flush()

    async def _trades_unpaced(self) -> None:
        """Rate 0: batches as fast as the trade subscribers read them (the slowest sets the
        pace); with no trade subscriber an idle 1000 trades/s so the market still moves."""
        while True:
            clients = self._trade_clients()
            if not clients:
                self.market.generate(10, now_ms())
                await asyncio.sleep(0.01)
                continue
            self._deliver_trades(self.market.generate(1000, now_ms()))
            self.hub.flush()
            for c in clients:
                if c.paused and not c.closed:
                    await c.drain()
            await asyncio.sleep(0)

    def _ticker_stream(self, stream: str) -> tuple[str, bool, bytes]:
        parsed = self._tickers.get(stream)
        if parsed is None:
            sym, kind = STREAM_RE.match(stream).groups()
            parsed = self._tickers[stream] = (sym.upper(), kind == "ticker", b'{"stream":"%s","data":' % stream.encode())
        return parsed

    async def tickers(self) -> None:
        """Every ``ticker_interval`` s, the 24 h or 1 h ticker of each subscribed ticker stream."""
        loop = asyncio.get_running_loop()
        interval = self.cfg.ticker_interval
        market = self.market
        dumps = orjson.dumps
        next_at = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += interval
            now = now_ms()
            for stream, conns in list(self.hub.subs.items()):
                if not conns or stream.endswith("@trade"):
                    continue
                symbol, day, prefix = self._ticker_stream(stream)
                st = market.symbols.get(symbol)
                if st is None or not market.is_trading(st):
                    continue
                event = market.ticker_24h(st, now) if day else market.ticker_1h(st, now)
                if event is None:
                    continue
                raw = dumps(event)
                combined = prefix + raw + b"}"
                for c in tuple(conns):
                    c.data(raw, combined, stream)
            self.hub.flush()
