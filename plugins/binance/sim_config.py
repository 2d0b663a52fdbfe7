"""What the Binance simulator serves and the limits it enforces: the options of
``tickwire simulate`` (:class:`SimConfig`), the constants behind them, and its clock.

The server itself is :mod:`tickwire.plugins.binance.sim_server`; every other ``sim_*`` module
reads its settings from here.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

STREAM_RE = re.compile(r"^([a-z0-9]{2,20})@(trade|ticker|ticker_1h)$")
MALFORMED_KINDS = ("truncated", "binary", "oversized", "unknown_event", "bad_trade")
# Opt-in (not in the default cycle): an event that is new to the client, so it passes duplicate
# detection and must be rejected by schema validation — a ticker with a fresh E and a last price
# that is not a decimal, or a trade without its id.
EXTRA_MALFORMED_KINDS = ("invalid_event",)
ALL_MALFORMED_KINDS = MALFORMED_KINDS + EXTRA_MALFORMED_KINDS
COMPRESSIONS = ("none", "deflate")
# Binance spot's mix of quote assets (share of the listings quoted in each; ~450 of 1,500 in USDT)
QUOTE_ASSETS = (
    ("USDT", 0.30), ("BTC", 0.20), ("USDC", 0.12), ("FDUSD", 0.08), ("ETH", 0.07), ("BNB", 0.07),
    ("TRY", 0.07), ("EUR", 0.04), ("BRL", 0.03), ("JPY", 0.02),
)
# Share of the listings in a status other than TRADING (the 20 most traded always trade)
NOT_TRADING = (("BREAK", 0.05), ("HALT", 0.01))
DEFAULT_UNIVERSE = 1500  # --universe without a size: about Binance spot's trading symbols

SLOW_CONSUMER_BYTES = 64 * 2**20
WRITE_HIGH_WATER = 2**20  # rate 0 waits for a client when this much is unsent
DRAIN_TIMEOUT = 30.0
KEEP_CLOSED = 1000  # closed connections kept in stats


@dataclass
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 9443
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
    seed: int = 1
    rate: float = 50.0  # trades per second across all symbols; 0 = as fast as clients read
    ticker_interval: float = 1.0
    ping_interval: float = 20.0
    pong_timeout: float = 60.0
    max_age: float = 86400.0
    max_streams: int = 1024
    max_client_rate: int = 5
    drop_every: int = 0
    shutdown_every: int = 0
    malformed_every: int = 0
    malformed_kinds: tuple[str, ...] = MALFORMED_KINDS
    rest_429_every: int = 0
    retry_after: int = 1
    history: int = 200_000
    replay: str | None = None
    speed: float = 1.0  # replay speed factor; 0 = as fast as possible
    compression: str = "none"  # "deflate": accept permessage-deflate offers
    universe: int = 0  # listings generated for exchangeInfo; 0 = --symbols plus whatever is subscribed
    quote_assets: tuple[tuple[str, float], ...] = QUOTE_ASSETS
    statuses: tuple[tuple[str, float], ...] = NOT_TRADING
    trade_skew: float = 1.0  # Zipf exponent of the trades over the universe's symbols (0: uniform)
    clock_offset_ms: int = 0  # the simulated exchange's clock minus this machine's (a skewed clock)


_clock_offset_ms = [0]  # set once per simulator process from SimConfig.clock_offset_ms


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch: Binance's event and trade times, and
    ``/api/v3/time`` — on the simulated exchange's clock (see :func:`set_clock_offset`)."""
    return time.time_ns() // 1_000_000 + _clock_offset_ms[0]


def set_clock_offset(ms: int) -> None:
    """Run the simulated exchange's clock ``ms`` ahead of this machine's (behind when
    negative): event times and serverTime shift together, as with a skewed local clock."""
    _clock_offset_ms[0] = int(ms)
