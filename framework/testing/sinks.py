"""The sink conformance suite: the checks every sink, built-in or not, must pass.

A sink opens; ``write`` returns only once the batch is committed (returning is the
acknowledgement); replaying a batch does not duplicate rows (if the sink is ``idempotent``);
dead letters are stored with their reason (if ``supports_dead_letters``); ``close`` releases
everything and the data survives a reopen. Point it at a sink with a :class:`SinkCase`, then
either subclass :class:`SinkConformance` (pytest) or ``await check_sink_conformance(...)``.
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from tickwire.framework.components import DeadLetter, RunContext, SinkSpec
from tickwire.framework.schemas import StreamSpec
from tickwire.framework.testing.builders import await_me_maybe, normalized, stream_spec, trade_payload

SINK_METHODS = ("open", "write", "write_dead_letters", "close")


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


async def check_declares_the_contract(case: SinkCase) -> None:
    """The factory builds an object with the Sink members, each a coroutine function."""
    sink, _ = case.open_sink()
    for member in SINK_METHODS:
        method = getattr(sink, member, None)
        assert method is not None, f"the sink has no {member}() (the Sink protocol needs {', '.join(SINK_METHODS)})"
        assert inspect.iscoroutinefunction(method), f"{member}() must be a coroutine function (async def)"
    assert isinstance(getattr(sink, "supports_dead_letters", False), bool), "supports_dead_letters must be a bool"


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
                assert (d.get("stream"), d.get("plugin")) == (letter.stream, letter.plugin), (
                    f"dead letter {letter.reason!r} stored with stream, plugin {d.get('stream')!r}, {d.get('plugin')!r}: "
                    f"expected {letter.stream!r}, {letter.plugin!r}")
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


CHECKS = (check_declares_the_contract, check_open_write_close, check_replay_idempotent, check_dead_letters, check_reopen_keeps_data)


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

    def test_declares_the_contract(self, sink_case):
        asyncio.run(check_declares_the_contract(sink_case))

    def test_open_write_close(self, sink_case):
        asyncio.run(check_open_write_close(sink_case))

    def test_replay_is_idempotent(self, sink_case):
        asyncio.run(check_replay_idempotent(sink_case))

    def test_dead_letters(self, sink_case):
        asyncio.run(check_dead_letters(sink_case))

    def test_reopen_keeps_data(self, sink_case):
        asyncio.run(check_reopen_keeps_data(sink_case))
