"""The ``engine:`` section of streams.yaml as typed settings; every default comes from the
config schema (framework/config_schema.py), the one place it is written."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from tickwire.framework.config_schema import BASE_SCHEMA
from tickwire.framework.options import schema_default, with_defaults

ENGINE_SCHEMA = BASE_SCHEMA["properties"]["engine"]


def _default(name: str):
    return field(default=schema_default(ENGINE_SCHEMA, name))


class EngineError(Exception):
    """The run cannot go on (unknown plugin, sink failing to open, a sink's PermanentError…);
    the message names the component. ``tickwire run`` prints it and exits 1."""


@dataclass
class EngineSettings:
    """Batching, buffering, retries and the shutdown bound (docs in the config schema)."""

    batch_size: int = _default("batch_size")  # records per sink batch
    batching: str = _default("batching")  # "adaptive": an idle sink takes partial batches at once; "linger"
    linger_ms: float = _default("linger_ms")  # a non-empty batch older than this is queued anyway
    queue_batches: int = _default("queue_batches")  # batches waiting per sink before sources slow down
    retry_initial_s: float = _default("retry_initial_s")  # first delay after a failed write, doubled…
    retry_max_s: float = _default("retry_max_s")  # … up to this
    coalesce_batches: int = _default("coalesce_batches")  # with a backlog, queued batches of a stream per write
    shutdown_timeout_s: float = _default("shutdown_timeout_s")  # from a stop request to run() returning
    # internal tunables, not in the config schema
    lag_sample_every: int = 64  # observe the event-time lag of one record in N (power of two)
    metrics_interval_s: float = 0.5  # how often plain counters are pushed into Prometheus

    @classmethod
    def from_options(cls, options: dict | None) -> EngineSettings:
        """From the ``engine:`` section as written (unknown keys are the schema check's job)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in with_defaults(ENGINE_SCHEMA, options).items() if k in known})
