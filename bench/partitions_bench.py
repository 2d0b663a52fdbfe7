"""Benchmark: day partitions vs a plain table for trades in PostgreSQL — insert rate and the
Market dashboard's trade panels — at several table sizes.

The trades arrive at a fixed rate (``--rows-per-day``, 3 symbols) and end now, so a bigger table
is *more days*, and the last hour always holds the same number of rows: a panel that reads the
last hour should cost the same at every size. The panel queries are taken from the generated
Grafana dashboard (plugins/codegen_grafana.py) with Grafana's macros expanded as Grafana does
for a "last 1 hour" range (literal timestamps, 1-minute interval).

Layouts, each in a fresh database of a throwaway cluster (devservices/pg_cluster.py):

* ``plain-before``: tickwire before partitions — key (symbol, trade_id), indexes on
  (symbol, event_time) and (event_time); the panels filter on trade_time, so nothing indexes it;
* ``plain``: the same heap table with the partitioned layout's indexes ((symbol, trade_time),
  (trade_time)): partitioning's effect alone;
* ``partitioned``: the generated DDL (plugins/codegen_postgres.py) — day partitions, btree on
  (symbol, trade_time) and on trade_time;
* ``partitioned-brin``: day partitions with only a BRIN index on trade_time (BRIN vs btree).

Rows are made with ``INSERT … SELECT generate_series`` one day at a time (the bulk rate), then
``--batches`` batches of 1,000 new trades go in the way the postgres sink writes them (COPY into
a staging table, ``INSERT … ON CONFLICT DO NOTHING``): the steady insert rate at that size.
Each query runs ``--repeat`` times after a warm-up; the median is reported, and, from EXPLAIN
(ANALYZE, BUFFERS), the pages it touched and the tables/partitions it scanned: figures a busy
machine cannot blur.

    .venv/bin/python bench/partitions_bench.py --sizes 1000000 5000000
    .venv/bin/python bench/partitions_bench.py --dsn postgresql://…/postgres   # an existing server
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tickwire.devservices.pg_cluster import PostgresCluster  # noqa: E402
from tickwire.framework.cli import build  # noqa: E402
from tickwire.plugins import codegen_grafana, codegen_postgres  # noqa: E402
from tickwire.plugins.postgres_partitions import stream_plan  # noqa: E402

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
LAYOUTS = ("plain-before", "plain", "partitioned", "partitioned-brin")
COLUMNS = ("trade_id", "symbol", "event_time", "price", "quantity", "trade_time", "buyer_is_maker", "ingested_at")


def repository_config():
    _group, app = build(["-c", str(REPO / "streams.yaml")])
    return app.config


def trade_panel_queries(config, end: datetime) -> dict[str, str]:
    """The Market dashboard's queries on the trades table, macros expanded for the last hour."""
    start = end - timedelta(hours=1)
    stamp = lambda moment: moment.strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    table = codegen_grafana.market_tables(config)["trades"]
    out = {}
    for panel in codegen_grafana.market(config)["panels"]:
        for target in panel.get("targets", []):
            text = target.get("rawSql", "")
            if not re.search(rf"\bFROM {re.escape(table)}\b", text):
                continue
            text = re.sub(r"\$__timeGroupAlias\((\w+), \$__interval\)", r'floor(extract(epoch from \1) / 60) * 60 AS "time"', text)
            text = re.sub(r"\$__timeFilter\((\w+)\)", rf"\1 BETWEEN '{stamp(start)}' AND '{stamp(end)}'", text)
            text = text.replace("$__interval_ms", "60000").replace("$symbol", SYMBOLS[0])
            out[f"{panel['title']} ({panel['type']})"] = text
    return out


def layout_ddl(config, layout: str) -> str:
    stream = config.streams["trade"]
    if layout.startswith("partitioned"):
        ddl = "\n".join(codegen_postgres.stream_ddl(stream) + codegen_postgres.function_ddl())
        if layout == "partitioned-brin":
            ddl = re.sub(r'CREATE INDEX IF NOT EXISTS "trades_symbol_trade_time_idx"[^\n]*\n', "", ddl)
            ddl = ddl.replace("USING btree", "USING brin")
        return ddl
    time_column = stream.event_time if layout == "plain-before" else "trade_time"
    return "\n".join(codegen_postgres.create_table(stream.table, stream.columns, stream.primary_key, time_column, "trades"))


def fill(conn: psycopg.Connection, layout: str, rows: int, per_day: int, end: datetime) -> float:
    """Trades 1..rows at a fixed rate ending at `end`, one day per statement; returns rows/s."""
    step_ms = 86_400_000 / per_day
    first_day = (end - timedelta(milliseconds=rows * step_ms)).date()
    if layout.startswith("partitioned"):
        day = first_day
        while day <= end.date() + timedelta(days=1):
            conn.execute("SELECT tickwire_ensure_partition('trades', %s)", [day])
            day += timedelta(days=1)
    started = time.monotonic()
    for low in range(0, rows, per_day):
        high = min(rows, low + per_day)
        conn.execute(
            """INSERT INTO trades (trade_id, symbol, event_time, price, quantity, trade_time, buyer_is_maker, ingested_at)
               SELECT i / 3 + 1, (%(symbols)s::text[])[i %% 3 + 1],
                      t + interval '5 milliseconds', 27000 + (i %% 1000) / 100.0, 0.001 * (i %% 97 + 1),
                      t, i %% 2 = 0, t + interval '20 milliseconds'
                 FROM generate_series(%(low)s::bigint, %(high)s::bigint - 1) AS i,
                      LATERAL (SELECT %(end)s::timestamptz - (%(rows)s - i) * %(step)s * interval '1 millisecond') AS at(t)""",
            {"symbols": list(SYMBOLS), "low": low, "high": high, "end": end, "rows": rows, "step": step_ms},
        )
    seconds = time.monotonic() - started
    conn.execute("ANALYZE trades")
    return rows / seconds


def steady_inserts(conn: psycopg.Connection, rows: int, batches: int, end: datetime) -> float:
    """Batches of 1,000 new trades the way the postgres sink writes them; returns rows/s."""
    conn.execute("CREATE TEMPORARY TABLE staging (LIKE trades INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
    column_list = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
    insert = sql.SQL("INSERT INTO trades ({c}) SELECT {c} FROM staging ON CONFLICT DO NOTHING").format(c=column_list)
    next_id = rows // 3 + 10
    started = time.monotonic()
    for batch in range(batches):
        with conn.transaction():
            with conn.cursor().copy(sql.SQL("COPY staging ({}) FROM STDIN").format(column_list)) as copy:
                for n in range(1000):
                    at = end + timedelta(milliseconds=batch * 1000 + n)
                    copy.write_row((next_id + batch * 1000 + n, SYMBOLS[n % 3], at, "27000.5", "0.01", at, True, at))
            conn.execute(insert)
    return batches * 1000 / (time.monotonic() - started)


def time_queries(conn: psycopg.Connection, queries: dict[str, str], repeat: int) -> dict[str, float]:
    out = {}
    for title, text in queries.items():
        conn.execute(text).fetchall()  # warm-up: plan and cache
        samples = []
        for _ in range(repeat):
            started = time.perf_counter()
            conn.execute(text).fetchall()
            samples.append((time.perf_counter() - started) * 1000)
        out[title] = statistics.median(samples)
    return out


def plan_facts(conn: psycopg.Connection, queries: dict[str, str]) -> dict[str, dict]:
    """Per query, what the time cannot hide on a busy machine: the pages it touched (shared
    buffers hit + read) and the partitions it scanned, from EXPLAIN (ANALYZE, BUFFERS)."""
    out = {}
    for title, text in queries.items():
        [[[plan]]] = [conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + text).fetchone()]
        relations: set[str] = set()

        def walk(node: dict) -> None:
            if "Relation Name" in node:
                relations.add(node["Relation Name"])
            for child in node.get("Plans", []):
                walk(child)

        walk(plan["Plan"])
        pages = plan["Plan"].get("Shared Hit Blocks", 0) + plan["Plan"].get("Shared Read Blocks", 0)
        out[title] = {"pages": pages, "relations": len(relations)}
    return out


def run(admin_dsn_for, sizes: list[int], layouts: list[str], per_day: int, batches: int, repeat: int) -> list[dict]:
    config = repository_config()
    assert stream_plan(config.streams["trade"]) is not None, "the trade stream is not partitioned"
    results = []
    for rows in sizes:
        for layout in layouts:
            name = f"bench_{layout.replace('-', '_')}_{rows}"
            with psycopg.connect(admin_dsn_for("postgres"), autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            end = datetime.now(timezone.utc).replace(microsecond=0)
            try:
                with psycopg.connect(admin_dsn_for(name), autocommit=True) as conn:
                    conn.execute(layout_ddl(config, layout))
                    bulk = fill(conn, layout, rows, per_day, end)
                    queries = trade_panel_queries(config, end)
                    timings = time_queries(conn, queries, repeat)
                    facts = plan_facts(conn, queries)
                    steady = steady_inserts(conn, rows, batches, end)
                    size = conn.execute("SELECT pg_total_relation_size('trades') + coalesce((SELECT sum("
                                        "pg_total_relation_size(inhrelid)) FROM pg_inherits WHERE inhparent = 'trades'::regclass), 0)"
                                        ).fetchone()[0]
            finally:
                with psycopg.connect(admin_dsn_for("postgres"), autocommit=True) as admin:
                    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            result = {"rows": rows, "layout": layout, "bulk_rows_per_s": round(bulk), "batch_rows_per_s": round(steady),
                      "size_mb": round(size / 2**20), "query_ms": {k: round(v, 2) for k, v in timings.items()},
                      "query_pages": {k: v["pages"] for k, v in facts.items()},
                      "query_tables_scanned": {k: v["relations"] for k, v in facts.items()}}
            results.append(result)
            print(json.dumps(result), flush=True)
    return results


def table(results: list[dict]) -> str:
    titles = list(results[0]["query_ms"])
    head = f"{'rows':>10}  {'layout':<17}{'bulk rows/s':>12}{'batch rows/s':>13}{'MB':>6}" + "".join(f"{t[:16]:>18}" for t in titles)
    lines = [head, "(query times: median ms)"]
    for r in results:
        lines.append(f"{r['rows']:>10,}  {r['layout']:<17}{r['bulk_rows_per_s']:>12,}{r['batch_rows_per_s']:>13,}{r['size_mb']:>6}"
                     + "".join(f"{r['query_ms'][t]:>18.2f}" for t in titles))
    lines.append("(pages touched per query, shared buffers hit + read / tables or partitions scanned)")
    for r in results:
        lines.append(f"{r['rows']:>10,}  {r['layout']:<17}{'':>37}"
                     + "".join(f"{str(r['query_pages'][t]) + ' / ' + str(r['query_tables_scanned'][t]):>18}" for t in titles))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument("--rows-per-day", type=int, default=1_000_000)
    parser.add_argument("--batches", type=int, default=100, help="1,000-row batches for the steady insert rate")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--dsn", help="superuser DSN of an existing server (default: a throwaway cluster)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    cluster = None
    if args.dsn:
        dsn_for = lambda name: make_conninfo(args.dsn, dbname=name)  # noqa: E731
    else:
        cluster = PostgresCluster.new(die_with_parent=True)
        cluster.create()
        cluster.start()
        dsn_for = cluster.dsn_for
    try:
        results = run(dsn_for, args.sizes, args.layouts, args.rows_per_day, args.batches, args.repeat)
    finally:
        if cluster is not None:
            cluster.destroy()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
