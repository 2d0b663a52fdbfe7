"""``tickwire init [DIR]``: a working project for someone who installed tickwire with pip/pipx.

It writes the default streams.yaml that ships with tickwire (the same text and comments, with
its editor schema modeline), the stream schemas it names plus ``streams.schema.json`` (what
the modeline and ``tickwire validate`` use), a ``.env.example`` listing every ``${VARIABLE}``
of that streams.yaml with its default, and a README of next steps. ``tickwire validate`` passes
in the new directory straight away. Existing files are never overwritten without ``--force``.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import click

from tickwire.framework.documents import _ENV_REF
from tickwire.framework.schemas import shipped_schemas

README = """\
# tickwire project

Created by `tickwire init`. Next steps:

1. `tickwire validate` checks streams.yaml and the schemas in schemas/. Run it in CI too:
   `tickwire validate --format github` annotates the offending lines on GitHub, `--format json`
   is for other tools, and tickwire's repository has a pre-commit hook (`tickwire-validate`).
2. `tickwire run` ingests Binance into SQLite (data/tickwire.db, profile `local`). Offline, try
   `tickwire simulate --port 9443 &` and then
   `TICKWIRE_BINANCE_URL=ws://127.0.0.1:9443 TICKWIRE_BINANCE_REST_URL=http://127.0.0.1:9443 tickwire run`.
3. Edit streams.yaml: add symbols, streams (a block plus a schema file in schemas/), sinks and
   profiles. Editors with the YAML language server complete and check it as you type
   (schemas/streams.schema.json, named on its first line).
4. PostgreSQL, Kafka and Spark need extras: `pip install 'tickwire[postgres,kafka,spark]'`.
   `tickwire plugins` lists what is available; `tickwire generate --list` what can be generated.
5. Settings come from the environment: see .env.example (secrets never go in streams.yaml).
"""


def env_example(config_text: str) -> str:
    """A .env.example with every ``${VAR:-default}`` of a streams.yaml, in order of appearance."""
    lines = ["# Environment variables read by streams.yaml (${VAR:-default}); the values shown are",
             "# the defaults. Set them in your shell, your service manager or your CI secrets.", ""]
    seen: set[str] = set()
    code = "\n".join(line.split(" #")[0] for line in config_text.splitlines() if not line.lstrip().startswith("#"))
    for match in _ENV_REF.finditer(code):
        name, default = match.group(1), match.group(2)
        if name in seen:
            continue
        seen.add(name)
        lines.append(f"{name}={default or ''}" if default else f"# {name}=   (no default: set it when you use it)")
    return "\n".join(lines) + "\n"


def project_files() -> dict[str, str]:
    """Relative path → content of every file ``tickwire init`` writes."""
    config = (importlib.resources.files("tickwire") / "streams.yaml").read_text(encoding="utf-8")
    files = {"streams.yaml": config}
    for schema in sorted(shipped_schemas().iterdir(), key=lambda entry: entry.name):
        if schema.name.endswith(".json"):
            files[f"schemas/{schema.name}"] = schema.read_text(encoding="utf-8")
    files[".env.example"] = env_example(config)
    files["README.md"] = README
    return files


@click.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=".")
@click.option("--force", is_flag=True, help="Overwrite files that already exist.")
def init_command(directory: Path, force: bool) -> None:
    """Create a tickwire project in DIRECTORY (default: here): streams.yaml, schemas/,
    .env.example and a README of next steps. `tickwire validate` passes there at once."""
    files = project_files()
    existing = sorted(name for name in files if (directory / name).exists())
    if existing and not force:
        for name in existing:
            click.echo(f"{directory / name}: exists", err=True)
        raise click.ClickException("nothing was written; pass --force to overwrite these files")
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        click.echo(f"wrote {path}")
    where = "" if directory == Path(".") else f"cd {directory} && "
    click.echo(f"next: {where}tickwire validate && tickwire run   (see README.md there)")
