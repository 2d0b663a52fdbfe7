"""From one WebSocket frame to a record, a dead letter, a reply or a shutdown notice.

This is the hot path: one ``orjson.loads`` and a few dict lookups per frame, no logging. Every
connection of a source shares one :class:`FrameRouter`, so trade-id and ticker state is the
same whichever connection a frame came from (that is what makes rotation overlaps and late
arrivals safe).

Every frame ends one way: handed to the engine, counted as a duplicate, dead-lettered with a
reason, or :class:`ServerShutdown` (reconnect). Nothing a server sends can raise anything else
out of :meth:`FrameRouter.handle_nowait`: an unexpected error becomes a dead letter naming it.
An id (or a ticker's event time) is marked seen only once the engine accepted the record, so
an invalid frame cannot use up the id of the real trade that follows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import orjson

from tickwire.framework.components import Rejected
from tickwire.plugins.binance.gaps import DUPLICATE, GAP, TOO_FAR, TOO_OLD, RecentKeys, TradeIdTracker

SHUTDOWN_STREAM = "!serverShutdown"
DEAD_LETTER_SAMPLE_BYTES = 65536  # what we keep of an oversized frame


class ServerShutdown(Exception):
    """Binance announced a restart (``serverShutdown``): reconnect now."""


@dataclass(slots=True, eq=False)
class Channel:
    """One subscribed Binance stream, e.g. ``btcusdt@trade``, and its dedup state."""

    name: str  # as Binance spells it (lowercase)
    stream: str  # tickwire stream name (streams.yaml)
    symbol: str  # uppercase
    event_type: str | None  # expected ``e``; None accepts any
    trades: TradeIdTracker | None = None  # trade streams: dedup + gaps by id ``t``
    recent: RecentKeys | None = None  # other streams: dedup by event time ``E``
    duplicates: int = 0  # not yet reported to metrics
    accepted: int = 0


def _noop(_channel: Channel, _trade_id: int) -> None:
    return None


class FrameRouter:
    """Turns frames into ``emit.record_nowait`` / ``emit.dead_letter`` calls.

    ``on_gap(channel)`` is called (synchronously) when a trade id jumps and leaves ids missing.
    ``on_too_far(channel, trade_id)`` when a trade id was dead-lettered as implausibly far
    ahead (the source checks it against REST). ``on_reply(conn, msg, raw)`` is the
    connection's business (SUBSCRIBE answers).
    """

    __slots__ = ("channels", "emit", "max_frame_bytes", "on_gap", "on_too_far", "dead_letters", "frames", "_record")

    def __init__(
        self,
        channels: dict[str, Channel],
        emit,
        max_frame_bytes: int,
        on_gap: Callable[[Channel], None],
        on_too_far: Callable[[Channel, int], None] = _noop,
    ):
        self.channels = channels
        self.emit = emit
        self.max_frame_bytes = max_frame_bytes
        self.on_gap = on_gap
        self.on_too_far = on_too_far
        self.dead_letters = 0
        self.frames = 0
        self._record = emit.record_nowait  # the Emitter contract: None / Rejected / awaitable

    async def dead(self, stream: str | None, reason: str, raw: str | bytes) -> None:
        self.dead_letters += 1
        await self.emit.dead_letter(stream, reason, raw)

    def stream_hint(self, raw: str | bytes) -> str | None:
        """The tickwire stream of a frame we cannot parse, from its ``{"stream":"…"`` prefix."""
        head = raw[:80]
        if not isinstance(head, str):
            head = bytes(head).decode("utf-8", "replace")
        if head.startswith('{"stream":"'):
            end = head.find('"', 11)
            ch = self.channels.get(head[11:end]) if end > 11 else None
            if ch is not None:
                return ch.stream
        return None

    async def handle(self, raw: str | bytes, received_ns: int, conn) -> None:
        """A text frame (``str``, or its UTF-8 ``bytes`` undecoded)."""
        pending = self.handle_nowait(raw, received_ns, conn)
        if pending is not None:
            await pending

    def binary_nowait(self, raw: bytes, received_ns: int, conn=None):
        """A binary frame: Binance never sends one; it becomes a dead letter."""
        self.frames += 1
        reason = f"binary frame ({len(raw)} bytes): Binance market streams send JSON text"
        return self.dead(self.stream_hint(raw), reason, raw)

    def failed(self, raw: str | bytes, exc: BaseException):
        """A frame whose handling raised ``exc`` unexpectedly: a dead letter naming the error."""
        return self.dead(self.stream_hint(raw), f"frame handling failed: {type(exc).__name__}: {exc}", raw)

    def handle_nowait(self, raw: str | bytes, received_ns: int, conn):
        """``handle`` without the coroutine: returns None, or an awaitable to await before the
        next frame (a dead letter, a reply, or the engine handing a full batch to a sink). The
        receive loop calls this, so a frame costs no coroutine layers of ours. Raises only
        ServerShutdown."""
        self.frames += 1
        try:  # free unless something raises (Python 3.11 zero-cost exceptions)
            if len(raw) > self.max_frame_bytes:
                return self.dead(
                    self.stream_hint(raw),
                    f"oversized frame: {len(raw)} bytes > max_frame_bytes {self.max_frame_bytes}"
                    f" (first {DEAD_LETTER_SAMPLE_BYTES} kept)",
                    raw[:DEAD_LETTER_SAMPLE_BYTES],
                )
            try:
                msg = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                return self.dead(self.stream_hint(raw), _not_json(raw, exc), raw)
            if type(msg) is not dict:
                return self.dead(None, f"unexpected frame: a JSON {type(msg).__name__}, not an object", raw)

            name = msg.get("stream")
            if name is None:
                if "id" in msg and ("result" in msg or "error" in msg):
                    return conn.on_reply(msg, raw)
                if msg.get("e") == "serverShutdown":
                    raise ServerShutdown()
                return self.dead(None, "unexpected frame: neither a combined-stream event nor a request reply", raw)

            ch = self.channels.get(name) if type(name) is str else None
            data = msg.get("data")
            if ch is None:
                if name == SHUTDOWN_STREAM or (type(data) is dict and data.get("e") == "serverShutdown"):
                    raise ServerShutdown()
                return self.dead(None, f"unknown stream {name!r}: not subscribed by this source", raw)
            if type(data) is not dict:
                return self.dead(ch.stream, f"{name}: 'data' is missing or not a JSON object", raw)
            etype = ch.event_type
            if etype is not None and data.get("e") != etype:
                if data.get("e") == "serverShutdown":
                    raise ServerShutdown()
                return self.dead(ch.stream, f"{name}: unexpected event type {data.get('e')!r} (expected {etype!r})", raw)
            if data.get("s") != ch.symbol:
                return self.dead(
                    ch.stream, f"{name}: symbol {data.get('s')!r} in the event is not the channel's symbol {ch.symbol!r}", raw
                )

            tracker = ch.trades
            if tracker is None:
                return self._event(ch, data, raw, received_ns)
            t = data.get("t")
            if type(t) is not int:
                return self.dead(ch.stream, f"{name}: trade without an integer trade id 't'", raw)
            last = tracker.last
            if last is not None and t == last + 1:  # the next trade in sequence: check() and commit(), inlined
                pending = self._record(ch.stream, data, received_ns)
                if pending is None or type(pending) is not Rejected:
                    tracker.last = t
                    tracker.last_payload = data
                    ch.accepted += 1
                return pending
            return self._trade(ch, tracker, t, data, raw, received_ns)
        except ServerShutdown:
            raise
        except Exception as exc:  # noqa: BLE001 - a frame must never end the connection
            return self.failed(raw, exc)

    def _trade(self, ch: Channel, tracker: TradeIdTracker, t: int, data: dict, raw, received_ns: int):
        """A trade that is not the next in sequence: a jump, a late one, a repeat, or bogus."""
        verdict = tracker.check(t)
        if verdict == DUPLICATE:
            newest = tracker.last_payload
            if newest is not None and _newer(data.get("T"), newest.get("T")):
                # a real repeat is never newer than the newest trade: this id was reused
                return self.dead(
                    ch.stream,
                    f"{ch.name}: trade id {t} was already stored, but this trade (T={data.get('T')}) is newer than "
                    f"trade {tracker.last} (T={newest.get('T')}): the exchange's trade ids went backwards",
                    raw,
                )
            ch.duplicates += 1
            return None
        if verdict == TOO_OLD or verdict == TOO_FAR:
            if verdict == TOO_FAR:
                self.on_too_far(ch, t)
            return self.dead(ch.stream, f"{ch.name}: {tracker.reason(t, verdict)}", raw)
        pending = self._record(ch.stream, data, received_ns)
        if pending is None or type(pending) is not Rejected:
            tracker.commit(t, verdict)
            if t == tracker.last:
                tracker.last_payload = data
            ch.accepted += 1
            if verdict == GAP:
                self.on_gap(ch)
        return pending

    def _event(self, ch: Channel, data: dict, raw, received_ns: int):
        """An event without a sequence (a ticker): deduplicated by its event time ``E``."""
        event_time = data.get("E")
        if event_time is not None:
            if type(event_time) is not int:
                return self.dead(ch.stream, f"{ch.name}: event time 'E' is not an integer: {event_time!r}", raw)
            if event_time in ch.recent:
                ch.duplicates += 1
                return None
        pending = self._record(ch.stream, data, received_ns)
        if pending is None or type(pending) is not Rejected:
            if event_time is not None:
                ch.recent.add(event_time)
            ch.accepted += 1
        return pending


def _newer(a, b) -> bool:
    return type(a) is int and type(b) is int and a > b


def _not_json(raw: str | bytes, exc: orjson.JSONDecodeError) -> str:
    """The reason for a text frame orjson refused: invalid UTF-8 gets its own (the frame is
    kept, its bad bytes replaced, so the dead letter still shows what came)."""
    if not isinstance(raw, str):
        try:
            bytes(raw).decode("utf-8")
        except UnicodeDecodeError as bad:
            return f"invalid UTF-8 in a text frame ({bad.reason} at byte {bad.start}); kept with U+FFFD replacements"
    return f"malformed JSON: {exc}"


def build_channels(streams, source_name: str, **tracker_options) -> dict[str, Channel]:
    """Channel name → :class:`Channel` for every stream of ``source_name``; ``tracker_options``
    (``window``, ``max_jump``) go to each :class:`TradeIdTracker`."""
    out: dict[str, Channel] = {}
    for spec in streams:
        if spec.source != source_name:
            continue
        etype = spec.event_type
        for chan, symbol in spec.channels().items():
            chan = chan.lower()
            if chan in out:
                raise ValueError(
                    f"Binance channel {chan!r} is used by streams {out[chan].stream!r} and {spec.name!r}; "
                    "a channel can feed only one stream"
                )
            is_trade = etype == "trade" or (etype is None and chan.endswith("@trade"))
            out[chan] = Channel(
                name=chan,
                stream=spec.name,
                symbol=symbol.upper(),
                event_type=etype,
                trades=TradeIdTracker(**tracker_options) if is_trade else None,
                recent=None if is_trade else RecentKeys(),
            )
    return out
