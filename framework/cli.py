"""The ``tickwire`` command line. Plugins add commands through ``tickwire_register_commands``.

Plugin-loading options (``-c``, ``--plugins-dir``, ``--block-plugin``) are read before click
parses the command line, because the set of commands depends on the plugins.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import sys
from dataclasses import dataclass, field
from functools import cached_property
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import click
import jsonschema

from tickwire.framework.components import PluginError
from tickwire.framework.config import DEFAULT_CONFIG, Config, load_config, plugin_settings
from tickwire.framework.documents import DocumentError
from tickwire.framework import report_formats
from tickwire.framework.extras import MissingDependency
from tickwire.framework.plugins import PluginManager
from tickwire.framework.project import init_command
from tickwire.framework.schema_commands import evolution_check, schema_group

EXIT_CONFIG = 2


def _version() -> str:
    try:
        return version("tickwire")
    except PackageNotFoundError:
        return "unknown"


def default_config_path() -> Path:
    return Path(os.environ.get("TICKWIRE_CONFIG", DEFAULT_CONFIG))


@dataclass
class App:
    """What every command gets as ``ctx.obj``: the plugins, and the config on demand."""

    config_path: Path
    manager: PluginManager
    overrides: list[str] = field(default_factory=list)

    @cached_property
    def config(self) -> Config:
        self.manager.raise_errors()
        for message in self.manager.skipped:
            click.secho(f"tickwire: {message} (see `tickwire plugins`)", fg="yellow", err=True)
        return load_config(self.config_path, self.manager, overrides=self.overrides)


MAX_PROBLEMS_SHOWN = 100


class TickwireGroup(click.Group):
    """Reports config and plugin problems as plain messages with exit code 2, no traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DocumentError as exc:
            # a broken file can hold tens of thousands of problems: the first ones are what to fix
            for problem in exc.problems[:MAX_PROBLEMS_SHOWN]:
                click.echo(str(problem), err=True)
            n = len(exc.problems)
            if n > MAX_PROBLEMS_SHOWN:
                click.echo(f"… and {n - MAX_PROBLEMS_SHOWN:,} more (`tickwire validate --format json` lists them all)", err=True)
            app = ctx.find_object(App)
            if app is not None and app.manager.skipped:
                click.echo("tickwire: a plugin that was skipped may provide what is missing: "
                           + ", ".join(i.name for i in app.manager.infos.values() if i.skipped), err=True)
            click.secho(f"tickwire: {n} problem{'s' if n != 1 else ''} found; nothing was run.", fg="red", err=True)
            ctx.exit(EXIT_CONFIG)
        except MissingDependency as exc:
            click.secho(f"tickwire: {exc}", fg="red", err=True)
            ctx.exit(EXIT_CONFIG)
        except PluginError as exc:
            click.echo(str(exc), err=True)
            click.secho("tickwire: fix or block the plugin (--block-plugin NAME); see `tickwire plugins`.", fg="red", err=True)
            ctx.exit(EXIT_CONFIG)


@click.group(cls=TickwireGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(_version(), "--version", prog_name="tickwire")
@click.option("-c", "--config", "config_path", type=click.Path(path_type=Path), default=default_config_path,
              show_default="streams.yaml, or $TICKWIRE_CONFIG", help="The stream config file.")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE",
              help="Override a config field, e.g. --set engine.batch_size=500 (repeatable).")
@click.option("--plugins-dir", multiple=True, type=click.Path(path_type=Path), help="Also load plugin modules from this folder (repeatable).")
@click.option("--block-plugin", multiple=True, metavar="NAME", help="Do not load this plugin (repeatable).")
@click.pass_context
def cli(ctx: click.Context, config_path: Path, overrides: tuple[str, ...], plugins_dir, block_plugin) -> None:
    """tickwire: declarative, plugin-based ingestion of market streams.

    Reads streams.yaml (what to ingest, where it goes) and the JSON Schema of every stream,
    then validates, generates tables/schemas, or runs the pipeline.

    \b
    Typical use:
      tickwire validate                 # check streams.yaml, schemas and samples
      tickwire run                      # Binance -> SQLite (profile 'local')
      tickwire simulate & tickwire run --set sources.binance.url=ws://127.0.0.1:9443
      tickwire generate postgres        # DDL for the tables
    """
    if ctx.obj is None:  # when called without main(), e.g. from click's test runner
        ctx.obj = App(config_path, PluginManager(block=block_plugin, directories=plugins_dir), list(overrides))
    else:
        ctx.obj.config_path, ctx.obj.overrides = config_path, list(overrides)


cli.add_command(init_command)
cli.add_command(schema_group)


@cli.command()
@click.option("--samples", type=click.Path(path_type=Path), default=None,
              help="Folder of sample payloads, one <stream>.jsonl per stream. Default: tests/samples next to the config.")
@click.option("--format", "output_format", type=click.Choice(report_formats.FORMATS), default="text", show_default=True,
              help="github: annotations on the offending lines of a pull request; json: a list of "
                   "{file, line, col, path, reason} on stdout.")
@click.option("--against", metavar="GIT_REF", default=None,
              help="Check schema changes against streams.yaml and the schemas at this git revision "
                   "instead of schemas.lock.json.")
@click.pass_obj
def validate(app: App, samples: Path | None, output_format: str, against: str | None) -> None:
    """Check streams.yaml, every stream schema and its annotations, and sample payloads.

    All problems are reported at once as file:line:col: path: reason (or --format github|json);
    exit code 2 if any. This is the "schema validation in CI" step (also a pre-commit hook).
    Schema changes are checked against schemas.lock.json (or --against GIT_REF): breaking ones
    are problems, compatible ones notes (docs/schema-evolution.md).
    """
    say = functools.partial(click.echo, err=output_format == "json")  # json: stdout is the report alone
    try:
        _validate_all(app, samples, against, say)
    except DocumentError as exc:
        if output_format == "text":
            raise  # printed by TickwireGroup, as for every command
        click.echo(report_formats.render(exc.problems, output_format))
        n = len(exc.problems)
        click.secho(f"tickwire: {n} problem{'s' if n != 1 else ''} found.", fg="red", err=True)
        sys.exit(EXIT_CONFIG)
    if output_format == "json":
        click.echo("[]")


def _validate_all(app: App, samples: Path | None, against: str | None, say) -> None:
    """The config, schemas and samples, then the schema changes: every problem at once."""
    problems = []
    try:
        _validate(app, samples, say)
    except DocumentError as exc:
        if "config" not in app.__dict__:
            raise  # streams.yaml itself did not load: nothing to compare
        problems += exc.problems
    try:
        evolution_check(app, against, say)
    except DocumentError as exc:
        problems += exc.problems
    if problems:
        raise DocumentError(problems)


def _validate(app: App, samples: Path | None, say) -> None:
    from tickwire.framework.components import InvalidRecord
    from tickwire.framework.documents import Mark, Problem

    config = app.config
    say(f"{app.config_path}: ok ({len(config.streams)} streams, {len(config.sinks)} sinks, "
               f"{len(config.data['profiles'])} profiles, {len(config.derived)} derived)")
    for name, stream in config.streams.items():
        say(f"  {stream.schema_path.name}: ok ({len(stream.columns)} columns, key {', '.join(stream.primary_key)})")
    folder = samples or config.dir / "tests" / "samples"
    problems: list[Problem] = []
    checked = 0
    for name, stream in config.streams.items():
        sample_file = folder / f"{name}.jsonl"
        if not sample_file.is_file():
            continue
        strict = jsonschema.Draft202012Validator(stream.schema)
        fast = _fast_validator(app, stream)
        for lineno, line in enumerate(sample_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            where = Mark(os.path.relpath(sample_file), lineno, 1)
            try:
                payload = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(Problem(where, name, f"not JSON: {exc}"))
                continue
            errors = sorted(strict.iter_errors(payload), key=str)
            fast_reason = None
            try:
                fast(payload)
            except InvalidRecord as exc:
                fast_reason = exc.reason
            if errors:
                problems.append(Problem(where, name, f"does not match {stream.schema_path.name}: {errors[0].message}"))
            elif fast_reason is not None:
                problems.append(Problem(where, name, f"the fast validator rejects a valid sample: {fast_reason}"))
            checked += 1
    if problems:
        raise DocumentError(problems)
    if checked:
        say(f"  samples: {checked} payloads in {os.path.relpath(folder)} match their schemas")


def _fast_validator(app: App, stream):
    """The hot-path validator (the `validate` transform), checked against jsonschema on samples."""
    spec = app.manager.transforms.get("validate")
    return spec.factory(stream, {}) if spec else (lambda payload: None)


@cli.command()
@click.argument("target", required=False)
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write the files into this folder instead of printing them.")
@click.option("--check", "check_dir", type=click.Path(path_type=Path), help="Exit 1 if the files in this folder differ from what would be generated.")
@click.option("--list", "list_targets", is_flag=True, help="List the targets.")
@click.pass_obj
def generate(app: App, target: str | None, output: Path | None, check_dir: Path | None, list_targets: bool) -> None:
    """Generate code from streams.yaml and the stream schemas (TARGET: see --list).

    Output is deterministic, so generated files can be committed and checked in CI.
    """
    app.manager.raise_errors()
    targets = app.manager.codegen
    if list_targets or not target:
        for name, spec in sorted(targets.items()):
            click.echo(f"{name:16} {spec.description}  [{spec.plugin}]")
        return
    if target not in targets:
        raise click.UsageError(f"no codegen target '{target}' (available: {', '.join(sorted(targets))})")
    files = targets[target].factory(app.config)
    if check_dir:
        stale = [n for n, text in sorted(files.items()) if not (check_dir / n).is_file() or (check_dir / n).read_text() != text]
        for name in stale:
            click.echo(f"{check_dir / name}: out of date; run `tickwire generate {target} -o {check_dir}`", err=True)
        sys.exit(1 if stale else 0)
    if output:
        for name, text in sorted(files.items()):
            path = output / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            click.echo(f"wrote {path}", err=True)
        return
    for name, text in sorted(files.items()):
        if len(files) > 1:
            click.echo(f"# ---- {name}")
        click.echo(text, nl=not text.endswith("\n"))


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def plugins_command(app: App, as_json: bool) -> None:
    """List every plugin: where it came from and what it registers."""
    infos = sorted(app.manager.infos.values(), key=lambda i: i.name)
    if as_json:
        click.echo(json.dumps([i.__dict__ for i in infos], indent=2))
        return
    width = max([len(i.name) for i in infos] + [6])
    for info in infos:
        if info.error:
            status = click.style(f"  FAILED{' (skipped)' if info.skipped else ''}: {info.error}", fg="red")
        else:
            status = click.style("  unavailable", fg="yellow") if info.unavailable else ""
        click.echo(f"{info.name:{width}}  {info.origin}{status}")
        for what in info.registers:
            kind, _, name = what.partition(":")
            spec = {"source": app.manager.sources, "sink": app.manager.sinks, "transform": app.manager.transforms,
                    "codegen": app.manager.codegen}.get(kind, {}).get(name)
            desc = f"  {spec.description}" if spec else ""
            click.echo(f"{'':{width}}    {kind:9} {name}{desc}")
        for problem in info.unavailable:
            click.secho(f"{'':{width}}    unavailable: {problem}", fg="yellow")
    for name in app.manager.blocked:
        click.echo(f"{name:{width}}  blocked")
    for error in app.manager.errors:
        if not any(error.startswith(f"plugin '{i.name}'") and i.error for i in infos):
            click.secho(error, fg="red", err=True)


def _extend_overrides(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> None:
    if value:
        ctx.find_object(App).overrides.extend(value)


def _choose_config(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.find_object(App).config_path = value


def accept_config_options(command: click.Command) -> None:
    """Let ``-c`` and ``--set`` follow any (sub)command too: ``tickwire run --set a.b=1``."""
    taken = {opt for param in command.params for opt in getattr(param, "opts", [])}
    if "--set" not in taken:
        command.params.append(click.Option(["--set"], multiple=True, metavar="PATH=VALUE", expose_value=False,
                                           callback=_extend_overrides, help="Override a config field (repeatable)."))
    if "-c" not in taken and "--config" not in taken:
        command.params.append(click.Option(["-c", "--config"], type=click.Path(path_type=Path), expose_value=False,
                                           callback=_choose_config, help="The stream config file."))
    for sub in getattr(command, "commands", {}).values():
        accept_config_options(sub)


def _early_options(argv: list[str]) -> tuple[Path, list[Path], list[str]]:
    """-c/--config, --plugins-dir, --block-plugin, before click runs (they decide the commands)."""
    config, dirs, block = default_config_path(), [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in ("-c", "--config", "--plugins-dir", "--block-plugin"):
            if not eq:
                i += 1
                value = argv[i] if i < len(argv) else ""
            if name in ("-c", "--config"):
                config = Path(value)
            elif name == "--plugins-dir":
                dirs.append(Path(value))
            else:
                block.append(value)
        elif arg == "--":
            break
        i += 1
    block += [b for b in os.environ.get("TICKWIRE_BLOCK_PLUGINS", "").split(",") if b]
    dirs += [Path(d) for d in os.environ.get("TICKWIRE_PLUGINS_DIRS", "").split(os.pathsep) if d]
    return config, dirs, block


def build(argv: list[str]) -> tuple[click.Group, App]:
    """A fresh command group with the core commands and those of the loaded plugins."""
    config_path, dirs, block = _early_options(argv)
    config_dirs, config_block = plugin_settings(config_path) if config_path.is_file() else ([], [])
    manager = PluginManager(block=block + config_block, directories=dirs + config_dirs)
    group = copy.copy(cli)
    group.commands = dict(cli.commands)
    from tickwire.framework.run import run as run_command  # here: the engine imports the plugin machinery

    group.add_command(run_command)
    manager.add_commands(group)
    for command in group.commands.values():
        accept_config_options(command)
    return group, App(config_path, manager)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    group, app = build(argv)
    group.main(args=argv, prog_name="tickwire", obj=app)


if __name__ == "__main__":
    main()
