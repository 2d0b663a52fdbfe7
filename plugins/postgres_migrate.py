"""``tickwire db migrate``: create the PostgreSQL tables and the least-privilege roles.

In one transaction, holding an advisory lock (so two migrations never interleave):

0. existing tables are brought to the schemas in place — new optional columns added, a dropped
   NOT NULL relaxed — or the migration is refused with the manual steps when they differ in a
   breaking way (plugins/postgres_evolve.py, docs/schema-evolution.md);
1. the DDL of the ``postgres`` codegen target (``tickwire generate postgres``): stream tables,
   derived tables (``candles_1m``), ``dead_letters``, ``stream_progress``, ``trade_gaps``, keys and indexes; it
   is written with IF NOT EXISTS, so applying it again changes nothing;
   day-partitioned tables (plugins/postgres_partitions.py) get the partitions of today and the
   next days; a table an older tickwire created without partitions is converted, its rows
   copied (plugins/postgres_maintain.py);
2. the roles, created or brought back to least privilege:
   ``tickwire_writer`` — SELECT, INSERT, UPDATE on those tables (the postgres sink and Spark);
   ``tickwire_reader`` — SELECT only (Grafana). Neither may create, delete or drop anything.

Connects with an admin DSN (``--dsn`` or ``TICKWIRE_PG_ADMIN_DSN``); role passwords come only
from ``TICKWIRE_PG_WRITER_PASSWORD`` and ``TICKWIRE_PG_READER_PASSWORD``. The passwords are
sent as SCRAM-SHA-256 verifiers computed here, so the plain text never reaches the server (or
its statement log). Role names come from the ``postgres.roles`` config section, validated as SQL
identifiers, and every identifier is quoted by psycopg.sql.Identifier.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import click

from tickwire.framework.config_schema import SQL_IDENTIFIER
from tickwire.framework.extras import POSTGRES, optional_module, requires
from tickwire.framework.hookspecs import hookimpl
from tickwire.plugins.codegen_postgres import DEAD_LETTER_TABLE, PROGRESS_TABLE, TRADE_GAPS_TABLE
from tickwire.plugins.postgres_evolve import BreakingDifferences, declared_migrations, evolve
from tickwire.plugins.db_maintain import DEFAULT_DAYS_AHEAD, maintain_command
from tickwire.plugins.postgres_maintain import copy_from_plain_table, detach_plain_table, ensure_days
from tickwire.plugins.postgres_partitions import ENSURE_FUNCTION, TablePlan, plans, utc_day
from tickwire.plugins.postgres_adopt import AdoptRefused, adopt

# The `postgres` extra, imported when `tickwire db migrate` runs: the plugin loads without it.
psycopg = optional_module("psycopg", POSTGRES, "`tickwire db migrate`")
sql = optional_module("psycopg.sql", POSTGRES, "`tickwire db migrate`")

ADMIN_DSN_VARIABLE = "TICKWIRE_PG_ADMIN_DSN"
EXIT_USAGE = 2
EXIT_FAILED = 1
# Any constant works; it only has to be the same for every `tickwire db migrate`.
MIGRATION_LOCK_KEY = int.from_bytes(hashlib.sha256(b"tickwire db migrate").digest()[:8], "big", signed=True)
SCRAM_ITERATIONS = 4096  # PostgreSQL's default (scram_iterations)

CONFIG_SECTION = {
    "type": "object",
    "additionalProperties": False,
    "description": "PostgreSQL roles created by `tickwire db migrate`.",
    "properties": {
        "roles": {
            "type": "object",
            "additionalProperties": False,
            "description": "Login roles; passwords come from the environment, never from this file.",
            "properties": {
                "writer": {
                    "type": "string",
                    "pattern": SQL_IDENTIFIER,
                    "default": "tickwire_writer",
                    "description": "SELECT, INSERT, UPDATE on the tables (postgres sink, Spark). "
                                   "Password: $TICKWIRE_PG_WRITER_PASSWORD.",
                },
                "reader": {
                    "type": "string",
                    "pattern": SQL_IDENTIFIER,
                    "default": "tickwire_reader",
                    "description": "SELECT only (Grafana). Password: $TICKWIRE_PG_READER_PASSWORD.",
                },
            },
        },
    },
}


@dataclass(frozen=True)
class RoleGrant:
    """A login role and what it may do on every tickwire table."""

    name: str
    password_variable: str
    table_privileges: tuple[str, ...]
    database_privileges: tuple[str, ...]
    sequence_privileges: tuple[str, ...]


def role_grants(config) -> list[RoleGrant]:
    names = {"writer": "tickwire_writer", "reader": "tickwire_reader", **config.section("postgres").get("roles", {})}
    return [
        # TEMPORARY: the postgres sink stages each batch in a temporary table.
        # USAGE on sequences: dead_letters.id is a BIGSERIAL.
        RoleGrant(names["writer"], "TICKWIRE_PG_WRITER_PASSWORD",
                  ("SELECT", "INSERT", "UPDATE"), ("CONNECT", "TEMPORARY"), ("USAGE", "SELECT")),
        RoleGrant(names["reader"], "TICKWIRE_PG_READER_PASSWORD",
                  ("SELECT",), ("CONNECT",), ()),
    ]


def managed_tables(config) -> list[str]:
    """Every table the migration creates, in DDL order."""
    tables = [stream.table for stream in config.streams.values()]
    tables += [block["table"] for block in config.derived.values()]
    return tables + [DEAD_LETTER_TABLE, PROGRESS_TABLE, TRADE_GAPS_TABLE]


def generated_ddl(manager, config) -> str:
    """The SQL of the `postgres` codegen target, as `tickwire generate postgres` prints it."""
    target = manager.codegen.get("postgres")
    if target is None:
        raise click.ClickException("no codegen target 'postgres' (is the codegen-postgres plugin blocked?)")
    files = target.factory(config)
    return "\n".join(files[name] for name in sorted(files))


# -- the migration -----------------------------------------------------------------------------


def migrate(conn: psycopg.Connection, ddl: str, tables: list[str], grants: list[RoleGrant],
            passwords: dict[str, str], report, migrations: dict | None = None, project: Path | None = None,
            partitioned: list[TablePlan] = (), adopt_streams: list | None = None) -> None:
    """Adopt the original pipeline's tables (`adopt_streams`, plugins/postgres_adopt.py), convert
    plain tables an older tickwire made to day partitions, evolve the existing tables
    (plugins/postgres_evolve.py), apply `ddl` and the roles, all in one transaction; `report(line)`
    says what happened. Raises BreakingDifferences (nothing changed) for a table that differs from
    its schema in a way that cannot be changed in place."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK_KEY])
        if adopt_streams:
            adopt(conn, adopt_streams, report, sql)
        present_before = _existing_tables(conn, tables)
        # First, so evolve compares only tables already partitioned; a plain one is rebuilt by the DDL.
        converting = {plan.table: detach_plain_table(conn, plan, report) for plan in partitioned}
        evolve(conn, ddl, tables, migrations or {}, project or Path.cwd(), report)
        conn.execute(ddl)
        _partitions_after_ddl(conn, partitioned, converting, report)
        present_after = _existing_tables(conn, tables)
        for table in tables:
            if table not in present_after:
                raise click.ClickException(f"table {table} was not created by the generated DDL")
            report(f"table {table}: {'already present' if table in present_before else 'created'}")
        sequences = _owned_sequences(conn, tables)
        for grant in grants:
            report(f"role {grant.name}: {_ensure_role(conn, grant.name, passwords[grant.name])}")
            _grant(conn, grant, tables, sequences)
            report(f"role {grant.name}: {', '.join(grant.table_privileges)} on {len(tables)} tables")


def _partitions_after_ddl(conn: psycopg.Connection, partitioned: list[TablePlan], converting: dict[str, str | None],
                         report) -> None:
    today = utc_day(conn.execute("SELECT now()").fetchone()[0])
    for plan in partitioned:
        if converting.get(plan.table):
            copy_from_plain_table(conn, plan, converting[plan.table], report)
        created = ensure_days(conn, plan, today, today + timedelta(days=DEFAULT_DAYS_AHEAD))
        if created:
            report(f"table {plan.table}: partitions {created[0]} … {created[-1]} created")


def _existing_tables(conn: psycopg.Connection, tables: list[str]) -> set[str]:
    rows = conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename = ANY(%s)", [tables]
    ).fetchall()
    return {name for (name,) in rows}


def _owned_sequences(conn: psycopg.Connection, tables: list[str]) -> list[sql.Identifier]:
    """Sequences behind SERIAL / IDENTITY columns of our tables."""
    rows = conn.execute(
        """SELECT ns.nspname, seq.relname
             FROM pg_depend dep
             JOIN pg_class seq ON seq.oid = dep.objid AND seq.relkind = 'S'
             JOIN pg_namespace ns ON ns.oid = seq.relnamespace
             JOIN pg_class tab ON tab.oid = dep.refobjid
            WHERE dep.deptype IN ('a', 'i') AND tab.relnamespace = current_schema()::regnamespace
              AND tab.relname = ANY(%s)
            ORDER BY 1, 2""",
        [tables],
    ).fetchall()
    return [sql.Identifier(schema, name) for schema, name in rows]


def _ensure_role(conn: psycopg.Connection, role: str, password: str) -> str:
    """Create the role or reset its attributes; returns what was done, for the report."""
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone() is not None
    # Attributes are restated every time, so a role someone widened by hand is narrowed again.
    attributes = sql.SQL("LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT")
    identifier = sql.Identifier(role)
    if not exists:
        conn.execute(sql.SQL("CREATE ROLE {} {} PASSWORD {}").format(
            identifier, attributes, sql.Literal(scram_verifier(password))))
        return "created"
    conn.execute(sql.SQL("ALTER ROLE {} {}").format(identifier, attributes))
    if _password_matches(conn, role, password):
        return "already present, password unchanged"
    conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(identifier, sql.Literal(scram_verifier(password))))
    return "already present, password updated"


def _password_matches(conn: psycopg.Connection, role: str, password: str) -> bool:
    # pg_authid is readable by superusers only; a CREATEROLE admin just resets the password.
    try:
        with conn.transaction():
            row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", [role]).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return False
    return bool(row and row[0]) and scram_verifier_matches(row[0], password)


def _grant(conn: psycopg.Connection, grant: RoleGrant, tables: list[str], sequences: list[sql.Identifier]) -> None:
    role = sql.Identifier(grant.name)
    table_list = sql.SQL(", ").join(sql.Identifier(table) for table in tables)
    database = sql.Identifier(conn.info.dbname)

    def privileges(names: tuple[str, ...]) -> sql.Composable:
        return sql.SQL(", ").join(sql.SQL(name) for name in names)  # names are our constants

    # Revoke first so rerunning converges on exactly these privileges.
    conn.execute(sql.SQL("REVOKE ALL ON TABLE {} FROM {}").format(table_list, role))
    conn.execute(sql.SQL("GRANT {} ON TABLE {} TO {}").format(privileges(grant.table_privileges), table_list, role))
    conn.execute(sql.SQL("GRANT {} ON DATABASE {} TO {}").format(privileges(grant.database_privileges), database, role))
    # the writer creates a missing day partition on demand, through this function only
    function = sql.SQL(f"FUNCTION {ENSURE_FUNCTION}(regclass, date)")
    conn.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(function, role))
    if "INSERT" in grant.table_privileges:
        conn.execute(sql.SQL("GRANT EXECUTE ON {} TO {}").format(function, role))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(_current_schema(conn)), role))
    if sequences:
        sequence_list = sql.SQL(", ").join(sequences)
        conn.execute(sql.SQL("REVOKE ALL ON SEQUENCE {} FROM {}").format(sequence_list, role))
        if grant.sequence_privileges:
            conn.execute(sql.SQL("GRANT {} ON SEQUENCE {} TO {}").format(
                privileges(grant.sequence_privileges), sequence_list, role))


def _current_schema(conn: psycopg.Connection) -> str:
    return conn.execute("SELECT current_schema()").fetchone()[0]


# -- SCRAM-SHA-256 verifiers (RFC 5802 / 7677, the format of pg_authid.rolpassword) --------------


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    stored_key, server_key = _scram_keys(password, salt, iterations)
    encode = lambda raw: base64.b64encode(raw).decode("ascii")  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{encode(salt)}${encode(stored_key)}:{encode(server_key)}"


def scram_verifier_matches(verifier: str, password: str) -> bool:
    try:
        method, rest = verifier.split("$", 1)
        iterations_salt, keys = rest.split("$", 1)
        iterations, salt = iterations_salt.split(":", 1)
        stored_key, server_key = keys.split(":", 1)
    except ValueError:
        return False  # an md5 hash or another format: reset it to SCRAM
    if method != "SCRAM-SHA-256":
        return False
    expected = _scram_keys(password, base64.b64decode(salt), int(iterations))
    actual = (base64.b64decode(stored_key), base64.b64decode(server_key))
    return all(hmac.compare_digest(a, b) for a, b in zip(expected, actual))


def _scram_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    # PostgreSQL applies SASLprep first; for the printable ASCII we require it is the identity.
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return hashlib.sha256(client_key).digest(), server_key


# -- the command -------------------------------------------------------------------------------


def _passwords_from_environment(grants: list[RoleGrant]) -> dict[str, str]:
    passwords, problems = {}, []
    for grant in grants:
        value = os.environ.get(grant.password_variable, "")
        if not value:
            problems.append(f"{grant.password_variable} is not set (password of role {grant.name})")
        elif not (value.isascii() and value.isprintable()):
            # non-ASCII passwords go through SASLprep on the server, which we do not replicate
            problems.append(f"{grant.password_variable} must be printable ASCII (password of role {grant.name})")
        else:
            passwords[grant.name] = value
    if problems:
        raise UsageProblem(problems)
    return passwords


class UsageProblem(Exception):
    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@click.group("db")
def db_group() -> None:
    """Databases: tables, roles, partitions and retention."""


@requires(POSTGRES)
@db_group.command("migrate")
@click.option("--dsn", envvar=ADMIN_DSN_VARIABLE, show_envvar=True, metavar="DSN",
              help="Admin connection (superuser or owner with CREATEROLE). Prefer the environment "
                   "variable: a password on the command line is visible to other users.")
@click.option("--adopt", is_flag=True,
              help="First upgrade tables the original pipeline created, in place, keeping their rows (docs/migrating.md).")
@click.pass_obj
def migrate_command(app, dsn: str | None, adopt: bool = False) -> None:
    """Create the tables (idempotent) and the roles tickwire_writer / tickwire_reader; add the
    optional columns a newer schema declares to existing tables, and refuse (exit 2, with the
    manual steps) a table that differs in a way that cannot be changed in place.

    \b
    Environment:
      TICKWIRE_PG_ADMIN_DSN          admin connection (or --dsn)
      TICKWIRE_PG_WRITER_PASSWORD    password of the writer role (sink, Spark)
      TICKWIRE_PG_READER_PASSWORD    password of the reader role (Grafana)

    Everything happens in one transaction: on any error nothing is changed. Exit code 2 for a
    missing setting or a breaking difference, 1 when PostgreSQL refuses.
    """
    config = app.config
    grants = role_grants(config)
    problems = [] if dsn else [f"no admin connection: set {ADMIN_DSN_VARIABLE} or pass --dsn"]
    try:
        passwords = _passwords_from_environment(grants)
    except UsageProblem as error:
        problems += error.problems
    if problems:
        for problem in problems:
            click.echo(f"tickwire db migrate: {problem}", err=True)
        raise SystemExit(EXIT_USAGE)
    ddl = generated_ddl(app.manager, config)
    tables = managed_tables(config)
    try:
        with psycopg.connect(dsn, autocommit=True, application_name="tickwire db migrate") as conn:
            migrate(conn, ddl, tables, grants, passwords, report=click.echo,
                    migrations=declared_migrations(config), project=config.dir, partitioned=plans(config),
                    adopt_streams=list(config.streams.values()) if adopt else None)
            click.echo(f"migrated database {conn.info.dbname} on {conn.info.host}:{conn.info.port}")
    except BreakingDifferences as refused:
        for reason in refused.reasons:
            click.echo(f"tickwire db migrate: {reason}", err=True)
        click.secho(f"tickwire db migrate: {len(refused.reasons)} change(s) cannot be made in place; nothing was "
                    "changed (docs/schema-evolution.md)", fg="red", err=True)
        raise SystemExit(EXIT_USAGE)
    except AdoptRefused as error:
        click.echo(f"tickwire db migrate --adopt: {error}; nothing was changed", err=True)
        raise SystemExit(EXIT_FAILED)
    except psycopg.Error as error:
        click.echo(f"tickwire db migrate: PostgreSQL refused, nothing was changed: {error}".rstrip(), err=True)
        raise SystemExit(EXIT_FAILED)
    except RuntimeError as error:  # a conversion that cannot go ahead (plugins/postgres_maintain.py)
        click.echo(f"tickwire db migrate: {error}; nothing was changed", err=True)
        raise SystemExit(EXIT_FAILED)


@hookimpl
def tickwire_register_commands(cli: click.Group) -> None:
    db_group.add_command(maintain_command)
    cli.add_command(db_group)


@hookimpl
def tickwire_register_config(register) -> None:
    register("postgres", CONFIG_SECTION)
