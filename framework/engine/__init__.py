"""The asyncio engine: sources → transforms → per-sink batches → bounded queues → sinks.

How a record travels (all in one event loop, no hook calls on the way)::

    source.run ─► Emitter.record(stream, payload)                       routing.py
                    ├─ transform chain of the stream (validate → normalize, fused), built once
                    │    └─ InvalidRecord(reason) ─► dead-letter batch     dead_letters.py
                    └─ append to one list per (sink, stream) ─ full (batch_size) or old
                       (linger_ms) ─► whole list put on the sink's bounded asyncio.Queue
    sink worker ─► Sink.write(stream, records) ─ returned = committed       workers.py
                   └─ adaptive batching: queue empty and no write in flight ─► it takes a
                      partial list itself (the first record into an empty list wakes it)

Adaptive batching (``engine.batching: adaptive``, the default) is what gives low latency: a
record waits for its sink, never for more records; while a write runs, records gather, so
batches grow with the rate up to ``batch_size``. ``linger_ms`` only bounds how long a partial
list waits for a busy sink before it is queued (``batching: linger``: the fixed wait of old).

Guarantees:

* **Backpressure**: each sink queue holds at most ``queue_batches`` batches; when it is full,
  ``Emitter.record`` waits in ``Queue.put``, so the source stops reading and memory stays
  bounded: per sink at most ``(queue_batches + max_in_flight × coalesce_batches + 1) ×
  batch_size`` records (queue + the writes in progress + the buffer being filled), per stream
  buffer. ``max_in_flight`` is the sink's (framework/components.py), 1 by default.
* **Acknowledgement**: ``tickwire_messages_written_total`` counts a record only after
  ``Sink.write`` returned. What a failing write means is the sink's error type: retried with
  backoff (transient, the default), dead-lettered (BadRecords), or the run stops (Permanent).
  Every log line names the sink, plugin and stream.
* **Shutdown** (:meth:`Engine.stop`, SIGINT/SIGTERM in ``tickwire run``): sources are cancelled,
  a batch that was being handed over when a source was cancelled goes back to its buffer, every
  buffer is flushed, the workers drain their queues and wait for every write in flight, sinks
  are closed. An engine whose sources all return by themselves (e.g. a replay) shuts down the
  same way. It is bounded: :meth:`Engine.run` returns at most ``shutdown_timeout_s`` after the
  stop request (or the end of the sources), whatever a sink is doing. Writes get that time
  minus a reserve for closing the sinks (a third of it, 1.5–5 s); writes still running then
  are cancelled, and every record not committed is counted per sink and stream in
  :attr:`Engine.abandoned`, one error log line and ``tickwire_records_abandoned_total``
  (shutdown.py). A stop that arrives while the sinks are being opened cancels the opening.

This package re-exports what importers use; the modules hold one job each.
"""

from tickwire.framework.engine.core import Engine
from tickwire.framework.engine.plan import DEFAULT_TRANSFORMS, Plan, plan_from_config
from tickwire.framework.engine.routing import Emitter
from tickwire.framework.engine.runner import DEAD_LETTERS_LABEL, TRADE_GAPS_LABEL
from tickwire.framework.engine.settings import EngineError, EngineSettings
from tickwire.framework.engine.shutdown import describe_uncommitted, uncommitted_fields

__all__ = [
    "DEAD_LETTERS_LABEL", "DEFAULT_TRANSFORMS", "Emitter", "Engine", "EngineError", "EngineSettings", "Plan",
    "TRADE_GAPS_LABEL", "describe_uncommitted", "plan_from_config", "uncommitted_fields",
]
