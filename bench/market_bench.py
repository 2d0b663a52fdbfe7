"""The whole market in one process: ``tickwire run`` with ``symbols: {select: all}`` against the
simulator's ~1,500-symbol universe (trade, ticker_1h and ticker of every TRADING symbol, trades
skewed over the symbols at ``--rate``/s) into a real Kafka broker (acks=all), side by side with
the same run at 3 symbols; then 50 symbols are listed at run time.

    python bench/market_bench.py [--universe 1500] [--rate 5000] [--seconds 30] [--refresh 5]

Reports per run: connections used, time from start until every stream is subscribed (read off
the simulator's connections), CPU % of one core and messages/s over a steady window, peak RSS
(VmHWM), event→Kafka p50/p99 (broker append time, LogAppendTime, minus the Binance event time
E, over the trade records of the window), and for the full market the time from listing 50 new
USDT symbols until their 150 streams are subscribed. Targets (issue 12): ≤ 25 % of one core,
< 300 MB RSS, subscribed within 30 s, the 50 listings within 10 s.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from kafka_bench import KafkaReader, Sampler, latencies, quantile, total  # noqa: E402
from tests.fixtures.simulator import start_simulator  # noqa: E402
from tickwire.devservices.kafka_broker import KafkaBroker  # noqa: E402
from tickwire.framework.testing import write_streams_yaml  # noqa: E402

STREAMS = ("trade", "ticker_1h", "ticker")
PYTHON = sys.executable


def post(url: str) -> dict:
    with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=30) as resp:
        return json.load(resp)


def subscribed(sim) -> tuple[int, int]:
    """(streams subscribed over the open connections, open connections) as the simulator sees them."""
    conns = [c for c in sim.stats()["connections"] if c["open"]]
    return sum(c["streams"] for c in conns), len(conns)


def wait_streams(sim, want: int, proc: subprocess.Popen, timeout: float, log: Path) -> float:
    t0 = time.monotonic()
    while subscribed(sim)[0] < want:
        if proc.poll() is not None or time.monotonic() - t0 > timeout:
            raise SystemExit(f"{want} streams not subscribed in {timeout:g}s (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.25)
    return time.monotonic() - t0


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_case(label: str, symbols, expected_streams: int, sim, broker: KafkaBroker, reader: KafkaReader, work: Path,
             args, list_new: bool) -> dict:
    folder = work / label
    folder.mkdir()
    tag = uuid.uuid4().hex[:6]
    topics = {s: f"bench-{tag}.{s}" for s in STREAMS}
    config = write_streams_yaml(
        folder,
        sources={"binance": {"type": "binance", "url": sim.ws_url, "rest_url": sim.rest_url}},
        symbols=symbols,
        streams={s: {"topic": {"name": topics[s], "partitions": 3, "config": {"message.timestamp.type": "LogAppendTime"}}}
                 for s in STREAMS},
        sinks={"kafka": {"type": "kafka", "bootstrap_servers": broker.bootstrap, "dead_letter_topic": f"bench-{tag}.dead",
                         "spool": {"directory": str(folder / "spool")}}},
        profiles={"bench": {"sinks": ["kafka"], "dead_letter": "kafka"}},
    )
    cli = [PYTHON, "-m", "tickwire.framework.cli", "-c", str(config)]
    done = subprocess.run([*cli, "kafka", "provision"], cwd=REPO, capture_output=True, text=True, timeout=120)
    if done.returncode:
        raise SystemExit(f"provision failed:\n{done.stdout}{done.stderr}")
    log = folder / "run.log"
    t_start = time.monotonic()
    proc = subprocess.Popen([*cli, "run", "--log-format", "json", "--metrics-port", "0", "--no-status",
                             "--progress-interval", "3600"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    sampler = Sampler(proc.pid)
    try:
        wait_streams(sim, expected_streams, proc, 120, log)
        subscribe_s = time.monotonic() - t_start
        streams, connections = subscribed(sim)
        time.sleep(args.warmup)
        offsets0 = {s: reader.end_offsets(t) for s, t in topics.items()}
        cpu0, t0 = sampler.cpu(), time.monotonic()
        time.sleep(args.seconds)
        cpu1, t1 = sampler.cpu(), time.monotonic()
        offsets1 = {s: reader.end_offsets(t) for s, t in topics.items()}
        messages = sum(total(offsets1[s]) - total(offsets0[s]) for s in STREAMS)
        trades = total(offsets1["trade"]) - total(offsets0["trade"])
        lat = latencies(reader, offsets0["trade"], offsets1["trade"], stride=max(1, trades // 100_000))
        result = {
            "label": label, "streams": streams, "connections": connections, "subscribe_s": round(subscribe_s, 1),
            "msgs_per_s": round(messages / (t1 - t0)), "trades_per_s": round(trades / (t1 - t0)),
            "cpu_percent": round((cpu1 - cpu0) / (t1 - t0) * 100, 1),
            "cpu_percent_per_1000_msgs": round((cpu1 - cpu0) / (t1 - t0) * 100 / max(messages / (t1 - t0) / 1000, 1e-9), 2),
            "p50_ms": quantile(lat, 0.5), "p99_ms": quantile(lat, 0.99),
        }
        if list_new:
            before = subscribed(sim)[0]
            listed = post(f"{sim.rest_url}/_sim/list?count=50&quote=USDT")["listed"]
            t_list = time.monotonic()
            wait_streams(sim, before + 3 * len(listed), proc, 120, log)
            result["listing_50_s"] = round(time.monotonic() - t_list, 1)
        result["peak_rss_mb"] = round(peak_rss_mb(proc.pid))
        result["limit_violations"] = len(sim.stats()["limit_violations"])
        return result
    finally:
        sampler.stop()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def table(rows: list[dict]) -> str:
    keys = [("streams", "streams"), ("connections", "connections"), ("subscribe_s", "subscribed after (s)"),
            ("msgs_per_s", "messages/s"), ("trades_per_s", "trades/s"), ("cpu_percent", "CPU % of one core"),
            ("cpu_percent_per_1000_msgs", "CPU % per 1,000 msgs/s"), ("peak_rss_mb", "peak RSS (MB)"),
            ("p50_ms", "event→Kafka p50 (ms)"), ("p99_ms", "event→Kafka p99 (ms)"), ("listing_50_s", "50 listings subscribed after (s)"),
            ("limit_violations", "Binance limit violations")]
    out = ["| | " + " | ".join(r["label"] for r in rows) + " |", "| --- |" + " --- |" * len(rows)]
    for key, title in keys:
        out.append(f"| {title} | " + " | ".join("–" if r.get(key) is None else f"{r[key]:,}" if isinstance(r[key], (int, float)) else str(r[key])
                                                 for r in rows) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--universe", type=int, default=1500)
    ap.add_argument("--rate", type=float, default=5000, help="trades per second over the whole market")
    ap.add_argument("--seconds", type=float, default=30, help="measured window")
    ap.add_argument("--warmup", type=float, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tickwire-market-bench-"))
    broker = KafkaBroker(work / "kafka", die_with_parent=True)
    sim = None
    try:
        broker.start()
        reader = KafkaReader(broker.bootstrap)
        sim = start_simulator(work, universe=args.universe, rate=args.rate)
        info = sim.get("/api/v3/exchangeInfo")
        trading = sum(s["status"] == "TRADING" for s in info["symbols"])
        rows = [
            run_case("3 symbols", ["BTCUSDT", "ETHUSDT", "SOLUSDT"], 9, sim, broker, reader, work, args, list_new=False),
            run_case(f"select: all ({trading} symbols)", {"select": "all", "refresh_seconds": 5}, 3 * trading, sim, broker,
                     reader, work, args, list_new=True),
        ]
        sim_cpu = psutil.Process(sim.proc.pid).cpu_times()
        print(table(rows))
        print(json.dumps({"universe": args.universe, "rate": args.rate, "cpus": os.cpu_count(), "runs": rows,
                          "simulator_cpu_s": round(sim_cpu.user + sim_cpu.system, 1)}, indent=2))
        reader.close()
    finally:
        if sim is not None:
            sim.stop()
        broker.stop()


if __name__ == "__main__":
    main()
