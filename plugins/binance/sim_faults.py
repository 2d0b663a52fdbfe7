"""Faults the simulator injects into a connection, counted in data messages (events sent to it).

``drop_every`` N: the TCP connection is closed (no close frame) right after the N-th message;
``shutdown_every`` N: a ``serverShutdown`` event then close 1001; ``malformed_every`` N: after
every N-th message one bad frame, cycling through ``malformed_kinds``. Malformed frames never
consume trade ids. (``rest_429_every`` belongs to the REST API: :mod:`.sim_rest`.)
"""

from __future__ import annotations

from typing import Protocol

import orjson

from tickwire.plugins.binance.sim_config import SimConfig, now_ms
from tickwire.plugins.binance.sim_frames import BINARY, TEXT

OVERSIZED_BYTES = 2**20 + 4096  # just over websockets' default max_size (1 MiB)


class FaultTarget(Protocol):
    """The connection a fault is done to."""

    combined: bool

    def send_frame(self, body: bytes, opcode: int = TEXT) -> None: ...

    def shutdown_notice(self) -> None: ...

    def drop(self, reason: str) -> None: ...


def wrap(stream: str, data: bytes, combined: bool) -> bytes:
    """``data`` as the connection expects it: inside the combined-stream wrapper, or raw."""
    return b'{"stream":"%s","data":%s}' % (stream.encode(), data) if combined else data


def malformed_frame(kind: str, raw: bytes, stream: str, combined: bool) -> tuple[bytes, int]:
    """The bad frame of ``kind`` made from the event ``raw`` just sent: ``(payload, opcode)``."""
    body = wrap(stream, raw, combined)
    if kind == "truncated":
        return body[: max(1, len(body) // 2)], TEXT
    if kind == "binary":
        return body, BINARY
    obj = orjson.loads(raw)
    if kind == "oversized":
        obj["pad"] = "x" * OVERSIZED_BYTES
    elif kind == "unknown_event":
        obj = {"e": "mysteryEvent", "E": now_ms(), "s": obj.get("s", "")}
    elif kind == "invalid_event":
        if obj.get("e") == "trade":
            del obj["t"]
        else:
            obj["E"] += 1  # no real ticker of this symbol shares it: tickers come once a second
            obj["c"] = "abc"
    else:  # bad_trade: a copy of the event just sent with a price that is not a decimal
        obj["p" if obj.get("e") == "trade" else "c"] = "abc"
    return wrap(stream, orjson.dumps(obj), combined), TEXT


class ConnectionFaults:
    """The faults of one connection: after each data message, whatever ``cfg`` says is due.

    ``counters`` and ``malformed`` are the server's tallies (``/_sim/stats``)."""

    def __init__(self, cfg: SimConfig, counters: dict[str, int], malformed: dict[str, int]):
        self.cfg = cfg
        self.counters = counters
        self.malformed = malformed
        self.malformed_next = 0  # index into cfg.malformed_kinds of the next bad frame

    def after_message(self, conn: FaultTarget, sent: int, raw: bytes, stream: str) -> None:
        """``conn`` was just queued its ``sent``-th data message, the event ``raw``."""
        cfg = self.cfg
        if cfg.malformed_every and sent % cfg.malformed_every == 0:
            self._malformed(conn, raw, stream)
        if cfg.shutdown_every and sent % cfg.shutdown_every == 0:
            conn.shutdown_notice()
        elif cfg.drop_every and sent % cfg.drop_every == 0:
            self.counters["drops"] += 1
            conn.drop("drop-every")

    def _malformed(self, conn: FaultTarget, raw: bytes, stream: str) -> None:
        kinds = self.cfg.malformed_kinds
        kind = kinds[self.malformed_next % len(kinds)]
        self.malformed_next += 1
        conn.send_frame(*malformed_frame(kind, raw, stream, conn.combined))
        self.malformed[kind] += 1
