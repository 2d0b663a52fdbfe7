"""Candles computed inside `tickwire run` (plugins/candles.py) equal the Spark job's, row for row.

The same trades — three minutes of three symbols, then a trade late within the 30 s watermark, one
later than it and the late one again — go

* to the Spark job through Kafka into PostgreSQL (the test_spark_job pipeline: the late trades
  are sent after the job's watermark has moved, as they would arrive), and
* as Binance frames from the simulator replaying a capture into `tickwire run`, once with the
  `local` profile (SQLite) and once with `--profile postgres`;

and the three candle tables hold the same rows: same windows, open/high/low/close, volume, quote
volume, count and vwap (as exact decimals; PostgreSQL's even as the same text). A restart in the
middle of a window leaves the same candles as one uninterrupted run.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from tickwire.framework.metrics import Metrics
from tickwire.framework.timestamps import iso_ms, ms_of_iso
from tickwire.plugins.candles import CandleDeriver, pg_vwap
from tickwire.spark import testing as tw
from tests.fixtures.postgres import MigratedDatabase, PostgresDatabase
from tests.test_spark_job import pipeline, spark_jars, spark_master_args  # noqa: F401 - fixtures

REPOSITORY = Path(__file__).resolve().parents[1]
T0 = 1_700_000_040_000  # a minute boundary (ms)
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
CANDLE_COLUMNS = "symbol, window_start, window_end, open, high, low, close, volume, quote_volume, trade_count, vwap"


def market() -> tuple[list[dict], list[dict]]:
    """(the main run of trades, the late ones), as normalized records; per symbol, trade ids
    grow by one and trade times never go back (as Binance's do).

    Three minutes of trades; SOLUSDT's stop after two (its feed lags), then two SOLUSDT trades
    arrive after the others moved the watermark to T0 + 149.4 s: one at T0 + 125 s, later than
    the watermark (stored, not in its candle), then one at T0 + 154.4 s, within it (corrects
    its candle), then that one again."""
    next_id = {s: 1 for s in SYMBOLS}
    main = []
    for i in range(300):  # T0 .. T0 + 179.4 s
        symbol = SYMBOLS[i % 3] if i < 200 else SYMBOLS[i % 2]
        n = next_id[symbol]
        next_id[symbol] += 1
        main.append(tw.trade_record(symbol, n, price=f"{30000 + (i * 7919) % 1000}.{(i * 104729) % 10**8:08d}",
                                    quantity=f"0.{((i + 1) * 15485863) % 10**8:08d}", trade_ms=T0 + i * 600,
                                    buyer_is_maker=bool(i % 2)))
    newest = T0 + 299 * 600
    too_late = tw.trade_record("SOLUSDT", next_id["SOLUSDT"], "1.00000000", "1.00000000", T0 + 125_000)
    late = tw.trade_record("SOLUSDT", next_id["SOLUSDT"] + 1, "99999.00000001", "1.50000000", newest - 25_000)
    return main, [too_late, late, late]


def binance_event(record: dict) -> dict:
    """The Binance trade frame a normalized record came from."""
    return {"e": "trade", "E": ms_of_iso(record["event_time"]), "s": record["symbol"], "t": record["trade_id"],
            "p": record["price"], "q": record["quantity"], "T": ms_of_iso(record["trade_time"]),
            "m": record["buyer_is_maker"], "M": True}


def write_capture(path: Path, records: list[dict]) -> Path:
    """A capture (docs/simulator.md) the simulator replays: one combined-stream frame per record."""
    ns = 1_700_000_000_000_000_000
    with gzip.open(path, "wt") as out:
        out.write(json.dumps({"tickwire_capture": 1, "url": "ws://127.0.0.1:9/stream", "started_ns": ns}) + "\n")
        for i, record in enumerate(records):
            stream = f"{record['symbol'].lower()}@trade"
            text = json.dumps({"stream": stream, "data": binance_event(record)})
            out.write(json.dumps({"ns": ns + i * 1000, "stream": stream, "text": text}) + "\n")
    return path


def run_tickwire(simulator, tmp_path: Path, capture: Path, trades_expected: int, count_trades, *args: str, **env: str):
    """`tickwire run` on the repository's streams.yaml against a replay of ``capture``, until
    ``count_trades()`` reaches ``trades_expected``; then SIGTERM."""
    replay = simulator(replay=str(capture), speed=0)
    log_path = tmp_path / f"run-{time.time_ns()}.log"
    environ = {**os.environ, "TICKWIRE_BINANCE_URL": replay.ws_url, "TICKWIRE_BINANCE_REST_URL": replay.rest_url,
               "TICKWIRE_SQLITE_PATH": str(tmp_path / "tickwire.db"),
               "TICKWIRE_DEAD_LETTER_PATH": str(tmp_path / "dead-letter.jsonl"), **env}
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tickwire.framework.cli", "run", "--no-status", "--log-format",
                                 "json", "--metrics-port", "0", *args], cwd=REPOSITORY, env=environ,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    if count_trades() >= trades_expected:
                        break
                except (sqlite3.OperationalError, psycopg.Error):
                    pass  # not created yet
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.3)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            finally:
                if proc.poll() is None:
                    proc.kill()
    replay.stop()
    assert proc.returncode == 0, log_path.read_text()[-3000:]
    return log_path.read_text()


def sqlite_rows(db: Path, statement: str) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute(statement).fetchall()


def pg_rows(dsn: str, statement: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(statement).fetchall()


def comparable(rows: list[tuple]) -> dict[tuple, tuple]:
    """(symbol, window start ms) → the candle's values, whatever store they were read from."""
    def ms(value) -> int:
        return ms_of_iso(value) if isinstance(value, str) else int(value.timestamp() * 1000)

    return {(r[0], ms(r[1])): (ms(r[2]), *(Decimal(str(v)) for v in r[3:9]), int(r[9]), Decimal(str(r[10])))
            for r in rows}


@pytest.fixture
def direct_db(postgres_cluster):
    """A second database (the pipeline fixture's holds the Spark job's tables)."""
    name = f"direct_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_cluster.dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PostgresDatabase(postgres_cluster, name)
    finally:
        with psycopg.connect(postgres_cluster.dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_candles_of_tickwire_run_equal_the_spark_jobs_with_late_trades(pipeline, simulator, direct_db, tmp_path):  # noqa: F811
    main, late = market()
    # -- Spark: the main run first, the late trades after the job's watermark moved
    p = pipeline
    first, newest = main[:-1], main[-1]
    p.produce(first + main[:60])  # every one of the first 60 sent twice: a producer retry
    job = p.start()
    p.wait_for("SELECT count(*) FROM candles_1m", [(len(tw.expected_candles(first)),)], job)
    # Spark judges a row late against the watermark of the batch before, and runs no batch
    # without data (spark_conf): the newest trade in a batch of its own puts the watermark of the
    # whole main run in force for the late trades' batch
    p.wait_committed_batches("candles_1m", 1, job)
    p.produce([newest])
    p.wait_for("SELECT count(*) FROM trades", [(300,)], job)
    p.wait_committed_batches("candles_1m", 2, job)
    p.produce(late)
    p.wait_for("SELECT count(*) FROM trades", [(302,)], job)
    late_window = (ms_of_iso(late[1]["trade_time"]) // 60_000) * 60
    p.wait_for(f"SELECT high FROM candles_1m WHERE symbol = 'SOLUSDT' AND window_start = to_timestamp({late_window})",
               [(Decimal("99999.00000001"),)], job)
    job.stop()
    spark = pg_rows(p.dsn, f"SELECT {CANDLE_COLUMNS} FROM candles_1m")
    spark_text = sorted(pg_rows(p.dsn, f"SELECT {CANDLE_COLUMNS.replace(', ', '::text, ')}::text FROM candles_1m"))
    # the late trade corrected its candle; the one past the watermark is stored but not counted
    assert len(spark) == len(tw.expected_candles(main + late[1:2]))

    capture = write_capture(tmp_path / "market.jsonl.gz", main + main[:60] + late)
    # -- tickwire run → SQLite (profile local)
    db = tmp_path / "tickwire.db"
    run_tickwire(simulator, tmp_path, capture, 302, lambda: sqlite_rows(db, "SELECT count(*) FROM trades")[0][0])
    local = sqlite_rows(db, f"SELECT {CANDLE_COLUMNS} FROM candles_1m")
    assert comparable(local) == comparable(spark)

    # -- tickwire run → PostgreSQL (profile postgres), tables from `tickwire db migrate`
    from tests.fixtures.postgres import run_db_migrate

    result = run_db_migrate(direct_db, REPOSITORY / "streams.yaml")
    assert result.exit_code == 0, result.output
    direct = MigratedDatabase(direct_db, result.output)
    run_tickwire(simulator, tmp_path, capture, 302, lambda: pg_rows(direct.dsn, "SELECT count(*) FROM trades")[0][0],
                 "--profile", "postgres", TICKWIRE_PG_DSN=direct.writer_dsn)
    rows = pg_rows(direct.dsn, f"SELECT {CANDLE_COLUMNS} FROM candles_1m")
    assert comparable(rows) == comparable(spark)
    # the same text too: 18 places like Spark's DECIMAL(38,18), vwap as PostgreSQL divides
    assert sorted(pg_rows(direct.dsn, f"SELECT {CANDLE_COLUMNS.replace(', ', '::text, ')}::text FROM candles_1m")) == spark_text


def test_a_restart_inside_a_window_leaves_the_candles_of_one_uninterrupted_run(simulator, tmp_path):
    main, late = market()
    everything = main + late
    whole = tmp_path / "whole"
    whole.mkdir()
    run_tickwire(simulator, whole, write_capture(tmp_path / "all.jsonl.gz", everything), 302,
                 lambda: sqlite_rows(whole / "tickwire.db", "SELECT count(*) FROM trades")[0][0])
    uninterrupted = comparable(sqlite_rows(whole / "tickwire.db", f"SELECT {CANDLE_COLUMNS} FROM candles_1m"))

    # stopped 100.2 s in (inside the second minute), started again on the whole market: the
    # source resumes after the last stored trade id, the open candles are rebuilt from SQLite
    restarted = tmp_path / "restarted"
    restarted.mkdir()
    db = restarted / "tickwire.db"
    run_tickwire(simulator, restarted, write_capture(tmp_path / "first.jsonl.gz", main[:168]), 168,
                 lambda: sqlite_rows(db, "SELECT count(*) FROM trades")[0][0])
    log = run_tickwire(simulator, restarted, write_capture(tmp_path / "again.jsonl.gz", everything), 302,
                       lambda: sqlite_rows(db, "SELECT count(*) FROM trades")[0][0])
    assert "state rebuilt from" in log
    assert comparable(sqlite_rows(db, f"SELECT {CANDLE_COLUMNS} FROM candles_1m")) == uninterrupted


def test_a_restart_inside_a_window_on_postgresql_rebuilds_the_window_from_the_stored_trades(simulator, postgres_db, tmp_path):
    from tests.fixtures.postgres import run_db_migrate

    result = run_db_migrate(postgres_db, REPOSITORY / "streams.yaml")
    assert result.exit_code == 0, result.output
    db = MigratedDatabase(postgres_db, result.output)
    main, late = market()
    count = lambda: pg_rows(db.dsn, "SELECT count(*) FROM trades")[0][0]  # noqa: E731
    run_tickwire(simulator, tmp_path, write_capture(tmp_path / "first.jsonl.gz", main[:168]), 168, count,
                 "--profile", "postgres", TICKWIRE_PG_DSN=db.writer_dsn)
    log = run_tickwire(simulator, tmp_path, write_capture(tmp_path / "again.jsonl.gz", main + late), 302, count,
                       "--profile", "postgres", TICKWIRE_PG_DSN=db.writer_dsn)
    assert "state rebuilt from" in log
    # the same candles as one run computes from these trades, late ones as they came
    deriver = CandleDeriver("candles_1m", {"interval": "1 minute", "watermark": "30 seconds", "table": "candles_1m"},
                            stream_spec())
    final: dict[tuple, dict] = {}
    for record in main + late:
        for row in deriver.observe(record) or []:
            final[(row["symbol"], row["window_start"])] = row.rendered()
    expected = comparable([tuple(r[c] for c in CANDLE_COLUMNS.split(", ")) for r in final.values()])
    assert comparable(pg_rows(db.dsn, f"SELECT {CANDLE_COLUMNS} FROM candles_1m")) == expected


def trade(symbol: str, trade_id: int, price: str, quantity: str, at_ms: int) -> dict:
    return tw.trade_record(symbol, trade_id, price, quantity, at_ms)


def test_the_watermark_decides_late_trades_and_closes_windows():
    metrics = Metrics()
    deriver = CandleDeriver("candles_1m", {"interval": "1 minute", "watermark": "30 seconds", "table": "candles_1m"},
                            stream_spec(), metrics)
    assert deriver.observe(trade("BTCUSDT", 1, "10.5", "2", T0 + 59_000))[0]["trade_count"] == 1
    assert deriver.observe(trade("BTCUSDT", 2, "11", "1", T0 + 95_000))[0]["window_start"] == iso_ms(T0 + 60_000)
    # watermark T0 + 65 s: a trade at T0 + 50 s is late, T0 + 70 s is not; the first window is closed
    assert deriver.observe(trade("BTCUSDT", 3, "9", "1", T0 + 50_000)) is None and deriver.late == 1
    assert metrics.registry.get_sample_value("tickwire_derived_late_total", {"derived": "candles_1m"}) == 1
    assert [c.start for c in deriver.windows.values()] == [T0 + 60_000]
    row = deriver.observe(trade("BTCUSDT", 4, "12", "1", T0 + 70_000))[0]
    assert (row["open"], row["close"], row["high"], row["trade_count"]) == (
        "12.000000000000000000", "11.000000000000000000", "12.000000000000000000", 2)
    assert deriver.observe(trade("BTCUSDT", 4, "12", "1", T0 + 70_000)) is None  # the same trade: counted once


def test_vwap_is_divided_as_postgresql_divides(postgres_db):
    cases = [("123456.789000000000000000", "3.000000000000000000"), ("0.000000010000000000", "7.000000000000000000"),
             ("98765432.123456789000000000", "0.000000030000000000"), ("2.000000000000000000", "3.000000000000000000")]
    with psycopg.connect(postgres_db.dsn) as conn:
        for quote, volume in cases:
            (want,) = conn.execute("SELECT round(trunc(%s::numeric, 24) / NULLIF(%s::numeric, 0), 18)::text",
                                   (quote, volume)).fetchone()
            assert format(pg_vwap(Decimal(quote), Decimal(volume)), "f") == want, (quote, volume)


def stream_spec():
    from tickwire.framework.config import load_config
    from tickwire.framework.plugins import PluginManager

    return load_config(REPOSITORY / "streams.yaml", PluginManager()).streams["trade"]


def test_candles_register_through_tickwire_register_derived_and_run_where_a_sink_stores_them():
    from tickwire.framework.config import load_config
    from tickwire.framework.engine import plan_from_config
    from tickwire.framework.plugins import PluginManager

    manager = PluginManager()
    assert [i.plugin_name for i in manager.pm.hook.tickwire_register_derived.get_hookimpls()] == ["candles"]
    config = load_config(REPOSITORY / "streams.yaml", manager)
    computed = {profile: [name for name, _, _ in plan_from_config(config, manager, profile).derived]
                for profile in ("local", "postgres", "compose")}
    # SQLite and PostgreSQL store candles; on the Kafka profile the Spark job computes them
    assert computed == {"local": ["candles_1m"], "postgres": ["candles_1m"], "compose": []}
