"""How many frames/s the Binance simulator pushes to one client.

    python bench/simulator_bench.py [--seconds 5] [--rate 0] [--streams btcusdt@trade,…]

Starts `tickwire simulate` on a free port and reads one combined connection two ways: a plain
`websockets` client (what a Python consumer sees; usually the client is the bottleneck) and a raw
socket that only counts bytes (what the server can push). Prints frames/s and the server's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import socket
import sys
import time
from pathlib import Path

import psutil
import websockets

MAX_QUEUE = 16  # websockets default; --max-queue changes it
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.fixtures.simulator import start_simulator  # noqa: E402


async def websockets_client(url: str, seconds: float) -> int:
    n = 0
    async with websockets.connect(url, max_size=None, compression=None, max_queue=MAX_QUEUE) as ws:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            await ws.recv()
            n += 1
    return n


def raw_client(host: str, port: int, path: str, seconds: float) -> int:
    sock = socket.create_connection((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(4096)
    total = len(buf.split(b"\r\n\r\n", 1)[1])
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        total += len(sock.recv(1 << 20))
    sock.close()
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rate", default="0")
    ap.add_argument("--streams", default="btcusdt@trade,ethusdt@trade,solusdt@trade")
    ap.add_argument("--max-queue", type=int, default=16, help="websockets client's max_queue (frames)")
    args = ap.parse_args()
    global MAX_QUEUE
    MAX_QUEUE = args.max_queue
    path = "/stream?streams=" + "/".join(args.streams.split(","))
    for kind in ("websockets", "raw socket"):
        sim = start_simulator(rate=args.rate)
        try:
            server = psutil.Process(sim.proc.pid)
            cpu0 = sum(server.cpu_times()[:2])
            client0 = time.process_time()
            t0 = time.perf_counter()
            if kind == "websockets":
                frames = asyncio.run(websockets_client(sim.ws_url + path, args.seconds))
            else:
                raw_client(sim.host, sim.port, path, args.seconds)
                conn = sim.stats()["connections"][0]
                frames = conn["frames_sent"]  # everything written; the reader kept up (TCP-bounded)
            wall = time.perf_counter() - t0
            cpu = sum(server.cpu_times()[:2]) - cpu0
            client = time.process_time() - client0
            print(f"{kind:>10}: {frames / wall:>9,.0f} frames/s   server CPU {cpu / wall:4.0%}"
                  f" ({frames / max(cpu, 1e-9):,.0f} frames per server CPU-second)"
                  f"   client CPU {client / wall:4.0%}   load {os.getloadavg()[0]:.1f}")
        finally:
            sim.stop()


if __name__ == "__main__":
    main()
