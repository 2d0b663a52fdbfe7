"""Codegen target ``grafana``: the provisioned Grafana dashboards of the compose stack.

    tickwire generate grafana -o compose/grafana/dashboards          # write
    tickwire generate grafana --check compose/grafana/dashboards     # CI: exit 1 when stale

- ``market.json`` — prices from PostgreSQL: symbol variable (from the trades table, so a new
  symbol appears by itself), price, candles, current price, 1h/24h change, 24h high/low, trades
  in 24h, trades per second, last 100 trades.
- ``pipeline.json`` — health from Prometheus: WebSocket rates per stream, invalid/dead letters,
  reconnects, gaps, completeness (trades lost per symbol), connections, ingest latency (p50/p99
  of event → received, received → commit, event → commit; clock offset), Kafka rates per topic and lag, Spark rows/s and batch time,
  PostgreSQL rows per table (the tables of streams.yaml), end-to-end latency, up/down, spool.
- ``logs.json`` — Loki: every container's logs, filterable by service and level.

Tables, topics and streams come from streams.yaml; datasource uids (``postgres``,
``prometheus``, ``loki``) from compose/grafana/provisioning/datasources/datasources.yml. The JSON
is checked against Grafana's dashboard schema by tools/dashcheck (grafana-foundation-sdk).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from tickwire.framework.components import CodegenSpec
from tickwire.framework.hookspecs import hookimpl

if TYPE_CHECKING:
    from tickwire.framework.config import Config

PG = {"type": "grafana-postgresql-datasource", "uid": "postgres"}
PROM = {"type": "prometheus", "uid": "prometheus"}
LOKI = {"type": "loki", "uid": "loki"}
SCHEMA_VERSION = 41
TAGS = ["tickwire"]


# -- what the dashboards need from streams.yaml ----------------------------------------------------

def _table_of(config: Config, event_type: str, fallback: str) -> str:
    for name in sorted(config.streams):
        if config.streams[name].event_type == event_type:
            return config.streams[name].table
    return fallback


def market_tables(config: Config) -> dict[str, str]:
    candles = sorted(block["table"] for block in config.derived.values() if block.get("kind") == "candles")
    return {
        "trades": _table_of(config, "trade", "trades"),
        "ticker_1h": _table_of(config, "1hTicker", "ticker_1h"),
        "ticker_1d": _table_of(config, "24hrTicker", "ticker_1d"),
        "candles": candles[0] if candles else "candles_1m",
    }


def stored_tables(config: Config) -> list[str]:
    tables = {stream.table for stream in config.streams.values()}
    tables |= {block["table"] for block in config.derived.values()}
    return sorted(tables | {"dead_letters"})


def topics(config: Config) -> list[str]:
    return sorted({s.topic.name for s in config.streams.values() if s.topic is not None})


# -- panel helpers ---------------------------------------------------------------------------------

class _Layout:
    """Places panels left to right in rows of 24 columns and numbers them."""

    def __init__(self):
        self.x = self.y = self.row_height = 0
        self.next_id = 1
        self.panels: list[dict] = []

    def add(self, panel: dict, w: int, h: int) -> None:
        if self.x + w > 24:
            self.x, self.y, self.row_height = 0, self.y + self.row_height, 0
        panel = {"id": self.next_id, **panel, "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y}}
        self.next_id += 1
        self.panels.append(panel)
        self.x += w
        self.row_height = max(self.row_height, h)

    def row(self, title: str) -> None:
        if self.x:
            self.x, self.y, self.row_height = 0, self.y + self.row_height, 0
        self.panels.append({"id": self.next_id, "type": "row", "title": title, "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.next_id += 1
        self.y += 1


def sql_target(sql: str, fmt: str = "time_series", ref: str = "A") -> dict:
    return {"refId": ref, "datasource": PG, "editorMode": "code", "format": fmt, "rawQuery": True, "rawSql": sql}


def prom_target(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> dict:
    target = {"refId": ref, "datasource": PROM, "editorMode": "code", "expr": expr, "legendFormat": legend or "__auto", "range": not instant}
    if instant:
        target["instant"] = True
    return target


def _panel(kind: str, title: str, datasource: dict, targets: list[dict], description: str = "",
           unit: str | None = None, options: dict | None = None, decimals: int | None = None) -> dict:
    defaults: dict = {}
    if unit:
        defaults["unit"] = unit
    if decimals is not None:
        defaults["decimals"] = decimals
    panel = {"type": kind, "title": title, "datasource": datasource, "targets": targets,
             "fieldConfig": {"defaults": defaults, "overrides": []}, "options": options or {}}
    if description:
        panel["description"] = description
    return panel


def timeseries(title, datasource, targets, description="", unit=None, stack=False) -> dict:
    panel = _panel("timeseries", title, datasource, targets, description, unit,
                   {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
                    "tooltip": {"mode": "multi", "sort": "desc"}})
    if stack:
        panel["fieldConfig"]["defaults"]["custom"] = {"stacking": {"mode": "normal", "group": "A"}, "fillOpacity": 20}
    return panel


def stat(title, datasource, targets, description="", unit=None, decimals=None, colored=False) -> dict:
    panel = _panel("stat", title, datasource, targets, description, unit,
                   {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "value" if colored else "none", "graphMode": "none", "textMode": "value",
                    "justifyMode": "auto", "orientation": "auto", "wideLayout": True, "showPercentChange": False,
                    "percentChangeColorMode": "standard"}, decimals)
    if colored:
        panel["fieldConfig"]["defaults"]["thresholds"] = {
            "mode": "absolute", "steps": [{"color": "red", "value": None}, {"color": "green", "value": 0}]}
    return panel


def _dashboard(uid: str, title: str, description: str, panels: list[dict], variables: list[dict],
               time_from: str = "now-6h", refresh: str = "30s") -> dict:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": TAGS,
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": refresh,
        "time": {"from": time_from, "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": [{"title": "tickwire", "type": "dashboards", "tags": TAGS, "asDropdown": False,
                   "includeVars": False, "keepTime": True, "targetBlank": False, "icon": "external link", "tooltip": ""}],
        "templating": {"list": variables},
        "panels": panels,
    }


# -- Market ----------------------------------------------------------------------------------------

def market(config: Config) -> dict:
    t = market_tables(config)
    trades, candles, t1h, t1d = t["trades"], t["candles"], t["ticker_1h"], t["ticker_1d"]
    sym = "symbol = '$symbol'"
    layout = _Layout()
    layout.add(stat("Price", PG, [sql_target(
        f"SELECT trade_time AS time, price FROM {trades} WHERE {sym} ORDER BY trade_id DESC LIMIT 1", "table")],
        "Last trade price.", decimals=None), 4, 4)
    layout.add(stat("1h change", PG, [sql_target(
        f"SELECT event_time AS time, price_change_percent / 100 AS change FROM {t1h} WHERE {sym} ORDER BY event_time DESC LIMIT 1",
        "table")], "Rolling 1 hour price change (Binance 1h ticker).", unit="percentunit", decimals=2, colored=True), 4, 4)
    layout.add(stat("24h change", PG, [sql_target(
        f"SELECT event_time AS time, price_change_percent / 100 AS change FROM {t1d} WHERE {sym} ORDER BY event_time DESC LIMIT 1",
        "table")], "Rolling 24 hour price change (Binance 24h ticker).", unit="percentunit", decimals=2, colored=True), 4, 4)
    layout.add(stat("24h high", PG, [sql_target(
        f"SELECT event_time AS time, high_price FROM {t1d} WHERE {sym} ORDER BY event_time DESC LIMIT 1", "table")]), 3, 4)
    layout.add(stat("24h low", PG, [sql_target(
        f"SELECT event_time AS time, low_price FROM {t1d} WHERE {sym} ORDER BY event_time DESC LIMIT 1", "table")]), 3, 4)
    layout.add(stat("Trades in 24h", PG, [sql_target(
        f"SELECT event_time AS time, total_trades FROM {t1d} WHERE {sym} ORDER BY event_time DESC LIMIT 1", "table")],
        "Number of trades in the rolling 24 hours (Binance 24h ticker).", unit="short"), 6, 4)
    layout.add(timeseries("Price", PG, [sql_target(
        f"SELECT $__timeGroupAlias(trade_time, $__interval), (array_agg(price ORDER BY trade_id DESC))[1] AS price\n"
        f"FROM {trades}\nWHERE $__timeFilter(trade_time) AND {sym}\nGROUP BY 1\nORDER BY 1")],
        "Last trade price per interval."), 12, 9)
    candle = _panel("candlestick", f"Candles ({candles})", PG, [sql_target(
        f"SELECT window_start AS time, open, high, low, close, volume\nFROM {candles}\n"
        f"WHERE $__timeFilter(window_start) AND {sym}\nORDER BY 1")],
        "OHLC candles computed by the Spark job.",
        options={"mode": "candles+volume", "candleStyle": "candles", "colorStrategy": "open-close",
                 "colors": {"up": "green", "down": "red", "flat": "gray"}, "includeAllFields": False, "fields": {},
                 "tooltip": {"mode": "multi", "sort": "none"},
                 "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []}})
    layout.add(candle, 12, 9)
    layout.add(timeseries("Trades per second", PG, [sql_target(
        f"SELECT $__timeGroupAlias(trade_time, $__interval), count(*) / ($__interval_ms / 1000.0) AS \"trades/s\"\n"
        f"FROM {trades}\nWHERE $__timeFilter(trade_time) AND {sym}\nGROUP BY 1\nORDER BY 1")],
        "Trades stored per second, averaged over the interval.", unit="ops"), 24, 7)
    table = _panel("table", "Last 100 trades", PG, [sql_target(
        f"SELECT trade_time AS time, trade_id AS id, price, quantity, price * quantity AS value,\n"
        f"       CASE WHEN buyer_is_maker THEN 'buyer' ELSE 'seller' END AS maker\n"
        f"FROM {trades}\nWHERE {sym}\nORDER BY trade_id DESC\nLIMIT 100", "table")],
        "Newest first. maker = which side was the market maker (buyer maker = a sell hit the bid).",
        options={"showHeader": True, "cellHeight": "sm", "frameIndex": 0, "footer": {"show": False, "reducer": ["sum"], "fields": ""}})
    layout.add(table, 24, 12)
    symbol_var = {
        "name": "symbol", "label": "Symbol", "type": "query", "datasource": PG,
        "query": f"SELECT DISTINCT symbol FROM {trades} ORDER BY 1",
        "definition": f"SELECT DISTINCT symbol FROM {trades} ORDER BY 1",
        "refresh": 1, "sort": 1, "multi": False, "includeAll": False, "hide": 0,
        "current": {"text": "", "value": ""}, "options": [], "regex": "", "skipUrlSync": False,
    }
    return _dashboard("tickwire-market", "tickwire / Market",
                      "Market data for one symbol, from PostgreSQL (written by the Spark job).",
                      layout.panels, [symbol_var], time_from="now-3h", refresh="10s")


# -- Pipeline --------------------------------------------------------------------------------------

# histogram → (panel title, what it measures, label sets); p50 and p99 of each, from the _bucket
# series (framework/latency.py); the p99 alert is TickwireCommitLatencyHigh in
# compose/prometheus/rules/tickwire.rules.yml
LATENCY_HISTOGRAMS = (
    ("tickwire_event_to_commit_seconds", "Latency: Binance event → sink commit",
     "What a reader of the store waits: Binance's event time E to the sink's write returning (committed / "
     "acknowledged), corrected by the clock offset.", "stream, sink"),
    ("tickwire_received_to_commit_seconds", "Latency: received → sink commit",
     "tickwire's own share: arrival to the sink's write returning (batching, queues, the write).", "stream, sink"),
    ("tickwire_event_lag_seconds", "Latency: Binance event → received",
     "Binance and the network's share: event time E to arrival, corrected by the clock offset.", "stream"),
)


def latency_quantile(metric: str, q: float, by: str, window: str = "$__rate_interval") -> str:
    """The PromQL of one latency quantile: ``histogram_quantile`` over the rate of the buckets."""
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket[{window}])))"


def latency_panels() -> list[tuple[dict, int]]:
    """p50/p99 per hop, plus the clock offset the event-time hops are corrected by."""
    panels = []
    for metric, title, description, by in LATENCY_HISTOGRAMS:
        legend = " ".join(f"{{{{{label.strip()}}}}}" for label in by.split(","))
        targets = [prom_target(latency_quantile(metric, q, by), f"p{int(q * 100)} {legend}", ref)
                   for q, ref in ((0.5, "A"), (0.99, "B"))]
        panels.append((timeseries(title, PROM, targets, description, unit="s"), 8))
    offset = timeseries("Clock offset against Binance", PROM, [prom_target(
        "max by (source) (tickwire_clock_offset_seconds)", "{{source}}")],
        "This machine's clock minus Binance's server time (GET /api/v3/time, NTP-style). Event-time latencies "
        "are corrected by it; more than a second means the host's time sync is broken.", unit="s")
    return panels + [(offset, 24)]


def pipeline(config: Config) -> dict:
    table_re = "|".join(stored_tables(config))
    topic_re = "|".join(t.replace(".", "\\\\.") for t in topics(config))
    layout = _Layout()
    layout.row("Ingest (tickwire run)")
    layout.add(timeseries("WebSocket messages/s per stream", PROM, [prom_target(
        "sum by (stream) (rate(tickwire_messages_received_total[$__rate_interval]))", "{{stream}}")], unit="ops"), 8, 8)
    layout.add(timeseries("Invalid and dead-lettered /s", PROM, [
        prom_target("sum by (stream) (rate(tickwire_messages_invalid_total[$__rate_interval]))", "invalid {{stream}}", "A"),
        prom_target("sum by (stream) (rate(tickwire_dead_letters_total[$__rate_interval]))", "dead-lettered {{stream}}", "B")],
        unit="ops"), 8, 8)
    layout.add(timeseries("Reconnects", PROM, [prom_target(
        "sum by (source) (increase(tickwire_reconnects_total[$__rate_interval]))", "{{source}}")],
        "WebSocket reconnects per interval."), 8, 8)
    layout.add(timeseries("Gaps detected / filled (trades)", PROM, [
        prom_target("sum by (symbol) (increase(tickwire_gap_trades_missing_total[$__rate_interval]))", "missing {{symbol}}", "A"),
        prom_target("sum by (symbol) (increase(tickwire_gap_trades_filled_total[$__rate_interval]))", "filled {{symbol}}", "B")],
        "Trade-id gaps found in the stream and trades recovered from the REST API."), 8, 8)
    lost = stat("Completeness: trades lost per symbol", PROM, [prom_target(
        "sum by (symbol, reason) (tickwire_trade_gap_trades_lost_total)", "{{symbol}} {{reason}}", instant=True)],
        "Trades lost for good (ranges no source could fill; one row each in trade_gaps or on the dead-letter "
        "topic), by symbol and reason since the process started. No value = complete capture.")
    lost["options"]["textMode"] = "value_and_name"
    layout.add(lost, 8, 8)
    layout.add(stat("Open connections", PROM, [prom_target("sum(tickwire_connections_open)", instant=True)],
                    "WebSocket connections currently open (0 = disconnected).", colored=True), 4, 8)
    layout.add(stat("Spool", PROM, [
        prom_target("sum(tickwire_spool_records)", "records", "A", instant=True),
        prom_target("sum(tickwire_spool_bytes)", "bytes", "B", instant=True)],
        "Records waiting on disk because Kafka is unreachable (should be 0)."), 4, 8)
    layout.add(timeseries("Event lag (ingest − Binance E)", PROM, [prom_target(
        "histogram_quantile(0.95, sum by (le, stream) (rate(tickwire_event_lag_seconds_bucket[$__rate_interval])))",
        "p95 {{stream}}")], unit="s"), 8, 8)
    layout.row("Ingest latency")
    for panel, w in latency_panels():
        layout.add(panel, w, 8)
    layout.row("Kafka")
    layout.add(timeseries("Messages in/s per topic", PROM, [prom_target(
        f'sum by (topic) (rate(kafka_topic_partition_current_offset{{topic=~"{topic_re}|tickwire\\\\..*"}}[$__rate_interval]))',
        "{{topic}}")], unit="ops"), 12, 8)
    layout.add(timeseries("Consumer lag", PROM, [
        prom_target("sum by (query) (tickwire_spark_kafka_offset_lag)", "spark {{query}}", "A"),
        prom_target("sum by (consumergroup, topic) (kafka_consumergroup_lag)", "{{consumergroup}} {{topic}}", "B")],
        "Messages behind the end of the topic: the Spark queries (from their progress) and any consumer group.",
        unit="short"), 12, 8)
    layout.row("Spark")
    layout.add(timeseries("Input vs processed rows/s", PROM, [
        prom_target("sum by (query) (tickwire_spark_input_rows_per_second)", "input {{query}}", "A"),
        prom_target("sum by (query) (tickwire_spark_processed_rows_per_second)", "processed {{query}}", "B")],
        unit="rowsps"), 12, 8)
    layout.add(timeseries("Batch duration", PROM, [prom_target(
        "max by (query) (tickwire_spark_batch_duration_seconds)", "{{query}}")], unit="s"), 12, 8)
    layout.row("PostgreSQL and end to end")
    layout.add(timeseries("Rows per table", PROM, [prom_target(
        f'sum by (relname) (pg_stat_user_tables_n_live_tup{{relname=~"{table_re}"}})', "{{relname}}")],
        "Live rows (estimate from pg_stat_user_tables).", unit="short"), 12, 8)
    layout.add(timeseries("End-to-end latency (Binance E → PostgreSQL commit)", PROM, [
        prom_target(f"histogram_quantile({q}, sum by (le) (rate(tickwire_e2e_latency_seconds_bucket[$__rate_interval])))",
                    f"p{int(q * 100)}", ref) for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))], unit="s"), 12, 8)
    layout.row("Services")
    up = stat("Service up/down", PROM, [prom_target("up", "{{job}}", instant=True)],
              "1 = Prometheus can scrape the service.", colored=True)
    up["options"]["textMode"] = "value_and_name"
    up["fieldConfig"]["defaults"]["mappings"] = [{"type": "value", "options": {
        "0": {"text": "DOWN", "color": "red", "index": 0}, "1": {"text": "UP", "color": "green", "index": 1}}}]
    up["fieldConfig"]["defaults"]["thresholds"] = {"mode": "absolute", "steps": [
        {"color": "red", "value": None}, {"color": "green", "value": 1}]}
    layout.add(up, 24, 5)
    return _dashboard("tickwire-pipeline", "tickwire / Pipeline",
                      "Health of every stage: WebSocket → Kafka → Spark → PostgreSQL.", layout.panels, [], "now-1h")


# -- Logs ------------------------------------------------------------------------------------------

def logs(config: Config) -> dict:
    def label_var(name: str, label: str) -> dict:
        return {"name": name, "label": label, "type": "query", "datasource": LOKI,
                "query": {"label": name, "refId": "LokiVariableQueryEditor-VariableQuery", "stream": "", "type": 1},
                "definition": f"label_values({name})", "refresh": 2, "sort": 1, "multi": True, "includeAll": True,
                "allValue": ".+", "hide": 0, "current": {"text": ["All"], "value": ["$__all"]}, "options": [], "regex": "", "skipUrlSync": False}

    search = {"name": "search", "label": "Search", "type": "textbox", "query": "", "hide": 0,
              "current": {"text": "", "value": ""}, "options": [], "skipUrlSync": False}
    selector = '{service=~"$service", level=~"$level"} |~ "(?i)$search"'
    layout = _Layout()
    layout.add(timeseries("Log lines by level", LOKI, [{
        "refId": "A", "datasource": LOKI, "editorMode": "code", "queryType": "range",
        "expr": f"sum by (level) (count_over_time({selector} [$__auto]))", "legendFormat": "{{level}}"}],
        stack=True), 24, 6)
    layout.add(_panel("logs", "Logs", LOKI, [{
        "refId": "A", "datasource": LOKI, "editorMode": "code", "queryType": "range", "expr": selector}],
        options={"showTime": True, "showLabels": True, "showCommonLabels": False, "wrapLogMessage": True,
                 "prettifyLogMessage": False, "enableLogDetails": True, "showLogContextToggle": False, "dedupStrategy": "none",
                 "sortOrder": "Descending"}), 24, 20)
    return _dashboard("tickwire-logs", "tickwire / Logs",
                      "Container logs of the compose stack (shipped by Grafana Alloy to Loki).", layout.panels,
                      [label_var("service", "Service"), label_var("level", "Level"), search], "now-1h")


def _dump(doc: dict) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def generate(config: Config) -> dict[str, str]:
    return {"market.json": _dump(market(config)), "pipeline.json": _dump(pipeline(config)), "logs.json": _dump(logs(config))}


@hookimpl
def tickwire_register_codegen_targets(register):
    register(CodegenSpec(
        name="grafana",
        factory=generate,
        description="Grafana dashboards (Market, Pipeline, Logs) for the compose stack (-o compose/grafana/dashboards)",
    ))
