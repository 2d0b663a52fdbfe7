"""``tickwire db migrate``'s first step: bring existing tables to what the schemas ask for, in
place, or refuse (plugins/table_evolution.py, docs/schema-evolution.md).

What the schemas ask for is read from PostgreSQL itself: the generated DDL is applied inside a
savepoint in a scratch schema, its catalog read (column types as ``format_type`` spells them,
NOT NULL, primary key) and the savepoint rolled back. So whatever the DDL generator does
(partitioning, new support tables) the comparison speaks PostgreSQL's language, not ours.

A stream whose schema declares ``x-tickwire.migration`` gets that SQL file run when its table
does not match, then the table is compared again: nothing runs twice, since a table that matches
needs no migration.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tickwire.framework.config_checks import outside_paths_allowed
from tickwire.framework.schemas import ANNOTATION
from tickwire.plugins.table_evolution import POSTGRESQL, TablePlan, TableShape, plan_table

SCRATCH_SCHEMA = "tickwire_migrate_plan"


class BreakingDifferences(Exception):
    """Tables that differ from the schemas in ways ``tickwire db migrate`` will not change."""

    def __init__(self, reasons: list[str]):
        super().__init__("\n".join(reasons))
        self.reasons = reasons


@dataclass(frozen=True)
class DeclaredMigration:
    """A stream's ``x-tickwire.migration``: the SQL to run when its table does not match."""

    stream: str
    table: str
    path: Path


def declared_migrations(config) -> dict[str, DeclaredMigration]:
    """Table → its declared migration, for the streams whose schema names one."""
    out = {}
    for name, stream in config.streams.items():
        ref = stream.annotation.get("migration")
        if isinstance(ref, str):
            out[stream.table] = DeclaredMigration(name, stream.table, config.resolve_path(ref))
    return out


def shapes(conn, schema: str, tables: list[str]) -> dict[str, TableShape]:
    """The tables of ``tables`` that exist in ``schema``, as the catalog describes them."""
    columns: dict[str, dict[str, tuple[str, bool]]] = {}
    for table, column, kind, not_null in conn.execute(
        """SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull
             FROM pg_attribute a
             JOIN pg_class c ON c.oid = a.attrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = %s AND c.relname = ANY(%s) AND c.relkind IN ('r', 'p')
              AND a.attnum > 0 AND NOT a.attisdropped
            ORDER BY c.relname, a.attnum""",
        [schema, tables],
    ).fetchall():
        columns.setdefault(table, {})[column] = (kind, not_null)
    keys = dict(conn.execute(
        """SELECT c.relname, array_agg(a.attname ORDER BY k.position)
             FROM pg_index i
             JOIN pg_class c ON c.oid = i.indrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, position)
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
            WHERE i.indisprimary AND n.nspname = %s AND c.relname = ANY(%s)
            GROUP BY c.relname""",
        [schema, tables],
    ).fetchall())
    return {table: TableShape(cols, tuple(keys.get(table, ()))) for table, cols in columns.items()}


def expected_shapes(conn, ddl: str, tables: list[str]) -> dict[str, TableShape]:
    """The tables as ``ddl`` creates them, read from a scratch schema that is rolled back."""
    conn.execute("SAVEPOINT tickwire_plan")
    try:
        conn.execute(f"CREATE SCHEMA {SCRATCH_SCHEMA}")
        conn.execute(f"SET LOCAL search_path TO {SCRATCH_SCHEMA}")
        conn.execute(ddl)
        return shapes(conn, SCRATCH_SCHEMA, tables)
    finally:
        conn.execute("ROLLBACK TO SAVEPOINT tickwire_plan")  # also undoes SET LOCAL
        conn.execute("RELEASE SAVEPOINT tickwire_plan")


def plans(conn, ddl: str, tables: list[str]) -> list[TablePlan]:
    """A plan for every existing table of ``tables`` (new tables are the DDL's job)."""
    schema = conn.execute("SELECT current_schema()").fetchone()[0]
    live = shapes(conn, schema, tables)
    expected = expected_shapes(conn, ddl, tables)
    return [plan_table(table, expected[table], live[table], POSTGRESQL) for table in tables
            if table in live and table in expected]


def evolve(conn, ddl: str, tables: list[str], migrations: dict[str, DeclaredMigration], project: Path, report) -> None:
    """Change the existing tables in place, in the caller's transaction; raises
    :class:`BreakingDifferences` (the caller rolls back) for what it will not change."""
    current = plans(conn, ddl, tables)
    ran = []
    for plan in current:
        migration = migrations.get(plan.table)
        if plan.refusals and migration is not None:
            conn.execute(_migration_sql(migration, project))
            report(f"table {plan.table}: ran migration {migration.path.name} (stream {migration.stream})")
            ran.append(plan.table)
    if ran:
        current = plans(conn, ddl, tables)
    refused = []
    for plan in current:
        after = f" (after its migration {migrations[plan.table].path.name})" if plan.table in ran else ""
        refused += [f"table {plan.table}{after}: {reason}" for reason in plan.refusals]
    if refused:
        raise BreakingDifferences(refused)
    for plan in current:
        for statement in plan.statements():
            conn.execute(statement)
        if plan.changes_anything or plan.kept:
            report(f"table {plan.table}: {plan.summary()}")


def _migration_sql(migration: DeclaredMigration, project: Path) -> str:
    path = migration.path
    inside = path.resolve().is_relative_to(project.resolve())
    if not inside and not outside_paths_allowed():
        raise BreakingDifferences([f"stream {migration.stream}: {ANNOTATION}.migration {path} is outside the "
                                   f"project folder {project}"])
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BreakingDifferences([f"stream {migration.stream}: cannot read its migration {path}: "
                                   f"{exc.strerror or exc}"]) from None
