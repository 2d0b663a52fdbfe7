"""A way in from the original pipeline (docs/migrating.md): a database built with the original's
DDL and rows (reconstructed from issue 13: tests/data/original/init.reconstructed.sql) is adopted
by `tickwire db migrate --adopt`, keeps its rows, answers the rewritten dashboard queries as the
original answered the originals, and is then fed by `tickwire run --profile postgres`. Kafka
values say their format in a header; `format: binance` topics carry the Binance payload."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import orjson
import psycopg
import pytest

from tickwire.framework.schemas import TopicSpec
from tickwire.framework.testing import make_context, normalized, stream_spec, trade_payload
from tests.fixtures.postgres import READER_PASSWORD, WRITER_PASSWORD

REPOSITORY = Path(__file__).resolve().parents[1]
ORIGINAL_DDL = REPOSITORY / "tests" / "data" / "original" / "init.reconstructed.sql"
RANGE = {"from_ms": 1_700_000_040_000, "to_ms": 1_700_000_160_000, "symbol": "BTCUSDT"}


def dashboard_queries() -> dict[str, dict[str, str]]:
    """name → {"original": sql, "tickwire": sql}, the pairs docs/migrating.md shows."""
    text = (REPOSITORY / "docs" / "migrating.md").read_text()
    pairs: dict[str, dict[str, str]] = {}
    for block in re.findall(r"```sql\n(.*?)```", text, re.S):
        found = re.match(r"-- (original|tickwire): (\w+)\n", block)
        if found:
            pairs.setdefault(found.group(2), {})[found.group(1)] = block[found.end():]
    return pairs


def same(a, b) -> bool:
    """The original's value and the rewrite's agree: floats against exact decimals to the 15
    digits a double holds; times to the second (the original's to_timestamp(ms / 1000) cut the
    milliseconds, the rewrite keeps them)."""
    if isinstance(a, datetime) and isinstance(b, datetime):
        return a.replace(microsecond=0) == b.replace(microsecond=0)
    if isinstance(a, (float, Decimal)) and isinstance(b, (float, Decimal)):
        return math.isclose(float(a), float(b), rel_tol=1e-14)
    return a == b


def adopt(db, *extra: str):
    from click.testing import CliRunner

    from tickwire.framework.cli import build

    argv = ["-c", str(REPOSITORY / "streams.yaml"), "db", "migrate", *extra]
    group, app = build(argv)
    env = {"TICKWIRE_PG_ADMIN_DSN": db.dsn, "TICKWIRE_PG_WRITER_PASSWORD": WRITER_PASSWORD,
           "TICKWIRE_PG_READER_PASSWORD": READER_PASSWORD}
    return CliRunner().invoke(group, argv, obj=app, env=env, catch_exceptions=False)


def test_the_doc_has_every_dashboard_query_in_both_forms():
    pairs = dashboard_queries()
    assert len(pairs) >= 5 and all(set(p) == {"original", "tickwire"} for p in pairs.values()), pairs


def test_an_original_database_is_adopted_keeping_its_rows_then_fed_by_tickwire_run(postgres_db, simulator, tmp_path):
    with psycopg.connect(postgres_db.dsn, autocommit=True) as conn:
        conn.execute(ORIGINAL_DDL.read_text())
        before = conn.execute("SELECT symbol, trade_id, price, quantity, event_time, buyer_is_maker FROM trades "
                              "ORDER BY 1, 2").fetchall()
        answers = {name: conn.execute(pair["original"], RANGE).fetchall() for name, pair in dashboard_queries().items()}
    assert len(before) == 7 and all(answers.values())

    result = adopt(postgres_db, "--adopt")
    assert result.exit_code == 0, result.output
    assert "adopt trades: event_time (the trade time T, ms) renamed to trade_time" in result.output
    assert "adopt trades: price double precision -> numeric" in result.output

    with psycopg.connect(postgres_db.dsn) as conn:
        after = conn.execute("SELECT symbol, trade_id, price, quantity, trade_time, buyer_is_maker, event_time, "
                             "ingested_at FROM trades ORDER BY 1, 2").fetchall()
        # every row kept: the trade time still the trade time, to the millisecond; prices exact decimals
        for old, new in zip(before, after, strict=True):
            assert (new[0], new[1], new[5]) == (old[0], old[1], old[5])
            assert new[2] == Decimal(repr(old[2])) and new[3] == Decimal(repr(old[3]))
            assert round(new[4].timestamp() * 1000) == old[4] and new[6] == new[4] and new[7] == new[4]
        types = dict(conn.execute("SELECT column_name, data_type || ' ' || is_nullable FROM information_schema.columns "
                                  "WHERE table_name = 'trades'").fetchall())
        assert types["trade_time"] == types["event_time"] == "timestamp with time zone NO"
        assert types["price"] == "numeric NO"
        for name, pair in dashboard_queries().items():
            rewritten = conn.execute(pair["tickwire"], RANGE).fetchall()
            assert len(rewritten) == len(answers[name]), name
            for row, original in zip(rewritten, answers[name]):
                assert all(same(a, b) for a, b in zip(original, row, strict=True)), (name, original, row)
    again = adopt(postgres_db, "--adopt")
    assert again.exit_code == 0 and "adopt trades:" not in again.output  # nothing left to convert

    # fed by tickwire: new trades beside the adopted ones, candles for them, the old rows untouched
    sim = simulator(rate=200)
    env = {**os.environ, "TICKWIRE_BINANCE_URL": sim.ws_url, "TICKWIRE_BINANCE_REST_URL": sim.rest_url,
           "TICKWIRE_PG_DSN": postgres_db.dsn_for("tickwire_writer", WRITER_PASSWORD)}
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tickwire.framework.cli", "run", "--profile", "postgres",
                                 "--no-status", "--metrics-port", "0"], cwd=REPOSITORY, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while pg_count(postgres_db.dsn, "trades") < 200 or pg_count(postgres_db.dsn, "candles_1m") == 0:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    assert proc.returncode == 0, log.read_text()[-3000:]
    with psycopg.connect(postgres_db.dsn) as conn:
        kept = conn.execute("SELECT symbol, trade_id, price, quantity, trade_time, buyer_is_maker, event_time, "
                            "ingested_at FROM trades WHERE trade_time < to_timestamp(1700000160) ORDER BY 1, 2").fetchall()
        assert kept == after
        for name, pair in dashboard_queries().items():
            assert conn.execute(pair["tickwire"], {**RANGE, "to_ms": int(time.time() * 1000) + 60_000}).fetchall(), name


def pg_count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_a_different_key_is_refused_and_nothing_changes(postgres_db):
    with psycopg.connect(postgres_db.dsn, autocommit=True) as conn:
        conn.execute(ORIGINAL_DDL.read_text().replace("PRIMARY KEY (symbol, trade_id)", "PRIMARY KEY (trade_id, symbol, event_time)"))
    result = adopt(postgres_db, "--adopt")
    assert result.exit_code == 1
    assert "primary key (trade_id, symbol, trade_time), tickwire needs (symbol, trade_id)" in result.output
    assert "nothing was changed" in result.output
    with psycopg.connect(postgres_db.dsn) as conn:
        assert conn.execute("SELECT data_type FROM information_schema.columns WHERE table_name = 'trades' "
                            "AND column_name = 'event_time'").fetchone() == ("bigint",)


@pytest.mark.kafka
def test_kafka_values_name_their_format_and_a_binance_topic_carries_the_binance_payload(kafka_broker, tmp_path):
    from tests.fixtures.kafka import consume, create_topics
    from tickwire.plugins.kafka.sink import KafkaSink

    normal, binance, raw, dead = (f"test.{kind}.{uuid.uuid4().hex[:8]}" for kind in ("normal", "binance", "raw", "dead"))
    for topic in (normal, binance, raw, dead):
        asyncio.run(create_topics(kafka_broker.bootstrap, topic, partitions=1))
    base = stream_spec("trade")
    streams = {
        normal: dataclasses.replace(base, name="normal", topic=TopicSpec(normal, partitions=1)),
        binance: dataclasses.replace(base, name="binance", topic=TopicSpec(binance, partitions=1, format="binance")),
        raw: dataclasses.replace(base, name="raw", topic=TopicSpec(raw, partitions=1, format="binance"),
                                 transforms=[("validate", {}), ("normalize", {"include_raw": True})]),
    }
    payloads = [trade_payload(i) for i in range(5)]

    async def scenario():
        options = {"bootstrap_servers": kafka_broker.bootstrap, "dead_letter_topic": dead,
                   "spool": {"directory": str(tmp_path / "spool")}}
        sink = KafkaSink("kafka", options, make_context(list(streams.values()), tmp_path))
        await sink.open()
        try:
            for stream in streams.values():
                await sink.write(stream, normalized(stream, payloads))
        finally:
            await sink.close()
        return {topic: await consume(kafka_broker.bootstrap, topic, 5) for topic in streams}

    received = asyncio.run(scenario())
    formats = {topic: {dict(m.headers)["tickwire-format"] for m in messages} for topic, messages in received.items()}
    assert formats == {normal: {b"normalized/1"}, binance: {b"binance/1"}, raw: {b"binance/1"}}
    assert [orjson.loads(m.value)["price"] for m in received[normal]] == [p["p"] for p in payloads]
    # rebuilt from the columns: every mapped field (not "M", which tickwire does not store)
    assert [orjson.loads(m.value) for m in received[binance]] == [{k: v for k, v in p.items() if k != "M"} for p in payloads]
    # with include_raw: the payload as received
    assert [orjson.loads(m.value) for m in received[raw]] == payloads
