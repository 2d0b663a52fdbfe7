"""The shared sink conformance checks (tickwire.framework.testing) against the built-in sinks."""

from __future__ import annotations

import json
import sqlite3

import pytest

from tickwire.framework.testing import SinkCase, SinkConformance, check_sink_conformance, make_context
from tickwire.plugins.jsonl_sink import JsonlSink
from tickwire.plugins.sqlite_sink import SQLiteSink


def _spec(module):
    specs = []
    module.tickwire_register_sinks(register=specs.append)
    return specs[0]


def sqlite_rows(case: SinkCase, stream):
    path = case.ctx_factory([]).config_dir / case.options["path"]
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f"SELECT * FROM {stream.table}")]
    finally:
        conn.close()


def sqlite_dead_letters(case: SinkCase):
    path = case.ctx_factory([]).config_dir / case.options["path"]
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM dead_letters")]
    finally:
        conn.close()


def jsonl_lines(case: SinkCase):
    path = case.ctx_factory([]).config_dir / case.options["path"]
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def jsonl_rows(case: SinkCase, stream):
    return [line["record"] for line in jsonl_lines(case) if "record" in line and line["stream"] == stream.name]


def jsonl_dead_letters(case: SinkCase):
    return [line for line in jsonl_lines(case) if "reason" in line]


class TestSQLiteConformance(SinkConformance):
    @pytest.fixture
    def sink_case(self, tmp_path):
        import tickwire.plugins.sqlite_sink as m

        return SinkCase(
            spec=_spec(m),
            options={"path": "sub/dir/test.db"},
            ctx_factory=lambda streams: make_context(streams, tmp_path),
            read_back=sqlite_rows,
            read_dead_letters=sqlite_dead_letters,
        )


class TestJsonlConformance(SinkConformance):
    @pytest.fixture
    def sink_case(self, tmp_path):
        import tickwire.plugins.jsonl_sink as m

        return SinkCase(
            spec=_spec(m),
            options={"path": "out/records.jsonl"},
            ctx_factory=lambda streams: make_context(streams, tmp_path),
            read_back=jsonl_rows,
            read_dead_letters=jsonl_dead_letters,
        )


def test_check_sink_conformance_function(tmp_path):
    """The one-call form, as a third-party package would use it outside a pytest class."""
    import asyncio

    import tickwire.plugins.sqlite_sink as m

    counter = iter(range(100))
    options = {"path": "x.db"}

    def fresh():
        options["path"] = f"db{next(counter)}.db"

    asyncio.run(
        check_sink_conformance(
            _spec(m), options, lambda streams: make_context(streams, tmp_path),
            read_back=sqlite_rows, read_dead_letters=sqlite_dead_letters, fresh=fresh,
        )
    )


def test_conformance_catches_a_broken_sink(tmp_path):
    """A sink that acknowledges before committing (drops the last record) is reported."""
    import asyncio

    import tickwire.plugins.sqlite_sink as m

    class Lossy(SQLiteSink):
        async def write(self, stream, records):
            await super().write(stream, records[:-1])

    spec = _spec(m)
    from dataclasses import replace

    lossy = replace(spec, factory=Lossy, name="lossy")
    with pytest.raises(AssertionError, match="lossy.*check_open_write_close.*rows stored"):
        asyncio.run(check_sink_conformance(lossy, {"path": "l.db"}, lambda s: make_context(s, tmp_path), read_back=sqlite_rows))


def test_append_only_sinks_skip_the_replay_check():
    assert JsonlSink.idempotent is False  # so check_replay_idempotent does not demand deduplication


def test_conformance_catches_a_sink_with_a_blocking_write(tmp_path):
    """The Sink protocol's methods are coroutines: a plain `def write` is reported by name."""
    import asyncio
    from dataclasses import replace

    import tickwire.plugins.sqlite_sink as m

    class Blocking(SQLiteSink):
        def write(self, stream, records):  # not async: would block the engine's loop
            return None

    spec = replace(_spec(m), factory=Blocking, name="blocking")
    with pytest.raises(AssertionError, match="blocking.*check_declares_the_contract.*write\\(\\) must be a coroutine"):
        asyncio.run(check_sink_conformance(spec, {"path": "b.db"}, lambda s: make_context(s, tmp_path), read_back=sqlite_rows))
