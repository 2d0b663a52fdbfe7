"""``GET /api/v3/exchangeInfo`` as Binance documents it (spot ``rest-api.md``), over the
simulator's listings (:mod:`.sim_universe`).

Query parameters, as on Binance: ``symbol=BTCUSDT``; ``symbols=["BTCUSDT","BNBBTC"]`` (a JSON
array); ``permissions=SPOT`` or ``["MARGIN","LEVERAGED"]`` (default: any of SPOT, MARGIN,
LEVERAGED); ``showPermissionSets=false`` (empty ``permissionSets``); ``symbolStatus=TRADING|HALT|BREAK``
(not with ``symbol``/``symbols``). An unknown symbol answers −1121 ``Invalid symbol.``, a bad
parameter −1100 (malformed), −1106 (not allowed with another) or −1122 (unknown status), each
with HTTP 400.

Each symbol carries what Binance sends: ``symbol``, ``status``, ``baseAsset``,
``baseAssetPrecision``, ``quoteAsset``, ``quotePrecision``, ``quoteAssetPrecision``,
``baseCommissionPrecision``, ``quoteCommissionPrecision``, ``orderTypes``, ``icebergAllowed``,
``ocoAllowed``, ``otoAllowed``, ``quoteOrderQtyMarketAllowed``, ``allowTrailingStop``,
``cancelReplaceAllowed``, ``amendAllowed``, ``isSpotTradingAllowed``, ``isMarginTradingAllowed``,
``filters`` (``PRICE_FILTER`` and ``LOT_SIZE`` from the market's tick and step, ``NOTIONAL``),
``permissions`` (empty, as Binance now sends it), ``permissionSets``,
``defaultSelfTradePreventionMode``, ``allowedSelfTradePreventionModes``.
"""

from __future__ import annotations

from typing import Mapping

import orjson

from tickwire.plugins.binance.decimal8 import fmt8
from tickwire.plugins.binance.market import spec_for
from tickwire.plugins.binance.sim_universe import STATUSES, Listing, Universe

ORDER_TYPES = ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT", "TAKE_PROFIT_LIMIT"]
STP_MODES = ["NONE", "EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH", "DECREMENT"]
DEFAULT_PERMISSIONS = ("SPOT", "MARGIN", "LEVERAGED")
RATE_LIMITS = [
    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
    {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
    {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
]


class BadQuery(ValueError):
    """A query Binance refuses: its error ``code`` and message."""

    def __init__(self, code: int, msg: str):
        super().__init__(msg)
        self.code = code
        self.msg = msg


def _list_param(query: Mapping[str, str], name: str) -> list[str] | None:
    """A parameter that is one value or a JSON array of strings."""
    text = query.get(name)
    if text is None or text == "":
        return None
    if not text.startswith("["):
        return [text]
    try:
        values = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise BadQuery(-1100, f"Illegal characters found in parameter '{name}'; legal range is '^\\[(\"[A-Z0-9-_.]{{1,20}}\"(,\"[A-Z0-9-_.]{{1,20}}\"){{0,}}){{0,1}}\\]$'.") from None
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise BadQuery(-1100, f"Illegal characters found in parameter '{name}'.")
    return values


def select(universe: Universe, query: Mapping[str, str]) -> tuple[list[Listing], bool]:
    """The listings a query asks for, and whether to show permission sets (BadQuery if refused)."""
    symbols = _list_param(query, "symbols")
    if "symbol" in query and symbols is not None:
        raise BadQuery(-1106, "Parameter 'symbols' sent when not required.")
    if "symbol" in query:
        symbols = [query["symbol"]]
    status = query.get("symbolStatus")
    if status is not None:
        if symbols is not None:
            raise BadQuery(-1106, "Parameter 'symbolStatus' sent when not required.")
        if status not in STATUSES:
            raise BadQuery(-1122, "Invalid symbolStatus.")
    show = query.get("showPermissionSets", "true")
    if show not in ("true", "false"):
        raise BadQuery(-1100, "Illegal characters found in parameter 'showPermissionSets'; legal range is 'true, false'.")
    if symbols is not None:
        missing = [s for s in symbols if s not in universe.listings]
        if missing:
            raise BadQuery(-1121, "Invalid symbol.")
        return [universe.listings[s] for s in dict.fromkeys(symbols)], show == "true"
    wanted = set(_list_param(query, "permissions") or DEFAULT_PERMISSIONS)
    chosen = [
        listing for listing in universe.listings.values()
        if (status is None or listing.status == status) and wanted & set(listing.permissions)
    ]
    return chosen, show == "true"


def symbol_entry(listing: Listing, seed: int, show_permission_sets: bool) -> dict:
    """One element of ``symbols``, key order as Binance sends it."""
    spec = spec_for(listing.symbol, seed)
    return {
        "symbol": listing.symbol,
        "status": listing.status,
        "baseAsset": listing.base,
        "baseAssetPrecision": 8,
        "quoteAsset": listing.quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": ORDER_TYPES,
        "icebergAllowed": True,
        "ocoAllowed": True,
        "otoAllowed": True,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": True,
        "cancelReplaceAllowed": True,
        "amendAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": listing.margin,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": fmt8(spec.tick), "maxPrice": "1000000.00000000", "tickSize": fmt8(spec.tick)},
            {"filterType": "LOT_SIZE", "minQty": fmt8(spec.step), "maxQty": "9000000.00000000", "stepSize": fmt8(spec.step)},
            {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True,
             "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
        ],
        "permissions": [],
        "permissionSets": [list(listing.permissions)] if show_permission_sets else [],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": STP_MODES,
    }


def exchange_info(universe: Universe, seed: int, query: Mapping[str, str], server_time: int) -> dict:
    """The whole answer (BadQuery if the query is refused)."""
    listings, show = select(universe, query)
    return {
        "timezone": "UTC",
        "serverTime": server_time,
        "rateLimits": RATE_LIMITS,
        "exchangeFilters": [],
        "symbols": [symbol_entry(listing, seed, show) for listing in listings],
    }
