"""`tickwire run --profile compose` into a real three-broker Kafka cluster (KRaft, replication
factor 3, min.insync.replicas 2, the sink's acks=all): the broker leading the busiest trade
partition is SIGKILLed mid-stream, and the two left carry on. Afterwards every trade the simulator
sent while tickwire ran is in the topic, read back from the surviving brokers alone, and the
killed broker rejoins and catches up."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from tests.fixtures.kafka import describe_topic, end_offsets, partition_leaders, topic_config
from tests.fixtures.sockets import assert_loopback_only
from tests.test_kafka_pipeline import Pipeline, assert_complete_and_ordered, trades_by_symbol

pytestmark = [pytest.mark.kafka, pytest.mark.cluster, pytest.mark.timeout(300)]
RATE = 1500  # trades per second over the three symbols
STREAMS = ("trade", "ticker_1h", "ticker")


def wait_for_records(bootstrap: str, topic: str, within: float = 60) -> None:
    """Until the run has provisioned ``topic`` and written to it."""
    deadline = time.monotonic() + within
    while True:
        try:
            if sum(asyncio.run(end_offsets(bootstrap, topic)).values()) > 0:
                return
        except AssertionError:  # describe_topic: not provisioned yet
            pass
        assert time.monotonic() < deadline, f"{topic} received no record within {within}s"
        time.sleep(0.5)


def test_a_broker_sigkilled_under_load_loses_no_acknowledged_trade(kafka_cluster, simulator, tmp_path,
                                                                   record_property):
    sim = simulator(rate=RATE)
    pipeline = Pipeline(kafka_cluster, sim, tmp_path)
    pipeline.overrides += [f"streams.{stream}.topic.replication_factor=3" for stream in STREAMS]
    trade_topic = pipeline.topics["trade"]
    assert_loopback_only([node.process.pid for node in kafka_cluster.nodes])
    run = pipeline.start()
    try:
        wait_for_records(kafka_cluster.bootstrap, trade_topic)
        time.sleep(3)
        offsets = asyncio.run(end_offsets(kafka_cluster.bootstrap, trade_topic))
        busiest = max(offsets, key=offsets.get)
        victim = kafka_cluster.node(asyncio.run(partition_leaders(kafka_cluster.bootstrap, trade_topic))[busiest])
        victim.kill()  # SIGKILL: no controlled shutdown, no leadership handed over
        time.sleep(12)
        assert run.poll() is None, f"tickwire run died with a broker down:\n{pipeline.log()[-3000:]}"
        survivors_lead = asyncio.run(partition_leaders(kafka_cluster.bootstrap, trade_topic))
        assert victim.node_id not in survivors_lead.values(), survivors_lead
        pipeline.finish(run)  # Ctrl-C: a clean stop, everything received is sent or spooled
    finally:
        if run.poll() is None:
            run.kill()

    assert list(pipeline.spool_dir.glob("*.seg")) == [], "records left unsent in the spool"
    for stream in STREAMS:  # every topic as the run provisioned it
        topic = pipeline.topics[stream]
        assert {len(p["replicas"]) for p in asyncio.run(describe_topic(kafka_cluster.bootstrap, topic)).values()} == {3}
        assert asyncio.run(topic_config(kafka_cluster.bootstrap, topic, "min.insync.replicas")) == "2"

    trades = pipeline.read("trade")  # from the two surviving brokers: the victim is still down
    by_symbol = trades_by_symbol(trades)
    assert_complete_and_ordered(by_symbol)
    for symbol, ids in by_symbol.items():  # the very trades the simulator made, none missing
        sent = {t["id"] for t in sim.trades(symbol, from_id=ids[0], limit=ids[-1] - ids[0] + 1)}
        assert sent == set(ids), f"{symbol}: {len(sent - set(ids))} trades the simulator sent are not in Kafka"
    distinct = sum(len(ids) for ids in by_symbol.values())
    assert distinct > RATE * 15 * 0.8, f"only {distinct} trades: the run did not stream through the outage"
    duplicates = len(trades) - distinct  # at-least-once: consumers upsert by (symbol, trade_id)
    record_property("trades", distinct)
    record_property("duplicate_trades", duplicates)
    spooled = "spooling to" in pipeline.log()
    record_property("spooled_during_failover", spooled)
    print(f"\n{distinct} trades in Kafka, {duplicates} delivered twice, node {victim.node_id} killed, "
          f"{'spooled' if spooled else 'no spooling'} during the failover")
    for stream in ("ticker_1h", "ticker"):
        tickers = [orjson.loads(m.value) for m in pipeline.read(stream)]
        assert {t["symbol"] for t in tickers} == set(by_symbol), stream

    kafka_cluster.ensure_running()  # the victim comes back on its ports and data ...
    deadline = time.monotonic() + 60
    while True:  # ... and catches up: back in the in-sync replicas of every partition
        isr = {n: len(p["isr"]) for n, p in asyncio.run(describe_topic(kafka_cluster.bootstrap, trade_topic)).items()}
        if set(isr.values()) == {3}:
            break
        assert time.monotonic() < deadline, f"node {victim.node_id} did not catch up: in-sync replicas {isr}"
        time.sleep(0.5)
