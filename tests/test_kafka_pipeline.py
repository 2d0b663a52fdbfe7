"""`tickwire run --profile compose` end to end: the simulator → tickwire → the real Kafka broker,
read back by a consumer. Includes a broker SIGKILLed mid-stream and restarted 20 s later, and
the ingest process SIGKILLed while spooling and restarted."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest

from tickwire.framework.spool import Spool
from tickwire.framework.testing import assert_clean_json_log
from tickwire.plugins.kafka.messages import decode_spooled
from tests.fixtures.kafka import consume_until_quiet

pytestmark = pytest.mark.kafka
REPOSITORY = Path(__file__).resolve().parents[1]
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")


class Pipeline:
    """Unique topic names per test, and `tickwire run` processes pointed at them."""

    def __init__(self, broker, sim, tmp_path: Path):
        prefix = f"e2e-{uuid.uuid4().hex[:6]}"
        self.topics = {"trade": f"{prefix}.trades", "ticker_1h": f"{prefix}.ticker_1h",
                       "ticker": f"{prefix}.ticker_1d", "dead": f"{prefix}.dead-letter"}
        self.broker = broker
        self.spool_dir = tmp_path / "spool"
        self.tmp_path = tmp_path
        self.overrides = [
            f"sinks.kafka.bootstrap_servers={broker.bootstrap}",
            "sinks.kafka.provision=true",
            f"sinks.kafka.dead_letter_topic={self.topics['dead']}",
            f"sinks.kafka.spool.directory={self.spool_dir}",
            "sinks.kafka.send_timeout_ms=2000",
            f"sources.binance.url={sim.ws_url}",
            f"sources.binance.rest_url={sim.ws_url.replace('ws://', 'http://')}",
            *(f"streams.{stream}.topic.name={self.topics[stream]}" for stream in ("trade", "ticker_1h", "ticker")),
        ]
        self.runs = 0

    def start(self, *extra: str) -> subprocess.Popen:
        self.runs += 1
        args = [sys.executable, "-m", "tickwire.framework.cli"]
        for item in self.overrides:
            args += ["--set", item]
        args += ["run", "--profile", "compose", "--metrics-port", "0", "--no-status", "--log-format", "json", *extra]
        self.log_path = self.tmp_path / f"run-{self.runs}.log"
        return subprocess.Popen(args, cwd=REPOSITORY, stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def finish(self, process: subprocess.Popen, interrupt: bool = True, timeout: float = 40) -> None:
        """Ctrl-C (a clean stop that flushes), or wait for --duration to end it."""
        if interrupt and process.poll() is None:
            process.send_signal(signal.SIGINT)
        code = process.wait(timeout)
        assert code == 0, f"tickwire run exited with {code}:\n{self.log()[-4000:]}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until_drained(self, within: float) -> None:
        """Until the sink logs that it replayed its spool (Kafka is back and the spool empty)."""
        deadline = time.monotonic() + within
        while "replayed" not in self.log() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "replayed" in self.log(), f"the spool was not drained:\n{self.log()[-3000:]}"

    def read(self, topic: str) -> list:
        return asyncio.run(consume_until_quiet(self.broker.bootstrap, self.topics[topic]))


def trades_by_symbol(messages) -> dict[str, list[int]]:
    """Trade ids per symbol in first-seen order (delivery is at least once: drop repeats)."""
    by_symbol: dict[str, dict[int, None]] = {}
    for message in messages:
        value = orjson.loads(message.value)
        assert message.key == value["symbol"].encode(), "the key is the symbol"
        by_symbol.setdefault(value["symbol"], {})[value["trade_id"]] = None
    return {symbol: list(ids) for symbol, ids in by_symbol.items()}


def assert_complete_and_ordered(by_symbol: dict[str, list[int]]) -> None:
    assert set(by_symbol) == set(SYMBOLS)
    for symbol, ids in by_symbol.items():
        assert ids == sorted(ids), f"{symbol}: trades out of order"
        missing = sorted(set(range(ids[0], ids[-1] + 1)) - set(ids))
        assert not missing, f"{symbol}: {len(missing)} trade ids missing, e.g. {missing[:10]}"


def test_every_event_reaches_its_topic_keyed_ordered_with_headers(kafka_broker, simulator, tmp_path):
    sim = simulator(rate=600, malformed_every=80, malformed_kinds="unknown_event,truncated")
    pipeline = Pipeline(kafka_broker, sim, tmp_path)
    pipeline.finish(pipeline.start("--duration", "6"), interrupt=False)

    trades = pipeline.read("trade")
    assert len(trades) > 1000
    by_symbol = trades_by_symbol(trades)
    assert_complete_and_ordered(by_symbol)
    for symbol, ids in by_symbol.items():  # the very trades the exchange sent, not just a range
        sent = {t["id"] for t in sim.trades(symbol, from_id=ids[0], limit=ids[-1] - ids[0] + 1)}
        assert sent == set(ids), symbol
    headers = dict(trades[0].headers)
    assert headers["tickwire-stream"] == b"trade"
    assert headers["tickwire-schema-version"] == b"1"
    assert headers["tickwire-schema"] and headers["tickwire-ingested-at"].endswith(b"Z")
    for stream in ("ticker_1h", "ticker"):
        messages = pipeline.read(stream)
        assert messages and {m.key.decode() for m in messages} <= set(SYMBOLS)
        assert all(dict(m.headers)["tickwire-stream"] == stream.encode() for m in messages)

    dead = pipeline.read("dead")
    reasons = [dict(m.headers)["tickwire-reason"].decode() for m in dead]
    assert dead and all(reasons)
    assert any(b"mysteryEvent" in m.value and "mysteryEvent" in reason for m, reason in zip(dead, reasons)), reasons[:5]
    assert all(dict(m.headers)["tickwire-plugin"] for m in dead)


def test_include_raw_carries_the_binance_payload_beside_the_record(kafka_broker, simulator, tmp_path):
    sim = simulator(rate=300)
    pipeline = Pipeline(kafka_broker, sim, tmp_path)
    pipeline.overrides.append("streams.trade.transforms=[validate, {normalize: {include_raw: true}}]")
    pipeline.finish(pipeline.start("--duration", "4"), interrupt=False)

    trades = [orjson.loads(m.value) for m in pipeline.read("trade")]
    assert len(trades) > 300
    for value in trades:
        raw = value["raw"]  # the event exactly as the exchange sent it ...
        assert raw["e"] == "trade" and raw["t"] == value["trade_id"] and raw["s"] == value["symbol"]
        assert raw["p"] == value["price"] and raw["q"] == value["quantity"]  # ... decimals untouched
    btc = [value for value in trades if value["symbol"] == "BTCUSDT"]
    sent = {t["id"]: t for t in sim.trades("BTCUSDT", from_id=btc[0]["trade_id"], limit=len(btc))}
    assert [value["raw"]["p"] for value in btc] == [sent[value["trade_id"]]["price"] for value in btc]
    tickers = [orjson.loads(m.value) for m in pipeline.read("ticker")]
    assert tickers and all("raw" not in t for t in tickers)  # only where configured


def test_broker_sigkilled_mid_stream_and_restarted_20s_later_loses_no_trade(kafka_broker, simulator, tmp_path):
    sim = simulator(rate=400)
    pipeline = Pipeline(kafka_broker, sim, tmp_path)
    run = pipeline.start()
    try:
        time.sleep(5)
        kafka_broker.kill()
        time.sleep(20)
        assert run.poll() is None, f"tickwire run died while the broker was down:\n{pipeline.log()[-3000:]}"
        kafka_broker.start()
        pipeline.wait_until_drained(within=40)
        time.sleep(2)
        pipeline.finish(run)
    finally:
        if run.poll() is None:
            run.kill()
        kafka_broker.ensure_running()
    assert "spooling to" in pipeline.log()
    # the outage is in the log as JSON lines only: aiokafka's own complaints deduplicated, no
    # traceback, no asyncio "Future exception was never retrieved"
    lines = assert_clean_json_log(pipeline.log())
    from_aiokafka = [line for line in lines if str(line.get("logger", "")).startswith("aiokafka")]
    assert from_aiokafka, "aiokafka's records should be in the log, as JSON"
    assert len(from_aiokafka) < 40, f"{len(from_aiokafka)} aiokafka lines: repeats are not deduplicated"
    by_symbol = trades_by_symbol(pipeline.read("trade"))
    assert_complete_and_ordered(by_symbol)
    assert sum(len(ids) for ids in by_symbol.values()) > 400 * 25 * 0.8  # the outage's trades are there
    assert list(pipeline.spool_dir.glob("*.seg")) == []


def test_ingest_sigkilled_while_spooling_sends_the_spool_after_restart(kafka_broker, simulator, tmp_path):
    sim = simulator(rate=400)
    pipeline = Pipeline(kafka_broker, sim, tmp_path)
    run = pipeline.start()
    try:
        time.sleep(4)
        kafka_broker.kill()
        time.sleep(6)  # outage detected, a few seconds of trades spooled
        run.kill()     # SIGKILL: no flush, no clean close of the spool
        run.wait()
    finally:
        kafka_broker.ensure_running()

    copy = tmp_path / "spool-at-kill"
    shutil.copytree(pipeline.spool_dir, copy)
    spool = Spool(copy)
    spool.open()
    spooled = set()
    while True:
        records, _ = spool.read(10000)
        if not records:
            break
        for record in records:
            topic, _key, value, _headers = decode_spooled(record)
            if topic == pipeline.topics["trade"]:
                item = orjson.loads(value)
                spooled.add((item["symbol"], item["trade_id"]))
    assert len(spooled) > 500, "the killed run should have spooled a few seconds of trades"

    pipeline.finish(pipeline.start("--duration", "5"), interrupt=False)
    assert_clean_json_log(pipeline.log())
    stored = {(symbol, i) for symbol, ids in trades_by_symbol(pipeline.read("trade")).items() for i in ids}
    assert spooled <= stored, f"{len(spooled - stored)} spooled trades never reached Kafka"
    assert list(pipeline.spool_dir.glob("*.seg")) == []


def test_provision_waits_for_a_broker_that_is_down_at_start(kafka_broker, simulator, tmp_path):
    """`provision: true` with Kafka away at start: the run spools instead of exiting, creates the
    topics when the broker answers, then sends the spool — nothing lost, nothing out of order."""
    sim = simulator(rate=400)
    pipeline = Pipeline(kafka_broker, sim, tmp_path)
    kafka_broker.kill()
    try:
        run = pipeline.start()
        try:
            time.sleep(8)
            assert run.poll() is None, f"tickwire run exited with the broker down:\n{pipeline.log()[-3000:]}"
            assert "spooling to" in pipeline.log()
            kafka_broker.start()
            pipeline.wait_until_drained(within=60)
            pipeline.finish(run)
        finally:
            if run.poll() is None:
                run.kill()
    finally:
        kafka_broker.ensure_running()
    assert f"created topic {pipeline.topics['trade']}" in pipeline.log()
    assert_clean_json_log(pipeline.log())
    by_symbol = trades_by_symbol(pipeline.read("trade"))
    assert_complete_and_ordered(by_symbol)
    assert sum(len(ids) for ids in by_symbol.values()) > 400 * 8 * 0.8  # the trades spooled before it came
