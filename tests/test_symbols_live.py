"""Symbols by rule against the market simulator (``--universe``): ``tickwire run`` with a
selector subscribes new listings and unsubscribes delistings on its live connections within the
refresh interval, keeps every connection under the cap, and stores the new symbols' trades;
``tickwire symbols`` prints the resolved set; bad selectors and shards are config errors."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from tickwire.framework.sharding import Shard
from tickwire.framework.testing.project import write_streams_yaml

REPO = Path(__file__).resolve().parent.parent
CAP = 10  # streams per connection: low, so listings must open connections
REFRESH = 2.0


def project(tmp_path: Path, sim, symbols, streams=("trade", "ticker_1h"), **source) -> Path:
    return write_streams_yaml(
        tmp_path,
        sources={"binance": {"type": "binance", "url": sim.ws_url, "rest_url": sim.rest_url,
                             "max_streams_per_connection": CAP, **source}},
        symbols=symbols,
        streams=list(streams),
        sinks={"sqlite": {"type": "sqlite", "path": str(tmp_path / "t.db")},
               "dead": {"type": "jsonl", "path": str(tmp_path / "dead.jsonl")}},
        profiles={"local": {"sinks": ["sqlite"], "dead_letter": "dead"}},
        engine={"batch_size": 50, "linger_ms": 50},
    )


def tickwire(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tickwire.framework.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def post(sim, path: str, **query) -> dict:
    req = urllib.request.Request(f"{sim.rest_url}{path}?{urllib.parse.urlencode(query)}", method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def usdt_trading(sim) -> set[str]:
    info = sim.get("/api/v3/exchangeInfo")
    return {s["symbol"] for s in info["symbols"] if s["status"] == "TRADING" and s["quoteAsset"] == "USDT"}


def open_streams(sim) -> list[int]:
    return [c["streams"] for c in sim.stats()["connections"] if c["open"]]


def wait_until(what: str, check, timeout: float, proc: subprocess.Popen | None = None, err: Path | None = None):
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"tickwire run ended ({proc.returncode}): {err.read_text()[-3000:] if err else ''}")
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout:g}s: {what}"
        time.sleep(0.1)


def stored(db: Path, sql: str) -> list:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:  # the table is not created yet
        return []


def log_events(err: Path) -> list[dict]:
    return [json.loads(line) for line in err.read_text().splitlines() if line.startswith("{")]


def metric(url: str, name: str, **labels) -> float:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.split()[-1])
    return 0.0


def test_a_selector_follows_listings_and_delistings_on_the_live_connections(simulator, tmp_path):
    sim = simulator(universe=60, rate=150)
    config = project(tmp_path, sim, {"select": {"quote_assets": ["USDT"]}, "refresh_seconds": REFRESH})
    err = tmp_path / "run.err"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tickwire.framework.cli", "-c", str(config), "run", "--log-format", "json",
         "--metrics-port", "auto"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(err, "w"), text=True)
    db = tmp_path / "t.db"
    try:
        start = usdt_trading(sim)
        wait_until("every USDT symbol subscribed", lambda: sum(open_streams(sim)) == 2 * len(start), 30, proc, err)
        metrics_url = next(e["metrics"] for e in log_events(err) if e.get("event") == "starting")
        busiest = stored(db, "select symbol from trades group by symbol order by count(*) desc limit 1")
        busiest = wait_until("trades stored", lambda: stored(db, "select symbol from trades group by symbol "
                                                                "order by count(*) desc limit 1"), 30, proc, err)[0][0]

        listed = post(sim, "/_sim/list", count=3, quote="USDT")["listed"]
        post(sim, "/_sim/delist", symbols=busiest, status="HALT")
        t0 = time.monotonic()
        expected = 2 * (len(start) + 3 - 1)
        wait_until("listings subscribed and the halted symbol unsubscribed",
                   lambda: sum(open_streams(sim)) == expected, REFRESH + 5, proc, err)
        assert time.monotonic() - t0 <= REFRESH + 5
        assert all(n <= CAP for n in open_streams(sim)), open_streams(sim)
        wait_until("the new symbols' trades and tickers in SQLite", lambda: {
            s for (s,) in stored(db, "select distinct symbol from trades")} >= set(listed) and {
            s for (s,) in stored(db, "select distinct symbol from ticker_1h")} >= set(listed), 30, proc, err)

        # listed again: subscribed again, its trade ids go on from where they stopped, no gap
        post(sim, "/_sim/list", symbols=busiest)
        wait_until("the relisted symbol subscribed again", lambda: sum(open_streams(sim)) == expected + 2, REFRESH + 5, proc, err)
        high_before = stored(db, f"select max(trade_id) from trades where symbol = '{busiest}'")[0][0]
        wait_until("new trades of the relisted symbol", lambda: stored(
            db, f"select max(trade_id) from trades where symbol = '{busiest}'")[0][0] > high_before + 5, 30, proc, err)
        assert metric(metrics_url, "tickwire_symbols_listed_total", source="binance", shard="0/1") == 4
        assert metric(metrics_url, "tickwire_symbols_delisted_total", source="binance", shard="0/1") == 1
        per_connection = [metric(metrics_url, "tickwire_subscribed_streams", connection=str(i), source="binance", shard="0/1")
                          for i in range(len(open_streams(sim)))]
        assert sorted(per_connection) == sorted(open_streams(sim))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0, err.read_text()[-3000:]
    events = log_events(err)
    assert any(e.get("listed") == sorted(listed) for e in events)
    assert any(e.get("delisted") == [busiest] for e in events)
    low, high, count = stored(db, f"select min(trade_id), max(trade_id), count(*) from trades where symbol = '{busiest}'")[0]
    assert high - low + 1 == count, "the halt and the relisting left no hole in the trade ids"
    stats = sim.stats()
    assert stats["limit_violations"] == [], stats["limit_violations"]
    assert not (tmp_path / "dead.jsonl").exists() or not (tmp_path / "dead.jsonl").read_text().strip()


def test_two_shards_split_the_symbols_and_label_their_logs(simulator, tmp_path):
    sim = simulator(universe=60, rate=100)
    config = project(tmp_path, sim, {"select": {"quote_assets": ["USDT"]}}, streams=("trade",))
    everything = usdt_trading(sim)
    halves = []
    for index in (0, 1):
        out = tickwire("-c", str(config), "symbols", "--format", "json", env={"TICKWIRE_SHARD": f"{index}/2"})
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert report["shard"] == f"{index}/2"
        halves.append(set(report["sources"]["binance"]["symbols"]))
        assert halves[-1] == set(Shard(index, 2).select(everything))
    assert halves[0] | halves[1] == everything and not halves[0] & halves[1]

    err = tmp_path / "run.err"
    run = tickwire("-c", str(config), "run", "--shard", "1/2", "--duration", "4", "--log-format", "json",
                   "--metrics-port", "0", timeout=60)
    err.write_text(run.stderr)
    assert run.returncode == 0, run.stderr[-3000:]
    events = log_events(err)
    assert events and all(e.get("shard") == "1/2" for e in events)
    held = {s for (s,) in stored(tmp_path / "t.db", "select distinct symbol from trades")}
    assert held and held <= halves[1]


def test_tickwire_symbols_shows_the_spread_over_connections_and_shards(simulator, tmp_path):
    sim = simulator(universe=60)
    config = project(tmp_path, sim, {"select": {"quote_assets": ["USDT"], "exclude": ["BTCUSDT"]}},
                     streams=("trade", "ticker_1h", "ticker"))
    everything = usdt_trading(sim) - {"BTCUSDT"}
    out = tickwire("-c", str(config), "symbols", "--format", "json", "--shard", "0/3")
    assert out.returncode == 0, out.stderr
    source = json.loads(out.stdout)["sources"]["binance"]
    mine = Shard(0, 3).select(sorted(everything))
    assert source["symbols"] == mine and source["channels"] == 3 * len(mine)
    assert sum(source["connections"]) == 3 * len(mine) and max(source["connections"]) <= CAP
    assert [s["shard"] for s in source["shards"]] == ["0/3", "1/3", "2/3"]
    assert sum(s["symbols"] for s in source["shards"]) == len(everything)

    text = tickwire("-c", str(config), "symbols")
    assert text.returncode == 0, text.stderr
    assert f"{len(everything)} symbols (of {len(everything)} before sharding), {3 * len(everything)} channels" in text.stdout
    assert "BTCUSDT" not in text.stdout.split("symbols:")[-1]


def test_an_unreachable_exchange_info_is_a_clear_error(tmp_path):
    class Nowhere:
        ws_url, rest_url = "ws://127.0.0.1:9", "http://127.0.0.1:9"

    config = project(tmp_path, Nowhere, {"select": "all"})
    out = tickwire("-c", str(config), "symbols")
    assert out.returncode == 1
    assert "cannot read the symbol list from http://127.0.0.1:9/api/v3/exchangeInfo" in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_selectors_and_shards_are_config_errors_at_their_line(tmp_path):
    class Nowhere:
        ws_url, rest_url = "ws://127.0.0.1:9", "http://127.0.0.1:9"

    config = project(tmp_path, Nowhere, ["BTCUSDT"])
    data = yaml.safe_load(config.read_text())
    data["symbols"] = {"select": {"quote_asset": ["USDT"], "status": "LISTED", "include": ["ETHUSDT"],
                                  "exclude": ["ETHUSDT"]}, "refresh_seconds": 0.5}
    data["streams"]["trade"]["symbols"] = {"select": "everything"}
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    lines = config.read_text().splitlines()

    def at(path: str, text: str) -> str:
        line = next(i for i, line in enumerate(lines, 1) if text in line)
        return f"{config.name}:{line}:"

    for command in (["validate"], ["symbols"], ["run", "--duration", "1"]):
        out = tickwire("-c", str(config), *command, env={"PWD": str(tmp_path)})
        assert out.returncode == 2, (command, out.stderr)
        assert "Traceback" not in out.stderr
        err = out.stderr
        assert "symbols.select.quote_asset: unknown field 'quote_asset' (did you mean 'quote_assets'?)" in err
        assert "symbols.select.status: 'LISTED' is not one of" in err
        assert "symbols.select.exclude[0]: ETHUSDT is both included and excluded" in err
        assert "symbols.refresh_seconds: 0.5 is less than the minimum of 1" in err
        assert "streams.trade.symbols.select: 'all' was expected" in err
        assert at("", "quote_asset:") in err and at("", "refresh_seconds:") in err

    bad = tickwire("-c", str(config), "symbols", "--shard", "2/2")
    assert bad.returncode == 2 and "must be below 2" in bad.stderr and "Traceback" not in bad.stderr
    bad = tickwire("-c", str(config), "run", env={"TICKWIRE_SHARD": "half"})
    assert bad.returncode == 2 and "is not a shard" in bad.stderr and "TICKWIRE_SHARD" in bad.stderr


def test_exchange_info_rate_limits_are_honoured_and_the_refresh_goes_on(simulator):
    """Every second exchangeInfo read is answered 429 with Retry-After: 1. The source waits as
    asked (REST weight and Retry-After are shared with gap filling), keeps its symbols meanwhile,
    and the next successful read still subscribes the new listing."""
    import asyncio
    from dataclasses import replace

    from tests.test_binance_source import Collector, Ctx
    from tickwire.framework.testing import stream_spec
    from tickwire.plugins.binance.source import BinanceSource

    sim = simulator(universe=60, rate=50, rest_429_every=2, retry_after=1)
    spec = replace(stream_spec("trade", symbols=["BTCUSDT"], source="binance"), symbols=[],
                   selector={"select": {"quote_assets": ["USDT"]}, "refresh_seconds": 1})
    src = BinanceSource("binance", {"url": sim.ws_url, "rest_url": sim.rest_url, "max_streams_per_connection": CAP},
                        Ctx([spec]))
    start = usdt_trading(sim)

    async def scenario() -> None:
        task = asyncio.create_task(src.run(Collector()))
        try:
            await asyncio.sleep(3)
            assert src.watch.count == len(start)
            listed = (await asyncio.to_thread(post, sim, "/_sim/list", symbols="ZZZUSDT"))["listed"]
            deadline = time.monotonic() + 10
            while not {f"{s.lower()}@trade" for s in listed} <= src.plan.channels:
                assert not task.done(), task.exception()
                assert time.monotonic() < deadline, "the listing was not taken within 10 s"
                await asyncio.sleep(0.1)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert sim.stats()["rest_429"] >= 2
    assert "rate limit hit (HTTP 429); waiting" in src.ctx.log.text("warning")
    assert sim.stats()["limit_violations"] == []


def test_a_symbol_unsubscribed_while_it_trades_and_subscribed_again_has_its_gap_filled(simulator):
    """BTCUSDT is unsubscribed for two seconds while the market keeps trading it: subscribed
    again, its trade-id state is the one it had, so the first trade opens a gap over those two
    seconds, and the gap is filled from REST — the stored ids are one unbroken range."""
    import asyncio

    from tests.test_binance_source import Collector, make_source

    sim = simulator(rate=200)
    src = make_source(sim, symbols=("BTCUSDT", "ETHUSDT"))
    emit = Collector()

    def btc_ids() -> list[int]:
        return sorted({p["t"] for stream, p, _ in emit.records if p["s"] == "BTCUSDT"})

    async def scenario() -> None:
        task = asyncio.create_task(src.run(emit))
        try:
            while len(btc_ids()) < 50:
                assert not task.done(), task.exception()
                await asyncio.sleep(0.05)
            tracker = src.channels["btcusdt@trade"].trades
            src.apply({"trade": ["ETHUSDT"]})
            await asyncio.sleep(2.0)
            missed_from = max(btc_ids())
            src.apply({"trade": ["BTCUSDT", "ETHUSDT"]})
            assert src.channels["btcusdt@trade"].trades is tracker
            deadline = time.monotonic() + 20
            while not (btc_ids() and max(btc_ids()) > missed_from + 400 and not src.gaps.busy):
                assert time.monotonic() < deadline, "BTCUSDT did not come back"
                await asyncio.sleep(0.1)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    ids = btc_ids()
    assert ids == list(range(ids[0], ids[-1] + 1)), "the two seconds unsubscribed were filled from REST"
    assert src.stats["gaps_detected"] >= 1 and src.stats["gap_trades_filled"] > 0
    assert sim.stats()["limit_violations"] == []
