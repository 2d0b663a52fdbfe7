"""The docker compose stack, checked without a Docker engine (scripts/validate_stack.py does the
work; these tests run each check and prove, with broken copies, that the checks catch faults).
The dashboard SQL runs against a real PostgreSQL migrated by `tickwire db migrate`."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import yaml

from scripts import validate_stack as vs

ROOT = vs.ROOT


@pytest.fixture(scope="module", autouse=True)
def go_tools():
    return vs.build_tools()


def _broken_compose(tmp_path: Path, edit) -> Path:
    """A copy of the compose file (in compose/, so relative paths still resolve) after edit(doc)."""
    doc = yaml.safe_load(vs.COMPOSE_FILE.read_text())
    edit(doc)
    path = vs.COMPOSE_DIR / f".broken-{os.getpid()}-{tmp_path.name}.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def broken(tmp_path, request):
    made = []

    def make(edit):
        made.append(_broken_compose(tmp_path, edit))
        return vs.compose_problems(made[-1])

    yield make
    for path in made:
        path.unlink(missing_ok=True)


def test_compose_file_passes_compose_go_and_cross_checks():
    assert vs.compose_problems() == []


def test_missing_secret_fails_fast_with_its_name():
    assert vs.required_vars_fail_fast() == []
    project, error = vs.load_project(vs.COMPOSE_FILE, vs.ENV_EXAMPLE)
    assert project is None and "set " in error and "in .env" in error


def test_unpinned_image_is_caught(broken):
    def edit(doc):
        doc["services"]["loki"]["image"] = "grafana/loki:latest"
        doc["services"]["prometheus"]["image"] = "prom/prometheus"
    problems = broken(edit)
    assert any("grafana/loki:latest is not pinned" in p for p in problems)
    assert any("prom/prometheus is not pinned" in p for p in problems)


def test_missing_depends_on_target_is_caught(broken):
    def edit(doc):
        doc["services"]["grafana"]["depends_on"]["ghost"] = {"condition": "service_healthy"}
    problems = broken(edit)
    # compose-go itself refuses a dependency on an undefined service
    assert any("ghost" in p for p in problems), problems


def test_port_on_all_interfaces_and_undeclared_variable_are_caught(broken):
    def edit(doc):
        doc["services"]["grafana"]["ports"] = ["3000:3000"]
        doc["services"]["grafana"]["environment"]["GF_SERVER_ROOT_URL"] = "${GRAFANA_ROOT_URL:-http://localhost}"
    problems = broken(edit)
    assert any("is not bound to 127.0.0.1" in p for p in problems)
    assert any("GRAFANA_ROOT_URL" in p and ".env.example" in p for p in problems)


def test_defaulted_password_and_missing_healthcheck_are_caught(broken):
    def edit(doc):
        doc["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] = "${POSTGRES_PASSWORD:-postgres}"
        del doc["services"]["loki"]["healthcheck"]
    problems = broken(edit)
    assert any("secret ${POSTGRES_PASSWORD} must be required" in p for p in problems)
    assert any("alloy" in p and "loki has no healthcheck" in p for p in problems)


def test_dockerfiles_reference_existing_files(tmp_path):
    assert vs._dockerfile_problems(ROOT / "Dockerfile", ROOT) == []
    assert vs._dockerfile_problems(ROOT / "spark/Dockerfile", ROOT) == []
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nCOPY no-such-dir/ /x/\n")
    problems = vs._dockerfile_problems(bad, ROOT)
    assert len(problems) == 2


def test_a_dockerfile_that_installs_the_project_copies_every_package_folder(tmp_path):
    """pyproject lists its packages explicitly: an image that `pip install .`s without one of
    their folders fails to build, so the check names the folder."""
    partial = tmp_path / "Dockerfile"
    partial.write_text("FROM python:3.11.13-slim-bookworm\nCOPY pyproject.toml README.md streams.yaml ./\n"
                       "COPY schemas/ schemas/\nCOPY tickwire/ tickwire/\nCOPY framework/ framework/\n"
                       "COPY plugins/ plugins/\nRUN pip install \".[kafka]\"\n")
    problems = vs._dockerfile_problems(partial, ROOT)
    assert problems == [f"{os.path.relpath(partial, vs.ROOT)}: installs the project but does not COPY {folder}/ "
                        "(pyproject.toml packages it)" for folder in ("devservices", "spark")]


def test_prometheus_config_rules_and_rule_unit_tests():
    assert vs.prometheus_problems() == []


def test_every_promql_expression_parses():
    items = vs.promql_expressions()
    assert len(items) > 20
    assert vs.promql_problems(items) == []
    assert vs.promql_problems([{"where": "bad", "expr": "sum(rate(x[5m])"}])


def test_dashboards_match_grafana_schema_and_datasources():
    assert vs.grafana_problems() == []


def test_dashboard_schema_check_catches_unknown_field(tmp_path):
    board = (vs.COMPOSE_DIR / "grafana/dashboards/market.json").read_text()
    bad = tmp_path / "bad.json"
    bad.write_text(board.replace('"wideLayout"', '"wideLayoutTypo"', 1))
    result = vs._tool("dashcheck", str(bad))
    assert result.returncode == 1 and "wideLayoutTypo" in result.stdout


def test_alloy_and_loki_configs():
    assert vs.alloy_problems() == []
    assert vs.loki_problems() == []


def test_alloy_syntax_error_is_caught(tmp_path):
    bad = tmp_path / "bad.alloy"
    bad.write_text((vs.COMPOSE_DIR / "alloy/config.alloy").read_text().replace("loki.write \"default\" {", "loki.write \"default\" ", 1))
    assert vs.alloy_problems(bad)


def test_generated_files_are_up_to_date():
    assert vs.generated_problems() == []


def test_every_stream_has_a_topic_and_a_silence_alert():
    from tickwire.framework.config import load_config
    from tickwire.framework.plugins import PluginManager

    config = load_config(ROOT / "streams.yaml", PluginManager())
    topics = (vs.COMPOSE_DIR / "kafka/topics.txt").read_text()
    rules = (vs.COMPOSE_DIR / "prometheus/rules/streams.rules.yml").read_text()
    for name, stream in config.streams.items():
        assert f"\n{stream.topic.name} " in topics
        assert f'stream="{name}"' in rules


# -- dashboard SQL against a real, migrated PostgreSQL ---------------------------------------------

def _dashboard_sql() -> list[tuple[str, str]]:
    queries = []
    for name, board in vs.dashboards().items():
        for panel in vs._panels(board):
            for target in panel.get("targets", []):
                if "rawSql" in target:
                    queries.append((f"{name}: {panel['title']}", target["rawSql"]))
        for var in board["templating"]["list"]:
            if (var.get("datasource") or {}).get("uid") == "postgres":
                queries.append((f"{name}: variable {var['name']}", var["query"]))
    return queries


def grafana_macros(sql: str, start: dt.datetime, end: dt.datetime, symbol: str) -> str:
    """Expand the Grafana PostgreSQL macros the way Grafana does (interval 1m)."""
    def time_group(match: re.Match) -> str:
        return f"to_timestamp(floor(extract(epoch from {match.group(1)})/60)*60) AS \"time\""

    sql = re.sub(r"\$__timeGroupAlias\((\w+),\s*[^)]*\)", time_group, sql)
    sql = re.sub(r"\$__timeFilter\((\w+)\)", lambda m: f"{m.group(1)} BETWEEN '{start.isoformat()}' AND '{end.isoformat()}'", sql)
    sql = sql.replace("$__interval_ms", "60000").replace("$__interval", "'1m'").replace("$symbol", symbol)
    assert "$" not in sql, sql
    return sql


def test_dashboard_sql_returns_rows_on_simulator_data(simulator, postgres_tables):
    """Every dashboard query, macros expanded, run as Grafana's read-only role against a database
    migrated by `tickwire db migrate` and filled by `tickwire run --profile postgres` from the
    simulator (with invalid events, so the dead-letter panels have rows too)."""
    sim = simulator(rate=300, ticker_interval=0.5, malformed_every=40, malformed_kinds="invalid_event,truncated")
    env = {**os.environ, "TICKWIRE_BINANCE_URL": sim.ws_url, "TICKWIRE_BINANCE_REST_URL": sim.rest_url,
           "TICKWIRE_PG_DSN": postgres_tables.writer_dsn}
    run = subprocess.run([sys.executable, "-m", "tickwire.framework.cli", "run", "--profile", "postgres", "--duration", "6",
                          "--metrics-port", "0", "--log-format", "json"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    now = dt.datetime.now(dt.timezone.utc)
    queries = _dashboard_sql()
    assert len(queries) >= 10
    with psycopg.connect(postgres_tables.reader_dsn) as conn:
        for where, sql in queries:
            rows = conn.execute(grafana_macros(sql, now - dt.timedelta(hours=3), now + dt.timedelta(minutes=1), "BTCUSDT")).fetchall()
            assert rows, f"{where}: no rows"


def test_every_tickwire_command_in_the_stack_parses_with_the_real_cli():
    """A container running a tickwire command that does not exist (or an option it lacks) would
    only fail at `docker compose up`; parse each one with the CLI instead, as `--help` does."""
    from click.testing import CliRunner

    from tickwire.framework.cli import build

    compose = yaml.safe_load((vs.ROOT / "compose" / "docker-compose.yml").read_text())
    commands = {}
    for name, service in compose["services"].items():
        command = service.get("command")
        if not command or not str(service.get("image", "")).startswith("tickwire/"):
            continue
        args = list(command)
        if args[0] == "tickwire":
            args = args[1:]
        elif service["image"].startswith("tickwire/spark-job"):
            continue  # spark-class master/worker commands
        commands[name] = args
    assert {"tickwire", "db-migrate", "spark-job"} <= set(commands), commands
    for name, args in commands.items():
        group, app = build(args)
        result = CliRunner().invoke(group, [*args, "--help"], obj=app)
        assert result.exit_code == 0, f"service {name}: `tickwire {' '.join(args)}` does not parse:\n{result.output}"
