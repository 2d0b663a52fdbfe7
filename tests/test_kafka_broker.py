"""The project's own Kafka broker is real: messages make a round trip through it with aiokafka,
and data acknowledged with acks=all survives a SIGKILL of the broker."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from tests.fixtures.kafka import consume, create_topics

pytestmark = pytest.mark.kafka


async def create_topic(bootstrap: str, partitions: int = 1) -> str:
    topic = f"test.broker.{uuid.uuid4().hex[:8]}"
    await create_topics(bootstrap, topic, partitions=partitions)
    return topic


async def produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, key=key, headers=[("test-header", key)])
            for key, value in messages
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def test_messages_make_a_round_trip(kafka_broker):
    messages = [(f"BTCUSDT-{i % 3}".encode(), f'{{"n": {i}}}'.encode()) for i in range(20)]

    async def scenario():
        topic = await create_topic(kafka_broker.bootstrap, partitions=3)
        await produce(kafka_broker.bootstrap, topic, messages)
        return await consume(kafka_broker.bootstrap, topic, len(messages))

    received = asyncio.run(scenario())
    assert sorted((r.key, r.value) for r in received) == sorted(messages)
    assert all(dict(r.headers)["test-header"] == r.key for r in received)


def test_acknowledged_data_survives_sigkill_and_restart_on_the_same_address(kafka_broker):
    bootstrap_before = kafka_broker.bootstrap
    messages = [(b"ETHUSDT", f"trade-{i}".encode()) for i in range(50)]
    topic = asyncio.run(create_topic(kafka_broker.bootstrap))
    asyncio.run(produce(kafka_broker.bootstrap, topic, messages))
    try:
        kafka_broker.kill()
        assert not kafka_broker.is_running()
        kafka_broker.start()
    finally:
        kafka_broker.ensure_running()
    assert kafka_broker.bootstrap == bootstrap_before
    received = asyncio.run(consume(kafka_broker.bootstrap, topic, len(messages)))
    assert [r.value for r in received] == [value for _, value in messages]


def test_the_kill_command_sigkills_the_recorded_broker_process(tmp_path):
    """`python scripts/kafka_broker.py kill --dir DIR` sends SIGKILL (no controlled shutdown) to
    the process recorded by `start`, and forgets it; a stand-in process plays the JVM here."""
    import json
    import signal
    import subprocess
    import sys
    import threading
    import time

    from tickwire.devservices.kafka_broker import STATE_FILE
    from tickwire.devservices.kafka_broker_cli import main

    stand_in = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
    try:
        (tmp_path / STATE_FILE).write_text(json.dumps({"pid": stand_in.pid, "port": 1}))
        reaper = threading.Thread(target=stand_in.wait)  # a real broker is not our child: no zombie
        reaper.start()
        started = time.monotonic()
        assert main(["kill", "--dir", str(tmp_path)]) == 0
        reaper.join(5)
        assert stand_in.returncode == -signal.SIGKILL  # it ignores SIGTERM: only a SIGKILL ends it at once
        assert time.monotonic() - started < 5
        assert not (tmp_path / STATE_FILE).exists()
    finally:
        stand_in.kill()


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch):
    """`kafka-storage format -t <id>` takes an id starting with "-" for an option: one in 64 of
    random ids did, and the cluster could not start."""
    from tickwire.devservices import kafka_broker

    dashed, plain = uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x10" + bytes(15))
    ids = iter([dashed, plain])
    monkeypatch.setattr(kafka_broker.uuid, "uuid4", lambda: next(ids))
    assert kafka_broker.new_cluster_id() == "EAAAAAAAAAAAAAAAAAAAAA"
