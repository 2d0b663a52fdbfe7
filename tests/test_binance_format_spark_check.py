"""A Kafka topic in ``format: binance`` carries the Binance payload, which the Spark job cannot
parse (it reads normalized records only: every record would be a dead letter). `tickwire spark
submit` refuses such a config before Spark starts — a config error at the topic's ``format:``
line — and the job refuses a mapping that names such a topic. No Spark runs here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tickwire.framework.testing.project import write_streams_yaml
from tickwire.spark.mapping import MappingError, parse

REPO = Path(__file__).resolve().parent.parent


def project(tmp_path: Path, trade_format: str) -> Path:
    return write_streams_yaml(
        tmp_path, streams={"trade": {"topic": {"name": "raw.trades", "format": trade_format}}, "ticker": {}},
        sinks={"kafka": {"type": "kafka"}}, profiles={"compose": {"sinks": ["kafka"], "dead_letter": "kafka"}})


def tickwire(config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TICKWIRE_SPARK_PG_DSN": "postgresql://nobody@127.0.0.1:9/none"}
    return subprocess.run([sys.executable, "-m", "tickwire.framework.cli", "-c", str(config), *args], cwd=config.parent,
                          capture_output=True, text=True, timeout=60, env=env)


def test_spark_submit_refuses_a_binance_format_topic_at_its_line_before_spark_starts(tmp_path):
    config = project(tmp_path, "binance")
    assert tickwire(config, "validate").returncode == 0, "a binance topic is fine for Kafka consumers"
    out = tickwire(config, "spark", "submit", "--checkpoint-dir", str(tmp_path / "checkpoints"))
    assert out.returncode == 2, out.stderr
    line = next(i for i, text in enumerate(config.read_text().splitlines(), 1) if "format: binance" in text)
    assert (f"{config.name}:{line}:15: streams.trade.topic.format: stream 'trade': topic raw.trades carries format 'binance' "
            "(the Binance payload), but the Spark job reads only 'normalized' topics: every record would go to the "
            "dead letters; set the topic's format: normalized (docs/migrating.md)") in out.stderr
    assert "Traceback" not in out.stderr and "ticker" not in out.stderr
    assert not (tmp_path / "checkpoints").exists(), "nothing was started"


def test_spark_submit_refuses_a_mapping_file_naming_a_binance_format_topic(tmp_path):
    config = project(tmp_path, "binance")
    generated = tickwire(config, "generate", "spark", "-o", str(tmp_path))
    assert generated.returncode == 0, generated.stderr
    mapping = tmp_path / "spark-mapping.json"
    assert [s["format"] for s in json.loads(mapping.read_text())["streams"]] == ["binance", "normalized"]
    out = tickwire(config, "spark", "submit", "--mapping", str(mapping), "--print-command")
    assert out.returncode == 1, out.stderr
    assert "streams[0]: stream 'trade': topic raw.trades carries format 'binance'" in out.stderr
    assert "Traceback" not in out.stderr and not out.stdout


def test_a_normalized_topic_passes_the_check(tmp_path):
    out = tickwire(project(tmp_path, "normalized"), "spark", "submit", "--print-command")
    assert out.returncode == 0, out.stderr
    assert "spark-submit" in out.stdout and (tmp_path / "spark-mapping.json").is_file()


def test_the_job_refuses_a_binance_format_stream_in_its_mapping_and_reads_older_mappings_as_normalized():
    snapshot = json.loads((REPO / "tests" / "snapshots" / "spark" / "spark-mapping.json").read_text())
    assert all(s["format"] == "normalized" for s in snapshot["streams"])
    older = {**snapshot, "streams": [{k: v for k, v in s.items() if k != "format"} for s in snapshot["streams"]]}
    assert [s.name for s in parse(older).streams] == [s["name"] for s in snapshot["streams"]]
    raw = {**snapshot, "streams": [{**snapshot["streams"][0], "format": "binance"}, *snapshot["streams"][1:]]}
    with pytest.raises(MappingError, match=r"streams\[0\]: stream 'trade': topic binance.trades carries format 'binance'"):
        parse(raw)
