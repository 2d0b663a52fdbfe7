"""What the ``postgres`` sink checks on its first connection (plugins/postgres_sink.py): every
table it writes exists, the connecting role may INSERT into it, and it has every column of its
stream's schema. A failed check is a :class:`PostgresSinkError` naming sink, stream and the fix
(`tickwire db migrate`, connecting as tickwire_writer), raised at start rather than per batch.
"""

from __future__ import annotations

from tickwire.framework.components import PermanentError
from tickwire.framework.schemas import StreamSpec
from tickwire.plugins.postgres_writer import DEAD_LETTER_TABLE, psycopg


class PostgresSinkError(PermanentError):
    """A problem retrying cannot fix (missing table or privilege, wrong credentials); names sink
    and stream. The engine stops the run with it (framework/components.py)."""


async def check_tables(conn: psycopg.AsyncConnection, sink: str, schema: str, streams: list[StreamSpec]) -> None:
    """Check the tables of ``streams`` (the sink's own) and ``dead_letters`` in ``schema``."""
    wanted: dict[str | None, str] = {stream.name: stream.table for stream in streams}
    wanted[None] = DEAD_LETTER_TABLE
    for stream_name, table in wanted.items():
        cursor = await conn.execute(
            "SELECT has_table_privilege(c.oid, 'INSERT') FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
            [schema, table],
        )
        found = await cursor.fetchone()
        about = f"sink {sink!r} (postgres)" + (f", stream {stream_name!r}" if stream_name else "")
        if found is None:
            raise PostgresSinkError(
                f"{about}: table {schema}.{table} does not exist; create the tables with "
                "`tickwire db migrate`"
            )
        if not found[0]:
            raise PostgresSinkError(
                f"{about}: the connecting role may not INSERT into {schema}.{table}; connect "
                "as tickwire_writer (granted by `tickwire db migrate`)"
            )
        if stream_name is not None:
            stream = next(s for s in streams if s.name == stream_name)
            await _check_columns(conn, schema, stream, about)


async def _check_columns(conn: psycopg.AsyncConnection, schema: str, stream: StreamSpec, about: str) -> None:
    """A schema that gained a column before `tickwire db migrate` added it: say so at start
    rather than fail every batch (docs/schema-evolution.md)."""
    cursor = await conn.execute(
        "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped",
        [schema, stream.table],
    )
    present = {name for (name,) in await cursor.fetchall()}
    missing = [c.name for c in stream.columns if c.name not in present]
    if missing:
        raise PostgresSinkError(
            f"{about}: table {schema}.{stream.table} has no column {', '.join(missing)} (schema "
            f"{stream.schema_path.name} version {stream.schema_version}); add it with `tickwire db migrate`"
        )
