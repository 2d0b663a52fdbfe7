"""The simulator's control endpoints (tests and benchmarks; not Binance):

  ``GET /_sim/stats``                    symbols (first/last id, trades, retained_from),
                                         messages, connections (incl. closed), violations, faults
  ``GET /_sim/trades?symbol=S[&fromId=&limit=]``  every retained trade, historicalTrades shape
  ``POST /_sim/drop[?mode=abort|shutdown]``  end every connection now (gap tests)
"""

from __future__ import annotations

import time

import orjson
from aiohttp import web

from tickwire.plugins.binance.sim_connections import Hub
from tickwire.plugins.binance.sim_rest import trade_rows


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

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/_sim/stats", self.get_stats)
        router.add_get("/_sim/trades", self.get_trades)
        router.add_post("/_sim/drop", self.drop)
