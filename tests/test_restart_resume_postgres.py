"""Nothing lost across restarts, profile postgres (straight to PostgreSQL): `tickwire run` is
SIGKILLed mid-stream and started again 3 s later; the trades table then holds every trade of
the simulator's record between the first and the last stored, once, with exact decimals."""

from __future__ import annotations

import signal
import time

import psycopg

from tests.test_postgres_end_to_end import SYMBOLS, assert_every_trade_stored_once_and_exactly, start_pipeline


def newest_ids(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT symbol, max(trade_id) FROM trades GROUP BY symbol").fetchall())


def test_sigkill_and_restart_3s_later_loses_no_trade(postgres_tables, simulator, tmp_path) -> None:
    sim = simulator(rate=200, symbols=",".join(SYMBOLS))
    processes = []
    try:
        first = start_pipeline(sim, postgres_tables.writer_dsn, duration=60, log_path=tmp_path / "run-1.log")
        processes.append(first)
        deadline = time.monotonic() + 40
        while len(newest_ids(postgres_tables.dsn)) < len(SYMBOLS) or time.monotonic() < deadline - 37:
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "run-1.log").read_text()[-3000:]
            time.sleep(0.2)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        held = newest_ids(postgres_tables.dsn)
        time.sleep(3)
        downtime_last = {s: v["last_trade_id"] for s, v in sim.stats()["symbols"].items()}
        assert all(downtime_last[s] - held[s] > 150 for s in SYMBOLS), "the downtime must hold trades to fill"

        second_log = tmp_path / "run-2.log"
        second = start_pipeline(sim, postgres_tables.writer_dsn, duration=4, log_path=second_log)
        processes.append(second)
        assert second.wait(60) == 0, second_log.read_text()[-3000:]

        with psycopg.connect(postgres_tables.dsn) as conn:
            assert assert_every_trade_stored_once_and_exactly(conn, sim) > 1000
            assert conn.execute("SELECT count(*) FROM trade_gaps").fetchone()[0] == 0
        newest = newest_ids(postgres_tables.dsn)
        assert all(newest[s] > downtime_last[s] for s in SYMBOLS)
        log = second_log.read_text()
        for symbol in SYMBOLS:
            assert f"{symbol} from id {held[symbol]} (postgres)" in log
    finally:  # no `tickwire run` outlives a failed test
        for proc in processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
