"""What a sink raises decides what the engine does with the batch (framework/components.py):
TransientError is retried, BadRecords go to the dead letters with the reason, PermanentError
stops the run within the shutdown bound with a message naming sink, plugin and stream. And the
fused validate+normalize names its reason itself: a rejected record runs no chain twice."""

from __future__ import annotations

import asyncio
import time

import pytest
from structlog.testing import capture_logs

from tickwire.framework.components import BadRecords, InvalidRecord, PermanentError, SinkSpec, TransientError
from tickwire.framework.engine import Engine, EngineError, EngineSettings
from tickwire.framework.testing import LIST_SOURCE, RECORDING_SINK, RecordingSink, stream_spec, trade_payload
from tickwire.plugins.normalize import make_normalizer
from tickwire.plugins.validate import make_validator
from tickwire.plugins import normalize as normalize_plugin
from tickwire.plugins import validate as validate_plugin


def transforms() -> dict:
    found = []
    validate_plugin.tickwire_register_transforms(register=found.append)
    normalize_plugin.tickwire_register_transforms(register=found.append)
    return {t.name: t for t in found}


class FailingSink(RecordingSink):
    """A RecordingSink whose writes of stream records raise ``options["raise"]`` the first
    ``options["times"]`` times (every time when absent)."""

    async def write(self, stream, records):
        self.attempts += 1
        times = self.options.get("times")
        if times is None or self.attempts <= times:
            raise self.options["raise"]
        self.batches.append((stream.name, list(records)))


FAILING = SinkSpec(name="failing", factory=FailingSink, description="", plugin="acme-sink", supports_dead_letters=True)


def engine_with(failing_options: dict, payloads: int = 250, forever: bool = False, shutdown_timeout_s: float = 15) -> Engine:
    """Stream ``trade`` writes to ``bad`` (a FailingSink) and ``good``; dead letters go to ``good``."""
    return Engine(
        streams=[stream_spec("trade", sinks=["bad", "good"])],
        sources={"test": (LIST_SOURCE, {"payloads": [("trade", trade_payload(i)) for i in range(payloads)], "forever": forever})},
        sinks={"bad": (FAILING, failing_options), "good": (RECORDING_SINK, {})},
        transforms=transforms(),
        dead_letter="good",
        settings=EngineSettings(batch_size=100, linger_ms=20, retry_initial_s=0.01, coalesce_batches=1,
                                shutdown_timeout_s=shutdown_timeout_s),
    )


def run(engine: Engine, timeout: float = 20) -> None:
    asyncio.run(asyncio.wait_for(engine.run(), timeout))


def test_a_transient_error_is_retried_until_the_write_succeeds():
    engine = engine_with({"raise": TransientError("connection reset"), "times": 3})
    with capture_logs() as logs:
        run(engine)
    bad = RecordingSink.instances["bad"]
    assert [r["trade_id"] for r in bad.records] == list(range(250))
    retries = [e["event"] for e in logs if "retrying in" in e["event"]]
    assert retries[0] == "sink 'bad' (plugin acme-sink), stream 'trade': connection reset; retrying in 0.01s"
    assert retries[1].endswith("retrying in 0.02s")  # the delay doubles
    assert engine.abandoned == {}


def test_bad_records_go_to_the_dead_letters_with_the_reason_and_the_run_goes_on():
    engine = engine_with({"raise": BadRecords("value too long for column price"), "times": 1}, payloads=250)
    run(engine)
    bad, good = RecordingSink.instances["bad"], RecordingSink.instances["good"]
    first_batch = 100
    assert [r["trade_id"] for r in bad.records] == list(range(first_batch, 250))  # the others were written
    assert len(good.records) == 250  # the other sink got everything
    assert len(good.letters) == first_batch
    letter = good.letters[0]
    assert letter.stream == "trade" and letter.plugin == "failing:bad"
    assert letter.reason == "sink 'bad' (plugin acme-sink) refused the record: value too long for column price"
    assert '"trade_id":0' in letter.raw
    assert engine.metrics.value("tickwire_dead_letters_total", stream="trade") == first_batch
    assert engine.metrics.value("tickwire_messages_written_total", stream="trade", sink="bad") == 150
    assert engine.abandoned == {}


def test_a_permanent_error_stops_the_run_within_the_bound_naming_sink_plugin_and_stream():
    engine = engine_with({"raise": PermanentError("table public.trades does not exist")}, payloads=1000, forever=True,
                         shutdown_timeout_s=3)
    started = time.monotonic()
    with capture_logs() as logs, pytest.raises(EngineError) as failure:
        run(engine)
    assert time.monotonic() - started < 3 + 1
    assert str(failure.value) == "sink 'bad' (plugin acme-sink), stream 'trade': table public.trades does not exist"
    bad, good = RecordingSink.instances["bad"], RecordingSink.instances["good"]
    assert bad.attempts == 1  # never retried
    assert len(good.records) == 1000 and good.closed  # the other sink was flushed and closed
    assert engine.abandoned == {("bad", "trade"): 1000}  # what the failed sink never committed
    assert any("retrying cannot fix this: stopping the run" in e["event"] for e in logs)


def test_a_permanent_error_at_open_is_a_start_up_error():
    class Refusing(RecordingSink):
        async def open(self):
            raise PermanentError("password authentication failed")

    spec = SinkSpec(name="refusing", factory=Refusing, description="", plugin="acme-sink", supports_dead_letters=True)
    engine = Engine(streams=[stream_spec("trade", sinks=["r"])], sources={"test": (LIST_SOURCE, {})},
                    sinks={"r": (spec, {})}, transforms=transforms())
    with pytest.raises(EngineError, match=r"sink 'r' \(plugin acme-sink\): cannot open: password authentication failed"):
        run(engine)


# -- the fused validate+normalize names its reason ----------------------------------------------


def test_the_fused_function_rejects_with_the_reason_validate_gives():
    stream = stream_spec("trade")
    validate, normalize = make_validator(stream, {}), make_normalizer(stream, {})
    fused = validate.fuse(normalize)
    for payload in ({**trade_payload(1), "p": "abc"}, {k: v for k, v in trade_payload(1).items() if k != "s"}, "not a dict"):
        with pytest.raises(InvalidRecord) as alone:
            validate(payload)
        with pytest.raises(InvalidRecord) as together:
            fused(payload)
        assert (together.value.reason, together.value.step) == (alone.value.reason, 0)


def test_a_record_the_fused_step_rejects_runs_no_transform_again():
    """The engine's chain is not run a second time to learn the reason: counting calls."""
    calls = {"validate": 0, "normalize": 0}
    engine = Engine(streams=[stream_spec("trade", sinks=["rec"])], sources={}, sinks={"rec": (RECORDING_SINK, {})},
                    transforms=transforms(), dead_letter="rec")
    route = engine._routes["trade"]
    assert route.fused is not None
    for i, name in enumerate(route.chain_names):
        step = route.chain[i]
        route.chain = route.chain[:i] + ((lambda r, step=step, name=name: calls.__setitem__(name, calls[name] + 1) or step(r)),) + route.chain[i + 1:]
    emitter = engine.emitter("test", "testing")

    async def main():
        pending = emitter.record_nowait("trade", {**trade_payload(1), "p": "abc"}, time.time_ns())
        await pending

    asyncio.run(main())
    assert calls == {"validate": 0, "normalize": 0}
    assert route.invalid == 1 and engine.dead_letters.buffer[0].plugin == "validate"
    assert "does not match decimal pattern" in engine.dead_letters.buffer[0].reason


# -- the built-in sinks classify their errors ---------------------------------------------------


def test_sqlite_retries_a_full_disk_or_a_read_only_file_and_dead_letters_refused_records(tmp_path):
    import sqlite3

    from tickwire.plugins.sqlite_sink import classified

    path = tmp_path / "t.db"
    full = classified(sqlite3.OperationalError("database or disk is full"), path)
    assert type(full) is TransientError and str(full) == f"database or disk is full ({path}: retried until the disk has space)"
    readonly = classified(sqlite3.OperationalError("attempt to write a readonly database"), path)
    assert type(readonly) is TransientError and "retried until it is writable" in str(readonly)
    locked = classified(sqlite3.OperationalError("database is locked"), path)
    assert type(locked) is TransientError and str(locked) == "database is locked"
    refused = classified(sqlite3.IntegrityError("NOT NULL constraint failed: trades.price"), path)
    assert type(refused) is BadRecords and refused.reason == "SQLite refused the batch: NOT NULL constraint failed: trades.price"


def test_postgres_credentials_and_missing_tables_stop_the_run():
    from tickwire.plugins.postgres_sink import PostgresSinkError

    assert issubclass(PostgresSinkError, PermanentError)


def test_a_postgres_table_dropped_while_running_stops_the_run_with_sink_and_stream(postgres_tables):
    """Real PostgreSQL: the table goes away after open; the next write is a PermanentError, the
    run stops within its bound and fails naming the sink and the stream; what was committed
    before stays."""
    import psycopg

    from tickwire.plugins import postgres_sink

    specs: list = []
    postgres_sink.tickwire_register_sinks(register=specs.append)
    payloads = [("trade", trade_payload(i)) for i in range(200)]
    engine = Engine(
        streams=[stream_spec("trade", table="trades", sinks=["pg"])],
        sources={"test": (LIST_SOURCE, {"payloads": payloads, "delay_s": 0.01, "forever": True})},
        sinks={"pg": (specs[0], {"dsn": postgres_tables.writer_dsn})},
        transforms=transforms(),
        settings=EngineSettings(batch_size=10, linger_ms=20, shutdown_timeout_s=4),
    )

    def drop_trades() -> None:
        with psycopg.connect(postgres_tables.dsn, autocommit=True) as admin:
            admin.execute("DROP TABLE trades")

    async def main():
        task = asyncio.create_task(engine.run())
        await engine.ready.wait()
        await asyncio.sleep(0.3)  # some batches committed
        await asyncio.to_thread(drop_trades)
        started = time.monotonic()
        with pytest.raises(EngineError) as failure:
            await asyncio.wait_for(task, 15)
        return failure.value, time.monotonic() - started

    failure, took = asyncio.run(main())
    assert took < 4 + 1
    assert str(failure).startswith("sink 'pg' (plugin postgres), stream 'trade': sink 'pg' (postgres), stream 'trade': ")
    assert "does not exist" in str(failure) and "tickwire db migrate" in str(failure)
    written = engine.metrics.value("tickwire_messages_written_total", stream="trade", sink="pg")
    received = engine.snapshot()["streams"]["trade"]["received"]
    assert 0 < written < received and sum(engine.abandoned.values()) == received - written  # every record accounted for
