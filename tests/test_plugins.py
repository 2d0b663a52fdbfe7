"""The plugin system: built-ins come through the same entry-point group as third-party
packages; local plugin folders; blocking; every failure names the plugin."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tickwire.framework import hookspecs
from tickwire.framework.plugins import PluginManager

REPO = Path(__file__).resolve().parent.parent


def tickwire(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "tickwire.framework.cli", *args], cwd=cwd, capture_output=True,
                          text=True, env=full_env, timeout=120)


def write_plugin(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_builtins_come_from_the_entry_point_group():
    manager = PluginManager()
    assert not manager.errors, manager.errors
    builtin = {name for name, info in manager.infos.items() if info.origin.endswith("(built-in)")}
    assert {"codegen-postgres", "codegen-spark", "sqlite-sink", "validate", "normalize"} <= builtin
    assert manager.sinks["sqlite"].plugin == "sqlite-sink"
    assert manager.codegen["postgres"].plugin == "codegen-postgres"


def test_every_hookspec_is_documented():
    specs = [name for name in dir(hookspecs) if name.startswith("tickwire_")]
    assert len(specs) == 7
    for name in specs:
        doc = getattr(hookspecs, name).__doc__ or ""
        assert len(doc.split()) > 10, f"{name} needs a docstring saying what it is for"


def test_blocking_a_plugin_by_name():
    manager = PluginManager(block=["codegen-docs"])
    assert "docs" not in manager.codegen
    assert "codegen-docs" not in manager.infos
    assert "postgres" in manager.codegen


def test_import_error_is_reported_with_the_plugin_name_and_the_plugin_skipped(tmp_path):
    write_plugin(tmp_path, "broken_sink", "import no_such_module_anywhere\n")
    manager = PluginManager(directories=[tmp_path])
    assert manager.skipped == [
        f"plugin 'broken-sink' skipped: failed to import {tmp_path / 'broken_sink.py'}: "
        "ModuleNotFoundError: No module named 'no_such_module_anywhere'"
    ]
    assert manager.errors == []  # skipped, as tox does: the other plugins keep working
    assert manager.infos["broken-sink"].skipped and "sqlite" in manager.sinks


def test_misspelt_hook_is_caught(tmp_path):
    write_plugin(tmp_path, "typo", """
        def tickwire_register_sink(register):
            pass
    """)
    manager = PluginManager(directories=[tmp_path])
    [error] = manager.errors
    assert error.startswith("plugin 'typo':") and "tickwire_register_sink" in error


def test_duplicate_component_names_name_both_plugins(tmp_path):
    write_plugin(tmp_path, "second_sqlite", """
        from tickwire.framework.components import SinkSpec
        from tickwire.framework.hookspecs import hookimpl

        @hookimpl
        def tickwire_register_sinks(register):
            register(SinkSpec(name="sqlite", factory=object, description="impostor"))
    """)
    manager = PluginManager(directories=[tmp_path])
    assert manager.errors == ["plugin 'second-sqlite': sink 'sqlite' is already registered by plugin 'sqlite-sink'"]


def test_a_plugin_that_fails_to_import_is_skipped_with_a_warning_unless_the_config_needs_it(tmp_path):
    write_plugin(tmp_path / "local", "broken", "raise RuntimeError('boom at import')\n")
    result = tickwire("--plugins-dir", str(tmp_path / "local"), "validate", cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "plugin 'broken' skipped: failed to import" in result.stderr and "RuntimeError: boom at import" in result.stderr
    listing = tickwire("--plugins-dir", str(tmp_path / "local"), "plugins", cwd=REPO)
    assert "broken" in listing.stdout and "FAILED (skipped)" in listing.stdout

    # the config uses a sink type nobody registered: an error that names the skipped plugin
    used = tickwire("--plugins-dir", str(tmp_path / "local"), "--set", "sinks.sqlite.type=broken", "validate", cwd=REPO)
    assert used.returncode == 2 and "Traceback" not in used.stderr
    assert "sinks.sqlite.type: unknown sink type 'broken'" in used.stderr
    assert "a plugin that was skipped may provide what is missing: broken" in used.stderr

    blocked = tickwire("--plugins-dir", str(tmp_path / "local"), "--block-plugin", "broken", "validate", cwd=REPO)
    assert blocked.returncode == 0 and "skipped" not in blocked.stderr, blocked.stderr


def without_extras(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """`tickwire ARGS` as if psycopg, aiokafka and pyspark were not installed (a None entry in
    sys.modules makes their import fail). tests/test_install.py does it for real, in a venv."""
    hide = "import sys; sys.modules.update(psycopg=None, aiokafka=None, pyspark=None); "
    return subprocess.run([sys.executable, "-c", hide + "from tickwire.framework.cli import main; main()", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def test_a_missing_extra_makes_components_unavailable_and_blocks_only_what_uses_them():
    listing = without_extras("plugins")
    assert listing.returncode == 0, listing.stderr
    assert ("unavailable: sink 'postgres' needs psycopg, which is not installed; "
            "install it with: pip install 'tickwire[postgres]'") in listing.stdout
    assert "unavailable: sink 'kafka' needs aiokafka" in listing.stdout and "pip install 'tickwire[kafka]'" in listing.stdout
    assert "unavailable: `tickwire spark submit` needs pyspark" in listing.stdout
    assert "unavailable: `tickwire db migrate` needs psycopg" in listing.stdout
    for usable in (["validate"], ["generate", "postgres"], ["generate", "spark"], ["db", "migrate", "--help"]):
        result = without_extras(*usable)
        assert result.returncode == 0, (usable, result.stderr)

    for args, message in [
        (["run", "--profile", "postgres", "--duration", "1"],
         "tickwire: sink 'postgres' (type postgres, plugin postgres-sink) needs psycopg, which is not installed; "
         "install it with: pip install 'tickwire[postgres]'"),
        (["run", "--profile", "compose", "--duration", "1"], "sink 'kafka' (type kafka, plugin kafka-sink) needs aiokafka"),
        (["db", "migrate"], "`tickwire db migrate` needs psycopg, which is not installed; install it with: pip install 'tickwire[postgres]'"),
        (["kafka", "provision"], "`tickwire kafka provision` needs aiokafka"),
        (["spark", "submit", "--dsn", "postgresql://x"], "`tickwire spark submit` needs pyspark, which is not installed; "
                                                         "install it with: pip install 'tickwire[spark]'"),
    ]:
        result = without_extras(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)


def test_the_extras_named_in_messages_exist_in_pyproject():
    import tomllib

    from tickwire.framework.extras import KAFKA, POSTGRES, SPARK

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for requirement, package in ((POSTGRES, "psycopg"), (KAFKA, "aiokafka"), (SPARK, "pyspark")):
        name = requirement.install.split("[")[1].split("]")[0]
        assert any(dep.startswith(package) for dep in extras[name]), (name, extras[name])


def test_plugins_command_lists_origin_and_registrations():
    result = tickwire("plugins", cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "sqlite-sink" in result.stdout and "tickwire 0.1.0 (built-in)" in result.stdout
    assert "sink      sqlite" in result.stdout
    assert "command   simulate" in result.stdout


# A third-party plugin package, built and installed the way a user would, adding a sink.
CSV_PLUGIN = '''
"""tickwire-csv: writes every record to <folder>/<stream>.csv."""
import csv
from pathlib import Path

from tickwire import SinkSpec, hookimpl


class CsvSink:
    supports_dead_letters = False

    def __init__(self, name, options, ctx):
        self.folder = ctx.config_dir / options["folder"]

    async def open(self):
        self.folder.mkdir(parents=True, exist_ok=True)

    async def write(self, stream, records):
        path = self.folder / f"{stream.name}.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[c.name for c in stream.columns])
            if new:
                writer.writeheader()
            writer.writerows(records)

    async def write_dead_letters(self, letters):
        raise NotImplementedError

    async def close(self):
        pass


@hookimpl
def tickwire_register_sinks(register):
    register(SinkSpec(
        name="csv",
        factory=CsvSink,
        description="Append records to CSV files, one per stream.",
        config_schema={
            "type": "object",
            "additionalProperties": False,
            "required": ["folder"],
            "properties": {"folder": {"type": "string", "description": "Output folder."}},
        },
    ))
'''


@pytest.fixture(scope="module")
def csv_plugin_installed(tmp_path_factory):
    """pip-installs a real distribution `tickwire-csv` that declares the entry point."""
    root = tmp_path_factory.mktemp("tickwire-csv")
    (root / "tickwire_csv.py").write_text(CSV_PLUGIN)
    (root / "pyproject.toml").write_text(textwrap.dedent("""\
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "tickwire-csv"
        version = "1.0.0"

        [project.entry-points.tickwire]
        csv = "tickwire_csv"

        [tool.setuptools]
        py-modules = ["tickwire_csv"]
    """))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(root)], check=True)
    yield
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", "tickwire-csv"], check=True)


def test_a_third_party_sink_package_is_listed_validated_and_runs(csv_plugin_installed, tmp_path, simulator):
    listing = tickwire("plugins", cwd=REPO)
    assert "csv  " in listing.stdout and "tickwire-csv 1.0.0" in listing.stdout
    config = (REPO / "streams.yaml").read_text().replace(
        "profiles:\n", "  csv:\n    type: csv\n    folder: out\nprofiles:\n  csvs:\n    sinks: [csv, sqlite]\n    dead_letter: dead-letter-file\n", 1)
    config = config.replace("schema: schemas/", f"schema: {REPO}/schemas/")
    (tmp_path / "streams.yaml").write_text(config)
    bad = tickwire("--set", "sinks.csv.fodler=x", "validate", cwd=tmp_path)
    assert bad.returncode == 2 and "sinks.csv.fodler: unknown field 'fodler' (did you mean 'folder'?)" in bad.stderr

    sim = simulator(rate=200, symbols="BTCUSDT")
    run = tickwire("run", "--profile", "csvs", "--duration", "4", "--no-status", "--log-format", "json",
                   "--set", f"sources.binance.url={sim.ws_url}", "--set", f"sources.binance.rest_url={sim.rest_url}",
                   "--set", "symbols=[BTCUSDT]", "--set", "metrics.port=0", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = (tmp_path / "out" / "trade.csv").read_text().splitlines()
    assert rows[0].startswith("trade_id,symbol,event_time,price,quantity")
    with sqlite3.connect(tmp_path / "data" / "tickwire.db") as db:
        stored = db.execute("select count(*) from trades").fetchone()[0]
    assert len(rows) - 1 == stored > 100


def test_every_hook_has_an_implementation_and_a_test():
    manager = PluginManager()
    tests = "".join(p.read_text() for p in (REPO / "tests").rglob("test_*.py"))
    for name in (n for n in dir(hookspecs) if n.startswith("tickwire_")):
        implementers = [impl.plugin_name for impl in getattr(manager.pm.hook, name).get_hookimpls()]
        assert implementers, f"no built-in plugin implements {name}"
        assert name in tests, f"no test names {name}"


EVERY_HOOK_PLUGIN = '''
import click

from tickwire.framework.components import CodegenSpec, SinkSpec, SourceSpec, TransformSpec
from tickwire.framework.hookspecs import hookimpl


class NullSink:
    supports_dead_letters = False

    def __init__(self, name, options, ctx):
        pass


def uppercase_symbol(stream, options):
    def transform(record):
        return {**record, "symbol": record["symbol"].upper()}
    return transform


@hookimpl
def tickwire_register_sources(register):
    register(SourceSpec(name="silence", factory=object, description="Produces nothing."))


@hookimpl
def tickwire_register_transforms(register):
    register(TransformSpec(name="uppercase", factory=uppercase_symbol, description="Uppercase the symbol."))


@hookimpl
def tickwire_register_sinks(register):
    register(SinkSpec(name="discard", factory=NullSink, description="Discards records."))


@hookimpl
def tickwire_register_codegen_targets(register):
    register(CodegenSpec(name="tables-list", description="One table name per line.",
                         factory=lambda config: {"tables.txt": "".join(s.table + "\\n" for s in config.streams.values())}))


@hookimpl
def tickwire_register_commands(cli):
    @cli.command("hello")
    def hello():
        """Say hello."""
        click.echo("hello from a plugin")


@hookimpl
def tickwire_register_config(register):
    register("greeting", {"type": "object", "additionalProperties": False,
                          "properties": {"text": {"type": "string"}}})
'''


def test_a_local_plugin_can_use_every_hook(tmp_path):
    write_plugin(tmp_path / "local", "every_hook", EVERY_HOOK_PLUGIN)
    config = (REPO / "streams.yaml").read_text().replace("schema: schemas/", f"schema: {REPO}/schemas/")
    config += "greeting:\n  text: hi\nplugins:\n  directories: [local]\n"
    config = config.replace('    channel: "{symbol}@trade"\n', '    channel: "{symbol}@trade"\n    transforms: [validate, normalize, uppercase]\n', 1)
    config = config.replace("profiles:\n", "  nowhere:\n    type: discard\nprofiles:\n", 1)
    (tmp_path / "streams.yaml").write_text(config)

    listing = tickwire("plugins", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    for registered in ("source    silence", "transform uppercase", "sink      discard", "codegen   tables-list",
                       "command   hello", "config    greeting"):
        assert registered in listing.stdout, listing.stdout
    assert tickwire("validate", cwd=tmp_path).returncode == 0
    assert tickwire("generate", "tables-list", cwd=tmp_path).stdout == "trades\nticker_1h\nticker_1d\n"
    assert tickwire("hello", cwd=tmp_path).stdout == "hello from a plugin\n"
    bad = tickwire("--set", "greeting.txt=hi", "validate", cwd=tmp_path)
    assert bad.returncode == 2 and "greeting.txt: unknown field 'txt' (did you mean 'text'?)" in bad.stderr
