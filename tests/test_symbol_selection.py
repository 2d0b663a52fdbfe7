"""Symbols by rule, shards and the per-connection cap, as pure logic: which exchangeInfo symbols
a selector takes, which shard a symbol is on (and that it stays there), and how channels fill
connections. The runs against the simulator are in tests/test_symbols_live.py."""

from __future__ import annotations

import random

import pytest

from tickwire.framework.sharding import Shard, parse_shard, shard_of
from tickwire.plugins.binance.subscriptions import SubscriptionPlan
from tickwire.plugins.binance.symbol_selector import ExchangeInfoError, Selector, select_symbols


def entry(symbol: str, quote: str, status: str = "TRADING", permission_sets=(("SPOT", "MARGIN"),), spot: bool = True) -> dict:
    """One element of exchangeInfo's ``symbols``, with the fields the selector reads as Binance
    sends them (``permissions`` empty, the permissions in ``permissionSets``)."""
    return {
        "symbol": symbol, "status": status, "baseAsset": symbol[: -len(quote)], "quoteAsset": quote,
        "isSpotTradingAllowed": spot, "permissions": [], "permissionSets": [list(p) for p in permission_sets],
    }


INFO = {
    "timezone": "UTC",
    "symbols": [
        entry("BTCUSDT", "USDT"),
        entry("ETHUSDT", "USDT"),
        entry("LUNAUSDT", "USDT", status="BREAK"),
        entry("HALTUSDT", "USDT", status="HALT"),
        entry("ETHBTC", "BTC"),
        entry("BTCFDUSD", "FDUSD"),
        entry("USDCUSDT", "USDT"),
        entry("MARGONLYUSDT", "USDT", permission_sets=(("MARGIN",),), spot=False),
        entry("GRP2USDT", "USDT", permission_sets=(("TRD_GRP_002",),), spot=False),
    ],
}


def selected(block: dict) -> list[str]:
    return select_symbols(INFO, Selector.from_config(block))


def test_a_quote_asset_selector_takes_the_trading_spot_symbols_of_that_quote():
    assert selected({"select": {"quote_assets": ["USDT"]}}) == ["BTCUSDT", "ETHUSDT", "USDCUSDT"]


def test_status_picks_the_symbols_in_that_state_instead():
    assert selected({"select": {"quote_assets": ["USDT"], "status": "BREAK"}}) == ["LUNAUSDT"]


def test_permissions_match_any_permission_set():
    assert selected({"select": {"permissions": ["MARGIN"]}}) == ["BTCFDUSD", "BTCUSDT", "ETHBTC", "ETHUSDT", "MARGONLYUSDT", "USDCUSDT"]
    assert selected({"select": {"permissions": ["TRD_GRP_002"]}}) == ["GRP2USDT"]


def test_include_adds_a_symbol_the_filters_leave_out_and_exclude_wins():
    block = {"select": {"quote_assets": ["USDT"], "include": ["BTCFDUSD", "LUNAUSDT"], "exclude": ["USDCUSDT"]}}
    # LUNAUSDT is included but not TRADING: a halted or delisted symbol is never subscribed
    assert selected(block) == ["BTCFDUSD", "BTCUSDT", "ETHUSDT"]


def test_select_all_is_every_trading_symbol_whatever_its_quote_or_permissions():
    assert selected({"select": "all"}) == ["BTCFDUSD", "BTCUSDT", "ETHBTC", "ETHUSDT", "GRP2USDT", "MARGONLYUSDT", "USDCUSDT"]


def test_refresh_seconds_defaults_to_five_minutes():
    assert Selector.from_config({"select": "all"}).refresh_seconds == 300
    assert Selector.from_config({"select": {}, "refresh_seconds": 10}).refresh_seconds == 10


def test_an_answer_without_a_symbols_list_is_an_error_not_an_empty_market():
    with pytest.raises(ExchangeInfoError):
        select_symbols({"code": -1003, "msg": "Too many requests"}, Selector())


# -- shards ------------------------------------------------------------------------------------

MARKET = [f"{base}{quote}" for base in ("BTC ETH BNB SOL XRP DOGE ADA TRX AVAX LINK DOT TON SHIB LTC BCH UNI NEAR APT "
                                        "ICP FIL ATOM ETC XLM HBAR ARB OP INJ SUI SEI TIA").split()
          for quote in ("USDT", "FDUSD", "BTC", "EUR")]


def test_the_shard_of_a_symbol_is_fixed_across_processes_and_releases():
    # CRC-32 of the symbol: the same in every process (Python's hash() is salted per process).
    # These values are part of the deployment contract: a change would move every symbol.
    assert [shard_of(s, 2) for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT")] == [1, 0, 0, 0]
    assert [shard_of(s, 7) for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT")] == [1, 6, 3, 6]
    assert shard_of("btcusdt", 7) == shard_of("BTCUSDT", 7)


@pytest.mark.parametrize("count", [2, 3, 8])
def test_shards_partition_the_symbols_exactly(count):
    shards = [Shard(i, count).select(MARKET) for i in range(count)]
    assert sorted(sum(shards, [])) == sorted(MARKET)  # every symbol on exactly one shard
    assert all(shards), "with 120 symbols no shard is empty"


@pytest.mark.parametrize("count", [2, 5])
def test_a_symbol_keeps_its_shard_when_a_hundred_others_are_listed_or_delisted(count):
    rng = random.Random(7)
    before = {s: i for i in range(count) for s in Shard(i, count).select(MARKET)}
    listed = [f"NEW{n}USDT" for n in range(100)]
    delisted = set(rng.sample(MARKET, 100))
    after_market = [s for s in MARKET if s not in delisted] + listed
    after = {s: i for i in range(count) for s in Shard(i, count).select(after_market)}
    assert all(after[s] == before[s] for s in MARKET if s not in delisted)


@pytest.mark.parametrize("text, reason", [
    ("2/2", "must be below 2"), ("0/0", "not between 1 and 1024"), ("1", "is not a shard"), ("a/b", "is not a shard"),
    ("-1/2", "is not a shard"),
])
def test_a_bad_shard_says_why(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_shard(text)


def test_a_shard_is_written_index_slash_count():
    assert parse_shard(" 1 / 4 ") == Shard(1, 4) and str(Shard(1, 4)) == "1/4"


# -- connections ---------------------------------------------------------------------------------


def test_channels_are_spread_evenly_over_as_few_connections_as_the_cap_allows():
    plan = SubscriptionPlan([f"c{i:04d}" for i in range(1500)], 1024)
    assert [len(s) for s in plan.slots] == [750, 750]
    assert [len(s) for s in SubscriptionPlan([f"c{i}" for i in range(450)], 200).slots] == [150, 150, 150]


def test_listings_fill_the_connections_with_room_before_a_new_one_is_opened():
    plan = SubscriptionPlan([f"c{i:03d}" for i in range(25)], 10)  # 9, 8, 8
    added = plan.add([f"n{i:02d}" for i in range(10)])
    assert [len(s) for s in plan.slots] == [10, 10, 10, 5]
    assert sorted(added) == [0, 1, 2, 3] and len(added[3]) == 5  # slot 3 is a new connection
    assert all(len(s) <= 10 for s in plan.slots)


def test_a_delisting_frees_room_that_the_next_listing_takes():
    plan = SubscriptionPlan([f"c{i:02d}" for i in range(20)], 10)
    assert plan.remove(["c03", "nope"]) == {0: ["c03"]}
    assert plan.add(["n1"]) == {0: ["n1"]} and len(plan.slots) == 2
    assert plan.add(["n1"]) == {}  # already placed
