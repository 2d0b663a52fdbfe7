"""Binance REST: ``GET /api/v3/historicalTrades`` (to fill trade-id gaps) and
``GET /api/v3/exchangeInfo`` (to resolve ``symbols:`` selectors), through one client that keeps
both within one weight budget.

No API key is needed. historicalTrades weighs 25, exchangeInfo 20, of the 6000 per minute an IP may spend; a 429
answer means "slow down" and a 418 means "banned for a while": both carry ``Retry-After``
(seconds), which we honour for every request of this client, not just the one that got it —
up to ``retry_after_max`` seconds: a longer wait (a 418 ban can last days) is not waited out;
every request until then fails at once with :class:`RestError`, so the gap it was filling is
reported as lost and the WebSocket stream keeps going.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson

from tickwire.framework.backoff import Backoff
from tickwire.plugins.binance.ratelimit import TokenBucket

HISTORICAL_TRADES_PATH = "/api/v3/historicalTrades"
HISTORICAL_TRADES_WEIGHT = 25
HISTORICAL_TRADES_MAX_LIMIT = 1000
EXCHANGE_INFO_PATH = "/api/v3/exchangeInfo"
EXCHANGE_INFO_WEIGHT = 20


class RestError(Exception):
    """A request that will not succeed by retrying (4xx other than 429/418, bad body)."""


def rest_trade_to_event(symbol: str, trade: dict) -> dict:
    """A historicalTrades row as the payload the ``<symbol>@trade`` stream would have sent."""
    ts = trade["time"]
    return {
        "e": "trade",
        "E": ts,
        "s": symbol,
        "t": trade["id"],
        "p": trade["price"],
        "q": trade["qty"],
        "T": ts,
        "m": trade["isBuyerMaker"],
        "M": trade.get("isBestMatch", True),
    }


def retry_after_seconds(value: str | None, default: float) -> float:
    """``Retry-After`` is seconds here (Binance never sends an HTTP date)."""
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        return default


class BinanceRest:
    """Binance's public REST endpoints, asked politely: one weight budget, Retry-After, retries
    with backoff."""

    def __init__(
        self,
        base_url: str,
        session: aiohttp.ClientSession,
        *,
        weight_per_minute: float = 3000,
        max_retries: int = 8,
        backoff: Backoff | None = None,
        log=None,
        on_rate_limited=None,
        retry_after_max: float = 300.0,
    ):
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + HISTORICAL_TRADES_PATH
        self.session = session
        self.weight = TokenBucket(weight_per_minute / 60.0, capacity=max(weight_per_minute, HISTORICAL_TRADES_WEIGHT))
        self.max_retries = max_retries
        self.backoff = backoff or Backoff(initial=0.5, maximum=30.0)
        self.log = log
        self.on_rate_limited = on_rate_limited  # callback(status, seconds) for metrics/tests
        self._blocked_until = 0.0  # monotonic time before which no request is sent
        self.retry_after_max = retry_after_max
        self._warned_block = 0.0  # the _blocked_until we already warned about
        self.requests = 0
        self.rate_limited = 0

    async def fetch(self, symbol: str, from_id: int, limit: int = HISTORICAL_TRADES_MAX_LIMIT) -> list[dict]:
        """Trades of ``symbol`` with ids ``from_id`` … ``from_id + limit - 1`` (fewer if they
        do not exist yet). Raises :class:`RestError` when retrying cannot help."""
        params = {"symbol": symbol, "fromId": str(from_id), "limit": str(min(max(limit, 1), HISTORICAL_TRADES_MAX_LIMIT))}
        data = await self.get_json(HISTORICAL_TRADES_PATH, params, HISTORICAL_TRADES_WEIGHT, symbol=symbol)
        if not isinstance(data, list):
            raise RestError(f"historicalTrades answer is not a list: {str(data)[:200]}")
        return data

    async def exchange_info(self) -> dict:
        """Every spot symbol with its status, assets and permission sets (weight 20). Raises
        :class:`RestError` when retrying cannot help."""
        data = await self.get_json(EXCHANGE_INFO_PATH, {}, EXCHANGE_INFO_WEIGHT)
        if not isinstance(data, dict) or not isinstance(data.get("symbols"), list):
            raise RestError(f"exchangeInfo answer has no 'symbols' list: {str(data)[:200]}")
        return data

    async def get_json(self, path: str, params: dict, weight: int, **log_fields) -> object:
        """GET ``path`` and parse its JSON; waits for ``weight`` from the budget, honours
        Retry-After, retries network errors and 5xx with backoff."""
        url = self.base_url + path
        what = path.rsplit("/", 1)[-1]
        failures = 0
        backoff = Backoff(self.backoff.initial, self.backoff.maximum, self.backoff.factor, self.backoff.jitter)
        while True:
            wait = self._blocked_until - time.monotonic()
            if wait > self.retry_after_max:
                self._warn_blocked(wait)
                raise RestError(
                    f"Binance asked us to wait {wait:.0f}s more (Retry-After), longer than "
                    f"retry_after_max_seconds={self.retry_after_max:g}: not waiting"
                )
            if wait > 0:
                await asyncio.sleep(wait)
            await self.weight.take(weight)
            self.requests += 1
            try:
                async with self.session.get(url, params=params) as resp:
                    if resp.status in (429, 418):
                        delay = retry_after_seconds(resp.headers.get("Retry-After"), backoff.next_delay())
                        self._blocked_until = max(self._blocked_until, time.monotonic() + delay)
                        self.rate_limited += 1
                        if self.on_rate_limited:
                            self.on_rate_limited(resp.status, delay)
                        if self.log and delay <= self.retry_after_max:
                            what = "rate limit hit" if resp.status == 429 else "IP temporarily banned"
                            self.log.warning(
                                f"Binance REST {what} (HTTP {resp.status}); waiting {delay:.1f}s as Retry-After asks",
                                status=resp.status, retry_after=delay,
                            )
                        continue
                    body = await resp.read()
                    if resp.status >= 500:
                        raise aiohttp.ClientResponseError(
                            resp.request_info, (), status=resp.status, message=body[:200].decode("utf-8", "replace")
                        )
                    if resp.status != 200:
                        raise RestError(f"HTTP {resp.status} from {url}: {body[:300].decode('utf-8', 'replace')}")
                    try:
                        return orjson.loads(body)
                    except orjson.JSONDecodeError as exc:
                        raise RestError(f"{what} answer is not JSON: {exc}") from None
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                failures += 1
                if failures > self.max_retries:
                    raise RestError(f"giving up after {failures} failed requests: {exc or type(exc).__name__}") from None
                delay = backoff.next_delay()
                if self.log:
                    self.log.warning(
                        f"Binance REST request {what} failed ({exc or type(exc).__name__}); retrying in {delay:.1f}s",
                        **log_fields,
                    )
                await asyncio.sleep(delay)

    def blocked_for(self) -> float:
        """Seconds before this client may send again (a Retry-After being honoured); 0 if none."""
        return max(0.0, self._blocked_until - time.monotonic())

    def block(self, seconds: float) -> None:
        """Honour a Retry-After another request of this client got (the clock check's): Binance
        counts every request of the IP, so none goes out before it has passed."""
        self._blocked_until = max(self._blocked_until, time.monotonic() + seconds)

    def _warn_blocked(self, wait: float) -> None:
        """Once per ban: say that REST is off for now and the WebSocket stream goes on."""
        if self.log is None or self._warned_block == self._blocked_until:
            return
        self._warned_block = self._blocked_until
        self.log.warning(
            f"Binance REST asks us to wait {wait:.0f}s (Retry-After), more than retry_after_max_seconds="
            f"{self.retry_after_max:g}: gaps are not filled until then (they are reported as lost); "
            "the WebSocket stream keeps going",
            retry_after=round(wait, 1),
        )
