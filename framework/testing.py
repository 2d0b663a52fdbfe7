"""Test helpers for tickwire and for third-party plugin authors.

Sink conformance — every sink (built-in or not) should pass the same checks: it opens, a write
returns only once committed, replays are idempotent (if the sink claims so), dead letters are
accepted (if ``supports_dead_letters``), close releases everything and the data survives a
reopen. Two ways to run them::

    # 1. pytest: subclass and provide a `sink_case` fixture
    from tickwire.framework.testing import SinkCase, SinkConformance, make_context

    class TestMySink(SinkConformance):
        @pytest.fixture
        def sink_case(self, tmp_path):
            return SinkCase(spec=MY_SPEC, options={...},
                            ctx_factory=lambda streams: make_context(streams, tmp_path),
                            read_back=my_read_back)      # optional: (case, stream) -> [dict]

    # 2. anywhere: await check_sink_conformance(spec, options, ctx_factory, read_back=...)

Also here: :func:`stream_spec` (a StreamSpec from a schema file), :func:`trade_payload` (a
Binance-shaped trade), :class:`ListSource` and :class:`RecordingSink` (fakes for engine tests),
:func:`assert_clean_json_log` (fault tests: stderr of `tickwire run --log-format json`).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from tickwire.framework.components import DeadLetter, RunContext, SinkSpec, SourceSpec
from tickwire.framework.metrics import Metrics
from tickwire.framework.schemas import StreamSpec, load_schema, shipped_schemas

TRADE_EPOCH_MS = 1672531200000  # 2023-01-01T00:00:00Z


# -- building blocks ------------------------------------------------------------------------------


def stream_spec(
    name: str = "trade",
    schema: str | Path = "trade.schema.json",
    *,
    table: str | None = None,
    symbols: list[str] | None = None,
    sinks: list[str] | None = None,
    transforms: list[tuple[str, dict]] | None = None,
    source: str = "test",
) -> StreamSpec:
    """A :class:`StreamSpec` from a schema file (a name is looked up in the schemas tickwire ships)."""
    path = Path(schema)
    if not path.is_absolute() and not path.exists():
        path = Path(shipped_schemas() / str(path))
    return StreamSpec(
        name=name,
        source=source,
        channel="{symbol}@" + name,
        symbols=symbols or ["BTCUSDT"],
        schema_path=path,
        schema=load_schema(path),
        table=table or {"trade": "trades"}.get(name, name),
        topic=None,
        transforms=list(transforms) if transforms is not None else [("validate", {}), ("normalize", {})],
        sinks=list(sinks or []),
    )


def trade_payload(i: int, symbol: str = "BTCUSDT", *, price: str | None = None, quantity: str | None = None, event_ms: int | None = None) -> dict:
    """A Binance trade event; trade id ``i``. Prices carry trailing zeros and 8 decimals, like Binance."""
    t = event_ms if event_ms is not None else TRADE_EPOCH_MS + i
    return {
        "e": "trade",
        "E": t + 1,
        "s": symbol,
        "t": i,
        "p": price or f"{16500 + (i % 1000) / 100:.8f}",
        "q": quantity or f"{0.001 * (1 + i % 7):.8f}",
        "T": t,
        "m": bool(i % 2),
        "M": True,
    }


def normalized(stream: StreamSpec, payloads: list[dict]) -> list[dict]:
    """Payloads through the built-in validate → normalize chain."""
    from tickwire.plugins.normalize import make_normalizer
    from tickwire.plugins.validate import make_validator

    v, n = make_validator(stream, {}), make_normalizer(stream, {})
    return [n(v(p)) for p in payloads]


class _Obj:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def make_context(streams: list[StreamSpec], config_dir: str | Path = ".", *, metrics: Metrics | None = None, config: Any = None, log: Any = None) -> RunContext:
    """A :class:`RunContext` for a component under test (fresh metrics registry)."""
    from tickwire.framework.logs import get_logger

    return RunContext(
        config=config,
        streams=list(streams),
        metrics=metrics or Metrics(),
        log=log or get_logger(component="test"),
        config_dir=Path(config_dir),
    )


async def await_me_maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


# -- fakes for engine tests -------------------------------------------------------------------------


class ListSource:
    """Emits ``options["payloads"]`` — a list of ``(stream, payload)`` — then returns.

    ``options["delay_s"]`` sleeps between records; ``options["forever"]`` keeps the source
    alive (until cancelled) after the list; ``options["log"]`` (a list) gets
    ``(monotonic, index)`` after each record was accepted, to observe backpressure."""

    def __init__(self, name: str, options: dict, ctx: RunContext):
        self.name = name
        self.options = options
        self.ctx = ctx
        self.emitted = 0

    async def run(self, emit) -> None:
        delay = self.options.get("delay_s", 0)
        log = self.options.get("log")
        for i, (stream, payload) in enumerate(self.options.get("payloads", [])):
            await emit.record(stream, payload, time.time_ns())
            self.emitted += 1
            if log is not None:
                log.append((time.monotonic(), i))
            if delay:
                await asyncio.sleep(delay)
        for stream, reason, raw in self.options.get("dead_letters", []):
            await emit.dead_letter(stream, reason, raw)
        if self.options.get("forever"):
            await asyncio.Event().wait()


LIST_SOURCE = SourceSpec(name="list", factory=ListSource, description="test source: a list of payloads", plugin="testing")


class RecordingSink:
    """Keeps what it was given in ``self.batches`` / ``self.letters`` (also reachable as
    ``RecordingSink.instances[name]``). Options: ``delay_s`` per write, ``fail_first`` (that
    many writes raise), ``events`` (a list that gets ``("write", monotonic, n)`` per commit)."""

    supports_dead_letters = True
    instances: dict[str, RecordingSink] = {}

    def __init__(self, name: str, options: dict, ctx: RunContext):
        self.name = name
        self.options = options
        self.ctx = ctx
        self.batches: list[tuple[str, list[dict]]] = []
        self.letters: list[DeadLetter] = []
        self.opened = self.closed = False
        self.attempts = 0
        self.failures_left = int(options.get("fail_first", 0))
        RecordingSink.instances[name] = self

    @property
    def records(self) -> list[dict]:
        return [r for _, batch in self.batches for r in batch]

    async def open(self) -> None:
        self.opened = True

    async def write(self, stream: StreamSpec, records: list[dict]) -> None:
        self.attempts += 1
        if self.options.get("delay_s"):
            await asyncio.sleep(self.options["delay_s"])
        if self.failures_left > 0:
            self.failures_left -= 1
            raise ConnectionError("database is locked")
        self.batches.append((stream.name, list(records)))
        if "events" in self.options:
            self.options["events"].append(("write", time.monotonic(), len(records)))

    async def write_dead_letters(self, letters: list[DeadLetter]) -> None:
        self.letters.extend(letters)

    async def close(self) -> None:
        self.closed = True


RECORDING_SINK = SinkSpec(
    name="recording", factory=RecordingSink, description="test sink: keeps batches in memory", plugin="testing", supports_dead_letters=True
)


# -- sink conformance -------------------------------------------------------------------------------


@dataclass
class SinkCase:
    """What the conformance checks need to know about a sink under test.

    ``read_back(case, stream)`` returns the stored records of ``stream`` as dicts keyed by
    column name (sync or async); without it, only the protocol is checked. ``idempotent``:
    whether replaying a batch must not duplicate rows (default: the sink's ``idempotent``
    attribute, else True). ``read_dead_letters(case)`` returns stored dead letters as dicts
    with ``stream``, ``reason``, ``plugin`` and ``raw``/``payload``."""

    spec: SinkSpec
    options: dict
    ctx_factory: Callable[[list[StreamSpec]], RunContext]
    read_back: Callable[[SinkCase, StreamSpec], list[dict] | Awaitable[list[dict]]] | None = None
    read_dead_letters: Callable[[SinkCase], list[dict] | Awaitable[list[dict]]] | None = None
    idempotent: bool | None = None
    streams: list[StreamSpec] = field(default_factory=lambda: [stream_spec("trade")])
    name: str = "under-test"
    n: int = 250

    def records(self, stream: StreamSpec, start: int = 0, n: int | None = None) -> list[dict]:
        n = self.n if n is None else n
        payloads = [trade_payload(i, price=f"{i}.{i:08d}0", quantity="0.00000001") for i in range(start, start + n)]
        payloads[0]["p"] = "123456789012345678.123456789012345678"  # beyond float precision
        return normalized(stream, payloads)

    def open_sink(self):
        ctx = self.ctx_factory(self.streams)
        return self.spec.factory(self.name, dict(self.options), ctx), ctx


def _key(stream: StreamSpec, record: dict) -> tuple:
    return tuple(record[k] for k in stream.primary_key)


async def _stored(case: SinkCase, stream: StreamSpec) -> list[dict]:
    return list(await await_me_maybe(case.read_back(case, stream)))


def _assert_same(stream: StreamSpec, expected: list[dict], stored: list[dict], what: str) -> None:
    by_key = {}
    for row in stored:
        key = _key(stream, row)
        assert key not in by_key, f"{what}: duplicate row for key {key}"
        by_key[key] = row
    assert len(by_key) == len(expected), f"{what}: {len(by_key)} rows stored, expected {len(expected)}"
    for rec in expected:
        row = by_key.get(_key(stream, rec))
        assert row is not None, f"{what}: row {_key(stream, rec)} missing"
        for col, value in rec.items():
            if col in row and col != "ingested_at":  # set by normalize at ingest: differs per call
                got = row[col]
                if isinstance(value, bool):
                    got = bool(got) if got in (0, 1) else got
                assert got == value and type(got) is type(value), (
                    f"{what}: {stream.table}.{col} of {_key(stream, rec)}: stored {got!r}, expected {value!r} (exactly)"
                )


async def check_open_write_close(case: SinkCase) -> None:
    stream = case.streams[0]
    sink, _ = case.open_sink()
    await sink.open()
    try:
        records = case.records(stream)
        result = await sink.write(stream, records[: case.n // 2])
        assert result is None, "Sink.write returns None (returning is the acknowledgement)"
        if case.read_back:  # acknowledged means committed: visible right after write returned
            _assert_same(stream, records[: case.n // 2], await _stored(case, stream), "after the first write")
        await sink.write(stream, records[case.n // 2 :])
        if case.read_back:
            _assert_same(stream, records, await _stored(case, stream), "after the second write")
    finally:
        await sink.close()


async def check_replay_idempotent(case: SinkCase) -> None:
    stream = case.streams[0]
    idempotent = case.idempotent
    if idempotent is None:
        idempotent = getattr(case.spec.factory, "idempotent", True)
    if not idempotent or case.read_back is None:
        return
    sink, _ = case.open_sink()
    await sink.open()
    try:
        first = case.records(stream, 0, case.n)
        await sink.write(stream, first)
        await sink.write(stream, first)  # a full replay
        overlap = case.records(stream, case.n // 2, case.n)  # half old, half new
        await sink.write(stream, overlap)
        _assert_same(stream, case.records(stream, 0, case.n + case.n // 2), await _stored(case, stream), "after replays")
    finally:
        await sink.close()


async def check_dead_letters(case: SinkCase) -> None:
    sink, _ = case.open_sink()
    if not case.spec.supports_dead_letters:
        assert not getattr(sink, "supports_dead_letters", False), "spec and sink disagree on supports_dead_letters"
        return
    assert getattr(sink, "supports_dead_letters", True), "spec says supports_dead_letters but the sink says not"
    await sink.open()
    letters = [
        DeadLetter("trade", "field 'p' (price): 'abc' does not match decimal pattern", "validate", '{"e":"trade","p":"abc"}', "2023-01-01T00:00:00.136Z"),
        DeadLetter(None, "not JSON", "binance", "{oops", "2023-01-01T00:00:01.000Z"),
    ]
    try:
        assert await sink.write_dead_letters(letters) is None
        if case.read_dead_letters:
            stored = list(await await_me_maybe(case.read_dead_letters(case)))
            assert len(stored) >= len(letters), f"{len(stored)} dead letters stored, expected {len(letters)}"
            for letter in letters:
                match = [d for d in stored if d.get("reason") == letter.reason]
                assert match, f"dead letter {letter.reason!r} not stored"
                d = match[0]
                assert d.get("stream") == letter.stream and d.get("plugin") == letter.plugin
                assert d.get("raw", d.get("payload")) == letter.raw, "the raw payload must be stored unchanged"
    finally:
        await sink.close()


async def check_reopen_keeps_data(case: SinkCase) -> None:
    if case.read_back is None:
        return
    stream = case.streams[0]
    sink, _ = case.open_sink()
    await sink.open()
    records = case.records(stream)
    try:
        await sink.write(stream, records)
    finally:
        await sink.close()
    sink, _ = case.open_sink()
    await sink.open()  # a second open of existing storage must work (tables exist, …)
    try:
        _assert_same(stream, records, await _stored(case, stream), "after close and reopen")
    finally:
        await sink.close()


CHECKS = (check_open_write_close, check_replay_idempotent, check_dead_letters, check_reopen_keeps_data)


async def check_sink_conformance(
    spec: SinkSpec,
    options: dict,
    ctx_factory: Callable[[list[StreamSpec]], RunContext],
    *,
    read_back=None,
    read_dead_letters=None,
    idempotent: bool | None = None,
    fresh: Callable[[], None] | None = None,
) -> None:
    """Run every check; ``fresh()`` (optional) empties the storage between checks. Raises
    AssertionError naming the check and the problem."""
    case = SinkCase(spec, options, ctx_factory, read_back, read_dead_letters, idempotent)
    for check in CHECKS:
        if fresh:
            await await_me_maybe(fresh())
        try:
            await check(case)
        except AssertionError as exc:
            raise AssertionError(f"sink {spec.name!r} (plugin {spec.plugin or '?'}) fails {check.__name__}: {exc}") from exc


class SinkConformance:
    """pytest mix-in: subclass it and define a ``sink_case`` fixture returning a :class:`SinkCase`
    whose storage is empty (e.g. built on ``tmp_path``)."""

    def test_open_write_close(self, sink_case):
        asyncio.run(check_open_write_close(sink_case))

    def test_replay_is_idempotent(self, sink_case):
        asyncio.run(check_replay_idempotent(sink_case))

    def test_dead_letters(self, sink_case):
        asyncio.run(check_dead_letters(sink_case))

    def test_reopen_keeps_data(self, sink_case):
        asyncio.run(check_reopen_keeps_data(sink_case))


def assert_clean_json_log(text: str) -> list[dict]:
    """What a fault test asserts on the captured stderr of ``tickwire run --log-format json``:
    every line is one JSON object, none carries a traceback or an asyncio "exception was never
    retrieved". Returns the parsed lines."""
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            lines.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"stderr line {number} is not JSON: {line[:300]!r}") from None
        assert "Traceback" not in line, f"stderr line {number} carries a traceback: {line[:1000]}"
        assert "never retrieved" not in line, f"stderr line {number}: {line[:1000]}"
    return lines
