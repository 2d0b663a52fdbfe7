"""The Kafka → Spark path during a schema rollout (docs/schema-evolution.md): the trade schema
gains an optional column, `tickwire db migrate` adds it, and the Spark job started with the new
schema reads a topic holding records of both versions. Records of the previous version (without
the field) are stored with NULL, new ones with the value; none is lost or dead-lettered."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from tickwire.framework.schemas import shipped_schemas
from tickwire.spark import testing as tw
from tests.fixtures.kafka import create_topics
from tests.test_spark_job import PASSWORDS, REPO, TICKWIRE, JobProcess, spark_jars  # noqa: F401  (fixture)

pytestmark = [pytest.mark.spark, pytest.mark.kafka, pytest.mark.postgres, pytest.mark.timeout(420)]
T0 = 1_700_000_040_000


def migrate(config: Path, dsn: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(TICKWIRE), "-c", str(config), "db", "migrate", "--dsn", dsn], capture_output=True,
                          text=True, env={**os.environ, **PASSWORDS}, cwd=REPO)


def test_spark_stores_records_of_both_versions_during_a_rollout(kafka_broker, postgres_db, spark_jars, tmp_path):  # noqa: F811
    topic = f"evolve-trades-{uuid.uuid4().hex[:8]}"
    asyncio.run(create_topics(kafka_broker.bootstrap, topic, partitions=2))
    shipped_trade = str(Path(shipped_schemas() / "trade.schema.json"))
    old_config = tmp_path / "old.yaml"
    old_config.write_text(tw.config_yaml(topic))
    assert migrate(old_config, postgres_db.dsn).returncode == 0

    (tmp_path / "schemas").mkdir()
    new_schema = tmp_path / "schemas" / "trade.schema.json"
    shutil.copy(shipped_trade, new_schema)
    schema = json.loads(new_schema.read_text())
    schema["properties"]["M"]["x-tickwire"] = {"column": "best_match", "type": "boolean"}
    new_schema.write_text(json.dumps(schema, indent=2))
    new_config = tmp_path / "streams.yaml"
    new_config.write_text(tw.config_yaml(topic).replace(shipped_trade, "schemas/trade.schema.json"))
    migrated = migrate(new_config, postgres_db.dsn)
    assert migrated.returncode == 0 and "table trades: added column best_match (boolean)" in migrated.stdout, migrated.stderr

    def record(n: int, version: int) -> dict:
        value = tw.trade_record("BTCUSDT" if n % 2 else "ETHUSDT", n, price=f"{30000 + n}.12345678",
                                quantity=f"0.{n:08d}", trade_ms=T0 + n * 100)
        if version == 2:
            value["best_match"] = True
        return value

    # still in the topic when the new job starts: 30 records of version 1, then 30 of version 2
    tw.produce(kafka_broker.bootstrap, topic, [record(n, 1) for n in range(30)] + [record(n, 2) for n in range(30, 60)])
    writer_dsn = postgres_db.dsn_for("tickwire_writer", PASSWORDS["TICKWIRE_PG_WRITER_PASSWORD"])
    job = JobProcess([
        str(TICKWIRE), "-c", str(new_config), "spark", "submit", "--bootstrap", kafka_broker.bootstrap, "--dsn", writer_dsn,
        "--checkpoint-dir", str(tmp_path / "checkpoints"), "--master", "local[2]", "--trigger", "1 second",
        "--shuffle-partitions", "2", "--metrics-port", "auto", "--ui-port", "-1", "--retry-seconds", "180",
    ], tmp_path / "job.log")
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            with psycopg.connect(postgres_db.dsn) as conn:
                if conn.execute("SELECT count(*) FROM trades").fetchone()[0] >= 60:
                    break
            assert job.alive(), f"the job exited ({job.proc.returncode}):\n{job.tail()}"
            time.sleep(0.5)
        with psycopg.connect(postgres_db.dsn) as conn:
            rows = dict(conn.execute("SELECT trade_id, best_match FROM trades").fetchall())
            dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
    finally:
        job.stop()
    assert sorted(rows) == list(range(60)), f"stored {len(rows)} of 60:\n{job.tail()}"
    assert all(rows[n] is None for n in range(30)), "records of version 1 must be stored with NULL"
    assert all(rows[n] is True for n in range(30, 60)), "records of version 2 must carry the new column"
    assert dead == 0
