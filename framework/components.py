"""Component specs and the protocols sources, transforms and sinks implement.

A spec is what a plugin registers: a name (the ``type`` used in streams.yaml), a factory, the
JSON Schema of the component's options (validated with the config and shown by
``tickwire plugins``), and a one-line description. See docs/architecture.md for the contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Generator, Protocol, runtime_checkable

from tickwire.framework.options import with_defaults

if TYPE_CHECKING:
    from tickwire.framework.extras import Requirement
    from tickwire.framework.metrics import Metrics
    from tickwire.framework.schemas import StreamSpec, TopicSpec
    from tickwire.framework.sharding import Shard


class InvalidRecord(Exception):
    """Raised by a transform: the record goes to the dead-letter destination with ``reason``.

    ``step`` is for a fused transform (:meth:`FusableTransform.fuse`): 0 when the transform's
    own check rejected the record, 1 when the fused-in following one did; the dead letter
    then names that transform."""

    def __init__(self, reason: str, step: int = 0):
        super().__init__(reason)
        self.reason = reason
        self.step = step


class PluginError(Exception):
    """A plugin failed to load or register; the message names the plugin."""


# -- what a sink raises, and what the engine does about it ----------------------------------------
# The engine adds the sink's id, plugin and stream to every message; the sink says what happened.


class TransientError(Exception):
    """The write may succeed later (connection lost, database locked, disk full): the engine
    retries the same batch with exponential backoff (``engine.retry_initial_s`` doubling up to
    ``engine.retry_max_s``), forever, until it succeeds or the run stops. Any exception that is
    none of the types below is treated the same way."""


class BadRecords(Exception):
    """The records of this batch cannot be stored, whatever the retries (a value the store
    refuses): the engine sends every record of the batch to the dead-letter destination with
    ``reason`` (counted in ``tickwire_dead_letters_total``) and goes on with the next batch. A
    sink that can tell the bad records from the good ones stores the good ones itself and
    raises this only for a batch of bad ones (or dead-letters them itself, as PostgreSQL does)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class PermanentError(Exception):
    """Retrying cannot help (wrong credentials, a missing table or privilege, an invalid
    setting): the engine stops the run cleanly — sources cancelled, the other sinks flushed
    within ``engine.shutdown_timeout_s`` — and ``tickwire run`` prints the message with the
    sink, plugin and stream and exits with code 1 (:data:`EXIT_PERMANENT`). What this sink had
    not committed is counted as abandoned. Raised from ``open()`` or a factory it is a start-up
    error (also exit 1)."""


EXIT_PERMANENT = 1  # the exit code of `tickwire run` after a PermanentError (and any start-up error)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not be processed, with the reason, kept for inspection or replay."""

    stream: str | None
    reason: str
    plugin: str
    raw: str
    received_at: str  # ISO-8601 UTC


# Why a range of trade ids was given up (TradeGap.reason); docs/architecture.md explains each.
GAP_TOO_LARGE = "too_large"  # longer than the source's gap_fill_max_trades
GAP_NOT_SERVED = "not_served"  # older than the exchange's REST history still holds
GAP_REST_ERROR = "rest_error"  # REST refused or kept failing
GAP_FILL_OFF = "gap_fill_off"  # the source was configured not to fetch gaps
GAP_TOO_MANY = "too_many_gaps"  # more holes open at once than the source keeps (the oldest goes)
GAP_REASONS = (GAP_TOO_LARGE, GAP_NOT_SERVED, GAP_REST_ERROR, GAP_FILL_OFF, GAP_TOO_MANY)


@dataclass(frozen=True, slots=True)
class TradeGap:
    """Trades ``first_id`` … ``last_id`` (inclusive) of ``symbol`` in ``stream`` are lost for
    good: a source reports it once it stopped trying (never for a range it may still fill), the
    engine records it in every store of the stream (``trade_gaps``) and counts it in
    ``tickwire_trade_gap_trades_lost_total``."""

    stream: str
    symbol: str
    first_id: int
    last_id: int
    reason: str  # one of GAP_REASONS
    detected_at: str  # ISO-8601 UTC

    @property
    def count(self) -> int:
        return self.last_id - self.first_id + 1


@dataclass(slots=True)
class RunContext:
    """What a source or sink factory gets besides its own (complete, validated) options: the
    streams it serves, the metrics registry, a logger, the config folder — not the config or
    the plugin manager."""

    streams: list[StreamSpec]
    """The streams this component serves (a sink: the profile's streams that write to it)."""
    metrics: Metrics
    """The run's Prometheus registry (framework/metrics.py)."""
    log: Any
    """A structlog logger bound with ``plugin=`` and ``component=``."""
    config_dir: Any
    """pathlib.Path of the config file's folder; relative paths in options resolve against it."""
    resume: dict[str, dict[str, int]] = field(default_factory=dict)
    """Sources only: stream → symbol → the last sequence id (trade id) every store of the stream
    holds (the minimum over the sinks that could tell). A source resumes after it, filling the
    downtime; a symbol absent here starts from the live stream."""
    report_gap: Callable[[TradeGap], None] | None = None
    """Sources only: report a range lost for good; the engine logs it, counts it and records it
    in the stream's stores (trade_gaps) or the dead-letter destination. Never blocks."""
    shard: Shard | None = None
    """Sources only: ``tickwire run --shard I/N`` (or ``TICKWIRE_SHARD``): take only the symbols of
    this shard (framework/sharding.py); None: all of them."""
    dead_letters: bool = False
    """Sinks only: this sink is the running profile's dead-letter destination (``profiles.<p>.
    dead_letter``), so it must be ready for dead letters at open (e.g. its topic exists)."""

    @property
    def tables(self) -> list[str]:
        """The tables of the streams served, in order."""
        return [s.table for s in self.streams]

    @property
    def topics(self) -> list[TopicSpec]:
        """The Kafka topics of the streams served (streams without a topic are left out)."""
        return [s.topic for s in self.streams if s.topic is not None]


class Rejected:
    """What :meth:`Emitter.record_nowait` returns for a record it did not accept (invalid, or
    for an unknown stream): awaiting it delivers the dead letter. A distinct type, so a source
    can tell "rejected" from "accepted, but wait" with one ``type(x) is Rejected`` — and mark a
    trade id or event as seen only when its record was accepted."""

    __slots__ = ("_delivery",)

    def __init__(self, delivery: Awaitable[None]):
        self._delivery = delivery

    def __await__(self) -> Generator[Any, None, None]:
        return self._delivery.__await__()


class Emitter(Protocol):
    """Given to a running source: where its payloads go.

    The contract for one payload, whichever method hands it over:

    * **accepted**: the engine validated it and buffered it for every sink; from then on it is
      the engine's (a source may mark its id as seen);
    * **rejected**: it went (or goes, once awaited) to the dead letters with a reason; the
      source must not treat it as seen — the real record may still come;
    * dropped on purpose by a transform (returned None): counts as accepted.
    """

    async def record(self, stream: str, payload: dict, received_ns: int) -> bool:
        """Hand one payload (the Binance event, unwrapped) of ``stream`` to the engine; return
        True when it was accepted, False when it was rejected (its dead letter is delivered).

        Awaiting it may block: that is backpressure from the sinks."""

    def record_nowait(self, stream: str, payload: dict, received_ns: int) -> Awaitable[None] | None:
        """``record`` without a coroutine, for hot loops (every coroutine layer costs tenths of a
        µs). Returns:

        * ``None``: accepted and buffered — nothing to wait for (the common case);
        * a :class:`Rejected`: not accepted; await it before the next record (it delivers the
          dead letter);
        * any other awaitable: accepted, and a full batch is being handed to a sink; await it
          before the next record (that is the backpressure).

        So ``pending is None or type(pending) is not Rejected`` means accepted."""

    async def dead_letter(self, stream: str | None, reason: str, raw: str | bytes) -> None:
        """Report a frame that cannot become a record (malformed, unknown, oversized…)."""


class Source(Protocol):
    """A producer, built by ``SourceSpec.factory(name, options, ctx)``. The engine calls ``run``
    once per start and cancels it to stop; while it runs, payloads go to ``emit``."""

    async def run(self, emit: Emitter) -> None:
        """Produce until cancelled. Reconnects by itself; never returns on transient errors.
        Returning ends the source (a replay); raising restarts it after a growing delay."""


class Transform(Protocol):
    """A per-record step, built once per stream by ``TransformSpec.factory(stream, options)``.

    Called with the payload (or the previous step's record); returns the record for the next
    step, None to drop it (counts as accepted), or raises :class:`InvalidRecord` (dead letter
    with the reason). Any other exception is a bug: the record is dead-lettered and the error
    logged once per transform and stream."""

    def __call__(self, record: dict) -> dict | None: ...


@runtime_checkable
class FusableTransform(Transform, Protocol):
    """Optional Transform member: one function doing this step and the next one.

    The engine asks once, when it builds a stream's chain of exactly two transforms; without
    ``fuse`` (or when it returns None) the steps run one after the other."""

    def fuse(self, following: Transform) -> Transform | None:
        """A function equal to ``following(self(record))``, or None when this transform cannot
        fuse with ``following``. It raises :class:`InvalidRecord` with the same reason as the
        step that rejected the record, with ``step=1`` when that was ``following``."""


class Sink(Protocol):
    """A store, built by ``SinkSpec.factory(name, options, ctx)``.

    Required: ``open``, ``write``, ``close`` (and ``write_dead_letters`` when
    ``supports_dead_letters``). The optional members below have the documented default when a
    sink leaves them out; the engine reads them once, after ``open()``
    (:func:`sink_traits`). What a sink raises decides what the engine does:
    :class:`TransientError` (or any other exception) retry, :class:`BadRecords` dead letters,
    :class:`PermanentError` stop the run."""

    supports_dead_letters: bool
    """Optional, default False: the sink stores dead letters (``write_dead_letters``) and may be
    a profile's ``dead_letter`` destination. Must agree with its spec's."""

    max_in_flight: int
    """Optional, default 1: up to this many ``write`` calls run at once, started in queue order.
    Such a sink keeps its own ordering and must not raise TransientError (a retried write runs
    again after writes that started later)."""

    idempotent: bool
    """Optional, default True: writing the same batch twice stores it once (a retried write
    after a lost acknowledgement duplicates nothing). Append-only sinks say False."""

    async def open(self) -> None:
        """Connect, create what is missing. Raise :class:`PermanentError` for what retrying
        cannot fix; any exception stops the start."""

    async def write(self, stream: StreamSpec, records: list[dict]) -> None:
        """Store ``records`` of ``stream``. Return only when they are committed: returning
        is the acknowledgement. Raise as the class docstring says."""

    async def write_dead_letters(self, letters: list[DeadLetter]) -> None:
        """Store dead letters (only called when ``supports_dead_letters``); like ``write``."""

    async def close(self) -> None:
        """Flush and release. Called once, after the last write."""

    def describe(self) -> str:
        """Optional, default the sink's type name: one human line saying where the data goes
        (``tickwire run`` prints it at start)."""


@runtime_checkable
class ResumableSink(Protocol):
    """Optional Sink member: what the store already holds, so a restart loses nothing.
    Default: the sink cannot tell (as if it answered None)."""

    async def last_sequence_ids(self, stream: StreamSpec) -> dict[str, int] | None:
        """Per partition value (symbol), the last sequence id (trade id) of ``stream`` this sink
        holds durably, such that it holds every id of its recent window up to it (a hole that
        is not recorded in ``trade_gaps`` lowers it to just below the hole); ``{}`` when it holds
        nothing; None when it cannot tell. Columns come from the schema's ``x-tickwire.sequence``
        annotation (``stream.sequence``). Called once, after ``open()``, before any write."""


@runtime_checkable
class GapRecordingSink(Protocol):
    """Optional Sink member: record trades lost for good where the data goes. Default: the
    stream's lost ranges go to the dead-letter destination instead."""

    async def write_gaps(self, gaps: list[TradeGap]) -> None:
        """Store ``gaps`` (``trade_gaps`` table, dead-letter topic…). Returning is the
        acknowledgement, as for ``write``; raise to have the engine retry. Idempotent per
        (stream, symbol, first_id)."""


@runtime_checkable
class RecentRecordsSink(Protocol):
    """Optional Sink member, for sinks that store derived streams (``SinkSpec.stores_derived``):
    read back recent source records, so a derived stream's open windows survive a restart
    (framework/derived.py). Default: the derived state starts empty."""

    async def tail_records(self, stream: StreamSpec, column: str, span_ms: int) -> list[dict]:
        """The stored records of ``stream`` whose ``column`` (a time) is at most ``span_ms``
        before its newest value, as normalized records (decimals as text, times as ISO-8601
        UTC with milliseconds). Called once, after ``open()``, before any write."""


@dataclass(frozen=True, slots=True)
class SinkTraits:
    """A sink's optional members, resolved once with their defaults (:func:`sink_traits`)."""

    max_in_flight: int = 1
    idempotent: bool = True
    supports_dead_letters: bool = False
    describe: str = ""
    resumable: bool = False  # has last_sequence_ids (ResumableSink)
    records_gaps: bool = False  # has write_gaps (GapRecordingSink)
    tails_records: bool = False  # has tail_records (RecentRecordsSink)


def sink_traits(sink: Any, spec: SinkSpec) -> SinkTraits:
    """The optional members of an opened ``sink``, each with its documented default — the one
    place they are looked up; the engine uses only the result."""
    defaults = SinkTraits()
    try:
        max_in_flight = max(1, int(getattr(sink, "max_in_flight", defaults.max_in_flight) or 1))
    except (TypeError, ValueError):
        max_in_flight = defaults.max_in_flight
    describe = getattr(sink, "describe", None)
    return SinkTraits(
        max_in_flight=max_in_flight,
        idempotent=bool(getattr(sink, "idempotent", defaults.idempotent)),
        supports_dead_letters=spec.supports_dead_letters,
        describe=str(describe()) if callable(describe) else spec.name,
        resumable=isinstance(sink, ResumableSink),
        records_gaps=isinstance(sink, GapRecordingSink),
        tails_records=isinstance(sink, RecentRecordsSink),
    )


@dataclass(frozen=True)
class _Spec:
    name: str
    factory: Callable[..., Any]
    description: str
    config_schema: dict = field(default_factory=lambda: {"type": "object"})
    plugin: str = ""  # filled in by the plugin manager
    # Modules needed only when the component is used (tickwire.framework.extras); missing ones make it
    # unavailable, not the plugin: e.g. ``requires=POSTGRES`` says ``pip install 'tickwire[postgres]'``.
    requires: Requirement | None = None

    def complete(self, options: dict | None) -> dict:
        """``options`` with every default of ``config_schema`` filled in: what the factory gets."""
        return with_defaults(self.config_schema, options)


@dataclass(frozen=True)
class SourceSpec(_Spec):
    """``factory(name: str, options: dict, ctx: RunContext) -> Source``"""

    kind = "source"
    # Resolves a ``symbols: {select: …}`` selector (StreamSpec.selector) into symbols itself; a
    # stream with a selector on a source without it is a config error.
    resolves_selectors: bool = False


@dataclass(frozen=True)
class TransformSpec(_Spec):
    """``factory(stream: StreamSpec, options: dict) -> Transform`` (maybe a :class:`FusableTransform`)"""

    kind = "transform"


@dataclass(frozen=True)
class SinkSpec(_Spec):
    """``factory(name: str, options: dict, ctx: RunContext) -> Sink``"""

    kind = "sink"
    supports_dead_letters: bool = False
    stores_derived: bool = False  # upserts derived streams (framework/derived.py) into its tables


@dataclass(frozen=True)
class DerivedSpec(_Spec):
    """``factory(name: str, block: dict, source: StreamSpec, metrics: Metrics) -> Deriver``
    (framework/derived.py); ``name`` is the ``kind`` of a ``derived:`` block."""

    kind = "derived"


@dataclass(frozen=True)
class CodegenSpec(_Spec):
    """``factory(config) -> dict[str, str]``: the loaded Config → file name → content (deterministic)"""

    kind = "codegen"
