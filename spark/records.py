"""Kafka value JSON (the normalized record of docs/architecture.md) → typed columns.

Every Kafka record of a stream's topic becomes one row holding the stream's columns (typed by the
mapping's ``select`` expressions) and three bookkeeping columns:

* ``__tw_reason`` — NULL for a valid record, else why it is a dead letter: malformed JSON, a
  non-null column that is missing, or a value that does not parse as its type (a cast giving
  NULL, on any column);
* ``__tw_raw`` — the value as text, kept for the dead-letter table;
* ``__tw_kafka_ts`` — the Kafka record timestamp;
* ``__tw_kafka_pos`` — ``partition:offset``, unique per record (the de-duplication key of a dead
  letter, which must never be merged with another).

Everything is a JVM expression: no Python UDF, so executors need no Python.
The session must run with ``spark.sql.ansi.enabled=false``, so a bad cast gives NULL (which we
catch here) instead of failing the batch.
"""

from __future__ import annotations

from functools import reduce

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from tickwire.spark.mapping import StreamMapping

REASON = "__tw_reason"
RAW = "__tw_raw"
KAFKA_TS = "__tw_kafka_ts"
KAFKA_POSITION = "__tw_kafka_pos"
_INPUT = "__tw_in"
_CORRUPT = "__tw_corrupt"
BOOKKEEPING = (REASON, RAW, KAFKA_TS, KAFKA_POSITION)


def read_kafka(spark: SparkSession, topic: str, options: dict[str, str]) -> DataFrame:
    """A streaming DataFrame over ``topic``; ``options`` are Kafka source options
    (``kafka.bootstrap.servers``, ``startingOffsets``, ``maxOffsetsPerTrigger``, ...)."""
    reader = spark.readStream.format("kafka").option("subscribe", topic)
    for key, value in options.items():
        reader = reader.option(key, value)
    return reader.load()


def value_schema(stream: StreamMapping) -> StructType:
    """The mapping's value schema plus a corrupt-record column for from_json."""
    schema = StructType.fromJson(stream.value_schema)
    return StructType(list(schema.fields) + [StructField(_CORRUPT, StringType(), True)])


def _reason(stream: StreamMapping, input_fields: set[str]) -> Column:
    problems = []
    for column in stream.columns:
        typed = F.col(f"`{column.name}`")
        raw = F.col(f"{_INPUT}.`{column.name}`") if column.name in input_fields else F.lit(None)
        if not column.nullable:
            problems.append(
                F.when(raw.isNull(), F.lit(f"{column.name}: missing or null"))
            )
        if column.logical == "text":  # PostgreSQL text cannot hold NUL
            problems.append(F.when(F.instr(raw, "\u0000") > 0, F.lit(f"{column.name}: contains a NUL character")))
        # present in the JSON but unusable as its type (a cast that gave NULL)
        problems.append(
            F.when(
                raw.isNotNull() & typed.isNull(),
                F.concat(
                    F.lit(f"{column.name}: cannot parse "),
                    F.substring(F.regexp_extract(F.to_json(F.struct(raw.alias("v"))), r'^\{"v":(.*)\}$', 1), 1, 200),
                    F.lit(f" as {column.logical}"),
                ),
            )
        )
    column_problems = F.concat_ws("; ", *problems)
    malformed = F.col(_INPUT).isNull() | (
        F.col(_CORRUPT).isNotNull()
        & reduce(lambda a, b: a & b, [F.col(f"{_INPUT}.`{f}`").isNull() for f in sorted(input_fields)])
    )
    return (
        F.when(F.col(RAW).isNull(), F.lit("empty Kafka value"))
        .when(malformed, F.lit("malformed JSON: not an object of the stream's fields"))
        .when(column_problems != "", column_problems)
        .when(F.col(_CORRUPT).isNotNull(), F.lit("malformed JSON"))
    )


def parse(kafka_df: DataFrame, stream: StreamMapping) -> DataFrame:
    """Kafka rows → the stream's typed columns plus the bookkeeping columns."""
    schema = value_schema(stream)
    input_fields = {f.name for f in schema.fields if f.name != _CORRUPT}
    options = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": _CORRUPT}
    raw = kafka_df.select(
        F.col("value").cast("string").alias(RAW),
        F.col("timestamp").alias(KAFKA_TS),
        F.concat_ws(":", F.col("partition"), F.col("offset")).alias(KAFKA_POSITION),
    )
    # from_json is wrapped in a (never false) non-deterministic condition: an optimizer barrier.
    # Without it, a filter on the reason (records.valid, the candle query) is pushed below these
    # projections with from_json inlined into it once per column check, so each value was parsed
    # dozens of times (75 % of the candle query's time); with it, once.
    parsed_json = F.when(F.spark_partition_id() >= 0, F.from_json(F.col(RAW), schema, options))
    parsed = raw.select(RAW, KAFKA_TS, KAFKA_POSITION, parsed_json.alias(_INPUT))
    # the generated select expressions name the JSON fields bare: expose them at top level
    flat = parsed.select(
        RAW, KAFKA_TS, KAFKA_POSITION, _INPUT,
        F.col(f"{_INPUT}.{_CORRUPT}").alias(_CORRUPT),
        *[F.col(f"{_INPUT}.`{f}`").alias(f) for f in sorted(input_fields)],
    )
    typed = flat.selectExpr(RAW, KAFKA_TS, KAFKA_POSITION, _INPUT, _CORRUPT, *stream.select)
    missing = set(stream.column_names) - set(typed.columns)
    if missing:
        raise ValueError(f"stream {stream.name!r}: the select expressions produce no {sorted(missing)}")
    return typed.select(
        *[F.col(f"`{c}`") for c in stream.column_names],
        _reason(stream, input_fields).alias(REASON),
        RAW,
        KAFKA_TS,
        KAFKA_POSITION,
    )


def valid(parsed: DataFrame) -> DataFrame:
    return parsed.where(F.col(REASON).isNull())
