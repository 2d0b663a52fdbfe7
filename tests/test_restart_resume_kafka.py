"""Nothing lost across restarts, profile compose (Kafka): `tickwire run` is SIGKILLed mid-stream
and started again 3 s later; it resumes from the last trade ids at the end of the topic, so the
topic then holds every trade id between the first and the last one, once — with a symbol list,
with a selector (the symbols unknown when the resume points are read), and for one shard of two
sharing the topic."""

from __future__ import annotations

import signal
import time

import orjson
import pytest

from tests.test_kafka_pipeline import SYMBOLS, Pipeline
from tests.test_symbols_live import usdt_trading
from tickwire.framework.sharding import Shard

pytestmark = pytest.mark.kafka


def test_sigkill_and_restart_3s_later_loses_no_trade(kafka_broker, simulator, tmp_path):
    sim = simulator(rate=300)
    pipeline = Pipeline(kafka_broker, sim, tmp_path)
    processes = []
    try:
        first = pipeline.start()
        processes.append(first)
        time.sleep(6)
        assert first.poll() is None, pipeline.log()[-3000:]
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        time.sleep(3)
        downtime_last = {s: v["last_trade_id"] for s, v in sim.stats()["symbols"].items()}

        second = pipeline.start("--duration", "5")
        processes.append(second)
        pipeline.finish(second, interrupt=False)
        resumed = [line for line in pipeline.log().splitlines() if "resuming trade:" in line]
        assert len(resumed) == 1 and all(f"{s} from id" in resumed[0] and "(kafka)" in resumed[0] for s in SYMBOLS), resumed

        by_symbol: dict[str, list[int]] = {}
        for message in pipeline.read("trade"):
            value = orjson.loads(message.value)
            by_symbol.setdefault(value["symbol"], []).append(value["trade_id"])
        assert set(by_symbol) == set(SYMBOLS)
        for symbol, ids in by_symbol.items():
            assert max(ids) > downtime_last[symbol], "the second run streamed past the downtime"
            missing = sorted(set(range(min(ids), max(ids) + 1)) - set(ids))
            assert not missing, f"{symbol}: {len(missing)} trade ids missing, e.g. {missing[:10]}"
            assert len(ids) == len(set(ids)), f"{symbol}: {len(ids) - len(set(ids))} duplicates"
    finally:  # no `tickwire run` outlives a failed test
        for proc in processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


SELECTOR = "symbols={select: {quote_assets: [USDT]}}"


def assert_every_trade_once(sim, pipeline: Pipeline, selected: set[str], downtime_last: dict[str, int]) -> None:
    """The topic holds the simulator's trades of every selected symbol, each once, with no hole,
    past the downtime."""
    by_symbol: dict[str, list[int]] = {}
    for message in pipeline.read("trade"):
        value = orjson.loads(message.value)
        by_symbol.setdefault(value["symbol"], []).append(value["trade_id"])
    assert set(by_symbol) == selected
    for symbol, ids in by_symbol.items():
        assert max(ids) > downtime_last[symbol], f"{symbol}: the second run streamed past the downtime"
        assert len(ids) == len(set(ids)), f"{symbol}: {len(ids) - len(set(ids))} duplicates"
        exchange = {t["id"] for t in sim.trades(symbol, from_id=min(ids), limit=len(ids) + 1000) if t["id"] <= max(ids)}
        missing = sorted(exchange - set(ids))
        assert not missing, f"{symbol}: {len(missing)} of the exchange's trades missing, e.g. {missing[:10]}"
        assert set(ids) <= exchange, f"{symbol}: ids the exchange never had"


def stop_all(processes) -> None:
    for proc in processes:  # no `tickwire run` outlives a failed test
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_with_a_selector_every_selected_symbol_resumes_from_the_topic(kafka_broker, simulator, tmp_path):
    """Symbols chosen by a selector are unknown until the source reads exchangeInfo, after the
    resume points: the Kafka sink reads the newest records of every partition and every symbol
    found there resumes, so the downtime of each is filled over REST — the topic then holds the
    simulator's trades of every selected symbol, each once, with no hole."""
    sim = simulator(universe=24, trade_skew=0, rate=300)
    selected = usdt_trading(sim)
    assert len(selected) >= 5, selected
    pipeline = Pipeline(kafka_broker, sim, tmp_path)
    pipeline.overrides.append(SELECTOR)
    processes = []
    try:
        first = pipeline.start()
        processes.append(first)
        time.sleep(6)
        assert first.poll() is None, pipeline.log()[-3000:]
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        time.sleep(3)
        downtime_last = {s: v["last_trade_id"] for s, v in sim.stats()["symbols"].items() if s in selected}

        second = pipeline.start("--duration", "6")
        processes.append(second)
        pipeline.finish(second, interrupt=False)
        log = pipeline.log()
        resumed = [line for line in log.splitlines() if "resuming trade:" in line]
        assert len(resumed) == 1 and all(f"{s} from id" in resumed[0] for s in selected), resumed
        assert "start from the live stream" not in log, "every selected symbol resumed"
        assert_every_trade_once(sim, pipeline, selected, downtime_last)
    finally:
        stop_all(processes)


def test_a_shard_restarted_alone_resumes_its_own_symbols_of_the_shared_topic(kafka_broker, simulator, tmp_path):
    """Two shards write one topic. Shard 0 is SIGKILLed and restarted while shard 1 goes on: the
    topic's tail holds both shards' symbols, shard 0 resumes exactly its own, fills its downtime,
    and the topic holds every trade of every selected symbol once."""
    sim = simulator(universe=24, trade_skew=0, rate=300)
    selected = usdt_trading(sim)
    mine = set(Shard(0, 2).select(selected))
    assert mine and selected - mine, selected
    pipeline = Pipeline(kafka_broker, sim, tmp_path)
    pipeline.overrides.append(SELECTOR)
    spool = pipeline.overrides.index(f"sinks.kafka.spool.directory={pipeline.spool_dir}")

    def start_shard(index: int, *extra: str):
        pipeline.overrides[spool] = f"sinks.kafka.spool.directory={pipeline.spool_dir}-{index}"  # one spool per process
        return pipeline.start("--shard", f"{index}/2", *extra)

    processes = []
    try:
        first = start_shard(0)
        other = start_shard(1)
        processes += [first, other]
        time.sleep(6)
        assert first.poll() is None and other.poll() is None, pipeline.log()[-3000:]
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        time.sleep(3)
        downtime_last = {s: v["last_trade_id"] for s, v in sim.stats()["symbols"].items() if s in selected}

        second = start_shard(0, "--duration", "6")
        processes.append(second)
        pipeline.finish(second, interrupt=False)
        resumed = [line for line in pipeline.log().splitlines() if "resuming trade:" in line]
        assert len(resumed) == 1, resumed
        assert {s for s in selected if f"{s} from id" in resumed[0]} == mine, resumed
        pipeline.finish(other)
        assert_every_trade_once(sim, pipeline, selected, downtime_last)
    finally:
        stop_all(processes)
