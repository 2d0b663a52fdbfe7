"""An existing table against the shape the schemas ask for: what can be changed in place, and
what cannot (docs/schema-evolution.md). Shared by ``tickwire db migrate`` (PostgreSQL,
plugins/postgres_evolve.py) and the SQLite sink, which evolves its tables when it opens.

Applied in place, online (no rewrite, no long lock): a column the schema adds that may be NULL
(``ALTER TABLE … ADD COLUMN``; rows already stored hold NULL), and on PostgreSQL a NOT NULL the
schema dropped (``ALTER COLUMN … DROP NOT NULL``). A column the schema no longer has but that
may be NULL is left alone (its data stays; new rows hold NULL).

Refused, with the manual steps: a column whose type differs, a NOT NULL column the schema does
not have (every insert would fail), a new NOT NULL column (stored rows have no value), a column
made NOT NULL, a different primary key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tickwire.framework.schemas import quote_identifier as q

POSTGRESQL = "postgresql"
SQLITE = "sqlite"
ACCEPT_HINT = "or accept the change as a new schema version with x-tickwire.migration (docs/schema-evolution.md)"


@dataclass(frozen=True)
class TableShape:
    """Columns (name → (type as the database spells it, NOT NULL)) in order, and the key."""

    columns: dict[str, tuple[str, bool]]
    key: tuple[str, ...]


@dataclass
class TablePlan:
    """What to do to one existing table."""

    table: str
    add: list[tuple[str, str]] = field(default_factory=list)  # (column, type)
    drop_not_null: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # nullable columns the schema no longer has
    refusals: list[str] = field(default_factory=list)  # what is wrong, and what to do by hand

    @property
    def changes_anything(self) -> bool:
        return bool(self.add or self.drop_not_null)

    def statements(self) -> list[str]:
        """The in-place changes, in order (none when there are refusals)."""
        if self.refusals:
            return []
        table = q(self.table)
        out = [f"ALTER TABLE {table} ADD COLUMN {q(name)} {kind}" for name, kind in self.add]
        out += [f"ALTER TABLE {table} ALTER COLUMN {q(name)} DROP NOT NULL" for name in self.drop_not_null]
        return out

    def summary(self) -> str:
        parts = [f"added column {name} ({kind})" for name, kind in self.add]
        parts += [f"column {name} may now be NULL" for name in self.drop_not_null]
        parts += [f"kept column {name} (not in the schema; NULL in new rows)" for name in self.kept]
        return "; ".join(parts)


def plan_table(table: str, expected: TableShape, live: TableShape, dialect: str) -> TablePlan:
    """Compare ``live`` (what the database holds) with ``expected`` (what the schemas ask for)."""
    plan = TablePlan(table)
    t = q(table)
    for name, (kind, not_null) in expected.columns.items():
        if name not in live.columns:
            if not_null:
                plan.refusals.append(
                    f"column {name} ({kind} NOT NULL) is missing, and the rows already stored have no value for it: "
                    f"ALTER TABLE {t} ADD COLUMN {q(name)} {kind}; UPDATE {t} SET {q(name)} = …; then "
                    + (f"ALTER TABLE {t} ALTER COLUMN {q(name)} SET NOT NULL — " if dialect == POSTGRESQL else
                       "rebuild the table with the NOT NULL column (SQLite cannot add the constraint) — ")
                    + "or make the field optional in the schema")
            else:
                plan.add.append((name, kind))
            continue
        live_kind, live_not_null = live.columns[name]
        if live_kind.lower() != kind.lower():
            plan.refusals.append(f"column {name} is {live_kind}, the schema says {kind}: " + _retype_steps(t, name, kind, dialect))
        elif live_not_null and not not_null:
            if dialect == POSTGRESQL:
                plan.drop_not_null.append(name)
            else:
                plan.refusals.append(f"column {name} is NOT NULL, the schema makes it optional: SQLite cannot drop "
                                     f"the constraint in place; {_rebuild_steps(t)}")
        elif not_null and not live_not_null:
            plan.refusals.append(
                f"column {name} allows NULL, the schema requires it: UPDATE {t} SET {q(name)} = … WHERE {q(name)} IS NULL; "
                + (f"ALTER TABLE {t} ALTER COLUMN {q(name)} SET NOT NULL" if dialect == POSTGRESQL else _rebuild_steps(t)))
    for name, (kind, not_null) in live.columns.items():
        if name in expected.columns:
            continue
        if not_null:
            plan.refusals.append(
                f"column {name} ({kind} NOT NULL) is not in the schema, so every insert would fail: "
                + (f"ALTER TABLE {t} ALTER COLUMN {q(name)} DROP NOT NULL keeps its data, "
                   f"ALTER TABLE {t} DROP COLUMN {q(name)} drops it" if dialect == POSTGRESQL else
                   f"ALTER TABLE {t} DROP COLUMN {q(name)} drops it (its data is lost), or {_rebuild_steps(t)}"))
        else:
            plan.kept.append(name)
    if tuple(live.key) != tuple(expected.key):
        plan.refusals.append(
            f"the primary key is ({', '.join(live.key) or 'none'}), the schema says ({', '.join(expected.key)}): "
            + (f"remove the rows that duplicate the new key, then ALTER TABLE {t} DROP CONSTRAINT <its primary key>, "
               f"ADD PRIMARY KEY ({', '.join(map(q, expected.key))}); or write the stream to a new table "
               "(streams.<name>.table)" if dialect == POSTGRESQL else _rebuild_steps(t)))
    plan.refusals = [f"{reason}; {ACCEPT_HINT}" if dialect == POSTGRESQL else reason for reason in plan.refusals]
    return plan


def _retype_steps(t: str, name: str, kind: str, dialect: str) -> str:
    if dialect == POSTGRESQL:
        return (f"ALTER TABLE {t} ALTER COLUMN {q(name)} TYPE {kind} USING {q(name)}::{kind} (rewrites the table "
                "under an exclusive lock: stop the writers first)")
    return f"SQLite cannot change a column's type in place; {_rebuild_steps(t)}"


def _rebuild_steps(t: str) -> str:
    return (f"rebuild the table: rename {t} away, start tickwire once so it creates the new table, "
            "copy the rows over with INSERT INTO … SELECT, and drop the old one (or move the old file aside)")
