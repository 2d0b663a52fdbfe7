"""The streams.yaml builder of the author kit (tickwire.framework.testing.project): what it
writes is a config `tickwire` accepts, in each shape the tests and benchmarks use; and the kit
loads without pulling in the built-in plugins (it sits below them)."""

from __future__ import annotations

import pytest

from tickwire.framework.config import load_config
from tickwire.framework.plugins import PluginManager
from tickwire.framework.testing import shipped_streams, stream_block, streams_config, write_streams_yaml

LOCAL = dict(
    sinks={"sqlite": {"type": "sqlite", "path": "out.db"}, "dead-letter-file": {"type": "jsonl", "path": "dead.jsonl"}},
    profiles={"local": {"sinks": ["sqlite"], "dead_letter": "dead-letter-file"}},
)
KAFKA_AND_POSTGRES = dict(
    symbols=["BTCUSDT", "ETHUSDT"],
    streams={"trade": {"topic": {"name": "bench.trades", "partitions": 3}}, "ticker": {}},
    derived={"candles_1m": {"kind": "candles", "from": "trade", "interval": "1 minute", "watermark": "30 seconds",
                            "table": "candles_1m"}},
    sinks={"kafka": {"type": "kafka", "bootstrap_servers": "127.0.0.1:9092", "dead_letter_topic": "bench.dead-letter"},
           "postgres": {"type": "postgres", "dsn": "postgresql://u@127.0.0.1/db"}},
    profiles={"bench": {"sinks": ["kafka", "postgres"], "dead_letter": "kafka"}},
    engine={"batch_size": 1000, "linger_ms": 100, "queue_batches": 32},
)


@pytest.mark.parametrize("sections", [LOCAL, KAFKA_AND_POSTGRES], ids=["local", "kafka+postgres"])
def test_what_the_builder_writes_is_a_valid_config(tmp_path, sections):
    path = write_streams_yaml(tmp_path, **sections)
    config = load_config(path, PluginManager())
    profile = config.profile()
    assert profile.name == next(iter(sections["profiles"]))
    assert [s.name for s in config.profile_streams(profile)] == list(sections.get("streams", ["trade"]))


def test_a_shipped_stream_starts_from_tickwires_own_block_and_takes_overrides():
    block = streams_config(streams={"trade": {"table": "my_trades"}}, **LOCAL)["streams"]["trade"]
    assert block["table"] == "my_trades"
    assert block["channel"] == shipped_streams()["trade"]["channel"] == "{symbol}@trade"
    assert block["schema"].endswith("trade.schema.json") and block["schema"].startswith("/")


def test_a_stream_tickwire_does_not_ship_needs_its_schema():
    with pytest.raises(ValueError, match="stream 'candles' is not one tickwire ships"):
        stream_block("candles")
    assert stream_block("mine", {"channel": "{symbol}@x", "schema": "s.json", "table": "t"})["table"] == "t"


def test_a_config_without_a_profile_is_refused():
    with pytest.raises(ValueError, match="at least one profile"):
        streams_config(sinks={}, profiles={})


def test_the_kit_and_its_pytest_plugin_import_no_built_in_plugin():
    import subprocess
    import sys

    code = ("import sys, tickwire, tickwire.framework.testing, tickwire.framework.testing.plugin; "
            "print(sorted(m for m in sys.modules if m.startswith('tickwire.plugins')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
