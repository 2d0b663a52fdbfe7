"""Day partitions kept in shape: created ahead, expired ones dropped, and old plain tables
converted. Used by ``tickwire db migrate`` (plugins/postgres_migrate.py) and ``tickwire db
maintain`` (plugins/db_maintain.py), on an admin connection; the plan is
plugins/postgres_partitions.py.

* :func:`ensure_days` — the partitions of ``[first, last]`` (today and ``--days-ahead`` days), by
  the same SQL function the writers call on demand, so both make the same partitions;
* :func:`sweep_default` — rows that landed in the DEFAULT partition (their day had no partition
  yet) move into a partition of their own;
* :func:`drop_expired` — with ``retention: N days``, every day partition whose whole day is older
  than N days is detached and dropped; expired rows of the DEFAULT partition are deleted. What is
  dropped is counted (exact row counts) and reported;
* :func:`detach_plain_table` / :func:`copy_from_plain_table` — a table an older tickwire created
  without partitions is renamed aside before the DDL runs, then copied into the new partitioned
  table and dropped, inside the migration's transaction: all or nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Callable

from tickwire.framework.extras import POSTGRES, optional_module
from tickwire.plugins.postgres_partitions import ENSURE_FUNCTION, TablePlan, day_start, utc_day

psycopg = optional_module("psycopg", POSTGRES, "`tickwire db maintain`")
sql = optional_module("psycopg.sql", POSTGRES, "`tickwire db maintain`")

Report = Callable[[str], None]
PLAIN_SUFFIX = "_unpartitioned"
# A plain table converted with rows spread over more days than this gets partitions for the
# newest days only; older rows go to the DEFAULT partition (`db maintain` moves them later).
MAX_CONVERTED_DAYS = 3660


@dataclass
class MaintenanceSummary:
    """What one run did, per table: the report's totals."""

    created: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)  # partition → rows it held
    deleted_from_default: int = 0
    moved_days: list[str] = field(default_factory=list)

    @property
    def rows_dropped(self) -> int:
        return sum(self.dropped.values()) + self.deleted_from_default


def _ident(*names: str) -> sql.Identifier:
    return sql.Identifier(*names)


def relation_kind(conn: psycopg.Connection, table: str) -> str | None:
    """'r' plain table, 'p' partitioned, None absent (in the current schema)."""
    row = conn.execute(
        "SELECT c.relkind FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = %s",
        [table]).fetchone()
    return row[0] if row else None


def ensure_days(conn: psycopg.Connection, plan: TablePlan, first: date, last: date) -> list[str]:
    """Create the day partitions of ``[first, last]`` that are missing; returns their names."""
    created = []
    day = first
    while day <= last:
        made = conn.execute(f"SELECT {ENSURE_FUNCTION}(%s::regclass, %s)", [_qualified(plan.table), day]).fetchone()[0]
        if made:
            created.append(plan.partition(day))
        day += timedelta(days=1)
    return created


def partitions(conn: psycopg.Connection, plan: TablePlan) -> dict[str, date]:
    """The plan's day partitions that exist: name → day (other attached tables are left alone)."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
        [_qualified(plan.table)]).fetchall()
    found = {name: plan.day_of(name) for (name,) in rows}
    return {name: day for name, day in found.items() if day is not None}


def sweep_default(conn: psycopg.Connection, plan: TablePlan, up_to: date, not_before: date | None) -> list[str]:
    """Give the DEFAULT partition's rows of each day up to ``up_to`` a partition of their own
    (the function moves them); days before ``not_before`` are expired and left to
    :func:`drop_expired`. Returns the partitions created."""
    if relation_kind(conn, plan.default_partition) is None:
        return []
    days = conn.execute(sql.SQL(
        "SELECT DISTINCT ({col} AT TIME ZONE 'UTC')::date FROM {default} ORDER BY 1").format(
        col=_ident(plan.time_column), default=_ident(plan.default_partition))).fetchall()
    created = []
    for (day,) in days:
        if day <= up_to and (not_before is None or day >= not_before):
            created += ensure_days(conn, plan, day, day)
    return created


def drop_expired(conn: psycopg.Connection, plan: TablePlan, now: datetime, report: Report) -> tuple[dict[str, int], int]:
    """Drop the day partitions wholly older than the retention, and delete the DEFAULT
    partition's expired rows; returns ({partition: rows}, rows deleted from the default)."""
    cutoff = plan.expired_before(now)
    if cutoff is None:
        return {}, 0
    dropped = {}
    for name, day in sorted(partitions(conn, plan).items(), key=lambda item: item[1]):
        if day_start(day + timedelta(days=1)) > cutoff:
            continue  # holds rows still within retention
        rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(_ident(name))).fetchone()[0]
        conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(_ident(plan.table), _ident(name)))
        conn.execute(sql.SQL("DROP TABLE {}").format(_ident(name)))
        dropped[name] = rows
        report(f"table {plan.table}: dropped partition {name} ({rows} rows older than {plan.retention_days} days)")
    deleted = 0
    if relation_kind(conn, plan.default_partition) is not None:
        deleted = conn.execute(sql.SQL("DELETE FROM {} WHERE {} < %s").format(
            _ident(plan.default_partition), _ident(plan.time_column)), [cutoff]).rowcount
        if deleted:
            report(f"table {plan.table}: deleted {deleted} expired rows from {plan.default_partition}")
    return dropped, deleted


def maintain(conn: psycopg.Connection, plan: TablePlan, now: datetime, days_ahead: int, report: Report) -> MaintenanceSummary:
    """One table: expired partitions out, the DEFAULT partition swept, today and the next
    ``days_ahead`` days present. Idempotent: a second run the same day changes nothing."""
    summary = MaintenanceSummary()
    kind = relation_kind(conn, plan.table)
    if kind != "p":
        state = "does not exist" if kind is None else "is not partitioned"
        report(f"table {plan.table}: {state}, skipped (run `tickwire db migrate` first)")
        return summary
    summary.dropped, summary.deleted_from_default = drop_expired(conn, plan, now, report)
    today = utc_day(now)
    cutoff = plan.expired_before(now)
    summary.moved_days = sweep_default(conn, plan, today + timedelta(days=days_ahead), utc_day(cutoff) if cutoff else None)
    for name in summary.moved_days:
        report(f"table {plan.table}: created partition {name} for rows waiting in {plan.default_partition}")
    summary.created = ensure_days(conn, plan, today, today + timedelta(days=days_ahead))
    kept = len(partitions(conn, plan))
    report(f"table {plan.table}: {len(summary.created)} partitions created, {len(summary.dropped)} dropped "
           f"({summary.rows_dropped} rows), {kept} day partitions kept")
    return summary


# -- the Spark job's batch ledger -----------------------------------------------------------------

# A replayed micro-batch is always one of a query's newest (Spark replays the batch its checkpoint
# has not committed), so the ledger needs only its recent rows; the rest is one row per batch
# forever (~860,000 a day per query at 10 batches a second).
PROGRESS_KEEP_BATCHES = 1000
PROGRESS_KEEP_DAYS = 1


def prune_progress(conn: psycopg.Connection, table: str, report: Report,
                   keep_batches: int = PROGRESS_KEEP_BATCHES, keep_days: int = PROGRESS_KEEP_DAYS) -> int:
    """Delete the progress rows of each query that are both older than ``keep_days`` and more than
    ``keep_batches`` batches behind its newest; returns how many."""
    if relation_kind(conn, table) is None:
        return 0
    deleted = conn.execute(sql.SQL(
        "DELETE FROM {t} AS p USING (SELECT query, max(batch_id) AS newest FROM {t} GROUP BY query) AS n "
        "WHERE p.query = n.query AND p.batch_id <= n.newest - %s "
        "AND p.committed_at < now() - make_interval(days => %s)").format(t=_ident(table)),
        [keep_batches, keep_days]).rowcount
    report(f"table {table}: {deleted} rows of old Spark batches deleted (kept each query's newest "
           f"{keep_batches} and the last {keep_days} day)")
    return deleted


# -- converting a table an older tickwire created without partitions ----------------------------


def detach_plain_table(conn: psycopg.Connection, plan: TablePlan, report: Report) -> str | None:
    """Before the DDL: rename a plain ``plan.table`` aside (dropping its indexes and
    constraints, whose names the new table needs), so the DDL creates the partitioned one.
    Returns the old table's new name, or None when there is nothing to convert."""
    if relation_kind(conn, plan.table) != "r":
        return None
    aside = plan.table + PLAIN_SUFFIX
    if relation_kind(conn, aside) is not None:
        raise RuntimeError(f"table {plan.table} needs converting to day partitions, but {aside} (the name it "
                           "is moved to meanwhile) exists: rename or drop it first")
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(_ident(plan.table), _ident(aside)))
    for (name,) in conn.execute("SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype IN ('p', 'u', 'x')",
                                [_qualified(aside)]).fetchall():
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(_ident(aside), _ident(name)))
    for (name,) in conn.execute("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                                "WHERE i.indrelid = %s::regclass", [_qualified(aside)]).fetchall():
        conn.execute(sql.SQL("DROP INDEX {}").format(_ident(name)))
    report(f"table {plan.table}: not partitioned (created by an older tickwire); converting to day partitions")
    return aside


def copy_from_plain_table(conn: psycopg.Connection, plan: TablePlan, aside: str, report: Report) -> int:
    """After the DDL: partitions for the days the old rows span, the rows copied (columns the
    two tables share), the old table dropped. Returns the rows copied."""
    new_columns = _columns(conn, plan.table)
    old_columns = set(_columns(conn, aside))
    shared = [column for column in new_columns if column in old_columns]
    low, high = conn.execute(sql.SQL("SELECT min({c}), max({c}) FROM {t}").format(
        c=_ident(plan.time_column), t=_ident(aside))).fetchone()
    if low is not None:
        first, last = utc_day(low), utc_day(high)
        ensure_days(conn, plan, max(first, last - timedelta(days=MAX_CONVERTED_DAYS - 1)), last)
    column_list = sql.SQL(", ").join(map(_ident, shared))
    copied = conn.execute(sql.SQL("INSERT INTO {new} ({cols}) SELECT {cols} FROM {old} ON CONFLICT DO NOTHING").format(
        new=_ident(plan.table), cols=column_list, old=_ident(aside))).rowcount
    held = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(_ident(aside))).fetchone()[0]
    if copied != held:
        raise RuntimeError(f"table {plan.table}: converting to day partitions copied {copied} of {held} rows "
                           f"(rows with the same key and {plan.time_column}?); nothing was changed")
    conn.execute(sql.SQL("DROP TABLE {}").format(_ident(aside)))
    report(f"table {plan.table}: converted to day partitions, {copied} rows copied")
    return copied


def _columns(conn: psycopg.Connection, table: str) -> list[str]:
    return [name for (name,) in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        [_qualified(table)]).fetchall()]


def _qualified(table: str) -> str:
    """``table`` as a regclass literal of the current schema (quoted: reserved words work)."""
    return '"' + table.replace('"', '""') + '"'
