"""The symbols a Binance source subscribes, per stream, and how they change while it runs.

A stream's ``symbols:`` is a list (fixed) or a selector (:mod:`.symbol_selector`), resolved
from ``GET /api/v3/exchangeInfo`` at start and again every ``refresh_seconds`` (the shortest of
the source's selectors). Either way only the symbols of this process's shard are kept
(``--shard I/N``, :mod:`tickwire.framework.sharding`).

At start, exchangeInfo is asked until it answers (REST weight 20 per request, within the
source's budget, Retry-After honoured, backoff between attempts, a warning per failure);
after ``START_ATTEMPTS`` failures the source stops with an error naming the URL, and the engine
restarts it. A refresh that fails keeps the current symbols (a warning and
``tickwire_symbols_refresh_failures_total``) and tries again at the next interval.

Changes are logged (``symbols listed`` / ``symbols delisted``, with the symbols) and counted:
``tickwire_symbols_listed_total`` and ``tickwire_symbols_delisted_total`` (symbols that
appeared or left after the start), ``tickwire_symbols_selected`` (symbols now taken) and
``tickwire_subscribed_streams`` (channels per connection, set by the source), all labelled with
the source and the shard.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from tickwire.framework.backoff import Backoff
from tickwire.framework.sharding import WHOLE, Shard
from tickwire.plugins.binance.rest import EXCHANGE_INFO_PATH, BinanceRest, RestError
from tickwire.plugins.binance.symbol_selector import ExchangeInfoError, Selector, select_symbols

START_ATTEMPTS = 4  # reads of exchangeInfo at start (each one retried by the REST client too)


class SymbolListUnavailable(RuntimeError):
    """exchangeInfo could not be read at start: the selectors cannot be resolved."""


@dataclass
class SymbolMetrics:
    listed: Counter
    delisted: Counter
    selected: Gauge
    subscribed: Gauge
    refresh_failures: Counter
    shard_info: Gauge


_METRICS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def symbol_metrics(metrics) -> SymbolMetrics:
    """The symbol metrics in ``metrics``' registry (registered once per registry)."""
    found = _METRICS.get(metrics)
    if found is None:
        r = metrics.registry
        found = _METRICS[metrics] = SymbolMetrics(
            listed=Counter("tickwire_symbols_listed_total", "Symbols a source started taking after its start "
                           "(new listings its selector matches).", ["source", "shard"], registry=r),
            delisted=Counter("tickwire_symbols_delisted_total", "Symbols a source stopped taking (delisted, "
                             "halted, or no longer matching its selector).", ["source", "shard"], registry=r),
            selected=Gauge("tickwire_symbols_selected", "Symbols a source takes now (this shard's).",
                           ["source", "shard"], registry=r),
            subscribed=Gauge("tickwire_subscribed_streams", "Channels a source's connection is to carry.",
                             ["source", "connection", "shard"], registry=r),
            refresh_failures=Counter("tickwire_symbols_refresh_failures_total", "exchangeInfo reads that failed "
                                     "(the symbols stay as they were).", ["source", "shard"], registry=r),
            shard_info=Gauge("tickwire_shard_info", "The shard this process ingests (value 1).",
                             ["shard", "index", "count"], registry=r),
        )
    return found


class SymbolWatch:
    """Stream → symbols of one source: the fixed lists, and the selectors to resolve."""

    def __init__(self, source: str, streams, shard: Shard | None, log, metrics):
        self.source = source
        self.shard = shard or WHOLE
        self.log = log
        self.fixed: dict[str, list[str]] = {}
        self.selectors: dict[str, Selector] = {}
        for spec in streams:
            if spec.selector is not None:
                self.selectors[spec.name] = Selector.from_config(spec.selector)
            else:
                self.fixed[spec.name] = self.shard.select(spec.symbols)
        self.current: dict[str, list[str]] = {}
        self.metrics = symbol_metrics(metrics)
        self.labels = {"source": source, "shard": str(self.shard)}
        self.metrics.shard_info.labels(shard=str(self.shard), index=str(self.shard.index), count=str(self.shard.count)).set(1)

    @property
    def refresh_seconds(self) -> float | None:
        """How often exchangeInfo is read again; None without selectors (nothing to refresh)."""
        return min((s.refresh_seconds for s in self.selectors.values()), default=None)

    def resolve(self, exchange_info: dict) -> dict[str, list[str]]:
        """Stream → this shard's symbols, from one exchangeInfo answer (ExchangeInfoError if
        it is malformed)."""
        out = dict(self.fixed)
        for stream, selector in self.selectors.items():
            out[stream] = self.shard.select(select_symbols(exchange_info, selector))
        return out

    async def initial(self, rest: BinanceRest, backoff: Backoff, attempts: int = START_ATTEMPTS) -> dict[str, list[str]]:
        """The symbols to start with; exchangeInfo is read (with retries) only for selectors."""
        if not self.selectors:
            return self._take(dict(self.fixed), first=True)
        url = rest.base_url + EXCHANGE_INFO_PATH
        for attempt in range(1, attempts + 1):
            try:
                wanted = self.resolve(await rest.exchange_info())
            except (RestError, ExchangeInfoError) as exc:
                if attempt == attempts:
                    raise SymbolListUnavailable(
                        f"source {self.source}: cannot read the symbol list from {url} after {attempt} attempts "
                        f"({exc}); the `symbols:` selector needs it"
                    ) from None
                delay = backoff.next_delay()
                self.log.warning(f"cannot read the symbol list from {url} ({exc}); retrying in {delay:.1f}s",
                                 source=self.source, attempt=attempt)
                await asyncio.sleep(delay)
                continue
            return self._take(wanted, first=True)
        raise AssertionError("unreachable")

    async def refresh(self, rest: BinanceRest) -> dict[str, list[str]] | None:
        """The symbols now, or None when exchangeInfo could not be read (logged, counted)."""
        try:
            wanted = self.resolve(await rest.exchange_info())
        except (RestError, ExchangeInfoError) as exc:
            self.metrics.refresh_failures.labels(**self.labels).inc()
            self.log.warning(f"cannot refresh the symbol list ({exc}); keeping the {self.count} symbols taken now",
                             source=self.source)
            return None
        return self._take(wanted, first=False)

    @property
    def count(self) -> int:
        return len({s for symbols in self.current.values() for s in symbols})

    def _take(self, wanted: dict[str, list[str]], first: bool) -> dict[str, list[str]]:
        """Remember ``wanted``; log and count what changed."""
        before = {s for symbols in self.current.values() for s in symbols}
        after = {s for symbols in wanted.values() for s in symbols}
        self.current = wanted
        self.metrics.selected.labels(**self.labels).set(len(after))
        if first:
            by_rule: dict[str, list[str]] = {}
            for stream, selector in sorted(self.selectors.items()):
                by_rule.setdefault(selector.describe(), []).append(stream)
            rules = "; ".join(f"{rule} ({', '.join(streams)})" for rule, streams in by_rule.items())
            self.log.info(f"taking {len(after)} symbols" + (f" (shard {self.shard})" if self.shard.count > 1 else "")
                          + (f" selected by {rules}" if rules else ""), source=self.source, symbols=len(after))
            return wanted
        listed, delisted = sorted(after - before), sorted(before - after)
        if listed:
            self.metrics.listed.labels(**self.labels).inc(len(listed))
            self.log.info(f"symbols listed: {len(listed)} now taken ({', '.join(listed[:20])}"
                          f"{', …' if len(listed) > 20 else ''})", source=self.source, listed=listed)
        if delisted:
            self.metrics.delisted.labels(**self.labels).inc(len(delisted))
            self.log.info(f"symbols delisted: {len(delisted)} no longer taken ({', '.join(delisted[:20])}"
                          f"{', …' if len(delisted) > 20 else ''})", source=self.source, delisted=delisted)
        return wanted
