"""Benchmark: simulator at full speed → ``tickwire run`` → SQLite (trade streams), side by side
with a baseline in the same run.

The baseline is the least a program doing the same job can do: websockets receive + json
parse + one SQLite ``executemany`` per 1,000 trades (WAL, synchronous=NORMAL, ON CONFLICT DO
NOTHING) — no validation, no normalization, no metrics, no backpressure.

Each run is measured over a steady window (after the first committed row and a warm-up):
committed rows/s (counted in the SQLite file, through WAL, for both programs), CPU µs per
message and CPU % of the process (psutil), peak RSS (sampled), SQLite commit latency p50/p99
(tickwire: its ``tickwire_batch_commit_seconds`` histogram; baseline: its own timings).
Baseline and tickwire alternate ``--repeat`` times and the best of each is kept, because the
machine may be shared. Then ``tickwire`` runs once more at a steady 5,000 msgs/s for the
commit-latency target. tickwire is stopped with SIGTERM; the time to exit is reported.

    .venv/bin/python bench/sqlite_bench.py                  # 10 s windows, 2 repeats
    .venv/bin/python bench/sqlite_bench.py --seconds 20 --repeat 3 --json results.json

Then the same frames without the network (``--offline N``, see ``run_offline``): the ceiling of
the pipeline itself and a ratio that the simulator's pacing cannot blur.

On a shared machine throughput mostly measures the scheduler (a runnable process that gets a
core part of the time); CPU µs per message is the steadier figure. The load average is printed.

Targets: ≥ 40,000 msgs/s, ≥ 0.7 × baseline, RSS < 200 MB, p99 commit < 250 ms at 5,000 msgs/s.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fixtures.simulator import start_simulator  # noqa: E402
from tickwire.framework.testing import write_streams_yaml  # noqa: E402
from prometheus_text import histogram_quantile  # noqa: E402  (bench/ is on sys.path when run as a script)

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
PYTHON = sys.executable

BASELINE = textwrap.dedent(
    """\
    import asyncio, json, sqlite3, sys, time
    import websockets

    url, db, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL"); conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE IF NOT EXISTS trades (symbol TEXT, trade_id INTEGER, event_time INTEGER, price TEXT,"
                 " quantity TEXT, trade_time INTEGER, buyer_is_maker INTEGER, PRIMARY KEY (symbol, trade_id))")
    SQL = "INSERT INTO trades VALUES (?,?,?,?,?,?,?) ON CONFLICT DO NOTHING"
    commits = []

    def flush(rows):
        t0 = time.perf_counter()
        conn.execute("BEGIN"); conn.executemany(SQL, rows); conn.execute("COMMIT")
        commits.append(time.perf_counter() - t0)

    async def main():
        n = 0; rows = []
        start = time.monotonic(); end = start + seconds
        async with websockets.connect(url, max_size=2**24, compression=None) as ws:
            while time.monotonic() < end:
                d = json.loads(await ws.recv()).get("data")
                if not d or d.get("e") != "trade":
                    continue
                rows.append((d["s"], d["t"], d["E"], d["p"], d["q"], d["T"], d["m"]))
                n += 1
                if len(rows) >= 1000:
                    flush(rows); rows = []
            if rows:
                flush(rows)
            elapsed = time.monotonic() - start  # before the close handshake
        commits.sort()
        q = lambda p: commits[min(len(commits) - 1, int(p * len(commits)))] if commits else 0.0
        print(json.dumps({"messages": n, "elapsed_s": elapsed, "p50": q(0.5), "p99": q(0.99)}))

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        commits.sort()
        q = lambda p: commits[min(len(commits) - 1, int(p * len(commits)))] if commits else 0.0
        print(json.dumps({"messages": -1, "elapsed_s": 0, "p50": q(0.5), "p99": q(0.99)}))
    """
)


class Window:
    """Samples a running process: committed rows (SQLite, read through WAL), CPU and RSS."""

    def __init__(self, pid: int, db: Path, table: str = "trades"):
        import psutil

        self.proc = psutil.Process(pid)
        self.db = db
        self.table = table
        self.peak_rss = 0

    def rows(self) -> int:
        try:
            conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
            try:
                return conn.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0]
            finally:
                conn.close()
        except sqlite3.Error:
            return 0

    def sample(self) -> tuple[float, int, float]:
        t = self.proc.cpu_times()
        self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)
        return time.monotonic(), self.rows(), t.user + t.system

    def measure(self, warmup: float, seconds: float) -> dict:
        """Wait until rows arrive, then ``warmup`` more, then measure for ``seconds``."""
        deadline = time.monotonic() + 60
        while self.rows() == 0:
            if time.monotonic() > deadline:
                raise SystemExit(f"no rows in {self.db} after 60 s")
            time.sleep(0.2)
        time.sleep(warmup)
        t0, r0, c0 = self.sample()
        end = t0 + seconds
        while time.monotonic() < end:
            time.sleep(0.25)
            self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)
        t1, r1, c1 = self.sample()
        rows = r1 - r0
        return {
            "rows": rows,
            "window_s": t1 - t0,
            "msgs_per_s": rows / (t1 - t0),
            "cpu_us_per_msg": (c1 - c0) / max(rows, 1) * 1e6,
            "cpu_percent": (c1 - c0) / (t1 - t0) * 100,
        }


def run_tickwire(sim, args, workdir: Path, label: str) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    for f in workdir.glob("bench.db*"):
        f.unlink()
    write_streams_yaml(
        workdir / "streams.yaml",
        sources={"binance": {"type": "binance", "url": sim.ws_url, "rest_url": sim.rest_url, "gap_fill": False}},
        symbols=SYMBOLS,
        sinks={"sqlite": {"type": "sqlite", "path": "bench.db"},
               "dead-letter-file": {"type": "jsonl", "path": "dead-letter.jsonl"}},
        profiles={"local": {"sinks": ["sqlite"], "dead_letter": "dead-letter-file"}},
        engine={"batch_size": args.batch_size, "linger_ms": 200, "queue_batches": 32},
    )
    proc = subprocess.Popen(
        [PYTHON, "-m", "tickwire.framework.cli", "-c", str(workdir / "streams.yaml"), "run", "--metrics-port", "auto",
         "--log-format", "json", "--no-status", "--progress-interval", "3600"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    # the metrics address is on the first lines of stderr
    port = None
    head = []
    while port is None:
        line = proc.stderr.readline()
        if not line:
            raise SystemExit(f"{label}: tickwire run exited early:\n{''.join(head)}")
        head.append(line)
        if line.startswith("{") and '"starting"' in line:
            port = json.loads(line)["metrics"]
    drain = threading.Thread(target=lambda: head.extend(proc.stderr), daemon=True)
    drain.start()
    w = Window(proc.pid, workdir / "bench.db")
    r = w.measure(args.warmup, args.seconds)
    with urllib.request.urlopen(port, timeout=5) as resp:
        text = resp.read().decode()
    t_stop = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(60)
    stop_s = time.monotonic() - t_stop
    drain.join(5)
    if code != 0:
        raise SystemExit(f"{label}: tickwire run exited {code}:\n{''.join(head)[-3000:]}")
    return {
        "label": label,
        **r,
        "peak_rss_mb": w.peak_rss / 2**20,
        "commit_p50_ms": (histogram_quantile(text, "tickwire_batch_commit_seconds", 0.5) or 0) * 1000,
        "commit_p99_ms": (histogram_quantile(text, "tickwire_batch_commit_seconds", 0.99) or 0) * 1000,
        "sigterm_exit_s": stop_s,
    }


def run_baseline(sim, args, workdir: Path) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    for f in workdir.glob("baseline.db*"):
        f.unlink()
    script = workdir / "baseline.py"
    script.write_text(BASELINE)
    url = sim.url(*(f"{s.lower()}@trade" for s in SYMBOLS))
    total = args.warmup + args.seconds + 30
    proc = subprocess.Popen([PYTHON, str(script), url, str(workdir / "baseline.db"), str(total)], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    w = Window(proc.pid, workdir / "baseline.db")
    r = w.measure(args.warmup, args.seconds)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    lat = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"p50": 0, "p99": 0}
    return {
        "label": "baseline (websockets+json+executemany)",
        **r,
        "peak_rss_mb": w.peak_rss / 2**20,
        "commit_p50_ms": lat["p50"] * 1000,
        "commit_p99_ms": lat["p99"] * 1000,
        "sigterm_exit_s": 0.0,
    }


# -- offline: the same work without the network -------------------------------------------------
# The simulator and the websockets client pace each other (flow control), and the machine may be
# shared, so the network runs above can be limited by neither program. These feed pre-built
# combined-stream frames from memory: the Binance source's own FrameRouter → engine (validate,
# normalize, batching, queue) → SQLite sink, against json.loads + executemany. Same process,
# same frames, one after the other: a clean ratio and the pipeline's ceiling.


def _frames(n: int) -> list[str]:
    import orjson

    from tickwire.framework.testing import TRADE_EPOCH_MS

    out = []
    for i in range(n):
        sym = SYMBOLS[i % len(SYMBOLS)]
        t = TRADE_EPOCH_MS + i
        data = {"e": "trade", "E": t + 1, "s": sym, "t": i // len(SYMBOLS), "p": f"{16500 + (i % 1000) / 100:.8f}",
                "q": f"{0.001 * (1 + i % 7):.8f}", "T": t, "m": bool(i % 2), "M": True}
        out.append(orjson.dumps({"stream": f"{sym.lower()}@trade", "data": data}).decode())
    return out


def offline_baseline(frames: list[str], db: Path) -> dict:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE IF NOT EXISTS trades (symbol TEXT, trade_id INTEGER, event_time INTEGER, price TEXT,"
                 " quantity TEXT, trade_time INTEGER, buyer_is_maker INTEGER, PRIMARY KEY (symbol, trade_id))")
    sql = "INSERT INTO trades VALUES (?,?,?,?,?,?,?) ON CONFLICT DO NOTHING"
    t0, c0 = time.perf_counter(), time.process_time()
    rows = []
    for raw in frames:
        d = json.loads(raw)["data"]
        rows.append((d["s"], d["t"], d["E"], d["p"], d["q"], d["T"], d["m"]))
        if len(rows) >= 1000:
            conn.execute("BEGIN"); conn.executemany(sql, rows); conn.execute("COMMIT")
            rows = []
    if rows:
        conn.execute("BEGIN"); conn.executemany(sql, rows); conn.execute("COMMIT")
    el, cpu = time.perf_counter() - t0, time.process_time() - c0
    conn.close()
    return {"label": "offline baseline (json + executemany)", "msgs_per_s": len(frames) / el, "cpu_us_per_msg": cpu / len(frames) * 1e6}


def offline_tickwire(frames: list[str], workdir: Path, batch_size: int) -> dict:
    import asyncio

    import tickwire.plugins.jsonl_sink
    import tickwire.plugins.normalize
    import tickwire.plugins.sqlite_sink
    import tickwire.plugins.validate
    from tickwire import plugins
    from tickwire.framework.engine import Engine, EngineSettings
    from tickwire.framework.testing import stream_spec
    from tickwire.plugins.binance.frames import FrameRouter, build_channels

    specs: dict = {}
    for module in (plugins.validate, plugins.normalize):
        module.tickwire_register_transforms(register=lambda spec: specs.setdefault(spec.name, spec))
    sinks: dict = {}
    for module in (plugins.sqlite_sink, plugins.jsonl_sink):
        module.tickwire_register_sinks(register=lambda spec: sinks.setdefault(spec.name, spec))
    stream = stream_spec("trade", symbols=SYMBOLS, sinks=["sqlite"], source="mem")

    class MemorySource:
        def __init__(self, name, options, ctx):
            self.channels = build_channels(ctx.streams, name)

        async def run(self, emit):
            router = FrameRouter(self.channels, emit, 2**20, lambda ch: None)
            handle, now = router.handle_nowait, time.time_ns  # as Connection.run reads frames
            for raw in frames:
                pending = handle(raw, now(), None)
                if pending is not None:
                    await pending

    from tickwire.framework.components import SourceSpec

    engine = Engine(
        streams=[stream],
        sources={"mem": (SourceSpec("mem", MemorySource, "frames from memory", plugin="bench"), {})},
        sinks={"sqlite": (sinks["sqlite"], {"path": "offline.db"}), "dl": (sinks["jsonl"], {"path": "offline-dl.jsonl"})},
        transforms=specs,
        dead_letter="dl",
        settings=EngineSettings(batch_size=batch_size, linger_ms=200, queue_batches=32),
        config_dir=workdir,
    )
    t0, c0 = time.perf_counter(), time.process_time()
    asyncio.run(engine.run())
    el, cpu = time.perf_counter() - t0, time.process_time() - c0
    snap = engine.snapshot()["streams"]["trade"]
    assert snap["written"]["sqlite"] == len(frames), snap
    return {"label": "offline tickwire (router+engine+sqlite)", "msgs_per_s": len(frames) / el, "cpu_us_per_msg": cpu / len(frames) * 1e6}


def run_offline(n: int, work: Path, batch_size: int, repeat: int) -> list[dict]:
    frames = _frames(n)
    best: dict[str, dict] = {}
    for i in range(repeat):
        d = work / f"offline{i}"
        d.mkdir(parents=True, exist_ok=True)
        for r in (offline_baseline(frames, d / "baseline.db"), offline_tickwire(frames, d, batch_size)):
            if r["label"] not in best or r["msgs_per_s"] > best[r["label"]]["msgs_per_s"]:
                best[r["label"]] = r
    return list(best.values())


def table(results: list[dict]) -> str:
    head = f"{'run':42} {'msgs/s':>9} {'µs CPU/msg':>11} {'peak RSS':>9} {'commit p50':>11} {'commit p99':>11} {'CPU':>7}"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r['label']:42} {r['msgs_per_s']:>9,.0f} {r['cpu_us_per_msg']:>11.1f} {r['peak_rss_mb']:>7.0f}MB "
            f"{r['commit_p50_ms']:>9.1f}ms {r['commit_p99_ms']:>9.1f}ms {r['cpu_percent']:>6.0f}%"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="measurement window per run")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds after the first committed row")
    ap.add_argument("--repeat", type=int, default=2, help="alternate baseline/tickwire this often; best of each")
    ap.add_argument("--rate", type=float, default=0.0, help="simulator trades/s for the throughput runs; 0 = as fast as the client reads")
    ap.add_argument("--steady-rate", type=float, default=5000.0, help="msgs/s of the commit-latency run")
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--json", type=Path, help="Also write the results here.")
    ap.add_argument("--skip-steady", action="store_true")
    ap.add_argument("--offline", type=int, default=300_000, metavar="N",
                    help="also run N frames from memory, without the network (0 = skip)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tickwire-bench-"))
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs "
          f"(other processes on the machine skew the numbers; best of {args.repeat} runs is kept)")
    every: dict[str, list[dict]] = {"baseline": [], "tickwire": []}
    for _ in range(args.repeat):
        for kind in ("baseline", "tickwire"):
            sim = start_simulator(work, rate=args.rate, symbols=",".join(SYMBOLS), seed=1, ticker_interval=3600)
            try:
                if kind == "baseline":
                    r = run_baseline(sim, args, work / "baseline")
                else:
                    r = run_tickwire(sim, args, work / "tickwire", "tickwire run, full speed")
            finally:
                sim.stop()
            every[kind].append(r)
            print(table([r]).splitlines()[-1], flush=True)
    results = [max(every["baseline"], key=lambda r: r["msgs_per_s"]), max(every["tickwire"], key=lambda r: r["msgs_per_s"])]
    if not args.skip_steady:
        sim = start_simulator(work, rate=args.steady_rate, symbols=",".join(SYMBOLS), seed=1, ticker_interval=3600)
        try:
            results.append(run_tickwire(sim, args, work / "steady", f"tickwire run, steady {args.steady_rate:,.0f}/s"))
        finally:
            sim.stop()
    print()
    print(table(results))
    base, tw = results[0], results[1]
    ratio = tw["msgs_per_s"] / base["msgs_per_s"]
    print(f"\ntickwire / baseline throughput: {ratio:.2f}x; SIGTERM to exit: "
          + ", ".join(f"{r['sigterm_exit_s']:.2f}s" for r in results[1:]))
    verdict = {
        ">= 40,000 msgs/s": tw["msgs_per_s"] >= 40_000,
        ">= 0.7 x baseline": ratio >= 0.7,
        "peak RSS < 200 MB": max(r["peak_rss_mb"] for r in results[1:]) < 200,
    }
    if len(results) > 2:
        verdict["p99 commit < 250 ms at steady rate"] = results[2]["commit_p99_ms"] < 250
    for what, ok in verdict.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {what}")
    if args.offline:
        off = run_offline(args.offline, work, args.batch_size, args.repeat)
        print(f"\nwithout the network ({args.offline:,} frames from memory, same process, best of {args.repeat}):")
        for r in off:
            print(f"  {r['label']:42} {r['msgs_per_s']:>9,.0f} msgs/s {r['cpu_us_per_msg']:>6.1f} µs CPU/msg")
        print(f"  ratio: {off[1]['msgs_per_s'] / off[0]['msgs_per_s']:.2f}x")
        verdict["offline pipeline >= 40,000 msgs/s"] = off[1]["msgs_per_s"] >= 40_000
        print(f"  {'PASS' if verdict['offline pipeline >= 40,000 msgs/s'] else 'FAIL'}  offline pipeline >= 40,000 msgs/s")
        results += off
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "all": every, "ratio": ratio, "verdict": verdict}, indent=2))
    print(f"(work files in {work})")


if __name__ == "__main__":
    main()
