"""Symbols by rule: a ``symbols:`` selector of streams.yaml, matched against Binance's
``GET /api/v3/exchangeInfo``.

In streams.yaml ``symbols:`` (top level, or per stream) is either a list of symbols or::

    symbols:
      select:                     # or `select: all`: every symbol with status TRADING
        quote_assets: [USDT]      # quote asset is one of these (default: any)
        status: TRADING           # the symbol's status (default TRADING)
        permissions: [SPOT]       # one of these is in its permission sets (default: SPOT)
        include: [BTCFDUSD]       # taken whatever quote asset and permissions, if its status matches
        exclude: [USDCUSDT]       # never taken
      refresh_seconds: 300        # exchangeInfo is read again this often

The result is sorted, so the same exchangeInfo always gives the same list. This module is
pure: no I/O (see :mod:`.symbol_watch` for fetching and refreshing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TRADING = "TRADING"
DEFAULT_REFRESH_SECONDS = 300.0
DEFAULT_PERMISSIONS = ("SPOT",)


@dataclass(frozen=True)
class Selector:
    """What a ``symbols: {select: …}`` block asks for (see the module docstring)."""

    quote_assets: frozenset[str] | None = None  # None: any quote asset
    status: str = TRADING
    permissions: frozenset[str] | None = frozenset(DEFAULT_PERMISSIONS)  # None: any (``select: all``)
    include: frozenset[str] = field(default_factory=frozenset)
    exclude: frozenset[str] = field(default_factory=frozenset)
    refresh_seconds: float = DEFAULT_REFRESH_SECONDS

    @classmethod
    def from_config(cls, block: dict[str, Any]) -> Selector:
        """From a validated ``symbols:`` mapping (streams.yaml's schema checked its shape)."""
        refresh = float(block.get("refresh_seconds", DEFAULT_REFRESH_SECONDS))
        rule = block.get("select")
        if rule == "all":
            return cls(permissions=None, refresh_seconds=refresh)
        rule = rule or {}
        quotes = rule.get("quote_assets")
        return cls(
            quote_assets=frozenset(quotes) if quotes else None,
            status=rule.get("status", TRADING),
            permissions=frozenset(rule.get("permissions", DEFAULT_PERMISSIONS)),
            include=frozenset(rule.get("include", ())),
            exclude=frozenset(rule.get("exclude", ())),
            refresh_seconds=refresh,
        )

    def matches(self, entry: dict) -> bool:
        """Whether one element of exchangeInfo's ``symbols`` is selected."""
        symbol = entry.get("symbol")
        if not isinstance(symbol, str) or symbol in self.exclude or entry.get("status") != self.status:
            return False
        if symbol in self.include:
            return True
        if self.quote_assets is not None and entry.get("quoteAsset") not in self.quote_assets:
            return False
        return self.permissions is None or bool(self.permissions & permissions_of(entry))

    def describe(self) -> str:
        """One line for logs and ``tickwire symbols``."""
        parts = [f"status {self.status}"]
        if self.quote_assets is not None:
            parts.append("quote " + ",".join(sorted(self.quote_assets)))
        parts.append("permissions " + (",".join(sorted(self.permissions)) if self.permissions else "any"))
        if self.include:
            parts.append(f"include {len(self.include)}")
        if self.exclude:
            parts.append(f"exclude {len(self.exclude)}")
        return "; ".join(parts)


def permissions_of(entry: dict) -> set[str]:
    """A symbol's permissions: the union of its ``permissionSets`` (Binance's current form), the
    legacy ``permissions`` list, and SPOT when ``isSpotTradingAllowed`` says so."""
    found: set[str] = set()
    for group in entry.get("permissionSets") or ():
        if isinstance(group, list):
            found.update(p for p in group if isinstance(p, str))
    legacy = entry.get("permissions")
    if isinstance(legacy, list):
        found.update(p for p in legacy if isinstance(p, str))
    if entry.get("isSpotTradingAllowed") is True:
        found.add("SPOT")
    return found


class ExchangeInfoError(ValueError):
    """An exchangeInfo answer that does not have the shape Binance documents."""


def select_symbols(exchange_info: Any, selector: Selector) -> list[str]:
    """The symbols of ``exchange_info`` (the parsed answer) that ``selector`` takes, sorted."""
    if not isinstance(exchange_info, dict) or not isinstance(exchange_info.get("symbols"), list):
        raise ExchangeInfoError("exchangeInfo answer has no 'symbols' list")
    return sorted({e["symbol"] for e in exchange_info["symbols"] if isinstance(e, dict) and selector.matches(e)})


def is_selector(value: Any) -> bool:
    """Whether a ``symbols:`` value is a selector (a mapping) rather than a list."""
    return isinstance(value, dict)
