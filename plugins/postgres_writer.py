"""What the ``postgres`` sink (plugins/postgres_sink.py) sends to PostgreSQL, and how it reads
the errors that come back.

:class:`TableWriter` holds one stream's statements, built once from validated identifiers: a
temporary staging table shaped like the target, ``COPY`` into it, then ``INSERT … SELECT … ORDER BY key ON
CONFLICT DO NOTHING`` — or the same insert for one row, when a batch must be written row
by row to find the records PostgreSQL rejects. The conflict target is left out: the only unique
constraint is the primary key, which on a day-partitioned table is the schema's key plus the
partition column (plugins/postgres_partitions.py) and on a table an older tickwire made is the
schema's key alone; both are matched. A day-partitioned table's writer also knows how to ask
for a missing day's partition (``ensure_partition``). :func:`copy_dead_letters` stores dead letters.
:func:`is_configuration_failure` tells a refusal retrying cannot fix from a server that is
away. Transactions, retries, metrics and logs are the sink's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from tickwire.framework.components import DeadLetter
from tickwire.framework.extras import POSTGRES, optional_module
from tickwire.framework.schemas import StreamSpec
from tickwire.plugins.postgres_partitions import ENSURE_FUNCTION, stream_plan

# The `postgres` extra, imported when the sink is first used: the plugin loads without it.
psycopg = optional_module("psycopg", POSTGRES, "the postgres sink")
sql = optional_module("psycopg.sql", POSTGRES, "the postgres sink")

DEAD_LETTER_TABLE = "dead_letters"
DEAD_LETTER_COLUMNS = ("stream", "reason", "plugin", "payload", "received_at")

# Connection failures that retrying will not fix: a wrong DSN is a configuration error.
CONFIGURATION_FAILURES = ("password authentication failed", "does not exist", "no pg_hba.conf entry")


@dataclass(frozen=True)
class TableWriter:
    """The statements for one stream's table, built once from validated identifiers."""

    stream: str
    columns: tuple[str, ...]
    staging: sql.Identifier
    create_staging: sql.Composed
    copy_into_staging: sql.Composed
    insert_from_staging: sql.Composed
    insert_one: sql.Composed
    time_column: str | None = None  # day-partitioned by it (plugins/postgres_partitions.py)
    ensure_partition: sql.Composed | None = None
    qualified_table: str = ""  # "schema"."table", as the function's regclass argument

    @classmethod
    def for_stream(cls, stream: StreamSpec, schema: str) -> "TableWriter":
        columns = tuple(column.name for column in stream.columns)
        table = sql.Identifier(schema, stream.table)
        staging = sql.Identifier(f"tickwire_staging_{stream.table}")
        column_list = sql.SQL(", ").join(map(sql.Identifier, columns))
        plan = stream_plan(stream)
        conflict = sql.SQL("ON CONFLICT DO NOTHING")  # no target: see the module docstring
        if getattr(stream, "upsert", False):  # a derived stream's rows are recomputed values (framework/derived.py)
            # DO UPDATE needs a target; a derived table's key already holds its partition column.
            conflict = sql.SQL("ON CONFLICT ({key}) DO UPDATE SET {set}").format(
                key=sql.SQL(", ").join(map(sql.Identifier, stream.primary_key)),
                set=sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
                                       for c in columns if c not in stream.primary_key))
        return cls(
            stream=stream.name,
            columns=columns,
            staging=staging,
            create_staging=sql.SQL(
                "CREATE TEMPORARY TABLE {staging} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            ).format(staging=staging, table=table),
            copy_into_staging=sql.SQL("COPY {staging} ({columns}) FROM STDIN").format(
                staging=staging, columns=column_list
            ),
            # In key order: two writers of the same keys (redundant instances) then wait for each
            # other's rows in one order, never in a cycle — a deadlock PostgreSQL would break by
            # aborting a batch.
            insert_from_staging=sql.SQL(
                "INSERT INTO {table} ({columns}) SELECT {columns} FROM {staging} ORDER BY {key} {conflict}"
            ).format(table=table, columns=column_list, staging=staging,
                     key=sql.SQL(", ").join(map(sql.Identifier, stream.primary_key)), conflict=conflict),
            insert_one=sql.SQL(
                "INSERT INTO {table} ({columns}) VALUES ({values}) {conflict}"
            ).format(
                table=table,
                columns=column_list,
                values=sql.SQL(", ").join(sql.Placeholder() * len(columns)),
                conflict=conflict,
            ),
            time_column=plan.time_column if plan else None,
            ensure_partition=sql.SQL("SELECT {function}(%s::regclass, %s)").format(
                function=sql.Identifier(schema, ENSURE_FUNCTION)) if plan else None,
            qualified_table=table.as_string(None) if plan else "",
        )

    def days(self, records: list[dict]) -> set[date]:
        """The UTC days of the records' partition times (ISO-8601 text from normalize); a value
        that is not one is left to PostgreSQL (the DEFAULT partition, or a dead letter)."""
        out = set()
        for record in records:
            value = record.get(self.time_column)
            try:
                out.add(date.fromisoformat(str(value)[:10]))
            except ValueError:
                continue
        return out

    def row(self, record: dict) -> list:
        return [record.get(column) for column in self.columns]

    async def copy_batch(self, conn: psycopg.AsyncConnection, records: list[dict]) -> int:
        """COPY + INSERT … ON CONFLICT DO NOTHING in one transaction; returns the rows inserted.
        The staging table must exist (:attr:`create_staging`, outside the transaction)."""
        async with conn.transaction():
            async with conn.cursor() as cursor:
                async with cursor.copy(self.copy_into_staging) as copy:
                    for record in records:
                        await copy.write_row(self.row(record))
                await cursor.execute(self.insert_from_staging)
                return cursor.rowcount

    async def insert_row(self, conn: psycopg.AsyncConnection, record: dict) -> int:
        """Insert one record in a savepoint (one bad row spoils only itself); 0 for a duplicate."""
        async with conn.transaction():
            cursor = await conn.execute(self.insert_one, self.row(record))
            return cursor.rowcount


async def copy_dead_letters(conn: psycopg.AsyncConnection, table: sql.Identifier, letters: list[DeadLetter]) -> None:
    """COPY ``letters`` into the dead-letter ``table``, in the caller's transaction."""
    # dead letters have no natural key; a replay after a lost COMMIT may store one twice,
    # which is acceptable for a diagnostic table and better than losing it.
    statement = sql.SQL("COPY {table} ({columns}) FROM STDIN").format(
        table=table,
        columns=sql.SQL(", ").join(map(sql.Identifier, DEAD_LETTER_COLUMNS)),
    )
    async with conn.cursor() as cursor:
        async with cursor.copy(statement) as copy:
            for letter in letters:
                await copy.write_row((
                    letter.stream,
                    _storable_text(letter.reason),
                    letter.plugin,
                    _storable_text(letter.raw),
                    letter.received_at,
                ))


def _storable_text(text: str) -> str:
    # PostgreSQL text cannot hold NUL; a raw frame with one must still be kept, so escape it.
    return text.replace("\x00", "\\u0000")


def is_configuration_failure(error: psycopg.Error) -> bool:
    """A connection refused for a reason retrying cannot fix (credentials, database, pg_hba)."""
    message = str(error)
    return "FATAL" in message and any(reason in message for reason in CONFIGURATION_FAILURES)


def first_line(error: Exception) -> str:
    """The first line of an error's message, for a log field or a dead letter's reason."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
