"""``tickwire db maintain``: partitions ahead, retention applied — run it daily (cron, a systemd
timer, a compose service); running it twice changes nothing the second time.

PostgreSQL (when an admin DSN is given: ``--dsn`` or ``TICKWIRE_PG_ADMIN_DSN``), per
day-partitioned table (plugins/postgres_partitions.py), in one transaction per table: expired
day partitions dropped (``retention:`` of the stream or derived block), rows waiting in the
DEFAULT partition moved to a partition of their day, partitions for today and ``--days-ahead``
days created; the Spark job's batch ledger (``stream_progress``) kept to its recent rows. SQLite
(every ``sqlite`` sink of the profile): expired rows deleted in bounded batches. Every drop and
delete is reported with its row count. ``--every SECONDS`` keeps it running (the compose stack's
``db-maintain`` service).
"""

from __future__ import annotations

import signal
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path

import click

from tickwire.framework.extras import POSTGRES, optional_module
from tickwire.framework.options import with_defaults
from tickwire.plugins.codegen_postgres import PROGRESS_TABLE
from tickwire.plugins.postgres_maintain import MaintenanceSummary, maintain, prune_progress
from tickwire.plugins.postgres_partitions import plans
from tickwire.plugins.sqlite_retention import delete_batches, expiring_streams

psycopg = optional_module("psycopg", POSTGRES, "`tickwire db maintain`")

ADMIN_DSN_VARIABLE = "TICKWIRE_PG_ADMIN_DSN"
DEFAULT_DAYS_AHEAD = 7
EXIT_USAGE = 2
EXIT_FAILED = 1


def maintain_postgres(conn: psycopg.Connection, config, now: datetime, days_ahead: int, report) -> dict[str, MaintenanceSummary]:
    """Every day-partitioned table of ``config``, one transaction each (a failure keeps the
    tables already done)."""
    done = {}
    for plan in plans(config):
        with conn.transaction():
            done[plan.table] = maintain(conn, plan, now, days_ahead, report)
    with conn.transaction():
        prune_progress(conn, PROGRESS_TABLE, report)
    return done


def maintain_sqlite(path: Path, streams, now: datetime, report) -> dict[str, int]:
    """Delete expired rows of ``streams`` from the SQLite file at ``path``, in bounded batches."""
    deleted = {}
    if not expiring_streams(streams):
        report(f"sqlite {path}: no stream has a `retention:`, nothing to delete")
        return deleted
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        for stream in expiring_streams(streams):
            if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [stream.table]).fetchone() is None:
                continue
            deleted[stream.table] = total = sum(delete_batches(conn, stream, now))
            report(f"sqlite {path}: table {stream.table}: deleted {total} rows older than {stream.retention_days} days")
    finally:
        conn.close()
    return deleted


def _sqlite_paths(app, profile_name: str | None) -> list[Path]:
    config = app.config
    spec = app.manager.sinks.get("sqlite")
    out = []
    for sink_id in config.profile(profile_name).sinks:
        kind, options = config.sinks[sink_id]
        if kind == "sqlite" and spec is not None:
            out.append(config.resolve_path(Path(with_defaults(spec.config_schema, options)["path"]).expanduser()))
    return out


@click.command("maintain")
@click.option("--dsn", envvar=ADMIN_DSN_VARIABLE, show_envvar=True, metavar="DSN",
              help="PostgreSQL admin connection (the owner of the tables). Without it, PostgreSQL is skipped.")
@click.option("--days-ahead", type=click.IntRange(0, 366), default=DEFAULT_DAYS_AHEAD, show_default=True,
              help="Create the partitions of today and this many following days (UTC).")
@click.option("--profile", "profile_name", metavar="NAME", help="Whose sqlite sinks to expire (default: the default profile).")
@click.option("--every", type=click.IntRange(min=60), metavar="SECONDS",
              help="Keep running and maintain again this many seconds after each run (a service "
              "instead of cron); a failed run is reported and tried again at the next. SIGTERM stops it.")
@click.option("--heartbeat", type=click.Path(dir_okay=False, path_type=Path), metavar="PATH",
              help="With --every: touch this file after every successful run (what a health check looks at).")
@click.pass_obj
def maintain_command(app, dsn: str | None, days_ahead: int, profile_name: str | None, every: int | None,
                     heartbeat: Path | None) -> None:
    """Create partitions ahead and apply `retention:` (PostgreSQL and SQLite).

    \b
    PostgreSQL: day partitions for today + --days-ahead, expired partitions dropped, rows of the
    DEFAULT partition moved to their day, old rows of the Spark job's batch ledger deleted.
    SQLite: expired rows deleted in batches.
    Idempotent. Exit code 2 when there is nothing to maintain, 1 when PostgreSQL refuses.
    """
    if every is None:
        status = maintain_once(app, dsn, days_ahead, profile_name)
        if status:
            raise SystemExit(status)
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.is_set():
            status = maintain_once(app, dsn, days_ahead, profile_name)
            if status == EXIT_USAGE:
                raise SystemExit(status)  # nothing to maintain will not change by waiting
            if not status and heartbeat is not None:
                heartbeat.touch()
            click.echo(f"tickwire db maintain: {'failed' if status else 'done'}; next run in {every} s", err=bool(status))
            stop.wait(every)
    except KeyboardInterrupt:
        pass


def maintain_once(app, dsn: str | None, days_ahead: int, profile_name: str | None) -> int:
    """One maintenance run; the exit status (0, EXIT_USAGE, EXIT_FAILED)."""
    config = app.config
    now = datetime.now(timezone.utc)
    sqlite_paths = [path for path in _sqlite_paths(app, profile_name) if path.exists()]
    if not dsn and not sqlite_paths:
        click.echo(f"tickwire db maintain: nothing to maintain: set {ADMIN_DSN_VARIABLE} or pass --dsn for "
                   "PostgreSQL; no SQLite database of the profile exists yet", err=True)
        return EXIT_USAGE
    for path in sqlite_paths:
        maintain_sqlite(path, config.profile_streams(config.profile(profile_name)), now, click.echo)
    if dsn:
        try:
            with psycopg.connect(dsn, autocommit=True, application_name="tickwire db maintain") as conn:
                maintain_postgres(conn, config, now, days_ahead, click.echo)
        except psycopg.Error as error:
            click.echo(f"tickwire db maintain: PostgreSQL refused: {error}".rstrip(), err=True)
            return EXIT_FAILED
    return 0
