"""Engine logic with fake sources and sinks: batching, backpressure, acknowledgements, retries,
dead letters, shutdown. The real-process tests (SIGTERM, `tickwire run`) are at the bottom."""

from __future__ import annotations

import asyncio
import time

import pytest
from structlog.testing import capture_logs

import plugins.normalize
import plugins.validate
from framework.components import InvalidRecord, SinkSpec, TransformSpec
from framework.engine import Engine, EngineError, EngineSettings
from framework.testing import LIST_SOURCE, RECORDING_SINK, RecordingSink, stream_spec, trade_payload


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
    engine = make_engine([trade_payload(i) for i in range(1000)], settings=EngineSettings(batch_size=100, linger_ms=60_000))
    sink = run(engine)
    assert [len(b) for _, b in sink.batches] == [100] * 10


def test_batches_by_time_when_the_source_is_quiet():
    events: list = []
    engine = make_engine(
        [trade_payload(i) for i in range(5)],
        sink_options={"events": events},
        source_options={"forever": True},
        settings=EngineSettings(batch_size=1000, linger_ms=50),
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


def test_backpressure_slows_the_source_and_bounds_memory():
    events: list = []
    accepted: list = []
    s = EngineSettings(batch_size=10, linger_ms=10_000, queue_batches=2)
    engine = make_engine(
        [trade_payload(i) for i in range(300)],
        sink_options={"delay_s": 0.02, "events": events},
        source_options={"log": accepted},
        settings=s,
    )
    t0 = time.monotonic()
    run(engine)
    elapsed = time.monotonic() - t0
    assert elapsed >= 30 * 0.02 * 0.9, "30 writes of 20 ms cannot finish sooner"
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
    bound = s.batch_size * (s.queue_batches + 2)
    assert worst <= bound, f"{worst} records in flight, bound {bound}"
    # and the source really waited: its last record came long after its first
    assert accepted[-1][0] - accepted[0][0] > 0.3


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
    assert sink.attempts == 3 + 3  # three batches, three failures
    retries = [e for e in logs if "retrying in" in e["event"]]
    assert len(retries) == 3
    assert retries[0]["event"].startswith("sink 'rec' (plugin testing), stream 'trade': database is locked; retrying in 0.01s")
    assert written(engine) == 250


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
