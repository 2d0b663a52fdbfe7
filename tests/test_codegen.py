"""Code generation: deterministic output, committed snapshots kept current, DDL that applies
twice to a real PostgreSQL, and a new stream that needs a schema and config — no code."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import psycopg
import pytest

from tickwire.framework.config import load_config
from tickwire.framework.plugins import PluginManager

REPO = Path(__file__).resolve().parent.parent
SNAPSHOTS = REPO / "tests" / "snapshots"
TARGETS = ["postgres", "sqlite", "spark", "kafka", "docs"]


@pytest.fixture(scope="module")
def manager():
    return PluginManager()


@pytest.fixture(scope="module")
def config(manager):
    return load_config(REPO / "streams.yaml", manager)


@pytest.mark.parametrize("target", TARGETS)
def test_output_matches_the_committed_snapshot(manager, config, target):
    files = manager.codegen[target].factory(config)
    for name, text in files.items():
        snapshot = SNAPSHOTS / target / name
        assert snapshot.is_file(), f"missing snapshot; run: tickwire generate {target} -o tests/snapshots/{target}"
        assert text == snapshot.read_text(), f"{target}/{name} changed; review and run: tickwire generate {target} -o tests/snapshots/{target}"


@pytest.mark.parametrize("target", TARGETS + ["config-schema"])
def test_output_is_deterministic(manager, config, target):
    assert manager.codegen[target].factory(config) == manager.codegen[target].factory(config)


def test_committed_config_schema_and_reference_are_current(manager, config):
    files = manager.codegen["config-schema"].factory(config)
    for name, text in files.items():
        assert text == (REPO / name).read_text(), f"{name} is out of date; run: tickwire generate config-schema -o ."


def test_postgres_ddl_uses_numeric_money_timestamptz_and_the_keys(config, manager):
    ddl = manager.codegen["postgres"].factory(config)["schema.sql"]
    assert '    "price" NUMERIC NOT NULL' in ddl and '    "quantity" NUMERIC NOT NULL' in ddl
    assert '    "event_time" TIMESTAMPTZ NOT NULL' in ddl
    assert "FLOAT" not in ddl.upper() and "DOUBLE" not in ddl.upper() and "REAL" not in ddl.upper()
    # the key of a day-partitioned table includes its partition column (plugins/postgres_partitions.py)
    assert 'CREATE TABLE IF NOT EXISTS "trades" (' in ddl and 'PRIMARY KEY ("symbol", "trade_id", "trade_time")' in ddl
    assert 'CREATE TABLE IF NOT EXISTS "ticker_1h" (' in ddl and 'CREATE TABLE IF NOT EXISTS "ticker_1d" (' in ddl
    assert ddl.count('PRIMARY KEY ("symbol", "event_time")') == 2


def test_postgres_ddl_applies_twice_to_a_real_server(config, manager, postgres_db):
    ddl = manager.codegen["postgres"].factory(config)["schema.sql"]
    with psycopg.connect(postgres_db.dsn, autocommit=True) as conn:
        conn.execute(ddl)
        conn.execute(ddl)  # idempotent
        columns = dict(conn.execute(
            "select column_name, data_type from information_schema.columns where table_name = 'trades'").fetchall())
        keys = conn.execute("""
            select c.relname, array_agg(a.attname order by array_position(i.indkey, a.attnum))
            from pg_index i join pg_class c on c.oid = i.indrelid
            join pg_attribute a on a.attrelid = c.oid and a.attnum = any(i.indkey)
            where i.indisprimary and c.relname in ('trades', 'ticker_1h', 'ticker_1d', 'candles_1m')
            group by c.relname order by c.relname""").fetchall()
    assert columns["price"] == "numeric" and columns["event_time"] == "timestamp with time zone"
    assert columns["trade_id"] == "bigint" and columns["buyer_is_maker"] == "boolean"
    assert keys == [("candles_1m", ["symbol", "window_start"]), ("ticker_1d", ["symbol", "event_time"]),
                    ("ticker_1h", ["symbol", "event_time"]), ("trades", ["symbol", "trade_id", "trade_time"])]


def test_spark_mapping_is_loadable_without_pyspark_and_typed_exactly(config, manager):
    mapping = json.loads(manager.codegen["spark"].factory(config)["spark-mapping.json"])
    trade = next(s for s in mapping["streams"] if s["name"] == "trade")
    assert trade["topic"] == "binance.trades" and trade["table"] == "trades"
    assert "CAST(`price` AS DECIMAL(38,18)) AS `price`" in trade["select"]
    assert "CAST(`event_time` AS TIMESTAMP) AS `event_time`" in trade["select"]
    assert {"name": "trade_id", "type": "long", "nullable": True, "metadata": {}} in trade["value_schema"]["fields"]
    assert mapping["derived"] == [{"name": "candles_1m", "kind": "candles", "from": "trade", "interval": "1 minute",
                                   "watermark": "30 seconds", "table": "candles_1m", "primary_key": ["symbol", "window_start"]}]


AGG_TRADE_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://example.org/schemas/agg_trade.schema.json",
    "title": "Binance aggregate trade event",
    "type": "object",
    "x-tickwire": {"event_type": "aggTrade", "version": 1, "primary_key": ["symbol", "agg_trade_id"],
                   "kafka_key": "symbol", "event_time": "event_time"},
    "required": ["e", "E", "s", "a", "p", "q", "f", "l", "T", "m"],
    "properties": {
        "e": {"const": "aggTrade"},
        "E": {"type": "integer", "x-tickwire": {"column": "event_time", "type": "timestamp_ms"}},
        "s": {"type": "string", "pattern": "^[A-Z0-9]{2,20}$", "x-tickwire": {"column": "symbol", "type": "text"}},
        "a": {"type": "integer", "x-tickwire": {"column": "agg_trade_id", "type": "bigint"}},
        "p": {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?$", "x-tickwire": {"column": "price", "type": "decimal"}},
        "q": {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?$", "x-tickwire": {"column": "quantity", "type": "decimal"}},
        "f": {"type": "integer", "x-tickwire": {"column": "first_trade_id", "type": "bigint"}},
        "l": {"type": "integer", "x-tickwire": {"column": "last_trade_id", "type": "bigint"}},
        "T": {"type": "integer", "x-tickwire": {"column": "trade_time", "type": "timestamp_ms"}},
        "m": {"type": "boolean", "x-tickwire": {"column": "buyer_is_maker", "type": "boolean"}},
    },
}


def test_a_new_stream_is_config_plus_schema_and_no_code(tmp_path, manager, postgres_db):
    shutil.copytree(REPO / "schemas", tmp_path / "schemas")
    (tmp_path / "schemas" / "agg_trade.schema.json").write_text(json.dumps(AGG_TRADE_SCHEMA, indent=2))
    text = (REPO / "streams.yaml").read_text().replace("\n# Computed by the Spark job", textwrap.dedent("""
          agg_trade:
            channel: "{symbol}@aggTrade"
            schema: schemas/agg_trade.schema.json
            table: agg_trades
            symbols: [BTCUSDT, BNBUSDT]
            topic: {name: binance.agg_trades, partitions: 6}
        """).replace("\n", "\n  ").rstrip(" ") + "\n# Computed by the Spark job", 1)
    (tmp_path / "streams.yaml").write_text(text)
    config = load_config(tmp_path / "streams.yaml", manager)
    agg = config.streams["agg_trade"]
    assert agg.channels() == {"btcusdt@aggTrade": "BTCUSDT", "bnbusdt@aggTrade": "BNBUSDT"}

    ddl = manager.codegen["postgres"].factory(config)["schema.sql"]
    assert 'CREATE TABLE IF NOT EXISTS "agg_trades" (' in ddl and 'PRIMARY KEY ("symbol", "agg_trade_id", "event_time")' in ddl
    with psycopg.connect(postgres_db.dsn, autocommit=True) as conn:
        conn.execute(ddl)
        conn.execute("insert into agg_trades values (now(), 'BTCUSDT', 1, '0.10000001', '2', 1, 2, now(), true, now())")
        assert conn.execute("select price from agg_trades").fetchone()[0] == __import__("decimal").Decimal("0.10000001")
    assert 'CREATE TABLE IF NOT EXISTS "agg_trades" (' in manager.codegen["sqlite"].factory(config)["schema.sqlite.sql"]
    spark = json.loads(manager.codegen["spark"].factory(config)["spark-mapping.json"])
    assert [s["topic"] for s in spark["streams"]][-1] == "binance.agg_trades"
    kafka = json.loads(manager.codegen["kafka"].factory(config)["kafka-topics.json"])
    assert {"name": "binance.agg_trades", "partitions": 6, "key": "symbol"}.items() <= kafka["topics"][-1].items()
    assert "## `agg_trade` → table `agg_trades`" in manager.codegen["docs"].factory(config)["streams.md"]
    # and the hot-path transforms accept its payloads with no code change
    validate = manager.transforms["validate"].factory(agg, {})
    normalize = manager.transforms["normalize"].factory(agg, {})
    payload = {"e": "aggTrade", "E": 1672515782136, "s": "BTCUSDT", "a": 26129, "p": "0.01633102", "q": "4.70443515",
               "f": 27781, "l": 27781, "T": 1672515782136, "m": True, "M": True}
    record = normalize(validate(payload))
    assert record["agg_trade_id"] == 26129 and record["price"] == "0.01633102"
    assert record["event_time"] == "2022-12-31T19:43:02.136Z"


def reserved_word_project(tmp_path: Path) -> Path:
    """The shipped config with the trade stream in a table named `order` and its price column
    named `group`: SQL keywords, legal once quoted."""
    shutil.copy(REPO / "streams.yaml", tmp_path / "streams.yaml")
    shutil.copytree(REPO / "schemas", tmp_path / "schemas")
    text = (tmp_path / "streams.yaml").read_text().replace("table: trades", "table: order", 1)
    # without the candles, which need a column named price
    (tmp_path / "streams.yaml").write_text(text[: text.index("# Computed by the Spark job")] + text[text.index("sinks:"):])
    schema = tmp_path / "schemas" / "trade.schema.json"
    schema.write_text(schema.read_text().replace('"column": "price"', '"column": "group"'))
    return tmp_path


def test_reserved_words_as_table_and_column_names_work_in_sqlite(tmp_path, manager):
    import asyncio
    import sqlite3

    from tickwire.framework.testing import make_context, normalized, trade_payload
    from tickwire.plugins.sqlite_sink import SQLiteSink

    project = reserved_word_project(tmp_path)
    config = load_config(project / "streams.yaml", manager)
    stream = config.streams["trade"]
    assert stream.table == "order" and "group" in [c.name for c in stream.columns]

    async def write() -> None:
        sink = SQLiteSink("sqlite", {"path": "data/t.db"}, make_context([stream], project))
        await sink.open()
        await sink.write(stream, normalized(stream, [trade_payload(1, price="16500.10000000")]))
        await sink.close()

    asyncio.run(write())
    with sqlite3.connect(project / "data" / "t.db") as conn:
        assert conn.execute('SELECT "group" FROM "order"').fetchall() == [("16500.10000000",)]


def test_reserved_words_as_table_and_column_names_work_in_postgres(tmp_path, manager, postgres_db):
    project = reserved_word_project(tmp_path)
    config = load_config(project / "streams.yaml", manager)
    ddl = manager.codegen["postgres"].factory(config)["schema.sql"]
    assert 'CREATE TABLE IF NOT EXISTS "order" (' in ddl and '    "group" NUMERIC NOT NULL' in ddl
    with psycopg.connect(postgres_db.dsn, autocommit=True) as conn:
        conn.execute(ddl)
        conn.execute(ddl)
        columns = [name for (name,) in conn.execute(
            "select column_name from information_schema.columns where table_name = 'order' order by ordinal_position")]
    assert "group" in columns


def test_provisioning_the_kafka_target_and_the_compose_topics_name_the_same_topics(config, manager):
    """One plan, from the streams' StreamSpec: what `tickwire kafka provision` creates is what
    `tickwire generate kafka` prints, and compose's kafka-init creates the same dead-letter topic."""
    from tickwire.plugins.kafka.topics import config_topics

    planned = config_topics(config)
    kafka = json.loads(manager.codegen["kafka"].factory(config)["kafka-topics.json"])
    printed = [(t["name"], t["partitions"], t["replication_factor"], t["config"]) for t in kafka["topics"]]
    dead = kafka["dead_letter_topic"]
    printed.append((dead["name"], dead["partitions"], dead["replication_factor"], dead["config"]))
    assert [(t.name, t.partitions, t.replication_factor, t.config) for t in planned] == printed
    assert dead["name"] == "tickwire.dead-letter"  # streams.yaml's kafka sink names it
    compose = manager.codegen["compose"].factory(config)["kafka/topics.txt"]
    assert compose.splitlines()[-1].split()[0] == dead["name"]
