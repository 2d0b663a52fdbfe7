"""Where the Kafka sink resumes a stream whose symbols a selector chooses (plugins/kafka/resume.py):
nobody knows the symbols when the resume points are read, so the newest records of every
partition are read, up to a bound, and every symbol found there resumes; and with ``--shard``
the engine keeps only the shard's symbols of what the stores hold (the topic is shared)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from types import SimpleNamespace

import orjson
import pytest

from tests.fixtures.kafka import create_topics
from tickwire.framework.engine.resume_points import read_resume_points
from tickwire.framework.schemas import TopicSpec
from tickwire.framework.sharding import Shard
from tickwire.framework.testing import stream_spec
from tickwire.plugins.kafka.resume import read_topic_tail

SELECTOR = {"select": {"quote_assets": ["USDT"]}}


async def produce(bootstrap: str, topic: str, trades: list[tuple[str, int]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for symbol, trade_id in trades:
            value = orjson.dumps({"trade_id": trade_id, "symbol": symbol, "price": "1.00", "quantity": "0.1"})
            await producer.send(topic, value, key=symbol.encode())
        await producer.flush()
    finally:
        await producer.stop()


@pytest.mark.kafka
def test_a_selector_stream_resumes_every_symbol_among_the_newest_records_of_each_partition(kafka_broker):
    topic = f"resume-{uuid.uuid4().hex[:6]}"
    # one partition: RAREUSDT traded first, then 150 BTCUSDT and 50 ETHUSDT trades
    trades = [("RAREUSDT", i) for i in range(1, 11)] + [("BTCUSDT", i) for i in range(1, 151)] + [("ETHUSDT", i) for i in range(1, 51)]

    async def scenario():
        await create_topics(kafka_broker.bootstrap, topic, partitions=1)
        await produce(kafka_broker.bootstrap, topic, trades)
        settings = {"bootstrap_servers": kafka_broker.bootstrap}
        by_rule = replace(stream_spec("trade"), symbols=[], selector=SELECTOR, topic=TopicSpec(topic))
        listed = replace(stream_spec("trade", symbols=["RAREUSDT"]), topic=TopicSpec(topic))
        return (await read_topic_tail(settings, by_rule, [0], chunk=40, scan=100),
                await read_topic_tail(settings, by_rule, [0], chunk=40),
                await read_topic_tail(settings, listed, [0], chunk=40))

    bounded, whole, listed = asyncio.run(scenario())
    # the newest 100 records: BTCUSDT 101..150 and ETHUSDT 1..50; RARE is older: it starts from live
    assert {s: (min(ids), max(ids)) for s, ids in bounded.ids.items()} == {"BTCUSDT": (101, 150), "ETHUSDT": (1, 50)}
    assert bounded.bounded == [0] and bounded.unfinished == []
    # within the default bound (50,000 records) the whole partition is read: every symbol resumes
    assert {s: max(ids) for s, ids in whole.ids.items()} == {"RAREUSDT": 10, "BTCUSDT": 150, "ETHUSDT": 50}
    assert whole.bounded == []
    # a listed symbol is looked for back to the partition's beginning, with no bound
    assert max(listed.ids["RAREUSDT"]) == 10 and listed.bounded == [] and listed.unfinished == []


def test_a_shard_resumes_only_its_own_symbols_of_a_shared_store():
    held = {"BTCUSDT": 10, "ETHUSDT": 20, "SOLUSDT": 30, "XRPUSDT": 40}

    class Store:
        async def last_sequence_ids(self, stream):
            return dict(held)

    runner = SimpleNamespace(id="kafka", who="sink 'kafka'", traits=SimpleNamespace(resumable=True), sink=Store())
    route = SimpleNamespace(stream=stream_spec("trade"), lanes=[SimpleNamespace(runner=runner)])
    log = SimpleNamespace(info=lambda *a, **k: None)
    for shard in (Shard(0, 2), Shard(1, 2)):
        points = asyncio.run(read_resume_points([route], log, shard))["trade"]
        assert points == {s: i for s, i in held.items() if shard.owns(s)}
    assert asyncio.run(read_resume_points([route], log))["trade"] == held


def test_the_source_names_the_symbols_that_no_store_resumes():
    from tests.test_binance_source import make_source

    src = make_source(None)
    src.ctx.resume = {"trade": {"BTCUSDT": 41}}
    src.gaps.resume_trackers()
    assert src.channels["btcusdt@trade"].trades.last == 41
    assert src.channels["ethusdt@trade"].trades.last is None
    assert "stream 'trade': ETHUSDT, SOLUSDT start from the live stream" in src.ctx.log.text("info")

    nothing_held = make_source(None)  # a first start: nothing to say per symbol
    nothing_held.gaps.resume_trackers()
    assert "start from the live stream" not in nothing_held.ctx.log.text()
