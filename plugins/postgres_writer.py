"""What the ``postgres`` sink (plugins/postgres_sink.py) sends to PostgreSQL, and how it reads
the errors that come back.

:class:`TableWriter` holds one stream's statements, built once from validated identifiers: a
temporary staging table shaped like the target, ``COPY`` into it, then ``INSERT … SELECT … ON
CONFLICT (key) DO NOTHING`` — or the same insert for one row, when a batch must be written row
by row to find the records PostgreSQL rejects. :func:`copy_dead_letters` stores dead letters.
:func:`is_configuration_failure` tells a refusal retrying cannot fix from a server that is
away. Transactions, retries, metrics and logs are the sink's.
"""

from __future__ import annotations

from dataclasses import dataclass

from tickwire.framework.components import DeadLetter
from tickwire.framework.extras import POSTGRES, optional_module
from tickwire.framework.schemas import StreamSpec

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

    @classmethod
    def for_stream(cls, stream: StreamSpec, schema: str) -> "TableWriter":
        columns = tuple(column.name for column in stream.columns)
        table = sql.Identifier(schema, stream.table)
        staging = sql.Identifier(f"tickwire_staging_{stream.table}")
        column_list = sql.SQL(", ").join(map(sql.Identifier, columns))
        conflict = sql.SQL(", ").join(map(sql.Identifier, stream.primary_key))
        action = sql.SQL("DO NOTHING")
        if getattr(stream, "upsert", False):  # a derived stream's rows are recomputed values (framework/derived.py)
            action = sql.SQL("DO UPDATE SET {}").format(sql.SQL(", ").join(
                sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in columns if c not in stream.primary_key))
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
            insert_from_staging=sql.SQL(
                "INSERT INTO {table} ({columns}) SELECT {columns} FROM {staging} ON CONFLICT ({key}) {action}"
            ).format(table=table, columns=column_list, staging=staging, key=conflict, action=action),
            insert_one=sql.SQL(
                "INSERT INTO {table} ({columns}) VALUES ({values}) ON CONFLICT ({key}) {action}"
            ).format(
                table=table,
                columns=column_list,
                values=sql.SQL(", ").join(sql.Placeholder() * len(columns)),
                key=conflict,
                action=action,
            ),
        )

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
