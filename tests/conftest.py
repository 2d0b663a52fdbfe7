"""Shared test set-up. Service fixtures (Kafka, PostgreSQL, Spark, simulator) live in
tests/fixtures/ as pytest plugin modules so each can be read on its own."""

pytest_plugins = [
    # one line per fixture module; keep sorted
    "tests.fixtures.kafka",
    "tests.fixtures.postgres",
    "tests.fixtures.simulator",
    "tests.fixtures.spark_cluster",
]
