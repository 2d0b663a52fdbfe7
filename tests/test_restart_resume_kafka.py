"""Nothing lost across restarts, profile compose (Kafka): `tickwire run` is SIGKILLed mid-stream
and started again 3 s later; it resumes from the last trade ids at the end of the topic, so the
topic then holds every trade id between the first and the last one, once."""

from __future__ import annotations

import signal
import time

import orjson
import pytest

from tests.test_kafka_pipeline import SYMBOLS, Pipeline

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
