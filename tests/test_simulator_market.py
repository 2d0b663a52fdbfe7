"""The simulator as a whole market (``--universe``): Binance's exchangeInfo over ~1,500 listings,
trades skewed over the symbols, tickers every second per symbol and window, and listings that
change at run time — driven through the real ``tickwire simulate`` with real clients."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request

import aiohttp
import pytest

from tests.test_simulator import TICKER_1H_KEYS, TICKER_24H_KEYS, TRADE_KEYS, run

SYMBOL_KEYS = [
    "symbol", "status", "baseAsset", "baseAssetPrecision", "quoteAsset", "quotePrecision", "quoteAssetPrecision",
    "baseCommissionPrecision", "quoteCommissionPrecision", "orderTypes", "icebergAllowed", "ocoAllowed",
    "otoAllowed", "quoteOrderQtyMarketAllowed", "allowTrailingStop", "cancelReplaceAllowed", "amendAllowed",
    "isSpotTradingAllowed", "isMarginTradingAllowed", "filters", "permissions", "permissionSets",
    "defaultSelfTradePreventionMode", "allowedSelfTradePreventionModes",
]


def exchange_info(sim, **query) -> dict:
    return sim.get("/api/v3/exchangeInfo", **query)


def refused(sim, path: str, method: str = "GET", **query) -> tuple[int, dict]:
    """(HTTP status, body) of a request that must fail."""
    q = urllib.parse.urlencode(query)
    req = urllib.request.Request(f"{sim.rest_url}{path}?{q}", method=method)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    return info.value.code, json.load(info.value)


def control(sim, path: str, **query) -> dict:
    q = urllib.parse.urlencode(query)
    req = urllib.request.Request(f"{sim.rest_url}{path}?{q}", method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def trading(info: dict) -> list[str]:
    """TRADING symbols, in exchangeInfo order (the most traded first)."""
    return [s["symbol"] for s in info["symbols"] if s["status"] == "TRADING"]


async def collect(url: str, streams: list[str], seconds: float) -> dict[str, list[dict]]:
    """Connect to /stream, SUBSCRIBE ``streams`` (one request), read for ``seconds``."""
    got: dict[str, list[dict]] = {s: [] for s in streams}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url + "/stream", max_msg_size=0) as ws:
            await ws.send_json({"method": "SUBSCRIBE", "params": streams, "id": 1})
            loop = asyncio.get_running_loop()
            end = loop.time() + seconds
            while (left := end - loop.time()) > 0:
                try:
                    msg = await asyncio.wait_for(ws.receive(), left)
                except asyncio.TimeoutError:
                    break
                frame = json.loads(msg.data)
                if "stream" in frame:
                    got[frame["stream"]].append(frame["data"])
    return got


def test_exchange_info_lists_a_binance_sized_universe(simulator):
    sim = simulator(universe=1500)
    info = exchange_info(sim)
    assert list(info)[:5] == ["timezone", "serverTime", "rateLimits", "exchangeFilters", "symbols"]
    symbols = info["symbols"]
    assert len(symbols) == 1500 and len({s["symbol"] for s in symbols}) == 1500
    assert all(list(s) == SYMBOL_KEYS for s in symbols)
    assert all(s["symbol"] == s["baseAsset"] + s["quoteAsset"] and s["permissions"] == [] for s in symbols)
    assert sum(s["quoteAsset"] == "USDT" for s in symbols) == 450
    statuses = {status: sum(s["status"] == status for s in symbols) for status in ("TRADING", "BREAK", "HALT")}
    assert statuses["BREAK"] >= 30 and statuses["HALT"] >= 5 and sum(statuses.values()) == 1500
    assert {s["symbol"] for s in symbols[:3]} >= {"BTCUSDT", "ETHUSDT"}  # the most traded first
    btc = next(s for s in symbols if s["symbol"] == "BTCUSDT")
    assert btc["permissionSets"] == [["SPOT", "MARGIN"]] and btc["isSpotTradingAllowed"] is True
    assert {"filterType": "PRICE_FILTER", "minPrice": "0.01000000", "maxPrice": "1000000.00000000",
            "tickSize": "0.01000000"} in btc["filters"]  # the tick the market's prices are quantised to

    # the query parameters Binance documents
    assert [s["symbol"] for s in exchange_info(sim, symbol="BTCUSDT")["symbols"]] == ["BTCUSDT"]
    both = exchange_info(sim, symbols='["ETHUSDT","BTCUSDT"]')["symbols"]
    assert [s["symbol"] for s in both] == ["ETHUSDT", "BTCUSDT"]
    halted = exchange_info(sim, symbolStatus="HALT")["symbols"]
    assert len(halted) == statuses["HALT"] and {s["status"] for s in halted} == {"HALT"}
    spot_only = exchange_info(sim, permissions="SPOT")["symbols"]
    margin = exchange_info(sim, permissions='["MARGIN"]')["symbols"]
    assert len(spot_only) == 1500 and 0 < len(margin) < 1500
    assert exchange_info(sim, symbol="BTCUSDT", showPermissionSets="false")["symbols"][0]["permissionSets"] == []
    assert refused(sim, "/api/v3/exchangeInfo", symbol="NOSUCHUSDT") == (400, {"code": -1121, "msg": "Invalid symbol."})
    assert refused(sim, "/api/v3/exchangeInfo", symbolStatus="SLEEPING")[1]["code"] == -1122
    assert refused(sim, "/api/v3/exchangeInfo", symbol="BTCUSDT", symbolStatus="TRADING")[1]["code"] == -1106


def test_universe_size_quote_assets_and_statuses_are_options(simulator):
    sim = simulator(universe=200, quote_assets="USDT=0.5,EUR=0.5", statuses="HALT=0.5")
    symbols = exchange_info(sim)["symbols"]
    assert len(symbols) == 200
    assert {s["quoteAsset"] for s in symbols} == {"USDT", "EUR"}
    assert sum(s["quoteAsset"] == "EUR" for s in symbols) == 100
    halted = sum(s["status"] == "HALT" for s in symbols)
    assert 60 <= halted <= 110 and halted + sum(s["status"] == "TRADING" for s in symbols) == 200


def test_bad_universe_options_are_refused_with_exit_2(simulator):
    for options in ({"statuses": "SLEEPING=0.1"}, {"quote_assets": "USDT=2"}, {"statuses": "HALT=0.6,BREAK=0.6"}):
        with pytest.raises(RuntimeError, match="Error: Invalid value for"):
            simulator(universe=100, **options)


def test_without_universe_exchange_info_lists_the_symbols_and_whatever_is_subscribed(simulator):
    sim = simulator(rate=100)
    assert trading(exchange_info(sim)) == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    got = run(collect(sim.ws_url, ["dogeusdt@trade"], 1.5))
    assert got["dogeusdt@trade"], "any symbol subscribed trades, as before"
    assert trading(exchange_info(sim)) == ["BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT"]


def test_a_few_symbols_carry_most_trades(simulator):
    sim = simulator(universe=300, rate=3000)
    run(asyncio.sleep(2.5))
    counts = sorted((s["trades"] for s in sim.stats()["symbols"].values()), reverse=True)
    total = sum(counts)
    assert total >= 3000
    assert sum(counts[:10]) > 0.35 * total, "Zipf: the ten most traded carry a big share"
    assert counts[len(counts) // 2] < total / 300, "the median symbol trades less than an even share"

    uniform = simulator(universe=300, rate=3000, trade_skew=0)
    run(asyncio.sleep(2.5))
    counts = sorted((s["trades"] for s in uniform.stats()["symbols"].values()), reverse=True)
    assert sum(counts[:10]) < 0.1 * sum(counts)


def test_tickers_every_second_for_every_subscribed_symbol_and_window(simulator):
    sim = simulator(universe=1500, rate=2000)
    symbols = [s.lower() for s in trading(exchange_info(sim))[:40]]
    streams = [f"{s}@{kind}" for s in symbols for kind in ("ticker", "ticker_1h")]
    got = run(collect(sim.ws_url, streams + [f"{symbols[0]}@trade"], 4.5))
    for stream in streams:
        events = got[stream]
        assert 3 <= len(events) <= 5, f"{stream}: {len(events)} tickers in 4.5 s"
        keys = TICKER_24H_KEYS if stream.endswith("@ticker") else TICKER_1H_KEYS
        assert all(list(e) == keys for e in events)
        assert all(700 <= b["E"] - a["E"] <= 1300 for a, b in zip(events, events[1:])), "one a second"
    assert all(list(t) == TRADE_KEYS for t in got[f"{symbols[0]}@trade"])


def test_listing_and_delisting_at_run_time(simulator):
    sim = simulator(universe=100, rate=500)
    assert refused(sim, "/api/v3/exchangeInfo", symbol="NEWCOINUSDT")[0] == 400
    listed = control(sim, "/_sim/list", symbols="NEWCOINUSDT")
    assert listed["listed"] == ["NEWCOINUSDT"]
    entry = exchange_info(sim, symbol="NEWCOINUSDT")["symbols"][0]
    assert (entry["status"], entry["baseAsset"], entry["quoteAsset"]) == ("TRADING", "NEWCOIN", "USDT")
    got = run(collect(sim.ws_url, ["newcoinusdt@trade"], 3.0))
    assert got["newcoinusdt@trade"], "a listed symbol trades and can be subscribed"

    fresh = control(sim, "/_sim/list", count=5, quote="BTC")["listed"]
    assert len(fresh) == 5 and all(s.endswith("BTC") for s in fresh)
    assert set(trading(exchange_info(sim))) >= set(fresh)

    assert control(sim, "/_sim/delist", symbols="NEWCOINUSDT", status="HALT")["status"] == "HALT"
    assert exchange_info(sim, symbol="NEWCOINUSDT")["symbols"][0]["status"] == "HALT"
    assert "NEWCOINUSDT" not in trading(exchange_info(sim, symbolStatus="TRADING"))
    last = sim.stats()["symbols"]["NEWCOINUSDT"]["last_trade_id"]
    silent = run(collect(sim.ws_url, ["newcoinusdt@trade", "newcoinusdt@ticker"], 2.0))
    assert silent == {"newcoinusdt@trade": [], "newcoinusdt@ticker": []}, "a delisted symbol stops trading"
    assert sim.stats()["symbols"]["NEWCOINUSDT"]["last_trade_id"] == last
    rows = sim.get("/api/v3/historicalTrades", symbol="NEWCOINUSDT", fromId=last, limit=1)
    assert [r["id"] for r in rows] == [last], "its history stays"

    control(sim, "/_sim/list", symbols="NEWCOINUSDT")  # listed again: trading resumes, ids continue
    resumed = run(collect(sim.ws_url, ["newcoinusdt@trade"], 3.0))["newcoinusdt@trade"]
    assert resumed and resumed[0]["t"] > last

    assert refused(sim, "/_sim/delist", "POST", symbols="NOSUCHUSDT")[0] == 400
    assert refused(sim, "/_sim/delist", "POST", symbols="BTCUSDT", status="TRADING")[0] == 400
    assert refused(sim, "/_sim/list", "POST", symbols="bad-name!")[0] == 400
    assert sim.stats()["internal_errors"] == 0
