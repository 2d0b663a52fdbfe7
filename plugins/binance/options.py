"""The options of the ``binance`` source: its JSON Schema, the one place their defaults are written.

The schema is validated with the config, shown by ``tickwire plugins`` and rendered into
docs/config.md; the source reads every option from the dict the schema describes.
"""

from __future__ import annotations

from typing import Any

CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "url": {
            "type": "string",
            "pattern": "^wss?://",
            "default": "wss://stream.binance.com:9443",
            "description": "WebSocket base URL; tickwire connects to <url>/stream. For the simulator: "
            "ws://127.0.0.1:PORT (streams.yaml reads ${TICKWIRE_BINANCE_URL}).",
        },
        "rest_url": {
            "type": "string",
            "pattern": "^https?://",
            "default": "https://api.binance.com",
            "description": "REST base URL used to fill trade-id gaps (GET /api/v3/historicalTrades).",
        },
        "gap_fill": {
            "type": "boolean",
            "default": True,
            "description": "Fetch trades missing after a reconnect from REST. Gaps are detected and "
            "reported either way.",
        },
        "gap_fill_grace_seconds": {
            "type": "number",
            "minimum": 0,
            "default": 1.0,
            "description": "While two connections overlap (rotation), how long a hole in trade ids may "
            "wait for late trades from the other connection before it counts as a gap and is fetched. "
            "Holes after a reconnect are fetched at once.",
        },
        "gap_fill_max_trades": {
            "type": "integer",
            "minimum": 1,
            "default": 100000,
            "description": "Largest number of trades fetched for one gap; the rest of a longer gap is "
            "reported as lost.",
        },
        "rest_weight_per_minute": {
            "type": "number",
            "minimum": 25,
            "maximum": 6000,
            "default": 3000,
            "description": "REST request weight this source may spend per minute (Binance allows 6000 "
            "per IP; historicalTrades weighs 25).",
        },
        "max_streams_per_connection": {
            "type": "integer",
            "minimum": 1,
            "maximum": 1024,
            "default": 1024,
            "description": "Channels per WebSocket connection (Binance: at most 1024). At start the "
            "channels are spread evenly over as few connections as this allows; symbols listed later "
            "go to the connection with the most room, and a new connection opens when all are full. "
            "A lower cap means one reconnect re-subscribes (and may lose) less (docs/scaling.md).",
        },
        "subscribe_chunk_size": {
            "type": "integer",
            "minimum": 1,
            "maximum": 1024,
            "default": 200,
            "description": "Channels per SUBSCRIBE request.",
        },
        "max_messages_per_second": {
            "type": "number",
            "minimum": 1,
            "default": 5,
            "description": "Binance's limit on client messages per second per connection (pings, pongs "
            "and SUBSCRIBEs count). tickwire sends its own requests below it, keeping one per second "
            "for pongs.",
        },
        "rotate_after_seconds": {
            "type": "number",
            "exclusiveMinimum": 0,
            "default": 84600,
            "description": "Replace each connection after this long (default 23h30m; Binance closes "
            "connections at 24 h). The replacement overlaps the old one, so nothing is missed.",
        },
        "rotate_overlap_seconds": {
            "type": "number",
            "minimum": 0,
            "default": 3.0,
            "description": "How long both connections run after the replacement is subscribed.",
        },
        "dedupe_window": {
            "type": "integer",
            "minimum": 1000,
            "maximum": 10000000,
            "default": 100000,
            "description": "Per symbol, how many trade ids below the highest one seen are remembered "
            "exactly: a repeat inside the window is dropped as a duplicate, an unseen id is stored. "
            "An id older than the window is dead-lettered with a reason (it cannot be told apart "
            "from a duplicate). Costs nothing while trades arrive in order.",
        },
        "max_id_jump": {
            "type": "integer",
            "minimum": 1000,
            "default": 100000,
            "description": "Largest plausible step forward in a symbol's trade ids (one reconnect's "
            "worth of trades on the busiest symbol). A trade further ahead of the highest id seen "
            "(or of the latest id REST showed) is dead-lettered and does not move the dedupe window, "
            "so one bogus id cannot blind the symbol; the source then asks REST whether that id "
            "exists, and if it does, accepts ids up to max_id_jump beyond it (the trades in between "
            "are a gap, filled over REST).",
        },
        "max_frame_bytes": {
            "type": "integer",
            "minimum": 1024,
            "default": 1048576,
            "description": "Frames larger than this become dead letters (first 64 KiB kept); the "
            "connection stays open. Binance events are well under 4 KiB.",
        },
        "backoff_initial_seconds": {
            "type": "number",
            "minimum": 0,
            "default": 0.5,
            "description": "First reconnect delay; doubles (backoff_factor) per failed attempt.",
        },
        "backoff_max_seconds": {
            "type": "number",
            "minimum": 0,
            "default": 60.0,
            "description": "Longest reconnect delay (a Retry-After from Binance may be longer, up to "
            "retry_after_max_seconds).",
        },
        "backoff_factor": {"type": "number", "minimum": 1, "default": 2.0, "description": "Backoff multiplier."},
        "backoff_reset_after_seconds": {
            "type": "number",
            "minimum": 0,
            "default": 30.0,
            "description": "A connection that stayed up this long counts as healthy: the reconnect "
            "delay starts again from backoff_initial_seconds. One that is closed sooner (a policy "
            "close 1008, a server that drops us right after subscribing) makes the next delay "
            "grow.",
        },
        "retry_after_max_seconds": {
            "type": "number",
            "minimum": 0,
            "default": 300.0,
            "description": "Longest Retry-After (HTTP 429/418) tickwire honours. A WebSocket handshake "
            "waits at most this long; a REST request that would have to wait longer is not sent: "
            "the gap it was filling is reported as lost, and the stream keeps going. Warned once.",
        },
        "backoff_jitter": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "default": 0.5,
            "description": "Random share taken off each delay (0.5: between half and all of it).",
        },
        "max_connection_attempts_per_5min": {
            "type": "integer",
            "minimum": 1,
            "maximum": 300,
            "default": 300,
            "description": "Connection attempts allowed in any 5 minutes (Binance bans an IP above 300).",
        },
        "open_timeout_seconds": {
            "type": "number",
            "exclusiveMinimum": 0,
            "default": 10.0,
            "description": "Time allowed for the TCP + TLS + WebSocket handshake.",
        },
        "ping_interval_seconds": {
            "type": ["number", "null"],
            "default": 60.0,
            "description": "Our own keepalive ping (Binance pings us every 20 s; we answer each). "
            "null disables it.",
        },
        "ping_timeout_seconds": {
            "type": ["number", "null"],
            "default": 30.0,
            "description": "Close and reconnect when our ping gets no pong in this time.",
        },
        "compression": {
            "enum": ["none", "deflate"],
            "default": "none",
            "description": "Offer permessage-deflate. Binance's frames are small and compress well, so "
            "deflate saves bandwidth but costs CPU to inflate every frame (see bench/README.md); "
            "none suits a data-centre link.",
        },
    },
}
