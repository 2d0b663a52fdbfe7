"""The simulator's REST API, as Binance answers it: ``GET /api/v3/ping``, ``/api/v3/time``,
``/api/v3/trades`` and ``/api/v3/historicalTrades`` over the market's retained trades, and
``/api/v3/exchangeInfo`` over the listings (:mod:`.sim_exchange_info`).

Every answer carries ``X-MBX-USED-WEIGHT-1M`` (the weight used in the last minute). Fault:
``rest_429_every`` N answers every N-th call with 429 and ``Retry-After: retry_after``.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque

import orjson
from aiohttp import web

from tickwire.plugins.binance.market import Market, SymbolState
from tickwire.plugins.binance.sim_config import SimConfig, now_ms
from tickwire.plugins.binance.sim_exchange_info import BadQuery, exchange_info
from tickwire.plugins.binance.sim_universe import Universe


def trade_rows(st: SymbolState, from_id: int | None, limit: int | None) -> list[dict]:
    """Binance REST trades of a symbol from ``from_id`` (the oldest retained one if that was
    evicted), or the most recent ``limit`` when ``from_id`` is None."""
    if from_id is not None:
        index = bisect_left(st.ids, from_id)
        return st.rows_at(index, limit)
    return st.rows_at(max(0, len(st.ids) - limit), limit) if limit else st.rows_at(0, None)


class RestApi:
    """The ``/api/v3`` handlers; ``counters`` is the server's tally (``rest_requests``, ``rest_429``,
    ``rest_time_requests``)."""

    def __init__(self, cfg: SimConfig, market: Market, universe: Universe, counters: dict[str, int]):
        self.cfg = cfg
        self.market = market
        self.universe = universe
        self.counters = counters
        self.counters.setdefault("rest_time_requests", 0)  # GET /api/v3/time: clock checks, apart from the rest
        self._weight: deque[tuple[float, int]] = deque()  # (when, weight) of the last minute's calls

    def _count(self, weight: int) -> web.Response | None:
        """Count a REST call; the 429 answer when the fault says so."""
        self.counters["rest_requests"] += 1
        now = time.monotonic()
        self._weight.append((now, weight))
        while self._weight[0][0] < now - 60:
            self._weight.popleft()
        n = self.cfg.rest_429_every
        if n and self.counters["rest_requests"] % n == 0:
            self.counters["rest_429"] += 1
            body = {"code": -1003, "msg": "Too many requests; current limit of IP(127.0.0.1) request weight per minute is 6000."}
            return web.Response(
                status=429, body=orjson.dumps(body), content_type="application/json",
                headers={"Retry-After": str(self.cfg.retry_after)},
            )
        return None

    def _json(self, obj: object, status: int = 200) -> web.Response:
        used = sum(w for _, w in self._weight)
        return web.Response(
            status=status, body=orjson.dumps(obj), content_type="application/json",
            headers={"X-MBX-USED-WEIGHT-1M": str(used)},
        )

    async def ping(self, request: web.Request) -> web.Response:
        return self._count(1) or self._json({})

    async def time(self, request: web.Request) -> web.Response:
        """``serverTime`` on the simulated exchange's clock (``--clock-offset-ms`` skews it)."""
        self.counters["rest_time_requests"] += 1
        return self._count(1) or self._json({"serverTime": now_ms()})

    def _trades_query(self, request: web.Request, default_limit: int, from_id_ok: bool) -> web.Response:
        q = request.query
        symbol = q.get("symbol")
        if not symbol:
            return self._json({"code": -1102, "msg": "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."}, 400)
        st = self.market.symbols.get(symbol)
        if st is None:
            return self._json({"code": -1121, "msg": "Invalid symbol."}, 400)
        limit = default_limit
        if "limit" in q:
            if not q["limit"].isdigit():
                return self._json({"code": -1100, "msg": "Illegal characters found in parameter 'limit'; legal range is '^[0-9]{1,20}$'."}, 400)
            limit = int(q["limit"])
            if not 1 <= limit <= 1000:
                return self._json({"code": -1130, "msg": "Data sent for parameter 'limit' is not valid."}, 400)
        from_id = None
        if from_id_ok and q.get("fromId"):
            if not q["fromId"].isdigit():
                return self._json({"code": -1100, "msg": "Illegal characters found in parameter 'fromId'; legal range is '^[0-9]{1,20}$'."}, 400)
            from_id = int(q["fromId"])
        return self._json(trade_rows(st, from_id, limit))

    async def trades(self, request: web.Request) -> web.Response:
        return self._count(25) or self._trades_query(request, 500, from_id_ok=False)

    async def historical_trades(self, request: web.Request) -> web.Response:
        return self._count(25) or self._trades_query(request, 500, from_id_ok=True)

    async def exchange_info(self, request: web.Request) -> web.Response:
        refused = self._count(20)
        if refused is not None:
            return refused
        try:
            return self._json(exchange_info(self.universe, self.cfg.seed, request.query, now_ms()))
        except BadQuery as exc:
            return self._json({"code": exc.code, "msg": exc.msg}, 400)

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/api/v3/exchangeInfo", self.exchange_info)
        router.add_get("/api/v3/ping", self.ping)
        router.add_get("/api/v3/time", self.time)
        router.add_get("/api/v3/trades", self.trades)
        router.add_get("/api/v3/historicalTrades", self.historical_trades)
