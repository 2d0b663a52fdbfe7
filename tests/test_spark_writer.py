"""The foreachBatch writer's PostgreSQL side, without Spark: a replayed batch is skipped, events
are inserted once, candles are upserted, dead letters land with the batch, and a stopped server is
waited for. Tables come from `tickwire db migrate`; the writer connects as the writer role."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from tickwire.spark.candles import COMPUTED_COLUMNS, OUTPUT_COLUMNS
from tickwire.spark.postgres_writer import PostgresWriter, TableTarget
from tickwire.spark.testing import config_yaml

REPO = Path(__file__).resolve().parent.parent
TICKWIRE = Path(sys.executable).parent / "tickwire"
PASSWORDS = {"TICKWIRE_PG_WRITER_PASSWORD": "writer-pw", "TICKWIRE_PG_READER_PASSWORD": "reader-pw"}
TRADE_COLUMNS = ["trade_id", "symbol", "event_time", "price", "quantity", "trade_time", "buyer_is_maker", "ingested_at"]
CANDLE_COLUMNS = list(OUTPUT_COLUMNS)


@pytest.fixture
def db(postgres_db, tmp_path):
    config = tmp_path / "streams.yaml"
    config.write_text(config_yaml("unused"))
    out = subprocess.run([str(TICKWIRE), "-c", str(config), "db", "migrate", "--dsn", postgres_db.dsn],
                         capture_output=True, text=True, env={**os.environ, **PASSWORDS}, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    return postgres_db


def writer(db, query="trade", target=None, **kw) -> PostgresWriter:
    target = target or TableTarget("trades", TRADE_COLUMNS, ["symbol", "trade_id"])
    return PostgresWriter(db.dsn_for("tickwire_writer", "writer-pw"), query, "trade", target, "event_time",
                          "dead_letters", "stream_progress", **kw)


def trade_line(i: int, price: str = "100.12345678") -> tuple[str, float]:
    return (f'{i},BTCUSDT,2023-01-01T00:00:0{i % 10}.123000Z,{price},"0.50000000",'
            f"2023-01-01T00:00:0{i % 10}.120000Z,true,2023-01-01T00:00:0{i % 10}.200000Z", 1672531200.0)


def count(db, table: str) -> int:
    with psycopg.connect(db.dsn) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_a_replayed_batch_is_skipped_whole(db):
    w = writer(db)
    rows = [trade_line(i) for i in range(5)]
    letters = [("trade", "price: cannot parse \"x\" as decimal", "spark", '{"price":"x"}', None),
               ("trade", "malformed JSON", "spark", "\x00bad", None)]
    assert w.write_with_retry(7, rows, letters) is True
    assert w.write_with_retry(7, rows, letters) is False  # the same batch after a crash
    assert w.write_with_retry(8, rows[:2] + [trade_line(9)], []) is True  # overlapping events
    assert w.inserted == 1  # the two copies were dropped by the key (counted as duplicates)
    assert (count(db, "trades"), count(db, "dead_letters"), count(db, "stream_progress")) == (6, 2, 2)
    with psycopg.connect(db.dsn) as conn:
        assert conn.execute("SELECT price FROM trades WHERE trade_id = 1").fetchone()[0] == Decimal("100.12345678")
        payloads = {r[0] for r in conn.execute("SELECT payload FROM dead_letters WHERE plugin = 'spark'")}
    assert payloads == {'{"price":"x"}', "\\u0000bad"}
    w.close()


def test_candles_are_upserted_with_vwap(db):
    target = TableTarget("candles_1m", CANDLE_COLUMNS, ["symbol", "window_start"], upsert=True, computed=COMPUTED_COLUMNS)
    w = writer(db, query="candles_1m", target=target)
    start, end = "2023-01-01T00:00:00.000000Z", "2023-01-01T00:01:00.000000Z"
    w.write_with_retry(0, [(f"BTCUSDT,{start},{end},1,3,1,3,2,4,2", None)], [])
    w.write_with_retry(1, [(f"BTCUSDT,{start},{end},1,9,1,9,3,13,3", None)], [])  # a late trade at 9
    with psycopg.connect(db.dsn) as conn:
        rows = conn.execute("SELECT high, close, volume, quote_volume, trade_count, vwap FROM candles_1m").fetchall()
    assert rows == [(9, 9, 3, 13, 3, Decimal("4.333333333333333333"))]
    w.close()


def test_a_stopped_server_is_waited_for(db):
    w = writer(db, retry_seconds=60)
    assert w.write_with_retry(0, [trade_line(1)], [])
    db.cluster.stop()
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("ok", w.write_with_retry(1, [trade_line(2)], [])))
    try:
        thread.start()
        time.sleep(4)
        assert thread.is_alive()  # still retrying
    finally:
        db.cluster.start()
    thread.join(60)
    assert result == {"ok": True} and count(db, "trades") == 2
    w.close()


def test_retries_end_after_the_budget(db):
    w = writer(db, retry_seconds=1.0)
    db.cluster.stop()
    try:
        with pytest.raises(psycopg.OperationalError):
            w.write_with_retry(0, [trade_line(1)], [])
    finally:
        db.cluster.start()
