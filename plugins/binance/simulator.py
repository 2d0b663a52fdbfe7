"""Binance simulator plugin: the ``tickwire simulate`` and ``tickwire record`` commands.

``tickwire simulate`` serves a Binance-compatible spot market-data endpoint (WebSocket streams,
REST trades, the documented limits, fault injection) on one port; see
``plugins/binance/sim_server.py`` (and the ``sim_*`` modules it names) for the protocol, the
control endpoints and the faults.
The first line it prints is stable, tests parse it::

    simulator listening on ws://127.0.0.1:PORT

``tickwire record`` captures raw frames from any Binance-compatible URL into a gzip JSON-lines
file that ``tickwire simulate --replay FILE`` serves again (see ``capture.py``).

Without the core CLI: ``python -m tickwire.plugins.binance.simulator simulate …``.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sys
import time

import click

try:
    from tickwire.framework.hookspecs import hookimpl
except ImportError:  # the core is not there yet: the same marker
    import pluggy

    hookimpl = pluggy.HookimplMarker("tickwire")

from tickwire.plugins.binance.sim_config import (
    ALL_MALFORMED_KINDS, COMPRESSIONS, DEFAULT_UNIVERSE, MALFORMED_KINDS, NOT_TRADING, QUOTE_ASSETS, SimConfig,
)
from tickwire.plugins.binance.sim_universe import STATUSES, TRADING
from tickwire.plugins.binance.sim_server import Simulator


def _csv(value: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in value.split(",") if s.strip())


def _shares(value: str, option: str, allowed: tuple[str, ...] | None = None) -> tuple[tuple[str, float], ...]:
    """``"USDT=0.3,BTC=0.2"`` → ((USDT, 0.3), (BTC, 0.2)); click's error (exit 2) on a bad one."""
    out = []
    for item in _csv(value):
        name, sep, share = item.partition("=")
        name = name.strip().upper()
        try:
            number = float(share)
        except ValueError:
            number = -1.0
        if not sep or not name.isalnum() or not 0 <= number <= 1 or (allowed and name not in allowed):
            expected = f"NAME=SHARE with NAME one of {', '.join(allowed)}" if allowed else "ASSET=SHARE"
            raise click.BadParameter(f"{item!r}: expected {expected} and SHARE between 0 and 1", param_hint=option)
        out.append((name, number))
    return tuple(out)


def _fmt_shares(shares: tuple[tuple[str, float], ...]) -> str:
    return ",".join(f"{name}={share:g}" for name, share in shares)


async def _run_until_signal(coro_start, coro_stop) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await coro_start()
    await stop.wait()
    await coro_stop()


@click.command("simulate")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=9443, show_default=True, type=int, help="Port; 0 picks a free one (printed).")
@click.option("--symbols", default="BTCUSDT,ETHUSDT,SOLUSDT", show_default=True,
              help="Symbols traded from the start (any subscribed symbol is added).")
@click.option("--seed", type=int, default=None, help="Seed for a deterministic market (default: random, printed).")
@click.option("--rate", type=float, default=50.0, show_default=True,
              help="Trades per second across all symbols; 0 = as fast as the clients read.")
@click.option("--ticker-interval", type=float, default=1.0, show_default=True, help="Seconds between ticker events per symbol.")
@click.option("--ping-interval", type=float, default=20.0, show_default=True, help="Seconds between server pings.")
@click.option("--pong-timeout", type=float, default=60.0, show_default=True, help="Close when a ping stays unanswered this long.")
@click.option("--max-age", type=float, default=86400.0, show_default=True, help="Close connections at this age (seconds).")
@click.option("--max-streams", type=int, default=1024, show_default=True, help="Streams allowed per connection.")
@click.option("--max-client-rate", type=int, default=5, show_default=True, help="Incoming messages per second per connection before a disconnect.")
@click.option("--drop-every", type=int, default=0, help="Drop each connection (no close frame) after N data messages.")
@click.option("--shutdown-every", type=int, default=0, help="Send serverShutdown and close after N data messages.")
@click.option("--malformed-every", type=int, default=0, help="Inject one malformed frame after every N data messages.")
@click.option("--malformed-kinds", default=",".join(MALFORMED_KINDS), show_default=True, help="Malformed frames to cycle through (also: invalid_event, which passes duplicate detection and fails schema validation).")
@click.option("--rest-429-every", type=int, default=0, help="Answer every N-th REST request with 429 and Retry-After.")
@click.option("--retry-after", type=int, default=1, show_default=True, help="Retry-After seconds of those 429s.")
@click.option("--history", type=int, default=200_000, show_default=True, help="Trades kept per symbol for REST.")
@click.option("--replay", type=click.Path(exists=True, dir_okay=False), default=None, help="Serve a capture made by `tickwire record` instead of the synthetic market.")
@click.option("--speed", type=float, default=1.0, show_default=True, help="Replay speed factor; 0 = as fast as possible.")
@click.option("--compression", type=click.Choice(COMPRESSIONS), default="none", show_default=True,
              help="deflate: accept a client's permessage-deflate offer and compress every data frame; "
                   "none: refuse every offer.")
@click.option("--universe", type=int, default=0, show_default=True,
              help=f"List this many symbols in exchangeInfo (a Binance-like market; {DEFAULT_UNIVERSE} is about Binance spot); "
                   "0: --symbols, plus any symbol a client subscribes to.")
@click.option("--quote-assets", default=_fmt_shares(QUOTE_ASSETS), show_default=True,
              help="With --universe: the share of the listings quoted in each asset.")
@click.option("--statuses", default=_fmt_shares(NOT_TRADING), show_default=True,
              help="With --universe: the share of the listings in each status other than TRADING (HALT, BREAK, END_OF_DAY).")
@click.option("--trade-skew", type=float, default=1.0, show_default=True,
              help="With --universe: Zipf exponent of the trades over the symbols (0: uniform; 1: a few carry most).")
@click.option("--clock-offset-ms", type=int, default=0, show_default=True,
              help="Run the exchange's clock this many ms ahead of this machine's (negative: behind): event times and "
                   "/api/v3/time shift together, as Binance's would against a skewed local clock.")
def simulate(**opts) -> None:
    """Serve a Binance-compatible market-data endpoint (WebSocket + REST) for tests and benchmarks."""
    opts["quote_assets"] = _shares(opts["quote_assets"], "--quote-assets")
    opts["statuses"] = _shares(opts["statuses"], "--statuses", tuple(s for s in STATUSES if s != TRADING))
    if not opts["quote_assets"] or not sum(share for _, share in opts["quote_assets"]):
        raise click.BadParameter("at least one asset with a share above 0", param_hint="--quote-assets")
    if sum(share for _, share in opts["statuses"]) > 1:
        raise click.BadParameter("the shares add up to more than 1", param_hint="--statuses")
    if opts["universe"] < 0 or opts["trade_skew"] < 0:
        raise click.BadParameter("must be 0 or more", param_hint="--universe/--trade-skew")
    kinds = _csv(opts.pop("malformed_kinds"))
    unknown = [k for k in kinds if k not in ALL_MALFORMED_KINDS]
    if unknown or not kinds:
        raise click.BadParameter(f"unknown kinds {unknown}; choose from {', '.join(ALL_MALFORMED_KINDS)}", param_hint="--malformed-kinds")
    symbols = tuple(s.upper() for s in _csv(opts.pop("symbols")))
    if opts["seed"] is None:
        opts["seed"] = random.SystemRandom().randrange(2**31)
    cfg = SimConfig(symbols=symbols, malformed_kinds=kinds, **opts)
    sim = Simulator(cfg)

    async def start() -> None:
        port = await sim.start()
        click.echo(f"simulator listening on ws://{cfg.host}:{port}")
        if cfg.replay:
            source = f"replay={cfg.replay} speed={cfg.speed:g} frames={len(sim.replay_frames)}"
        elif cfg.universe:
            listings = sim.universe.by_status()
            source = (f"universe={len(sim.universe.listings)} ({', '.join(f'{k} {v}' for k, v in sorted(listings.items()))})"
                      f" skew={cfg.trade_skew:g} rate={cfg.rate:g}/s seed={cfg.seed}")
        else:
            source = f"symbols={','.join(cfg.symbols)} rate={cfg.rate:g}/s seed={cfg.seed}"
        faults = " ".join(
            f"{k}={getattr(cfg, k)}" for k in ("drop_every", "shutdown_every", "malformed_every", "rest_429_every", "clock_offset_ms")
            if getattr(cfg, k)
        )
        click.echo(f"simulator: {source} rest=http://{cfg.host}:{port} stats=http://{cfg.host}:{port}/_sim/stats"
                   + (f" compression={cfg.compression}" if cfg.compression != "none" else "")
                   + (f" faults: {faults}" if faults else ""))
        sys.stdout.flush()

    async def stop() -> None:
        stats = sim.stats()
        await sim.stop()
        click.echo(f"simulator stopped: {stats['messages_sent']} messages to {stats['connections_total']} connections")

    asyncio.run(_run_until_signal(start, stop))


@click.command("record")
@click.option("--url", required=True, help="ws://host:port, or a full /ws/… or /stream?streams=… URL.")
@click.option("--streams", default="", help="Comma-separated streams (combined endpoint) when --url is a base URL.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Capture file (.jsonl.gz).")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds (default: until Ctrl-C).")
@click.option("--max-frames", type=int, default=None, help="Stop after this many frames.")
def record(url: str, streams: str, out: str, duration: float | None, max_frames: int | None) -> None:
    """Capture raw WebSocket frames with receive timestamps into a gzip JSON-lines file."""
    import websockets

    from tickwire.plugins.binance.capture import CaptureWriter

    names = _csv(streams)
    if names:
        if "?" in url or "/ws" in url.split("://", 1)[-1]:
            raise click.BadParameter("give either a base URL with --streams, or a full stream URL", param_hint="--url")
        url = url.rstrip("/") + "/stream?streams=" + "/".join(names)
    writer = CaptureWriter(out, url, time.time_ns())

    async def capture() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if duration is not None:
            loop.call_later(duration, stop.set)
        async with websockets.connect(url, max_size=None, compression=None, ping_interval=None) as ws:
            async def pump() -> None:
                async for message in ws:
                    writer.write(time.time_ns(), message)
                    if max_frames is not None and writer.frames >= max_frames:
                        stop.set()
                        return

            task = loop.create_task(pump())
            waiter = loop.create_task(stop.wait())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            for t in (task, waiter):
                t.cancel()
            if task.done() and not task.cancelled() and task.exception():
                click.echo(f"record: connection ended: {task.exception()}", err=True)

    try:
        asyncio.run(capture())
    finally:
        writer.close()
    click.echo(f"recorded {writer.frames} frames from {url} to {out}")


@hookimpl
def tickwire_register_commands(cli: click.Group) -> None:
    cli.add_command(simulate)
    cli.add_command(record)


@click.group()
def _standalone() -> None:
    """The simulator commands without the core CLI."""


_standalone.add_command(simulate)
_standalone.add_command(record)

if __name__ == "__main__":
    _standalone()
