"""``tickwire schema lock``: record the stream schemas in ``schemas.lock.json`` (commit it), and
the schema-evolution part of ``tickwire validate`` (docs/schema-evolution.md)."""

from __future__ import annotations

import sys

import click

from tickwire.framework.compat import Report, check
from tickwire.framework.documents import DocumentError
from tickwire.framework.schema_lock import config_entries, display_path, lock_path, render_lock, write_lock

EXIT_BREAKING = 2


def evolution_check(app, against: str | None, say) -> Report:
    """``tickwire validate``'s last step: notes for compatible changes, a :class:`DocumentError`
    for breaking ones that were not accepted."""
    report = check(app.config, against)
    for note in report.notes:
        say(f"  note: {note}")
    if report.problems:
        raise DocumentError(report.problems)
    if report.changed and against is None:
        say(f"  {report.baseline}: compatible changes; record them with `tickwire schema lock`")
    elif not report.notes:
        say(f"  schemas: unchanged since {report.baseline}")
    return report


@click.group("schema")
def schema_group() -> None:
    """Stream schemas: the lock file that `tickwire validate` checks changes against."""


@schema_group.command("lock")
@click.option("--force", is_flag=True, help="Write the lock even over breaking changes (they are still listed).")
@click.pass_obj
def lock_command(app, force: bool) -> None:
    """Write schemas.lock.json (next to streams.yaml): per stream the schema fingerprint,
    version, table, keys and columns.

    Refuses (exit 2) when a change is breaking and not accepted by a new schema version with a
    migration, as a schema registry refuses to register it; --force writes it anyway.
    """
    config = app.config
    path = lock_path(config)
    report = check(config)
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    if report.problems:
        for problem in report.problems:
            click.echo(str(problem), err=True)
        if not force:
            click.secho(f"tickwire schema lock: {len(report.problems)} breaking change(s); {display_path(path)} "
                        "not written (--force writes it anyway)", fg="red", err=True)
            sys.exit(EXIT_BREAKING)
    entries = config_entries(config)
    if path.is_file() and path.read_text(encoding="utf-8") == render_lock(entries):
        click.echo(f"{display_path(path)}: up to date ({len(entries)} streams)")
        return
    write_lock(path, entries)
    click.echo(f"wrote {display_path(path)} ({len(entries)} streams)")
