"""Hostile configs and schemas: every one is refused as ``file:line:col: path: reason`` with exit
code 2, quickly and in bounded memory — never a traceback, never a hang, never a file's contents
echoed. Then property-based tests: any bytes as streams.yaml, any schema document.

Each example below is an input an attacker or an unlucky editor can produce; read them as the
documentation of what ``tickwire validate`` promises."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tickwire.framework import documents
from tickwire.framework.config import ConfigError, load_config
from tickwire.framework.plugins import PluginManager

REPO = Path(__file__).resolve().parent.parent
POSITION = re.compile(r"^\S+:\d+:\d+: ")  # file:line:col:
KNOWN_PROFILES = "known: compose, local, postgres"


@pytest.fixture(scope="module")
def manager() -> PluginManager:
    return PluginManager()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copy(REPO / "streams.yaml", tmp_path / "streams.yaml")
    shutil.copytree(REPO / "schemas", tmp_path / "schemas")
    return tmp_path


# The CLI, reporting its own peak resident memory (VmHWM of its process image) at exit. The
# rusage of wait4 cannot be used: a child started by vfork/fork + exec inherits the parent's
# high-water mark, so it would report the test runner's own size (hundreds of MiB late in a run).
PEAK_RSS_WRAPPER = """
import atexit, os, sys
def report_peak():
    with open("/proc/self/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    with open(os.environ["TICKWIRE_TEST_PEAK_FILE"], "w") as out:
        out.write(str(kib))
atexit.register(report_peak)
sys.argv[0] = "tickwire"
from tickwire.framework.cli import main
main()
"""


def tickwire(*args: str, cwd: Path, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float, int]:
    """Run the CLI; return its result, wall seconds and its peak resident memory in MiB."""
    with tempfile.TemporaryDirectory() as scratch:
        peak_file = Path(scratch) / "peak"
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-c", PEAK_RSS_WRAPPER, *args], cwd=cwd, capture_output=True, text=True,
                                env={**os.environ, **(env or {}), "TICKWIRE_TEST_PEAK_FILE": str(peak_file)})
        seconds = time.monotonic() - started
        peak_mib = int(peak_file.read_text()) // 1024
    return result, seconds, peak_mib


def refused(result: subprocess.CompletedProcess, *expected: str) -> list[str]:
    """Exit 2, no traceback, every line a positioned problem; ``expected`` among them."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    problems = result.stderr.splitlines()[:-1]
    assert problems and result.stderr.splitlines()[-1].startswith("tickwire: "), result.stderr
    for line in problems:
        assert POSITION.match(line) or line.startswith(("--profile: ", "… and ")), line
    for text in expected:
        assert any(text in line for line in problems), (text, problems)
    return problems


def problems_of(path: Path, manager: PluginManager, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, manager, display_name="streams.yaml", **kwargs)
    return [str(p) for p in info.value.problems]


# -- loading: size, aliases, depth, encoding ---------------------------------------------------


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(9))


def test_an_alias_bomb_stops_at_the_expansion_budget_fast_and_small(tmp_path):
    (tmp_path / "streams.yaml").write_text(ALIAS_BOMB)  # 9**10 values if expanded
    result, seconds, peak_mib = tickwire("validate", cwd=tmp_path)
    refused(result, "streams.yaml:6:8: f[0]: more than 100000 values (aliases count each time they are used)")
    assert seconds < 10 and peak_mib < 300, (seconds, peak_mib)


def test_a_recursive_alias_is_an_error_not_a_recursion(tmp_path):
    (tmp_path / "streams.yaml").write_text("version: 1\nsymbols: &s [BTCUSDT, *s]\n")
    refused(tickwire("validate", cwd=tmp_path)[0],
            "streams.yaml:2:23: symbols[1]: alias *s refers to a value that contains it (recursive alias)")


def test_deep_nesting_stops_at_the_depth_limit(tmp_path):
    (tmp_path / "streams.yaml").write_text("a: " + "[" * 20000 + "]" * 20000 + "\n")
    result, seconds, _ = tickwire("validate", cwd=tmp_path)
    refused(result, "streams.yaml:1:")
    assert seconds < 10


@pytest.mark.parametrize("nesting", ["[" * 40 + "]" * 40, "{a: " * 40 + "1" + "}" * 40])
def test_nesting_beyond_32_levels_is_refused_in_process(nesting):
    with pytest.raises(documents.DocumentError) as info:
        documents.loads("x: " + nesting, "streams.yaml")
    assert "nested deeper than 32 levels" in str(info.value)


def test_invalid_utf8_is_reported_at_its_line_and_column(project):
    text = (project / "streams.yaml").read_bytes().replace(b"default_profile: local", b"default_profile: loc\xffal", 1)
    (project / "streams.yaml").write_bytes(text)
    line = text[: text.index(b"\xff")].count(b"\n") + 1
    refused(tickwire("validate", cwd=project)[0], f"streams.yaml:{line}:21: not valid UTF-8 (byte 0xff)")


def test_a_nul_byte_is_reported_at_its_line_and_column(project):
    text = (project / "streams.yaml").read_text().replace("version: 1", "version: 1\x00", 1)
    (project / "streams.yaml").write_text(text)
    line = text[: text.index("\x00")].count("\n") + 1
    refused(tickwire("validate", cwd=project)[0], f"streams.yaml:{line}:11: control character U+0000 is not allowed in YAML")


def test_a_config_over_one_mib_is_not_read(tmp_path):
    (tmp_path / "streams.yaml").write_text("# padding\n" * 120_000)
    refused(tickwire("validate", cwd=tmp_path)[0], "streams.yaml:1:1: file is larger than 1 MiB; refusing to read it")


def test_a_fifo_given_as_the_config_is_refused_without_reading_it(tmp_path):
    os.mkfifo(tmp_path / "streams.yaml")  # a read would wait for a writer forever
    result, seconds, _ = tickwire("validate", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("streams.yaml: not a regular file ("), result.stderr
    assert seconds < 10


def test_thousands_of_problems_print_the_first_hundred_and_a_count(project):
    text = (project / "streams.yaml").read_text()
    (project / "streams.yaml").write_text(text + "".join(f"unknown_{i}: 1\n" for i in range(250)))
    result, _, _ = tickwire("validate", cwd=project)
    problems = refused(result)
    assert len(problems) == 101 and problems[-1].startswith("… and 150 more"), problems[-3:]
    assert result.stderr.splitlines()[-1] == "tickwire: 250 problems found; nothing was run."


def test_unsupported_yaml_tags_are_errors(project, manager):
    edit(project / "streams.yaml", "version: 1", "version: !!python/object:os.system 1")
    assert any("version: tag 'tag:yaml.org,2002:python/object:os.system' is not supported here" in p
               for p in problems_of(project / "streams.yaml", manager))


def test_merge_keys_work_and_aliases_are_copies(project, manager):
    edit(project / "streams.yaml", "  sqlite:\n    type: sqlite\n", "  sqlite: &local_sqlite\n    type: sqlite\n")
    edit(project / "streams.yaml", "  dead-letter-file:", "  sqlite2:\n    <<: *local_sqlite\n    path: other.db\n  dead-letter-file:")
    config = load_config(project / "streams.yaml", manager)
    assert config.sinks["sqlite2"] == ("sqlite", {"path": "other.db"})
    assert config.sinks["sqlite"][1]["path"] != "other.db"


# -- --set and --profile -----------------------------------------------------------------------


@pytest.mark.parametrize("item, expected", [
    ("symbols=[BTCUSDT", "--set:1:17: symbols: not valid YAML"),
    ("engine.batch_size={a: [}", "--set:1:"),
    ("engine..batch_size=5", "--set:1:1: engine..batch_size: a field name in the dotted path is empty"),
    ("no-equals-sign", "--set:1:1: expected --set dotted.path=value"),
    ("engine.batch_size=1.0e+20", "--set:1:19: engine.batch_size: 1e+20 is not an integer"),
    ("engine.batch_size=100000000000000000000", "--set:1:19: engine.batch_size: 100000000000000000000 is greater than the maximum"),
    ("engine.retry_max_s=.inf", "--set:1:20: engine.retry_max_s: inf is not a finite number"),
    ("engine.retry_max_s=.nan", "--set:1:20: engine.retry_max_s: nan is not a finite number"),
    ("metrics.port=\x00", "--set:1:14: metrics.port: control character U+0000"),
])
def test_malformed_set_values_are_positioned_errors(project, manager, item, expected):
    assert any(p.startswith(expected) for p in problems_of(project / "streams.yaml", manager, overrides=[item])), expected


def test_malformed_set_exits_2_from_the_cli(project):
    refused(tickwire("--set", "symbols=[BTCUSDT", "validate", cwd=project)[0], "--set:1:17: symbols: not valid YAML")


@pytest.mark.parametrize("profile", ["", "nope"])
def test_an_empty_or_unknown_profile_lists_the_known_ones(project, profile):
    result, _, _ = tickwire("run", "--profile", profile, "--duration", "1", "--no-status", cwd=project)
    refused(result, f"--profile: no profile {profile!r} ({KNOWN_PROFILES})")


def test_numbers_in_the_config_file_need_ranges_too(project, manager):
    edit(project / "streams.yaml", "  batch_size: 1000", "  batch_size: 1.0e+20")
    edit(project / "streams.yaml", "  linger_ms: 200", "  linger_ms: 200\n  retry_max_s: .inf")
    problems = problems_of(project / "streams.yaml", manager)
    assert any("engine.batch_size: 1e+20 is not an integer" in p for p in problems), problems
    assert any("engine.retry_max_s: inf is not a finite number" in p for p in problems), problems


# -- schema paths --------------------------------------------------------------------------------


def test_a_schema_outside_the_project_is_refused_without_reading_it(project):
    edit(project / "streams.yaml", "schema: schemas/trade.schema.json", "schema: /etc/passwd")
    problems = refused(tickwire("validate", cwd=project)[0], "streams.trade.schema: schema file '/etc/passwd' is outside the project folder")
    assert not any("root:x:" in p for p in problems), problems  # /etc/passwd's first line


def test_a_symlink_out_of_the_project_is_refused_too(project):
    (project / "schemas" / "sneaky.schema.json").symlink_to("/etc/passwd")
    edit(project / "streams.yaml", "schema: schemas/trade.schema.json", "schema: schemas/sneaky.schema.json")
    problems = refused(tickwire("validate", cwd=project)[0], "is outside the project folder")
    assert not any("root:" in p for p in problems), problems


def test_the_operator_may_allow_outside_schemas(project, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("shared-schemas")
    shutil.copy(project / "schemas" / "trade.schema.json", elsewhere / "trade.schema.json")
    edit(project / "streams.yaml", "schema: schemas/trade.schema.json", f"schema: {elsewhere}/trade.schema.json")
    assert tickwire("validate", cwd=project)[0].returncode == 2
    allowed, _, _ = tickwire("validate", cwd=project, env={"TICKWIRE_ALLOW_OUTSIDE_PATHS": "1"})
    assert allowed.returncode == 0, allowed.stderr


# -- stream schemas: validate accepts only what run can execute ----------------------------------


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def schema_edit(project: Path, change) -> Path:
    path = project / "schemas" / "trade.schema.json"
    schema = json.loads(path.read_text())
    change(schema)
    path.write_text(json.dumps(schema, indent=2))
    return path


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_an_infinite_minimum_is_a_schema_error_at_its_line(project, manager):
    path = schema_edit(project, lambda s: s["properties"]["E"].update(minimum="INFINITY"))
    path.write_text(path.read_text().replace('"INFINITY"', ".inf"))  # YAML spelling; JSON has no Infinity
    [problem] = problems_of(project / "streams.yaml", manager)
    assert problem.startswith(f"schemas/trade.schema.json:{line_of(path, '.inf')}:")
    assert "properties.E.minimum: inf is not a finite number" in problem


def test_a_ref_cycle_is_a_schema_error(project, manager):
    def cycle(schema):
        schema["$defs"] = {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}
        schema["properties"]["M"] = {"$ref": "#/$defs/a"}
    path = schema_edit(project, cycle)
    [problem] = problems_of(project / "streams.yaml", manager)
    ref_lines = [i for i, line in enumerate(path.read_text().splitlines(), 1) if '"$ref"' in line]
    assert int(problem.split(":")[1]) in ref_lines, problem  # at one of the $refs of the loop
    assert "recursive $ref (#/$defs/a -> #/$defs/b -> #/$defs/a) is not supported" in problem


@pytest.mark.parametrize("keyword, value, expected", [
    ("minimun", 0, "unknown keyword 'minimun' (did you mean 'minimum'?)"),
    ("prefixItems", [{"type": "string"}], "keyword 'prefixItems' is not supported by tickwire's record validators"),
    ("$ref", "https://example.org/evil.json", "only references inside this schema"),
    ("pattern", "([", "not a valid regular expression"),
])
def test_schema_parts_the_validators_cannot_execute_are_errors(project, manager, keyword, value, expected):
    path = schema_edit(project, lambda s: s["properties"]["t"].update({keyword: value}))
    problems = problems_of(project / "streams.yaml", manager)
    assert any(expected in p and p.startswith("schemas/trade.schema.json:") for p in problems), problems
    assert path.is_file()


@pytest.mark.parametrize("table, expected", [
    ("sqlite_master", "is not a safe SQL identifier"),
    ("Trades", "is not a safe SQL identifier"),
    ("trades; drop table x", "is not a safe SQL identifier"),
    ("dead_letters", "table name 'dead_letters' is reserved"),
    ("t" * 47, "at most 46"),
])
def test_unsafe_or_reserved_table_names_are_rejected_at_their_line(project, manager, table, expected):
    edit(project / "streams.yaml", "table: trades", f"table: '{table}'")
    line = line_of(project / "streams.yaml", "table: '")
    problems = problems_of(project / "streams.yaml", manager)
    assert any(p.startswith(f"streams.yaml:{line}:") and expected in p for p in problems), problems


# -- property-based: anything in, exit 0 or positioned errors out --------------------------------

YAML_PIECES = st.sampled_from([
    "version: 1\n", "a: &x [1, 2]\n", "b: *x\n", "c: *y\n", "- ", "[", "]", "{", "}", ": ", "? ", "&a ", "*a ",
    "<<: *x\n", "!!python/name:os.system ", "!!binary ", "'", '"', "\\x00", "\t", "\n  ", "${HOME}", "${X:-1}",
    "1e400", ".inf", "0x1F", "~", "---\n", "...\n", "%YAML 1.1\n", "#", "é", "\U0001F600", "\ufeff", "|\n  x\n",
])
ANY_TEXT = st.one_of(st.text(max_size=300), st.lists(YAML_PIECES, max_size=40).map("".join))


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(text=ANY_TEXT)
def test_any_text_loads_or_fails_with_positions(text):
    started = time.monotonic()
    try:
        documents.loads(text, "streams.yaml", environ={"HOME": "/root"})
    except documents.DocumentError as exc:
        assert exc.problems and all(POSITION.match(str(p)) for p in exc.problems), str(exc)
    assert time.monotonic() - started < 1


@settings(max_examples=150, deadline=5000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=400), ANY_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_any_bytes_as_streams_yaml_give_a_config_or_positioned_problems(tmp_path_factory, manager, data):
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "streams.yaml").write_bytes(data)
    try:
        load_config(folder / "streams.yaml", manager, display_name="streams.yaml")
    except ConfigError as exc:
        assert exc.problems and all(POSITION.match(str(p)) for p in exc.problems), str(exc)


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)),
    max_leaves=25,
)
KEYWORDS = st.sampled_from(["type", "minimum", "maximum", "pattern", "$ref", "enum", "const", "required", "items",
                            "properties", "anyOf", "not", "$defs", "minLength", "format", "prefixItems", "x-extra"])


@st.composite
def mutated_schemas(draw) -> dict:
    """The shipped trade schema with one property or the root changed in a random way."""
    schema = json.loads((REPO / "schemas" / "trade.schema.json").read_text())
    target = schema if draw(st.booleans()) else schema["properties"][draw(st.sampled_from(sorted(schema["properties"])))]
    for _ in range(draw(st.integers(1, 3))):
        target[draw(KEYWORDS)] = draw(st.one_of(JSON_VALUES, st.sampled_from(
            ["#", "#/$defs/a", "#/properties", "([", float("inf"), float("nan"), {"$ref": "#"}, [{"$ref": "#"}]])))
    return schema


@settings(max_examples=200, deadline=5000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(schema=mutated_schemas())
def test_any_schema_document_validates_or_fails_with_positions_and_then_runs(tmp_path_factory, manager, schema):
    folder = tmp_path_factory.mktemp("fuzz-schema")
    shutil.copy(REPO / "streams.yaml", folder / "streams.yaml")
    shutil.copytree(REPO / "schemas", folder / "schemas")
    (folder / "schemas" / "trade.schema.json").write_text(json.dumps(schema, indent=1, allow_nan=True).replace("NaN", ".nan").replace("-Infinity", "-.inf").replace("Infinity", ".inf"))
    try:
        config = load_config(folder / "streams.yaml", manager, display_name="streams.yaml")
    except ConfigError as exc:
        assert exc.problems and all(POSITION.match(str(p)) for p in exc.problems), str(exc)
        return
    # validate accepted it: run's transforms build and judge a record without crashing
    from tickwire.framework.components import InvalidRecord
    from tickwire.framework.testing import trade_payload

    stream = config.streams["trade"]
    chain = [manager.transforms[name].factory(stream, options) for name, options in stream.transforms]
    record = trade_payload(1)
    try:
        for step in chain:
            record = step(record)
    except InvalidRecord:
        pass


@pytest.mark.parametrize("data", [b"\xff\xfe\x00", b"a: [\n", ALIAS_BOMB.encode(), b"version: 1\nversion: 2\n"])
def test_real_cli_runs_on_fuzz_like_inputs_exit_2_without_traceback(tmp_path, data):
    (tmp_path / "streams.yaml").write_bytes(data)
    result, seconds, _ = tickwire("validate", cwd=tmp_path)
    refused(result)
    assert seconds < 10


# -- a stream block with a field missing or misspelt ---------------------------------------------


@pytest.mark.parametrize("field", ["table", "channel", "schema", "topic"])
def test_a_misspelt_stream_field_is_a_positioned_error_not_a_crash(project, manager, field):
    """`tabel:` for `table:` (and the same slip on every other field of a stream block) is
    reported at its line with a suggestion; the stream is not built from the broken block."""
    text = (project / "streams.yaml").read_text()
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("  trade:"))
    at = next(i for i in range(start + 1, len(lines)) if lines[i].startswith(f"    {field}:"))
    lines[at] = lines[at].replace(f"    {field}:", f"    {field[0]}{field[2]}{field[1]}{field[3:]}:", 1)
    (project / "streams.yaml").write_text("".join(lines))
    problems = problems_of(project / "streams.yaml", manager)
    assert any(f"streams.trade.{field[0]}{field[2]}{field[1]}{field[3:]}: unknown field" in p and f"did you mean '{field}'" in p
               for p in problems), problems
