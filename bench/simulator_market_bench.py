"""What the simulator costs serving the whole market: ``--universe 1500`` with every TRADING
symbol's three streams subscribed (trade, ticker, ticker_1h; ~4,200 streams over 5 connections).

    python bench/simulator_market_bench.py [--universe 1500] [--rate 5000] [--seconds 20]

Starts `tickwire simulate`, reads exchangeInfo, subscribes the streams the way tickwire does
(``/stream``, then SUBSCRIBE in chunks, under 5 messages a second per connection), and prints the
server's CPU (% of one core) idle and subscribed, the frames/s it sent, and its RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.fixtures.simulator import start_simulator  # noqa: E402

PER_CONNECTION = 1000
CHUNK = 200  # streams per SUBSCRIBE


async def read_all(url: str, streams: list[str], seconds: float, subscribed: asyncio.Event, counts: list[int]) -> None:
    async with aiohttp.ClientSession() as session:
        conns = [await session.ws_connect(url + "/stream", max_msg_size=0)
                 for _ in range(0, len(streams), PER_CONNECTION)]

        async def reader(ws, i: int) -> None:
            async for _ in ws:
                counts[i] += 1

        tasks = [asyncio.create_task(reader(ws, i)) for i, ws in enumerate(conns)]
        for start in range(0, PER_CONNECTION, CHUNK):  # every connection subscribes a chunk, 4 a second
            for i, ws in enumerate(conns):
                chunk = streams[i * PER_CONNECTION:(i + 1) * PER_CONNECTION][start:start + CHUNK]
                if chunk:
                    await ws.send_json({"method": "SUBSCRIBE", "params": chunk, "id": start + 1})
            await asyncio.sleep(0.25)
        subscribed.set()
        await asyncio.sleep(seconds)
        for ws in conns:
            await ws.close()
        for t in tasks:
            t.cancel()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--universe", type=int, default=1500)
    ap.add_argument("--rate", type=float, default=5000)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    sim = start_simulator(universe=args.universe, rate=args.rate)
    try:
        server = psutil.Process(sim.proc.pid)
        info = sim.get("/api/v3/exchangeInfo", symbolStatus="TRADING")
        symbols = [s["symbol"].lower() for s in info["symbols"]]
        streams = [f"{s}@{kind}" for s in symbols for kind in ("trade", "ticker", "ticker_1h")]

        time.sleep(2)
        cpu0, t0 = sum(server.cpu_times()[:2]), time.perf_counter()
        time.sleep(args.seconds / 2)
        idle = (sum(server.cpu_times()[:2]) - cpu0) / (time.perf_counter() - t0)

        counts = [0] * ((len(streams) + PER_CONNECTION - 1) // PER_CONNECTION)
        measured: dict[str, float] = {}

        async def bench() -> None:
            subscribed = asyncio.Event()
            task = asyncio.create_task(read_all(sim.ws_url, streams, args.seconds, subscribed, counts))
            await subscribed.wait()
            await asyncio.sleep(2)  # the tickers' first round
            measured["cpu0"], measured["t0"], measured["n0"] = sum(server.cpu_times()[:2]), time.perf_counter(), sum(counts)
            await task
            measured["cpu1"], measured["t1"], measured["n1"] = sum(server.cpu_times()[:2]), time.perf_counter(), sum(counts)

        asyncio.run(bench())
        wall = measured["t1"] - measured["t0"]
        busy = (measured["cpu1"] - measured["cpu0"]) / wall
        frames = (measured["n1"] - measured["n0"]) / wall
        print(f"universe {args.universe}: {len(symbols)} trading, {len(streams)} streams on {len(counts)} connections,"
              f" rate {args.rate:g} trades/s")
        print(f"server CPU idle (nothing subscribed): {idle:5.1%} of one core")
        print(f"server CPU all subscribed:            {busy:5.1%} of one core, {frames:,.0f} frames/s received,"
              f" RSS {server.memory_info().rss / 2**20:,.0f} MiB, load {os.getloadavg()[0]:.1f}")
        stats = sim.stats()
        print(f"limit violations: {stats['limit_violation_counts']}  internal errors: {stats['internal_errors']}")
    finally:
        sim.stop()


if __name__ == "__main__":
    main()
