"""What a store reports it holds (Sink.last_sequence_ids), how the engine combines the answers,
and where a lost range (TradeGap) is recorded. Real SQLite and PostgreSQL; the engine test uses
the recording fake, which cannot record gaps, so they go to the dead-letter destination."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

import tickwire.plugins.postgres_sink as postgres_sink
import tickwire.plugins.sqlite_sink as sqlite_sink
from tickwire.framework.components import GAP_NOT_SERVED, TradeGap
from tickwire.framework.engine import Engine, EngineSettings
from tickwire.framework.resume import combine, complete_up_to, holes_in
from tickwire.framework.testing import LIST_SOURCE, RECORDING_SINK, RecordingSink, make_context, normalized, stream_spec, trade_payload

GAP = TradeGap("trade", "BTCUSDT", 11, 11, GAP_NOT_SERVED, "2026-01-01T00:00:00.000Z")


def test_the_resume_point_is_just_below_the_lowest_hole_no_recorded_loss_explains():
    assert holes_in([1, 2, 5, 6, 9]) == [(3, 4), (7, 8)]
    assert complete_up_to(9, []) == 9
    assert complete_up_to(9, [(3, 4), (7, 8)]) == 2
    assert complete_up_to(9, [(3, 4), (7, 8)], recorded=[(3, 4)]) == 6
    assert complete_up_to(9, [(3, 4), (7, 8)], recorded=[(3, 3), (4, 4), (7, 8)]) == 9
    assert complete_up_to(9, [(3, 6)], recorded=[(3, 4)]) == 4


def test_the_least_complete_store_decides_and_an_empty_or_unknowing_one_does_not():
    answers = {"sqlite": {"BTCUSDT": 120, "ETHUSDT": 50}, "kafka": {"BTCUSDT": 100}, "new": {}, "blind": None}
    assert combine(answers) == {"BTCUSDT": (100, "kafka"), "ETHUSDT": (50, "sqlite")}
    assert combine({"blind": None}) == {}


def trades(ids, symbol="BTCUSDT"):
    return normalized(stream_spec("trade"), [trade_payload(i, symbol) for i in ids])


async def held_after(sink, stream, writes, gaps=()):
    await sink.open()
    try:
        assert await sink.last_sequence_ids(stream) == {}
        for records in writes:
            await sink.write(stream, records)
        before = await sink.last_sequence_ids(stream)
        if gaps:
            await sink.write_gaps(list(gaps))
            await sink.write_gaps(list(gaps))  # idempotent per range
        return before, await sink.last_sequence_ids(stream)
    finally:
        await sink.close()


WRITES = [trades([*range(1, 11), *range(12, 21)]), trades(range(5, 8), "ETHUSDT")]


def test_sqlite_reports_the_last_id_held_without_an_unexplained_hole(tmp_path):
    stream = stream_spec("trade", symbols=["BTCUSDT", "ETHUSDT"])
    sink = sqlite_sink.SQLiteSink("sqlite", {"path": "t.db"}, make_context([stream], tmp_path))
    before, after = asyncio.run(held_after(sink, stream, WRITES, [GAP]))
    assert before == {"BTCUSDT": 10, "ETHUSDT": 7}  # a kill while filling 11 left a hole
    assert after == {"BTCUSDT": 20, "ETHUSDT": 7}  # 11 is recorded as lost: nothing to refill
    import sqlite3

    with sqlite3.connect(tmp_path / "t.db") as conn:
        assert conn.execute("select stream, symbol, first_id, last_id, count, reason from trade_gaps").fetchall() == [
            ("trade", "BTCUSDT", 11, 11, 1, "not_served")]


def test_postgres_reports_the_last_id_held_without_an_unexplained_hole(postgres_tables):
    stream = stream_spec("trade", symbols=["BTCUSDT", "ETHUSDT"])
    sink = postgres_sink.PostgresSink("postgres", {"dsn": postgres_tables.writer_dsn}, make_context([stream]))
    before, after = asyncio.run(held_after(sink, stream, WRITES, [GAP]))
    assert before == {"BTCUSDT": 10, "ETHUSDT": 7}
    assert after == {"BTCUSDT": 20, "ETHUSDT": 7}
    with psycopg.connect(postgres_tables.dsn) as conn:
        assert conn.execute("SELECT stream, symbol, first_id, last_id, count, reason FROM trade_gaps").fetchall() == [
            ("trade", "BTCUSDT", 11, 11, 1, "not_served")]


class ReportingSource:
    """Reports one lost range, then stays until cancelled; keeps the resume points it got."""

    seen_resume: dict = {}

    def __init__(self, name, options, ctx):
        self.ctx = ctx
        ReportingSource.seen_resume = ctx.resume

    async def run(self, emit):
        self.ctx.report_gap(GAP)
        await asyncio.Event().wait()


class HoldingSink(RecordingSink):
    async def last_sequence_ids(self, stream):
        return {"BTCUSDT": 41}


@pytest.mark.parametrize("sink_factory", [RecordingSink, HoldingSink])
def test_the_engine_passes_resume_points_and_sends_lost_ranges_to_dead_letters_without_write_gaps(sink_factory):
    from dataclasses import replace

    stream = stream_spec("trade", sinks=["rec"], source="src", transforms=[])
    engine = Engine(
        streams=[stream],
        sources={"src": (replace(LIST_SOURCE, factory=ReportingSource), {})},
        sinks={"rec": (replace(RECORDING_SINK, factory=sink_factory), {})},
        transforms={},
        dead_letter="rec",
        settings=EngineSettings(linger_ms=20),
    )

    async def main():
        task = asyncio.create_task(engine.run())
        await asyncio.sleep(0.5)
        engine.stop()
        await asyncio.wait_for(task, 10)

    asyncio.run(main())
    expected = {"trade": {"BTCUSDT": 41}} if sink_factory is HoldingSink else {}
    assert ReportingSource.seen_resume == expected
    letters = RecordingSink.instances["rec"].letters
    assert [d.reason for d in letters] == ["trade gap: BTCUSDT ids 11..11 (1 trades) lost: not_served"]
    assert engine.metrics.value("tickwire_trade_gap_trades_lost_total", stream="trade", symbol="BTCUSDT", reason="not_served") == 1
