"""Engine logic with fake sources and sinks: batching, backpressure, acknowledgements, retries,
dead letters, shutdown. The real-process tests (SIGTERM, `tickwire run`) are at the bottom."""

from __future__ import annotations

import asyncio
import time

import pytest
from structlog.testing import capture_logs

import tickwire.plugins.normalize
import tickwire.plugins.validate
from tickwire import plugins
from tickwire.framework.components import InvalidRecord, SinkSpec, TransformSpec
from tickwire.framework.engine import Engine, EngineError, EngineSettings
from tickwire.framework.testing import (
    LIST_SOURCE, RECORDING_SINK, RecordingSink, assert_clean_json_log, stream_spec, trade_payload, write_streams_yaml,
)


def transforms() -> dict[str, TransformSpec]:
    found: list[TransformSpec] = []
    plugins.validate.tickwire_register_transforms(register=found.append)
    plugins.normalize.tickwire_register_transforms(register=found.append)
    return {t.name: t for t in found}


def make_engine(payloads, *, sink_options=None, settings=None, source_options=None, sink_spec=RECORDING_SINK, dead_letter="rec", stream_transforms=None, extra_transforms=None):
    stream = stream_spec("trade", sinks=["rec"], transforms=stream_transforms)
    tr = transforms()
    tr.update(extra_transforms or {})
    return Engine(
        streams=[stream],
        sources={"test": (LIST_SOURCE, {"payloads": [("trade", p) for p in payloads], **(source_options or {})})},
        sinks={"rec": (sink_spec, sink_options or {})},
        transforms=tr,
        dead_letter=dead_letter,
        settings=settings or EngineSettings(batch_size=100, linger_ms=20, queue_batches=4, retry_initial_s=0.01),
    )


def run(engine: Engine, stop_after: float | None = None, timeout: float = 20):
    async def main():
        task = asyncio.create_task(engine.run())
        if stop_after is not None:
            await asyncio.sleep(stop_after)
            engine.stop()
        await asyncio.wait_for(task, timeout)

    asyncio.run(main())
    return RecordingSink.instances.get("rec")


def written(engine: Engine) -> float:
    return engine.metrics.value("tickwire_messages_written_total", stream="trade", sink="rec")


def test_every_record_is_written_once_and_sources_ending_stop_the_engine():
    engine = make_engine([trade_payload(i) for i in range(1050)])
    sink = run(engine)
    assert [r["trade_id"] for r in sink.records] == list(range(1050))
    assert sink.opened and sink.closed
    assert written(engine) == 1050
    assert engine.metrics.value("tickwire_messages_received_total", stream="trade") == 1050
    rec = sink.records[7]
    assert rec["price"] == trade_payload(7)["p"] and rec["event_time"] == "2023-01-01T00:00:00.008Z"


def test_batches_by_size():
    engine = make_engine([trade_payload(i) for i in range(1000)], settings=EngineSettings(batch_size=100, linger_ms=60_000, coalesce_batches=1))
    sink = run(engine)
    assert [len(b) for _, b in sink.batches] == [100] * 10


def test_a_backlog_is_written_in_merged_batches_in_order():
    """This source never waits, so batches pile up in the queue: the worker merges up to
    coalesce_batches of them per write, keeping the order."""
    engine = make_engine([trade_payload(i) for i in range(1000)], settings=EngineSettings(batch_size=100, linger_ms=60_000, queue_batches=8, coalesce_batches=3))
    sink = run(engine)
    sizes = [len(b) for _, b in sink.batches]
    assert max(sizes) == 300 and all(n % 100 == 0 for n in sizes) and sum(sizes) == 1000
    assert [r["trade_id"] for r in sink.records] == list(range(1000))


def test_batches_by_time_when_the_source_is_quiet():
    """batching: linger (the behaviour before adaptive batching): a partial batch waits linger_ms."""
    events: list = []
    engine = make_engine(
        [trade_payload(i) for i in range(5)],
        sink_options={"events": events},
        source_options={"forever": True},
        settings=EngineSettings(batch_size=1000, linger_ms=50, batching="linger"),
    )

    async def main():
        task = asyncio.create_task(engine.run())
        t0 = time.monotonic()
        while not events and time.monotonic() - t0 < 5:
            await asyncio.sleep(0.005)
        elapsed = time.monotonic() - t0
        engine.stop()
        await task
        return elapsed

    elapsed = asyncio.run(main())
    assert events and events[0][2] == 5, "the partial batch was sent before the stop"
    assert 0.04 <= elapsed < 1.0


def first_write_after(payloads: int, settings: EngineSettings, sink_spec=RECORDING_SINK) -> tuple[float, list]:
    """Seconds from the start of a quiet source's records to the first committed write."""
    events: list = []
    engine = make_engine([trade_payload(i) for i in range(payloads)], sink_options={"events": events},
                         source_options={"forever": True}, settings=settings, sink_spec=sink_spec)

    async def main() -> float:
        task = asyncio.create_task(engine.run())
        await asyncio.wait_for(engine.ready.wait(), 5)
        t0 = time.monotonic()
        while not events and time.monotonic() - t0 < 5:
            await asyncio.sleep(0.001)
        engine.stop()
        await task
        return events[0][1] - t0 if events else float("inf")

    return asyncio.run(main()), events


def test_adaptive_batching_writes_a_partial_batch_at_once_when_the_sink_is_idle():
    """batching: adaptive (the default): an idle sink takes whatever has arrived; linger_ms
    (here a minute) is only an upper bound."""
    took, events = first_write_after(5, EngineSettings(batch_size=1000, linger_ms=60_000))
    assert EngineSettings().batching == "adaptive"
    assert events[0][2] == 5, "the five records of the burst go out together"
    assert took < 0.5, f"first write after {took:.3f}s; it must not wait for linger_ms"


def test_adaptive_batches_grow_while_the_sink_is_busy_and_keep_the_order():
    """A steady source and a sink that takes 20 ms per write: records gather while a write
    runs, so the batches grow past one record, never past batch_size, and arrive in order."""
    events: list = []
    payloads = [trade_payload(i) for i in range(600)]
    engine = make_engine(payloads, sink_options={"delay_s": 0.02, "events": events},
                         source_options={"delay_s": 0.0005},
                         settings=EngineSettings(batch_size=100, linger_ms=60_000, queue_batches=2, coalesce_batches=1))
    sink = run(engine)
    sizes = [n for _, _, n in events]
    assert [r["trade_id"] for r in sink.records] == list(range(600))
    assert sizes[0] < 5, "the first record found the sink idle"
    assert max(sizes) > 10 and max(sizes) <= 100, sizes
    assert len(sizes) < 100, "batched while busy, not one write per record"


class SlowInFlightSink(RecordingSink):
    """max_in_flight = 4, 20 ms per write: records its concurrency."""

    max_in_flight = 4
    active = 0
    peak = 0

    async def write(self, stream, records):
        SlowInFlightSink.active += 1
        SlowInFlightSink.peak = max(SlowInFlightSink.peak, SlowInFlightSink.active)
        try:
            await asyncio.sleep(0.02)
            await super().write(stream, records)
        finally:
            SlowInFlightSink.active -= 1


def test_adaptive_partial_batches_wait_for_an_idle_sink_full_ones_use_every_slot():
    """With max_in_flight > 1 a partial batch goes out only when nothing is in flight (so a
    trickle does not become many tiny writes queued behind each other); full batches still
    overlap up to max_in_flight. Order of starts is the order of the records."""
    SlowInFlightSink.active = SlowInFlightSink.peak = 0
    spec = SinkSpec(name="slowinflight", factory=SlowInFlightSink, description="", plugin="test", supports_dead_letters=True)
    events: list = []
    trickle = make_engine([trade_payload(i) for i in range(200)], sink_spec=spec,
                          sink_options={"events": events}, source_options={"delay_s": 0.001, "forever": True},
                          settings=EngineSettings(batch_size=1000, linger_ms=60_000))

    async def until_all_written() -> int:
        task = asyncio.create_task(trickle.run())
        while sum(n for _, _, n in events) < 200:
            await asyncio.sleep(0.005)
        peak = SlowInFlightSink.peak  # before the stop: its flush may overlap a write
        trickle.stop()
        await asyncio.wait_for(task, 10)
        return peak

    assert asyncio.run(asyncio.wait_for(until_all_written(), 20)) == 1, "partial batches: one write at a time"
    sink = RecordingSink.instances["rec"]
    assert sorted(r["trade_id"] for r in sink.records) == list(range(200))
    assert len(events) < 100
    SlowInFlightSink.active = SlowInFlightSink.peak = 0
    flood = make_engine([trade_payload(i) for i in range(2000)], sink_spec=spec,
                        settings=EngineSettings(batch_size=100, linger_ms=60_000, queue_batches=8, coalesce_batches=1))
    sink = run(flood)
    assert SlowInFlightSink.peak == 4, "full batches use every slot"
    assert sorted(r["trade_id"] for r in sink.records) == list(range(2000))


@pytest.mark.parametrize("coalesce", [1, 4])
def test_backpressure_slows_the_source_and_bounds_memory(coalesce):
    events: list = []
    accepted: list = []
    s = EngineSettings(batch_size=10, linger_ms=10_000, queue_batches=2, coalesce_batches=coalesce)
    engine = make_engine(
        [trade_payload(i) for i in range(300)],
        sink_options={"delay_s": 0.02, "events": events},
        source_options={"log": accepted},
        settings=s,
    )
    t0 = time.monotonic()
    run(engine)
    elapsed = time.monotonic() - t0
    assert elapsed >= len(events) * 0.02 * 0.9
    # in flight (accepted by the engine but not committed) never exceeds buffer + queue + the batch being written
    committed_at = []
    total = 0
    for _, t, n in events:
        total += n
        committed_at.append((t, total))
    worst = 0
    for t, i in accepted:
        done = max([c for ct, c in committed_at if ct <= t], default=0)
        worst = max(worst, i + 1 - done)
    bound = s.batch_size * (s.queue_batches + s.coalesce_batches + 1)
    assert worst <= bound, f"{worst} records in flight, bound {bound}"
    # and the source really waited for the slow writes: its last record came long after its first
    assert accepted[-1][0] - accepted[0][0] > (len(events) - s.queue_batches - 2) * 0.02 * 0.8


class GateSink(RecordingSink):
    gate: asyncio.Event | None = None
    entered: asyncio.Event | None = None

    async def write(self, stream, records):
        GateSink.entered.set()
        await GateSink.gate.wait()
        await super().write(stream, records)


def test_written_counts_only_after_the_write_returned():
    spec = SinkSpec(name="gate", factory=GateSink, description="", plugin="test", supports_dead_letters=True)
    engine = make_engine(
        [trade_payload(i) for i in range(50)], sink_spec=spec, source_options={"forever": True},
        settings=EngineSettings(batch_size=50, linger_ms=10),
    )

    async def main():
        GateSink.gate, GateSink.entered = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(engine.run())
        await asyncio.wait_for(GateSink.entered.wait(), 5)
        await asyncio.sleep(0.6)  # several metric pushes
        before = written(engine)
        depth = engine.metrics.value("tickwire_queue_depth", sink="rec")
        GateSink.gate.set()
        engine.stop()
        await task
        return before, depth

    before, depth = asyncio.run(main())
    assert before == 0 and depth == 50
    assert written(engine) == 50


def test_failing_write_is_retried_with_names_in_the_log_and_nothing_is_lost():
    engine = make_engine([trade_payload(i) for i in range(250)], sink_options={"fail_first": 3})
    with capture_logs() as logs:
        sink = run(engine)
    assert sorted(r["trade_id"] for r in sink.records) == list(range(250))
    assert sink.attempts == len(sink.batches) + 3  # every write once, plus the three failures
    retries = [e for e in logs if "retrying in" in e["event"]]
    assert len(retries) == 3
    assert retries[0]["event"].startswith("sink 'rec' (plugin testing), stream 'trade': database is locked; retrying in 0.01s")
    assert written(engine) == 250


class InFlightSink(RecordingSink):
    """Declares max_in_flight = 3; each write takes a while, so writes overlap."""

    max_in_flight = 3
    active = 0
    peak = 0
    started: list[int] = []

    async def write(self, stream, records):
        InFlightSink.started.append(records[0]["trade_id"])
        InFlightSink.active += 1
        InFlightSink.peak = max(InFlightSink.peak, InFlightSink.active)
        try:
            # later writes finish first now and then: order of completion is not order of start
            await asyncio.sleep(0.03 if records[0]["trade_id"] % 200 else 0.06)
            await super().write(stream, records)
        finally:
            InFlightSink.active -= 1


def test_a_sink_with_max_in_flight_gets_concurrent_writes_started_in_order_and_shutdown_waits():
    InFlightSink.active = InFlightSink.peak = 0
    InFlightSink.started = []
    spec = SinkSpec(name="inflight", factory=InFlightSink, description="", plugin="test", supports_dead_letters=True)
    s = EngineSettings(batch_size=100, linger_ms=10_000, queue_batches=2, coalesce_batches=1)
    engine = make_engine([trade_payload(i) for i in range(2000)], sink_spec=spec, settings=s)
    sink = run(engine)  # the source ends by itself: the shutdown flush + drain must wait for all
    assert InFlightSink.peak == 3, "up to max_in_flight writes at once, never more"
    assert InFlightSink.started == list(range(0, 2000, 100)), "writes start in queue order"
    assert sorted(r["trade_id"] for r in sink.records) == list(range(2000))  # each once
    assert [r["trade_id"] for _, b in sink.batches for r in b] != list(range(2000)), "writes overlapped"
    assert InFlightSink.active == 0 and sink.closed
    assert written(engine) == 2000
    assert engine.metrics.value("tickwire_queue_depth", sink="rec") == 0


def test_stop_waits_for_the_writes_in_flight():
    InFlightSink.active = InFlightSink.peak = 0
    InFlightSink.started = []
    spec = SinkSpec(name="inflight", factory=InFlightSink, description="", plugin="test", supports_dead_letters=True)
    engine = make_engine([trade_payload(i) for i in range(300)], sink_spec=spec, source_options={"forever": True},
                         settings=EngineSettings(batch_size=100, linger_ms=10_000, queue_batches=4))
    sink = run(engine, stop_after=0.01)
    assert InFlightSink.active == 0 and sink.closed
    assert sorted(r["trade_id"] for r in sink.records) == list(range(300))
    assert written(engine) == 300


def test_a_stop_returns_within_shutdown_timeout_while_every_write_fails_and_counts_what_was_abandoned():
    """A store that is down (every write raises, retried forever): the stop still returns in
    shutdown_timeout_s, and every record received is either committed or counted as abandoned,
    per sink and stream, in Engine.abandoned, the metric and one error line."""
    engine = make_engine([trade_payload(i) for i in range(10_000)], sink_options={"fail_first": 10**9},
                         source_options={"forever": True},
                         settings=EngineSettings(batch_size=100, linger_ms=20, queue_batches=4, retry_initial_s=0.01,
                                                 retry_max_s=0.05, shutdown_timeout_s=2))

    async def main() -> float:
        task = asyncio.create_task(engine.run())
        await asyncio.sleep(0.3)
        engine.stop()
        stopped = time.monotonic()
        await asyncio.wait_for(task, 10)
        return time.monotonic() - stopped

    with capture_logs() as logs:
        took = asyncio.run(main())
    assert took <= 2.0, f"run() returned {took:.2f}s after stop(); shutdown_timeout_s is 2"
    received = engine.snapshot()["streams"]["trade"]["received"]
    assert received > 0 and written(engine) == 0
    assert engine.abandoned == {("rec", "trade"): received}
    assert engine.metrics.value("tickwire_records_abandoned_total", sink="rec", stream="trade") == received
    reports = [e for e in logs if "abandoned_total" in e]
    assert len(reports) == 1 and reports[0]["log_level"] == "error"
    assert reports[0]["abandoned"] == {"rec/trade": received}
    assert f"{received:,} records were not committed" in reports[0]["event"]
    assert RecordingSink.instances["rec"].closed
    assert engine.snapshot()["sinks"]["rec"]["pending"] == received  # the summary says the same


class HangingOpen(RecordingSink):
    async def open(self):
        await asyncio.Event().wait()


def test_a_stop_while_a_sink_is_still_opening_cancels_the_opening():
    spec = SinkSpec(name="hanging", factory=HangingOpen, description="", plugin="test", supports_dead_letters=True)
    engine = make_engine([trade_payload(0)], sink_spec=spec, settings=EngineSettings(shutdown_timeout_s=2))

    async def main() -> float:
        task = asyncio.create_task(engine.run())
        await asyncio.sleep(0.2)
        engine.stop()
        stopped = time.monotonic()
        await asyncio.wait_for(task, 10)
        return time.monotonic() - stopped

    assert asyncio.run(main()) < 2.0
    assert not engine.ready.is_set() and RecordingSink.instances["rec"].closed


def test_shutdown_timeout_default_comes_from_the_schema():
    from tickwire.framework.config_schema import BASE_SCHEMA

    assert EngineSettings().shutdown_timeout_s == BASE_SCHEMA["properties"]["engine"]["properties"]["shutdown_timeout_s"]["default"] == 15
    assert EngineSettings.from_options({"shutdown_timeout_s": 4}).shutdown_timeout_s == 4


def test_invalid_records_become_dead_letters_with_reason_and_plugin():
    good = [trade_payload(i) for i in range(10)]
    bad = dict(trade_payload(99), p="abc")
    engine = make_engine(good[:5] + [bad] + good[5:])
    sink = run(engine)
    assert len(sink.records) == 10
    (letter,) = sink.letters
    assert letter.stream == "trade" and letter.plugin == "validate"
    assert letter.reason == "field 'p' (price): 'abc' does not match decimal pattern"
    assert '"p":"abc"' in letter.raw and letter.received_at.endswith("Z")
    m = engine.metrics
    assert m.value("tickwire_messages_invalid_total", stream="trade") == 1
    assert m.value("tickwire_dead_letters_total", stream="trade") == 1
    assert m.value("tickwire_messages_received_total", stream="trade") == 11


def test_source_dead_letters_and_unknown_streams():
    engine = make_engine([trade_payload(1)], source_options={"dead_letters": [(None, "not JSON", b"{oops")]})
    engine._source_plans["test"][1]["payloads"].append(("nope", {"e": "x"}))
    sink = run(engine)
    reasons = {(d.reason, d.plugin, d.raw) for d in sink.letters}
    assert ("not JSON", "testing", "{oops") in reasons
    assert ("unknown stream 'nope'", "testing", '{"e":"x"}') in reasons
    assert engine.metrics.value("tickwire_dead_letters_total", stream="unknown") == 1


def test_a_crashing_transform_dead_letters_and_logs_once():
    def boom(stream, options):
        def fn(record):
            raise ZeroDivisionError("oops")
        return fn

    extra = {"boom": TransformSpec(name="boom", factory=boom, description="", plugin="boom-plugin")}
    engine = make_engine([trade_payload(i) for i in range(20)], stream_transforms=[("validate", {}), ("boom", {})], extra_transforms=extra)
    with capture_logs() as logs:
        sink = run(engine)
    assert len(sink.letters) == 20 and sink.letters[0].plugin == "boom"
    assert "ZeroDivisionError" in sink.letters[0].reason
    assert len([e for e in logs if "raised ZeroDivisionError" in e["event"]]) == 1


def test_stop_flushes_everything_received():
    engine = make_engine(
        [trade_payload(i) for i in range(20_000)],
        sink_options={"delay_s": 0.01},
        settings=EngineSettings(batch_size=100, linger_ms=10_000, queue_batches=3),
    )
    sink = run(engine, stop_after=0.15)
    snap = engine.snapshot()["streams"]["trade"]
    assert 0 < snap["received"] < 20_000, "stopped mid-stream"
    assert len(sink.records) == snap["received"] == written(engine)
    assert len({r["trade_id"] for r in sink.records}) == snap["received"]


def test_event_lag_is_sampled():
    engine = make_engine([trade_payload(i, event_ms=int(time.time() * 1000) - 2000) for i in range(256)])
    run(engine)
    count = engine.metrics.value("tickwire_event_lag_seconds_count", stream="trade")
    total = engine.metrics.value("tickwire_event_lag_seconds_sum", stream="trade")
    assert count == 256 // 64
    assert 1.5 < total / count < 10


def test_unknown_transform_and_bad_dead_letter_destination_fail_at_start():
    with pytest.raises(EngineError, match="stream 'trade': no transform named 'nope'"):
        make_engine([], stream_transforms=[("nope", {})])
    with pytest.raises(EngineError, match="dead-letter destination 'x'"):
        make_engine([], dead_letter="x")


def test_transform_filtering_by_returning_none():
    def drop_odd(stream, options):
        return lambda r: r if r["t"] % 2 == 0 else None

    extra = {"even": TransformSpec(name="even", factory=drop_odd, description="")}
    engine = make_engine([trade_payload(i) for i in range(10)], stream_transforms=[("even", {}), ("validate", {}), ("normalize", {})], extra_transforms=extra)
    sink = run(engine)
    assert [r["trade_id"] for r in sink.records] == [0, 2, 4, 6, 8]


def test_invalid_record_raised_from_transform_keeps_reason():
    def strict(stream, options):
        def fn(r):
            raise InvalidRecord("too strict")
        return fn

    extra = {"strict": TransformSpec(name="strict", factory=strict, description="")}
    engine = make_engine([trade_payload(1)], stream_transforms=[("validate", {}), ("strict", {})], extra_transforms=extra)
    sink = run(engine)
    assert [(d.reason, d.plugin) for d in sink.letters] == [("too strict", "strict")]


# -- real processes: `tickwire run` -------------------------------------------------------------

import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sqlite3  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

LOCAL_PLUGIN = '''
import asyncio, time
from tickwire.framework.components import SinkSpec, SourceSpec

class Counter:
    """Trades 0, 1, 2, … as fast as the engine takes them (yielding now and then)."""
    def __init__(self, name, options, ctx):
        self.stream = ctx.streams[0].name
    async def run(self, emit):
        i = 0
        while True:
            now = int(time.time() * 1000)
            await emit.record(self.stream, {"e": "trade", "E": now, "s": "BTCUSDT", "t": i, "p": f"{i}.10000000",
                                            "q": "0.00100000", "T": now, "m": bool(i % 2)}, time.time_ns())
            i += 1
            if i % 200 == 0:
                await asyncio.sleep(0.001)

class Stuck:
    supports_dead_letters = True
    def __init__(self, name, options, ctx): pass
    async def open(self): pass
    async def write(self, stream, records): await asyncio.Event().wait()
    async def write_dead_letters(self, letters): pass
    async def close(self): pass

def tickwire_register_sources(register):
    register(SourceSpec(name="counter", factory=Counter, description="test: endless trades"))

def tickwire_register_sinks(register):
    register(SinkSpec(name="stuck", factory=Stuck, description="test: never commits", supports_dead_letters=True))
'''

def write_project(tmp_path: Path, source_type: str = "counter", source_options: dict | None = None) -> Path:
    (tmp_path / "plugins.local").mkdir()
    (tmp_path / "plugins.local" / "fakes.py").write_text(LOCAL_PLUGIN)
    return write_streams_yaml(
        tmp_path / "streams.yaml",
        sources={"gen": {"type": source_type, **(source_options or {})}},
        sinks={"sqlite": {"type": "sqlite", "path": "out/tickwire.db"}, "stuck": {"type": "stuck"},
               "dead-letter-file": {"type": "jsonl", "path": "out/dead-letter.jsonl"}},
        profiles={"local": {"sinks": ["sqlite"], "dead_letter": "dead-letter-file"}, "stuck": {"sinks": ["stuck"]}},
        engine={"batch_size": 500, "linger_ms": 50},
    )


def tickwire(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tickwire.framework.cli", "-c", str(tmp_path / "streams.yaml"),
           "--plugins-dir", str(tmp_path / "plugins.local"), "run", "--metrics-port", "0", "--log-format", "json", *args]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {}), "PYTHONPATH": str(REPO)})


def summary_of(stderr: str) -> dict:
    for line in stderr.splitlines():
        if line.startswith("{") and '"summary"' in line:
            return json.loads(line)
    raise AssertionError(f"no summary in:\n{stderr[-3000:]}")


def count_rows(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return conn.execute("SELECT count(*) FROM trades").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0


def wait_for_rows(db: Path, proc: subprocess.Popen, n: int = 1, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while count_rows(db) < n:
        if proc.poll() is not None:
            raise AssertionError(f"tickwire run exited {proc.returncode}:\n{proc.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, "no rows in time"
        time.sleep(0.05)


def test_sigterm_flushes_everything_received_and_exits_0(tmp_path):
    write_project(tmp_path)
    proc = tickwire(tmp_path, "--progress-interval", "0.5")
    db = tmp_path / "out" / "tickwire.db"
    wait_for_rows(db, proc, 5000)
    time.sleep(1.0)  # at least one progress line
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    took = time.monotonic() - t0
    assert proc.returncode == 0, err[-3000:]
    assert took < 5, f"took {took:.1f}s to stop"
    received = summary_of(err)["streams"]["trade"]["received"]
    assert received > 5000
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*), min(trade_id), max(trade_id) FROM trades").fetchone() == (received, 0, received - 1)
    assert conn.execute("SELECT price FROM trades WHERE trade_id = 4321").fetchone() == ("4321.10000000",)
    assert '"progress"' in err and "SIGTERM: stopping" in err


def test_duration_stops_by_itself(tmp_path):
    write_project(tmp_path)
    proc = tickwire(tmp_path, "--duration", "1.5")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    summary = summary_of(err)
    assert summary["streams"]["trade"]["received"] == summary["streams"]["trade"]["written"]["sqlite"] > 0
    starting = [json.loads(line) for line in err.splitlines() if '"starting"' in line][0]
    assert any(d.startswith("sqlite: SQLite") and d.endswith("out/tickwire.db") for d in starting["destinations"])
    assert summary["text"][0].startswith("ran ")
    assert all(line.startswith("{") for line in err.splitlines()), "JSON logs: nothing but JSON on stderr"


def test_second_sigint_forces_exit_with_a_message(tmp_path):
    write_project(tmp_path)
    proc = tickwire(tmp_path, "--profile", "stuck")
    time.sleep(0.3)
    deadline = time.monotonic() + 30
    while '"starting"' not in (line := proc.stderr.readline()):
        assert time.monotonic() < deadline and line, "did not start"
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert proc.poll() is None, "the stuck sink keeps the first stop waiting"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130
    assert "forced exit on second SIGINT" in err and "records were not committed" in err


def test_sigterm_with_a_sink_that_never_commits_exits_3_within_the_bound(tmp_path):
    write_project(tmp_path)
    with open(tmp_path / "streams.yaml", "a") as config:
        config.write("  shutdown_timeout_s: 2\n")  # under engine:, the last section
    proc = tickwire(tmp_path, "--profile", "stuck")
    deadline = time.monotonic() + 30
    while '"starting"' not in (line := proc.stderr.readline()):
        assert time.monotonic() < deadline and line, "did not start"
    time.sleep(0.5)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    took = time.monotonic() - sent
    assert proc.returncode == 3, err[-3000:]
    assert took < 2 + 1.5, f"took {took:.1f}s; shutdown_timeout_s is 2"
    lines = assert_clean_json_log(line + err)
    report = [entry for entry in lines if "abandoned_total" in entry]
    assert len(report) == 1 and report[0]["abandoned"]["stuck/trade"] > 0


def test_unknown_profile_is_a_clear_error(tmp_path):
    write_project(tmp_path)
    proc = tickwire(tmp_path, "--profile", "nope")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "no profile 'nope'" in err


# -- end to end with the Binance source and the simulator -----------------------------------------

def run_against(simulator_proc, tmp_path: Path, *args: str) -> subprocess.Popen:
    write_project(tmp_path, "binance", {"url": simulator_proc.ws_url, "rest_url": simulator_proc.rest_url})
    return tickwire(tmp_path, *args)


def test_every_simulated_trade_exactly_once_with_exact_decimals(simulator, tmp_path):
    sim = simulator(rate=2000, symbols="BTCUSDT", malformed_every=97)
    proc = run_against(sim, tmp_path)
    db = tmp_path / "out" / "tickwire.db"
    wait_for_rows(db, proc, 4000)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]
    summary = summary_of(err)["streams"]["trade"]
    conn = sqlite3.connect(db)
    stored = conn.execute("SELECT trade_id, price, quantity, buyer_is_maker, trade_time FROM trades ORDER BY trade_id").fetchall()
    assert len(stored) == summary["written"]["sqlite"]
    ids = [r[0] for r in stored]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "no gaps, no duplicates"
    sent = {t["id"]: t for t in sim.trades("BTCUSDT", from_id=ids[0], limit=len(ids))}
    for trade_id, price, qty, maker, trade_time in stored:
        t = sent[trade_id]
        assert (price, qty, bool(maker)) == (t["price"], t["qty"], t["isBuyerMaker"])
    assert stored[0][4].endswith("Z") and len(stored[0][4]) == 24
    # malformed frames became dead letters in the local profile's JSON-lines file
    letters = [json.loads(line) for line in (tmp_path / "out" / "dead-letter.jsonl").read_text().splitlines()]
    assert letters and all({"stream", "reason", "plugin", "raw", "received_at"} <= set(d) for d in letters)
    assert sum(sim.stats()["malformed_sent"].values()) >= len(letters) > 0


def test_metrics_endpoint_on_an_automatic_port(tmp_path):
    import urllib.request

    write_project(tmp_path)
    cmd = [sys.executable, "-m", "tickwire.framework.cli", "-c", str(tmp_path / "streams.yaml"), "--plugins-dir",
           str(tmp_path / "plugins.local"), "run", "--metrics-port", "auto", "--log-format", "json"]
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        while '"starting"' not in (line := proc.stderr.readline()):
            assert line, "did not start"
        url = json.loads(line)["metrics"]
        wait_for_rows(tmp_path / "out" / "tickwire.db", proc, 1000)
        time.sleep(0.6)  # a metrics push
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
    for name in ("tickwire_messages_received_total{stream=\"trade\"}", "tickwire_messages_written_total{sink=\"sqlite\",stream=\"trade\"}",
                 "tickwire_batch_commit_seconds_bucket", "tickwire_event_lag_seconds_count", "tickwire_queue_depth{sink=\"sqlite\"}",
                 "process_resident_memory_bytes"):
        assert name in text, name


def test_without_a_dead_letter_destination_only_a_few_are_logged():
    bad = [dict(trade_payload(i), p="x") for i in range(50)]
    engine = make_engine(bad, dead_letter=None)
    with capture_logs() as logs:
        run(engine)
    assert len([e for e in logs if e["event"].startswith("dead letter")]) == 5
    assert engine.metrics.value("tickwire_dead_letters_total", stream="trade") == 50


def test_a_sink_that_cannot_open_fails_the_run_with_its_names(tmp_path):
    write_project(tmp_path)
    cfg = tmp_path / "streams.yaml"
    cfg.write_text(cfg.read_text().replace("path: out/tickwire.db", "path: /proc/no/such/dir/t.db"))
    proc = tickwire(tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "sink 'sqlite' (plugin sqlite-sink): cannot open:" in err


def test_dropped_connections_are_refilled_and_stored_exactly_once(simulator, tmp_path):
    """The simulator cuts the connection every 700 messages; the source reconnects and fills the
    gaps over REST; SQLite ends up with every trade id once, prices exactly as sent."""
    sim = simulator(rate=1500, symbols="BTCUSDT", drop_every=700)
    proc = run_against(sim, tmp_path)
    db = tmp_path / "out" / "tickwire.db"
    wait_for_rows(db, proc, 3000)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]
    assert sim.stats()["drops"] >= 2
    conn = sqlite3.connect(db)
    stored = conn.execute("SELECT trade_id, price, quantity FROM trades ORDER BY trade_id").fetchall()
    ids = [r[0] for r in stored]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "contiguous: every gap filled, nothing twice"
    sent = {t["id"]: (t["price"], t["qty"]) for t in sim.trades("BTCUSDT", from_id=ids[0], limit=len(ids))}
    assert all(sent[i] == (p, q) for i, p, q in stored)
