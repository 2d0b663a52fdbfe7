"""Simulator → `tickwire run --profile postgres` → PostgreSQL, as a user runs it.

Every trade the pipeline saw must be stored exactly once with the simulator's exact price and
quantity, also when PostgreSQL is stopped mid-stream. Within one run the Binance source fills
gaps from REST, so per symbol the stored trade ids must be one unbroken range.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from decimal import Decimal

import psycopg

from tickwire.framework.testing import assert_clean_json_log
from tests.fixtures.postgres import REPOSITORY

# The brief's scenario is a 30 s outage; the default suite uses 3 s (same code path: refused
# connections and capped backoff), CI's slow job sets TICKWIRE_PG_OUTAGE_SECONDS=30.
OUTAGE_SECONDS = float(os.environ.get("TICKWIRE_PG_OUTAGE_SECONDS", "3"))
SYMBOLS = ["BTCUSDT", "ETHUSDT"]


def start_pipeline(sim, writer_dsn: str, duration: float | None, log_path, *settings: str) -> subprocess.Popen:
    """`tickwire run --profile postgres` against ``sim``; ``settings`` are extra ``--set`` items."""
    command = [
        sys.executable, "-m", "tickwire.framework.cli", "-c", str(REPOSITORY / "streams.yaml"),
        "--set", f"sources.binance.url={sim.ws_url}", "--set", f"sources.binance.rest_url={sim.rest_url}",
        "--set", f"symbols=[{','.join(SYMBOLS)}]",
        *(argument for item in settings for argument in ("--set", item)),
        "run", "--profile", "postgres", "--no-status", "--log-format", "json", "--metrics-port", "0",
        *(("--duration", str(duration)) if duration is not None else ()),
    ]
    env = {**os.environ, "TICKWIRE_PG_DSN": writer_dsn, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, cwd=REPOSITORY, env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT)


def assert_every_trade_stored_once_and_exactly(conn: psycopg.Connection, sim) -> int:
    total = 0
    for symbol in SYMBOLS:
        rows = conn.execute(
            "SELECT trade_id, price, quantity, price::text FROM trades WHERE symbol = %s ORDER BY trade_id", [symbol]
        ).fetchall()
        assert rows, f"no {symbol} trades stored"
        ids = [row[0] for row in rows]
        assert ids == list(range(ids[0], ids[0] + len(ids))), f"{symbol}: trade ids missing between {ids[0]} and {ids[-1]}"
        truth = {trade["id"]: trade for trade in sim.trades(symbol, from_id=ids[0], limit=len(ids))}
        for trade_id, price, quantity, price_text in rows:
            assert price == Decimal(truth[trade_id]["price"]) and quantity == Decimal(truth[trade_id]["qty"])
            assert price_text == truth[trade_id]["price"]  # scale and trailing zeros too
        total += len(rows)
    return total


def wait_for_trades(dsn: str, at_least: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(dsn) as conn:
            stored = conn.execute("SELECT count(*) FROM trades").fetchone()[0]
        if stored >= at_least or time.monotonic() > deadline:
            return stored
        time.sleep(0.2)


def test_simulator_to_postgres_every_trade_exactly_once(postgres_tables, simulator, tmp_path) -> None:
    sim = simulator(rate=200, symbols=",".join(SYMBOLS))
    log_path = tmp_path / "run.log"
    pipeline = start_pipeline(sim, postgres_tables.writer_dsn, duration=5, log_path=log_path)
    assert pipeline.wait(60) == 0, log_path.read_text()[-3000:]
    with psycopg.connect(postgres_tables.dsn) as conn:
        assert assert_every_trade_stored_once_and_exactly(conn, sim) > 500


def test_nothing_is_lost_while_postgresql_is_stopped_mid_stream(postgres_tables, simulator, tmp_path) -> None:
    cluster = postgres_tables.db.cluster
    sim = simulator(rate=200, symbols=",".join(SYMBOLS))
    log_path = tmp_path / "run.log"
    pipeline = start_pipeline(sim, postgres_tables.writer_dsn, duration=OUTAGE_SECONDS + 15, log_path=log_path)
    try:
        before_outage = wait_for_trades(postgres_tables.dsn, at_least=200, timeout=20)
        cluster.stop(mode="immediate")  # like a crash, while batches are being written
        time.sleep(OUTAGE_SECONDS)
        cluster.start()
        assert pipeline.wait(OUTAGE_SECONDS + 90) == 0, log_path.read_text()[-3000:]
    finally:
        cluster.start()
        if pipeline.poll() is None:
            pipeline.kill()
            pipeline.wait()
    assert before_outage > 0, "the pipeline wrote nothing before the outage: the test proves nothing"
    with psycopg.connect(postgres_tables.dsn) as conn:
        stored = assert_every_trade_stored_once_and_exactly(conn, sim)
    assert stored > before_outage + 200 * OUTAGE_SECONDS * 0.5  # the outage's trades arrived too
    assert "postgres unavailable; retrying" in log_path.read_text()
    assert_clean_json_log(log_path.read_text())  # the outage is in JSON lines, without a traceback
