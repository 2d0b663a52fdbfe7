"""The simulator's control endpoints (tests and benchmarks; not Binance):

  ``GET /_sim/stats``                    symbols (first/last id, trades, retained_from),
                                         messages, connections (incl. closed), violations, faults
  ``GET /_sim/trades?symbol=S[&fromId=&limit=]``  every retained trade, historicalTrades shape
  ``POST /_sim/drop[?mode=abort|shutdown]``  end every connection now (gap tests)
  ``POST /_sim/list?symbols=A,B`` or ``?count=N[&quote=USDT]``  list symbols (TRADING) now
  ``POST /_sim/delist?symbols=A,B[&status=BREAK|HALT|END_OF_DAY]``  stop them trading now
"""

from __future__ import annotations

import time

import orjson
from aiohttp import web

from tickwire.plugins.binance.sim_config import STREAM_RE
from tickwire.plugins.binance.sim_connections import Hub
from tickwire.plugins.binance.sim_rest import trade_rows
from tickwire.plugins.binance.sim_universe import STATUSES, TRADING


class Control:
    """What the server reports about itself, and the one thing tests may make it do."""

    def __init__(self, hub: Hub):
        self.hub = hub
        self.cfg = hub.cfg
        self.market = hub.market
        self.started = time.monotonic()

    def stats(self) -> dict:
        hub = self.hub
        symbols = {
            s: {
                "first_trade_id": st.first_id if st.generated else None,
                "last_trade_id": st.last_id if st.generated else None,
                "trades": st.generated,
                "retained_from": st.retained_from,
            }
            for s, st in self.market.symbols.items()
        }
        conns = [c.summary() for c in (*hub.closed_conns, *hub.conns.values())]
        conns.sort(key=lambda c: c["id"])
        return {
            "mode": "replay" if self.cfg.replay else "market",
            "seed": self.cfg.seed,
            "rate": self.cfg.rate,
            "compression": self.cfg.compression,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "symbols": symbols,
            "messages_sent": sum(c["messages_sent"] for c in conns),
            "frames_sent": sum(c["frames_sent"] for c in conns),
            "bytes_sent": sum(c["bytes_sent"] for c in conns),
            "connections_open": len(hub.conns),
            "connections_total": hub.connections_total,
            "connections": conns,
            "limit_violations": list(hub.violations),
            "limit_violation_counts": dict(hub.violation_counts),
            "malformed_sent": dict(hub.malformed),
            "listings": hub.universe.by_status(),
            **hub.counters,
        }

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.stats()), content_type="application/json")

    async def get_trades(self, request: web.Request) -> web.Response:
        st = self.market.symbols.get(request.query.get("symbol", ""))
        if st is None:
            return web.Response(status=404, body=orjson.dumps({"msg": "unknown symbol"}), content_type="application/json")
        from_id = int(request.query["fromId"]) if request.query.get("fromId", "").isdigit() else None
        limit = int(request.query["limit"]) if request.query.get("limit", "").isdigit() else None
        return web.Response(body=orjson.dumps(trade_rows(st, from_id, limit)), content_type="application/json")

    async def drop(self, request: web.Request) -> web.Response:
        mode = request.query.get("mode", "abort")
        ended = 0
        for conn in list(self.hub.conns.values()):
            if conn.closed:
                continue
            ended += 1
            if mode == "shutdown":
                conn.shutdown_notice()
            else:
                conn.drop("dropped by /_sim/drop")
        return web.Response(body=orjson.dumps({"ended": ended}), content_type="application/json")

    @staticmethod
    def _answer(obj: object, status: int = 200) -> web.Response:
        return web.Response(status=status, body=orjson.dumps(obj), content_type="application/json")

    def _symbols(self, request: web.Request) -> list[str]:
        """``symbols=A,B`` as uppercase names (ValueError naming a bad one)."""
        names = [s.strip().upper() for s in request.query.get("symbols", "").split(",") if s.strip()]
        for name in names:
            if not STREAM_RE.match(name.lower() + "@trade"):
                raise ValueError(f"not a symbol: {name!r}")
        return names

    async def list_symbols(self, request: web.Request) -> web.Response:
        universe = self.hub.universe
        try:
            names = self._symbols(request)
        except ValueError as exc:
            return self._answer({"msg": str(exc)}, 400)
        count = request.query.get("count", "")
        if count:
            quote = request.query.get("quote", "USDT").upper()
            if not count.isdigit() or not 1 <= int(count) <= 10_000 or not quote.isalnum():
                return self._answer({"msg": "count must be 1..10000 and quote an asset name"}, 400)
            names += universe.new_symbols(int(count), quote)
        if not names:
            return self._answer({"msg": "give symbols=A,B or count=N"}, 400)
        universe.list_symbols(names)
        return self._answer({"listed": names, "listings": universe.by_status()})

    async def delist(self, request: web.Request) -> web.Response:
        universe = self.hub.universe
        status = request.query.get("status", "BREAK")
        if status not in STATUSES or status == TRADING:
            return self._answer({"msg": f"status must be one of {[s for s in STATUSES if s != TRADING]}"}, 400)
        try:
            names = self._symbols(request)
        except ValueError as exc:
            return self._answer({"msg": str(exc)}, 400)
        unknown = [n for n in names if n not in universe.listings]
        if unknown or not names:
            return self._answer({"msg": f"not listed: {unknown}" if unknown else "give symbols=A,B"}, 400)
        universe.delist(names, status)
        return self._answer({"delisted": names, "status": status, "listings": universe.by_status()})

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/_sim/list", self.list_symbols)
        router.add_post("/_sim/delist", self.delist)
        router.add_get("/_sim/stats", self.get_stats)
        router.add_get("/_sim/trades", self.get_trades)
        router.add_post("/_sim/drop", self.drop)
