"""The Binance-compatible simulator server (aiohttp, one port): the parts put together.

Spot market streams as Binance documents them (examples in tests/data/binance-wire-examples.jsonl),
its REST trades, its limits, fault injection and control endpoints. Each part is its own module:

=====================  ==========================================================================
``sim_config``         the options (:class:`SimConfig`), limits and the clock
``sim_frames``         WebSocket frames: pre-built headers, permessage-deflate
``sim_faults``         drops, ``serverShutdown`` notices, malformed frames
``sim_connections``    a client connection (queue, flush, end) and the hub of subscriptions
``sim_protocol``       the WebSocket endpoints: handshake, requests, rate and keepalive limits
``sim_feed``           the synthetic market (``market``) delivered to subscribers
``sim_replay``         a ``tickwire record`` capture served again
``sim_universe``       the listed symbols (statuses, assets, trade weights); list and delist
``sim_rest``           ``/api/v3/ping``, ``time``, ``trades``, ``historicalTrades``, ``exchangeInfo``
``sim_exchange_info``  the ``exchangeInfo`` document and its query parameters
``sim_control``        ``/_sim/stats``, ``/_sim/trades``, ``/_sim/drop``, ``/_sim/list``, ``/_sim/delist``
=====================  ==========================================================================

Speed: events are rendered once with orjson and written straight to each transport as
pre-built WebSocket frames, one ``write`` per connection per batch.
"""

from __future__ import annotations

import asyncio
import sys
import traceback
from typing import Awaitable, Callable

from aiohttp import web

from tickwire.plugins.binance.market import Market
from tickwire.plugins.binance.sim_config import SimConfig, set_clock_offset
from tickwire.plugins.binance.sim_connections import Hub
from tickwire.plugins.binance.sim_control import Control
from tickwire.plugins.binance.sim_feed import MarketFeed
from tickwire.plugins.binance.sim_protocol import WebSocketEndpoint
from tickwire.plugins.binance.sim_replay import Replay, ReplayFrame, load_replay
from tickwire.plugins.binance.sim_rest import RestApi
from tickwire.plugins.binance.sim_universe import Universe


class Simulator:
    """One simulator: ``await start()`` listens (returns the port), ``await stop()`` closes every
    connection (1001) and the listener; ``stats()`` is what ``/_sim/stats`` answers."""

    def __init__(self, cfg: SimConfig):
        self.cfg = cfg
        set_clock_offset(cfg.clock_offset_ms)
        market = Market([], cfg.seed, cfg.history)
        self.replay_frames: list[ReplayFrame] = load_replay(cfg.replay, market) if cfg.replay else []
        self.universe = Universe(cfg, market)
        self.hub = Hub(cfg, market, self.universe)
        replay = Replay(self.replay_frames, cfg.speed) if cfg.replay else None
        self.websocket = WebSocketEndpoint(self.hub, replay.session if replay is not None else None)
        self.feed = MarketFeed(self.hub)
        self.rest = RestApi(cfg, market, self.universe, self.hub.counters)
        self.control = Control(self.hub)
        self.tasks: list[asyncio.Task] = []
        self.runner: web.AppRunner | None = None
        self.port: int | None = None

    def stats(self) -> dict:
        return self.control.stats()

    def app(self) -> web.Application:
        app = web.Application()
        r = app.router
        r.add_get("/ws", self.websocket.handle)
        r.add_get("/ws/{streams:.+}", self.websocket.handle)
        r.add_get("/stream", self.websocket.handle)
        self.rest.add_routes(r)
        self.control.add_routes(r)
        return app

    async def start(self) -> int:
        self.runner = web.AppRunner(
            self.app(), access_log=None, handle_signals=False, shutdown_timeout=2,
            max_line_size=2**17,  # /stream?streams=… URLs of 1000+ streams
        )
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.cfg.host, self.cfg.port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # the real port when port=0
        loop = asyncio.get_running_loop()
        if not self.cfg.replay:
            self.tasks.append(loop.create_task(self._guard(self.feed.trades)))
            self.tasks.append(loop.create_task(self._guard(self.feed.tickers)))
        return self.port

    async def _guard(self, loop_fn: Callable[[], Awaitable[None]]) -> None:
        """Run a background loop forever: a bug is printed and the loop restarted, never lost."""
        while True:
            try:
                await loop_fn()
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                self.hub.counters["internal_errors"] += 1
                traceback.print_exc(file=sys.stderr)
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for conn in list(self.hub.conns.values()):
            conn.close(1001, "simulator stopping")
        if self.hub.background:
            await asyncio.wait(list(self.hub.background), timeout=3)
        if self.runner is not None:
            await self.runner.cleanup()
