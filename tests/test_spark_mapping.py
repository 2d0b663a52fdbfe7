"""The Spark job's pieces that need no Spark: the generated mapping, jar selection, the listener's
offset and drop arithmetic, the job's metrics, the FAIR pools and the printed spark-submit line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tickwire.spark import mapping as mapping_module
from tickwire.spark.jars import artifact_name
from tickwire.framework.components import TradeGap
from tickwire.framework.resume import gap_as_dict, gap_reason_text
from tickwire.spark.dead_letter_topic import lost_range
from tickwire.spark.dedup import window_for_checkpoint
from tickwire.spark.job import JobOptions, fair_scheduler_xml, spark_conf
from tickwire.framework.metrics import Metrics
from tickwire.spark.job_metrics import SparkMetrics
from tickwire.spark.listener import kafka_lag, state_drops
from tickwire.spark.testing import config_yaml, expected_candles, trade_record

REPO = Path(__file__).resolve().parent.parent
GAP = TradeGap("trade", "ETHUSDT", 5, 9, "too_large", "2026-11-29T10:00:00.000Z")
TICKWIRE = Path(sys.executable).parent / "tickwire"


def generated(tmp_path: Path, config_text: str | None = None) -> dict:
    config = tmp_path / "streams.yaml"
    config.write_text(config_text or config_yaml("t1"))
    out = subprocess.run([str(TICKWIRE), "-c", str(config), "generate", "spark"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_the_generated_mapping_loads(tmp_path):
    m = mapping_module.parse(generated(tmp_path))
    # and one query for the Kafka sink's dead-letter topic
    assert m.query_names == ["trade", "candles_1m", "dead-letters"]
    assert m.dead_letter_topic == "t1.dead-letter" and m.trade_gaps_table == "trade_gaps"
    trade = m.stream("trade")
    assert trade.topic == "t1" and trade.primary_key == ("symbol", "trade_id")
    assert trade.column("price").logical == "decimal" and not trade.column("price").nullable
    assert m.derived[0].source == "trade" and m.progress_table == "stream_progress"


def test_a_derived_stream_added_in_the_config_is_a_query(tmp_path):
    both = ("candles_1m: {kind: candles, from: trade, interval: 1 minute, watermark: 30 seconds, table: candles_1m}\n"
            "  candles_5m: {kind: candles, from: trade, interval: 5 minutes, watermark: 1 minute, table: candles_5m}")
    m = mapping_module.parse(generated(tmp_path, config_yaml("t1", derived=both)))
    assert m.query_names == ["trade", "candles_1m", "candles_5m", "dead-letters"]
    assert m.derived[1].interval == "5 minutes"


@pytest.mark.parametrize("change, message", [
    (lambda d: d["streams"][0].pop("topic"), r"streams\[0\]: missing key 'topic'"),
    (lambda d: d["streams"][0]["columns"][0].update(logical="float"), r"columns\[0\]\.logical: 'float'"),
    (lambda d: d["streams"][0].update(primary_key=["nope"]), r"'nope' is not one of its columns"),
    (lambda d: d["derived"][0].update({"from": "ticker"}), r"derived\[0\]\.from: no stream named 'ticker'"),
    (lambda d: d["derived"][0].update(name="trade"), r"query names must be unique"),
])
def test_a_broken_mapping_is_reported_with_its_place(tmp_path, change, message):
    doc = generated(tmp_path)
    change(doc)
    with pytest.raises(mapping_module.MappingError, match=message):
        mapping_module.parse(doc)


def test_jar_names_compare_without_versions():
    assert artifact_name("spark-sql-kafka-0-10_2.13-4.2.0.jar") == "spark-sql-kafka-0-10_2.13"
    assert artifact_name("kafka-clients-3.9.2.jar") == "kafka-clients"
    assert artifact_name("zstd-jni-1.5.7-7.jar") == "zstd-jni"
    assert artifact_name("commons-pool2-2.13.1.jar") != artifact_name("commons-pool-1.5.4.jar")


def test_no_fetch_when_spark_home_has_the_connector(tmp_path, monkeypatch):
    from tickwire.spark import jars

    (tmp_path / "jars").mkdir()
    (tmp_path / "jars" / "spark-sql-kafka-0-10_2.13-9.9.9.jar").write_bytes(b"")
    monkeypatch.setenv("SPARK_HOME", str(tmp_path))
    monkeypatch.setattr(jars, "_fetch", lambda *a: pytest.fail("fetched although Spark has the connector"))
    assert jars.fetch_jars("9.9.9", pom=tmp_path / "missing-pom.xml") == []


def test_kafka_lag_sums_partitions():
    assert kafka_lag('{"t":{"0":10,"1":5}}', '{"t":{"0":15,"1":5}}') == 5
    assert kafka_lag({"t": {"0": 3}}, {"t": {"0": 10, "1": 4}}) == 11
    assert kafka_lag('{"t":{"0":3}}', None) is None


def test_state_drops_sum_the_dedup_and_watermark_counts_of_every_operator():
    dedup = SimpleNamespace(customMetrics={"numDroppedDuplicateRows": 7, "loadedMapCacheHitCount": 3},
                            numRowsDroppedByWatermark=2)
    aggregate = SimpleNamespace(customMetrics={}, numRowsDroppedByWatermark=1)
    assert state_drops([dedup, aggregate]) == (7, 3)
    assert state_drops(None) == (0, 0)


@pytest.mark.parametrize("asked, has_offsets, has_state, runs, warns", [
    ("0 seconds", False, False, "0 seconds", False),  # a new checkpoint: as asked
    ("30 seconds", False, False, "30 seconds", False),
    ("0 seconds", True, False, "0 seconds", False),  # restarted as it started
    ("30 seconds", True, True, "30 seconds", False),
    ("0 seconds", True, True, "30 seconds", True),  # started with state (the former default): kept
    ("5 seconds", True, False, "0 seconds", True),  # started without: Spark could not add it
])
def test_a_checkpoint_keeps_the_kind_of_dedup_plan_it_started_with(asked, has_offsets, has_state, runs, warns):
    window, why = window_for_checkpoint(asked, has_offsets, has_state)
    assert window == runs
    assert (why is not None) == warns
    if warns:
        assert "--checkpoint-dir" in why


@pytest.mark.parametrize("reason, payload, row", [
    (gap_reason_text(GAP), json.dumps(gap_as_dict(GAP)),
     ("trade", "ETHUSDT", 5, 9, 5, "too_large", "2026-11-29T10:00:00.000Z")),
    ("p: not a decimal", '{"p":"x"}', None),  # an ordinary dead letter
    (gap_reason_text(GAP), "{not json", None),  # a range that is not tickwire's JSON: a dead letter only
    (gap_reason_text(GAP), json.dumps(dict(gap_as_dict(GAP), first_id="5")), None),
    (gap_reason_text(GAP), None, None),
])
def test_a_lost_range_on_the_dead_letter_topic_becomes_a_trade_gaps_row(reason, payload, row):
    assert lost_range(reason, payload) == row


def test_commit_latency_histogram_has_millisecond_to_ten_second_buckets_per_stream():
    m = SparkMetrics(Metrics())
    m.observe_commit("trade", "trade", [100.0, 99.5, None, 91.0], now=100.0004)
    text = m.shared.registry.get_sample_value
    labels = {"stream": "trade", "query": "trade"}
    assert text("tickwire_spark_event_to_commit_seconds_count", labels) == 3
    assert text("tickwire_spark_event_to_commit_seconds_bucket", {**labels, "le": "0.001"}) == 1
    assert text("tickwire_spark_event_to_commit_seconds_bucket", {**labels, "le": "0.5"}) == 1
    assert text("tickwire_spark_event_to_commit_seconds_bucket", {**labels, "le": "1.0"}) == 2
    assert text("tickwire_spark_event_to_commit_seconds_bucket", {**labels, "le": "10.0"}) == 3
    assert text("tickwire_e2e_latency_seconds_count", {"query": "trade"}) == 3  # the wide one too


def test_conf_has_fair_pools_and_the_prometheus_servlet():
    xml = fair_scheduler_xml(["trade", "candles_1m"])
    assert '<pool name="trade">' in xml and '<pool name="candles_1m">' in xml
    conf = spark_conf(JobOptions(mapping="m", bootstrap="b", dsn="d", master="spark://h:7077", jars=["a.jar", "b.jar"]),
                      ["trade"], "/tmp/fair.xml")
    assert conf["spark.master"] == "spark://h:7077" and conf["spark.jars"] == "a.jar,b.jar"
    assert conf["spark.scheduler.mode"] == "FAIR" and conf["spark.scheduler.allocation.file"] == "/tmp/fair.xml"
    assert conf["spark.ui.prometheus.enabled"] == "true" and Path(conf["spark.metrics.conf"]).is_file()
    assert conf["spark.sql.ansi.enabled"] == "false"  # bad values cast to NULL → dead letters
    # no empty batch only to move the event queries' processing-time watermark (latency)
    assert conf["spark.sql.streaming.noDataMicroBatches.enabled"] == "false"
    # local checkpoint logs without .crc files (latency); a setting of the user's still wins
    assert conf["spark.hadoop.fs.AbstractFileSystem.file.impl"] == "org.apache.hadoop.fs.local.RawLocalFs"
    theirs = JobOptions(mapping="m", bootstrap="b", dsn="d",
                        conf={"spark.hadoop.fs.AbstractFileSystem.file.impl": "org.apache.hadoop.fs.local.LocalFs"})
    assert spark_conf(theirs, ["trade"])["spark.hadoop.fs.AbstractFileSystem.file.impl"].endswith(".LocalFs")


def test_print_command_is_a_spark_submit_line_without_the_password(tmp_path):
    config = tmp_path / "streams.yaml"
    config.write_text(config_yaml("t1"))
    env = dict(os.environ, TICKWIRE_SPARK_PG_DSN="postgresql://w:secret@h/db")
    out = subprocess.run([str(TICKWIRE), "-c", str(config), "spark", "submit", "--print-command",
                          "--master", "spark://h:7077"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("spark-submit \\\n  --master spark://h:7077")
    assert "spark-sql-kafka-0-10_2.13" in out.stdout and "spark/job.py" in out.stdout
    assert "secret" not in out.stdout and '--dsn "$TICKWIRE_SPARK_PG_DSN"' in out.stdout
    assert (tmp_path / "spark-mapping.json").is_file()

    # the printed file is the installed job, and it runs as a file (what spark-submit does)
    [job_file] = [part for part in out.stdout.split() if part.endswith("job.py")]
    assert Path(job_file).is_file()
    as_file = subprocess.run([sys.executable, job_file, "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert as_file.returncode == 0 and "--mapping" in as_file.stdout, as_file.stderr


def test_expected_candles_orders_by_time_then_id():
    t0 = 1_700_000_040_000
    trades = [trade_record("X", 2, "2", "1", t0 + 5), trade_record("X", 1, "1", "1", t0 + 5),
              trade_record("X", 3, "3", "2", t0 + 59_999), trade_record("X", 3, "3", "2", t0 + 59_999)]
    [(key, c)] = expected_candles(trades).items()
    assert (c["open"], c["close"], c["trade_count"], c["volume"]) == (1, 3, 3, 4)
    assert c["vwap"] == (1 + 2 + 6) / 4
