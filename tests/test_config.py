"""streams.yaml: every class of config error is reported as file:line:col: path: reason, all at
once, and the CLI exits 2 without a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tickwire.framework.config import ConfigError, load_config
from tickwire.framework.plugins import PluginManager

REPO = Path(__file__).resolve().parent.parent
TICKWIRE = [sys.executable, "-m", "tickwire.framework.cli"]


@pytest.fixture(scope="module")
def manager() -> PluginManager:
    return PluginManager()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the shipped config and schemas, free to break."""
    shutil.copy(REPO / "streams.yaml", tmp_path / "streams.yaml")
    shutil.copytree(REPO / "schemas", tmp_path / "schemas")
    return tmp_path


def problems_of(path: Path, manager: PluginManager, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, manager, display_name="streams.yaml", **kwargs)
    return [str(p) for p in info.value.problems]


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_the_shipped_config_is_valid(manager):
    config = load_config(REPO / "streams.yaml", manager)
    assert list(config.streams) == ["trade", "ticker_1h", "ticker"]
    assert [s.table for s in config.streams.values()] == ["trades", "ticker_1h", "ticker_1d"]
    assert config.symbols == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    assert config.profile().name == "local"
    assert config.streams["trade"].primary_key == ["symbol", "trade_id"]


def test_environment_interpolation_with_defaults_and_types(project, manager):
    env = {"TICKWIRE_BINANCE_URL": "ws://127.0.0.1:1234", "TICKWIRE_METRICS_PORT": "9999"}
    config = load_config(project / "streams.yaml", manager, environ=env)
    assert config.sources["binance"][1]["url"] == "ws://127.0.0.1:1234"
    assert config.metrics["port"] == 9999  # typed after expansion
    assert config.sinks["sqlite"][1]["path"] == "data/tickwire.db"  # the default


def test_unset_variable_without_default_is_an_error(project, manager):
    edit(project / "streams.yaml", "${TICKWIRE_SQLITE_PATH:-data/tickwire.db}", "${NO_SUCH_VARIABLE}")
    line = line_of(project / "streams.yaml", "NO_SUCH_VARIABLE")
    [problem] = problems_of(project / "streams.yaml", manager, environ={})
    assert problem == f"streams.yaml:{line}:11: sinks.sqlite.path: environment variable NO_SUCH_VARIABLE is not set (write ${{NO_SUCH_VARIABLE:-default}} for a default)"


def test_set_overrides_any_field(project, manager):
    config = load_config(project / "streams.yaml", manager, overrides=["engine.batch_size=7", "symbols=[BTCUSDT]"])
    assert config.engine["batch_size"] == 7
    assert config.streams["trade"].symbols == ["BTCUSDT"]


def test_set_with_a_bad_value_names_the_flag(project, manager):
    [problem] = problems_of(project / "streams.yaml", manager, overrides=["engine.batch_size=lots"])
    # --set:N:COL: the N-th --set, the column of the value in "engine.batch_size=lots"
    assert problem == "--set:1:19: engine.batch_size: 'lots' is not of type 'integer'"


def test_set_of_an_unknown_field_names_the_flag_not_the_file(project, manager):
    problems = problems_of(project / "streams.yaml", manager, overrides=["engine.batch_size=7", "engine.nope=1", "foo=1"])
    assert "--set:2:1: engine.nope: unknown field 'nope' (allowed: " in problems[0], problems
    assert problems[1].startswith("--set:3:1: foo: unknown field 'foo'"), problems


def test_relative_paths_resolve_against_the_config_folder(project, manager, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    config = load_config(project / "streams.yaml", manager)
    assert config.streams["trade"].schema_path == project / "schemas" / "trade.schema.json"
    assert config.resolve_path("data/x.db") == project / "data" / "x.db"


def test_all_problems_are_reported_at_once_with_their_lines(project, manager):
    path = project / "streams.yaml"
    edit(path, "symbols: [BTCUSDT, ETHUSDT, SOLUSDT]", "symbols: [BTCUSDT, btc-usdt]")
    edit(path, "    table: ticker_1d", "    table: trades")
    edit(path, "  batch_size: 1000", "  batch_sise: 1000")
    edit(path, "schema: schemas/ticker_1h.schema.json", "schema: schemas/missing.schema.json")
    edit(path, "    sinks: [kafka]", "    sinks: [kafka, nowhere]")
    edit(path, "    type: jsonl", "    type: jsonlines")
    edit(path, "      name: binance.ticker_1h", "      name: binance ticker 1h")
    problems = problems_of(path, manager)
    text = path.read_text()
    expected = [
        f"streams.yaml:{line_of(path, 'btc-usdt')}:20: symbols[1]: 'btc-usdt' is not a valid symbol (2-20 uppercase letters or digits, e.g. BTCUSDT)",
        f"streams.yaml:{line_of(path, 'missing.schema.json')}:13: streams.ticker_1h.schema: schema file 'schemas/missing.schema.json' not found (resolved to {project}/schemas/missing.schema.json)",
        f"streams.yaml:{line_of(path, 'binance ticker 1h')}:13: streams.ticker_1h.topic.name: 'binance ticker 1h' is not a valid Kafka topic name (letters, digits, '.', '_', '-'; at most 249)",
        f"streams.yaml:{text.splitlines().index('    table: trades', line_of(path, 'ticker:')) + 1}:12: streams.ticker.table: table 'trades' is already used by streams.trade (line {line_of(path, 'table: trades')})",
        f"streams.yaml:{line_of(path, 'type: jsonlines')}:11: sinks.dead-letter-file.type: unknown sink type 'jsonlines' (installed: jsonl, kafka, postgres, sqlite; did you mean 'jsonl'?); see `tickwire plugins`",
        f"streams.yaml:{line_of(path, 'nowhere')}:20: profiles.compose.sinks[1]: no sink 'nowhere' (declared: sqlite, dead-letter-file, kafka, postgres)",
        f"streams.yaml:{line_of(path, 'batch_sise')}:3: engine.batch_sise: unknown field 'batch_sise' (did you mean 'batch_size'?)",
    ]
    assert sorted(problems) == sorted(expected)


def test_duplicate_keys_are_errors(project, manager):
    path = project / "streams.yaml"
    edit(path, "  ticker_1h:\n", "  trade:\n")
    [problem] = problems_of(path, manager)
    assert problem.endswith(f"streams.trade: duplicate key 'trade' (first defined at line {line_of(path, '  trade:')})")


def test_unsafe_sql_identifiers_are_rejected(project, manager):
    edit(project / "streams.yaml", "table: trades", 'table: "trades; DROP TABLE x"')
    [problem] = problems_of(project / "streams.yaml", manager)
    assert "streams.trade.table: 'trades; DROP TABLE x' is not a safe SQL identifier" in problem


def test_unknown_transform_and_profile_checks(project, manager):
    path = project / "streams.yaml"
    edit(path, '    channel: "{symbol}@trade"\n', '    channel: "{symbol}@trade"\n    transforms: [validate, normalise]\n')
    edit(path, "default_profile: local", "default_profile: laptop")
    problems = problems_of(path, manager)
    assert any("streams.trade.transforms[1]: unknown transform 'normalise'" in p for p in problems)
    assert any("default_profile: default profile 'laptop' is not declared (profiles: local, compose, postgres)" in p for p in problems)


def test_transform_options_are_checked_against_the_transform_schema(project, manager):
    path = project / "streams.yaml"
    edit(path, '    channel: "{symbol}@trade"\n',
         '    channel: "{symbol}@trade"\n    transforms: [validate, {normalize: {include_rwa: true}}]\n')
    edit(path, '    channel: "{symbol}@ticker"\n',
         '    channel: "{symbol}@ticker"\n    transforms: [validate, {normalize: {include_raw: "yes"}}]\n')
    problems = problems_of(path, manager)
    line = line_of(path, "include_rwa")
    assert f"streams.yaml:{line}:41: streams.trade.transforms[1].normalize.include_rwa: unknown field 'include_rwa' (did you mean 'include_raw'?)" in problems
    ticker_line = line_of(path, 'include_raw: "yes"')
    assert any(p.startswith(f"streams.yaml:{ticker_line}:")
               and "streams.ticker.transforms[1].normalize.include_raw: 'yes' is not of type 'boolean'" in p for p in problems), problems


def test_dead_letter_sink_must_take_dead_letters(project, manager):
    # the kafka sink takes dead letters; a profile naming an unknown one is caught
    edit(project / "streams.yaml", "    dead_letter: dead-letter-file", "    dead_letter: dlq")
    [problem] = problems_of(project / "streams.yaml", manager)
    assert "profiles.local.dead_letter: no sink 'dlq'" in problem


def test_broken_stream_schema_is_reported_in_the_schema_file(project, manager):
    schema = project / "schemas" / "trade.schema.json"
    edit(schema, '"type": "decimal"', '"type": "decimall"')
    edit(schema, '"kafka_key": "symbol"', '"kafka_key": "symbol", "event_tim": "x"')
    problems = problems_of(project / "streams.yaml", manager)
    assert len(problems) == 2
    decimal_line = line_of(schema, "decimall")
    assert any(p.startswith(f"schemas/trade.schema.json:{decimal_line}:") and "properties.p.x-tickwire.type" in p for p in problems), problems
    assert any("x-tickwire.event_tim: unknown field 'event_tim' (did you mean 'event_time'?)" in p for p in problems), problems


def test_annotation_consistency_is_checked(project, manager):
    schema = project / "schemas" / "ticker_1h.schema.json"
    edit(schema, '"symbol",\n      "event_time"', '"symbol",\n      "event_tyme"')
    [problem] = problems_of(project / "streams.yaml", manager)
    assert "x-tickwire.primary_key[1]: primary key column 'event_tyme' is not a column of this schema" in problem


def test_yaml_syntax_error_has_a_location(project, manager):
    (project / "streams.yaml").write_text("version: 1\nsources: [unclosed\n")
    [problem] = problems_of(project / "streams.yaml", manager)
    assert problem.startswith("streams.yaml:3:1: not valid YAML")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([*TICKWIRE, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=60)


def test_cli_validate_passes_on_the_shipped_config():
    result = run_cli("validate", cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "streams.yaml: ok (3 streams" in result.stdout
    assert "samples:" in result.stdout and "match their schemas" in result.stdout


def test_cli_exits_2_with_messages_and_no_traceback(project):
    edit(project / "streams.yaml", "symbols: [BTCUSDT, ETHUSDT, SOLUSDT]", "symbols: [BTCUSDT, eth]")
    edit(project / "streams.yaml", "version: 1", "version: 2")
    result = run_cli("validate", cwd=project)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "streams.yaml:4:10: version: 1 was expected"
    assert lines[1].startswith("streams.yaml:14:20: symbols[1]: 'eth' is not a valid symbol")
    assert lines[-1] == "tickwire: 2 problems found; nothing was run."


def test_cli_config_flag_and_missing_file(tmp_path):
    result = run_cli("-c", "nope.yaml", "validate", cwd=tmp_path)
    assert result.returncode == 2
    assert "nope.yaml: config file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_sample_that_breaks_its_schema_is_reported(project):
    samples = project / "tests" / "samples"
    samples.mkdir(parents=True)
    (samples / "trade.jsonl").write_text(textwrap.dedent("""\
        {"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"0.001","q":"100","T":1672515782136,"m":true,"M":true}
        {"e":"trade","E":1672515782136,"s":"BNBBTC","t":12346,"p":0.001,"q":"100","T":1672515782136,"m":true,"M":true}
    """))
    result = run_cli("validate", cwd=project)
    assert result.returncode == 2
    assert "tests/samples/trade.jsonl:2:1: trade: does not match trade.schema.json: 0.001 is not of type 'string'" in result.stderr


def test_missing_sections_are_reported_not_crashed_on(project, manager):
    text = (project / "streams.yaml").read_text()
    start, end = text.index("sources:\n"), text.index("symbols:")
    (project / "streams.yaml").write_text(text[:start] + text[end:])
    [problem] = problems_of(project / "streams.yaml", manager)
    assert problem == "streams.yaml:4:1: missing required field 'sources'"
