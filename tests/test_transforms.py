"""validate and normalize: valid records pass unchanged, invalid ones fail with a clear reason,
the compiled validator agrees with jsonschema, normalized records follow the contract."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import jsonschema
import pytest

from tickwire.framework.components import InvalidRecord
from tickwire.framework.testing import stream_spec, trade_payload
from tickwire.plugins.normalize import iso_ms, make_normalizer
from tickwire.plugins.validate import Validator, make_validator

TRADE = stream_spec("trade")
TICKER_1H = stream_spec("ticker_1h", "ticker_1h.schema.json")
TICKER_24H = stream_spec("ticker", "ticker_24h.schema.json", table="ticker_1d")


def ticker_payload(event_type="24hrTicker") -> dict:
    p = {
        "e": event_type, "E": 1672515782136, "s": "BNBBTC", "p": "0.0015", "P": "250.00", "w": "0.0018",
        "x": "0.0009", "c": "0.0025", "Q": "10", "b": "0.0024", "B": "10", "a": "0.0026", "A": "100",
        "o": "0.0010", "h": "0.0025", "l": "0.0010", "v": "10000", "q": "18", "O": 0, "C": 1672515782136,
        "F": 0, "L": 18150, "n": 18151,
    }
    if event_type == "1hTicker":
        for k in ("x", "Q", "b", "B", "a", "A"):
            del p[k]
    return p


def reason(stream, payload, implementation="compiled") -> str:
    with pytest.raises(InvalidRecord) as info:
        make_validator(stream, {"implementation": implementation})(payload)
    return info.value.reason


def test_valid_trade_passes_unchanged_with_extra_fields():
    payload = {**trade_payload(1), "X": "MARKET", "unknown": [1, 2]}
    assert make_validator(TRADE, {})(payload) is payload


def test_tickers_pass():
    assert make_validator(TICKER_24H, {})(ticker_payload())
    assert make_validator(TICKER_1H, {})(ticker_payload("1hTicker"))


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"p": "abc"}, "field 'p' (price): 'abc' does not match decimal pattern"),
        ({"p": "1.5\n"}, "field 'p' (price): '1.5\\n' does not match decimal pattern"),
        ({"p": "1e5"}, "field 'p' (price): '1e5' does not match decimal pattern"),
        ({"p": 16500.1}, "field 'p' (price): expected string, got number 16500.1"),
        ({"q": ""}, "field 'q' (quantity): '' does not match decimal pattern"),
        ({"t": "12"}, "field 't' (trade_id): expected integer, got string '12'"),
        ({"t": True}, "field 't' (trade_id): expected integer, got boolean True"),
        ({"t": 1.0}, "field 't' (trade_id): expected integer, got number 1.0"),
        ({"E": -1}, "field 'E' (event_time): -1 is less than the minimum 0"),
        ({"m": 1}, "field 'm' (buyer_is_maker): expected boolean, got integer 1"),
        ({"M": "x"}, "field 'M': expected boolean, got string 'x'"),
        ({"s": "btcusdt"}, "field 's' (symbol): 'btcusdt' does not match pattern '^[A-Z0-9]{2,20}$'"),
        ({"e": "aggTrade"}, "event type 'aggTrade' is not 'trade' (stream 'trade')"),
        ({"t": None}, "field 't' (trade_id): expected integer, got null None"),
    ],
)
def test_invalid_trades_name_the_field_and_the_problem(change, expected):
    assert reason(TRADE, {**trade_payload(1), **change}) == expected


def test_missing_fields_and_non_objects():
    payload = trade_payload(1)
    del payload["t"]
    assert reason(TRADE, payload) == "missing required field 't' (trade_id)"
    assert reason(TRADE, [1, 2]) == "payload is not a JSON object (got array)"
    assert reason(TRADE, "text") == "payload is not a JSON object (got string)"


def test_event_type_checked_even_where_e_is_optional():
    assert reason(TICKER_1H, ticker_payload("24hrTicker")) == "event type '24hrTicker' is not '1hTicker' (stream 'ticker_1h')"
    p = ticker_payload("1hTicker")
    del p["e"]
    assert make_validator(TICKER_1H, {})(p) is p


def _samples():
    base = trade_payload(5)
    variants = [base, {**base, "extra": 1}]
    for key, values in {
        "p": ["1", "-1.5", "abc", "1.", ".5", "1.5\n", 1.5, None, "01.10"],
        "t": [0, -5, "1", 1.5, True, None, 2**70],
        "E": [0, -1, 1.5, "1"],
        "m": [True, False, 0, "true"],
        "M": [True, 1, None],
        "s": ["BTCUSDT", "B", "btc", "A" * 21, "ÄBC", 5],
        "e": ["trade", "aggTrade", None, 1],
    }.items():
        variants += [{**base, key: v} for v in values]
    for key in list(base):
        variants.append({k: v for k, v in base.items() if k != key})
    return variants


@pytest.mark.parametrize("payload", _samples())
def test_compiled_validator_agrees_with_jsonschema(payload):
    strict = jsonschema.Draft202012Validator(TRADE.schema)
    fast = Validator(TRADE)
    expected_valid = strict.is_valid(payload)
    try:
        fast(payload)
        got_valid = True
    except InvalidRecord:
        got_valid = False
    if payload.get("p") == "1.5\n":
        expected_valid = False  # ECMA-262 `$`: jsonschema (Python re) wrongly accepts a trailing newline
    assert got_valid == expected_valid, payload


@pytest.mark.parametrize("stream", [TRADE, TICKER_1H, TICKER_24H], ids=lambda s: s.name)
def test_fused_validate_normalize_equals_the_chain(stream):
    """The engine's fast path (one compiled function for validate → normalize) returns what the
    two transforms return, and rejects what they reject (the engine then asks them for the reason)."""
    v, n = make_validator(stream, {}), make_normalizer(stream, {})
    fused = v.fuse(n)
    assert fused is not None and "def validate_normalize(r):" in fused.source
    if stream is TRADE:
        samples = _samples()
    else:
        base = ticker_payload("1hTicker" if stream is TICKER_1H else "24hrTicker")
        samples = [base, {**base, "o": "x"}, {**base, "E": "1"}, {k: v for k, v in base.items() if k != "C"}]
    accepted = 0
    for payload in samples:
        try:
            expected = n(v(payload))
        except InvalidRecord:
            with pytest.raises(Exception):
                fused(payload)
            continue
        got = fused(payload)
        expected.pop("ingested_at", None), got.pop("ingested_at", None)  # the clock moved on
        assert got == expected, payload
        accepted += 1
    assert accepted
    assert v.fuse(make_normalizer(TICKER_1H if stream is TRADE else TRADE, {})) is None  # another stream's


def test_include_raw_keeps_the_payload_beside_the_record_on_both_paths():
    payload = trade_payload(9, price="16500.12000000")
    normalize = make_normalizer(TRADE, {"include_raw": True})
    chained = normalize(make_validator(TRADE, {})(payload))
    fused = make_validator(TRADE, {}).fuse(normalize)(payload)
    for record in (chained, fused):
        assert record["raw"] == payload and record["price"] == "16500.12000000"
        assert set(record) - {"raw"} == {c.name for c in TRADE.columns}
    assert "raw" not in make_normalizer(TRADE, {})(payload)  # off by default


def test_include_raw_refuses_to_overwrite_a_column_named_raw(tmp_path):
    schema = json.loads(Path(TRADE.schema_path).read_text())
    schema["properties"]["q"]["x-tickwire"]["column"] = "raw"
    path = tmp_path / "raw.schema.json"
    path.write_text(json.dumps(schema))
    with pytest.raises(ValueError, match="has a column named 'raw'"):
        make_normalizer(stream_spec("trade", path), {"include_raw": True})


def test_fastjsonschema_implementation_is_available():
    assert reason(TRADE, {**trade_payload(1), "p": "abc"}, "fastjsonschema").startswith("data.p must match pattern")


def test_unsupported_schema_keywords_fall_back_to_fastjsonschema(tmp_path):
    schema = json.loads(Path(TRADE.schema_path).read_text())
    schema["properties"]["p"] = {"anyOf": [{"type": "string"}, {"type": "number"}], "x-tickwire": {"column": "price", "type": "decimal"}}
    path = tmp_path / "odd.schema.json"
    path.write_text(json.dumps(schema))
    stream = stream_spec("trade", path)
    check = make_validator(stream, {})
    assert check({**trade_payload(1), "p": 1.5})
    with pytest.raises(InvalidRecord):
        check({**trade_payload(1), "p": None})


def test_normalize_trade():
    record = make_normalizer(TRADE, {})(trade_payload(7, price="16500.12000000", event_ms=1672531200136))
    ingested = record.pop("ingested_at")
    assert record == {
        "trade_id": 7,
        "symbol": "BTCUSDT",
        "event_time": "2023-01-01T00:00:00.137Z",
        "price": "16500.12000000",
        "quantity": trade_payload(7)["q"],
        "trade_time": "2023-01-01T00:00:00.136Z",
        "buyer_is_maker": True,
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ingested)
    assert "M" not in record and "e" not in record


def test_normalize_columns_follow_the_schema_annotations():
    record = make_normalizer(TICKER_24H, {})(ticker_payload())
    assert list(record) == [c.name for c in TICKER_24H.columns]
    assert record["last_price"] == "0.0025" and record["total_trades"] == 18151
    assert record["open_time"] == "1970-01-01T00:00:00.000Z"


def test_iso_ms_matches_datetime():
    from datetime import datetime, timezone

    for ms in (0, 999, 1000, 1672531200136, 1672531200999, 4102444799999, 1709164800000):
        dt = datetime.fromtimestamp(ms / 1000, timezone.utc)
        assert iso_ms(ms) == dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def test_normalize_reports_missing_fields():
    payload = trade_payload(1)
    del payload["p"]
    with pytest.raises(InvalidRecord, match="missing field 'p'"):
        make_normalizer(TRADE, {})(payload)


def test_validate_and_normalize_are_fast_enough():
    """The hot-path budget: well under 10 µs per trade for both (≈2 + 1.5 µs here)."""
    import timeit

    v, n = make_validator(TRADE, {}), make_normalizer(TRADE, {})
    payload = trade_payload(1)
    per = min(timeit.repeat(lambda: n(v(payload)), number=20_000, repeat=3)) / 20_000
    assert per < 10e-6, f"{per * 1e6:.1f} µs per trade"


# -- domain checks of the shipped schemas ----------------------------------------------------------

WIRE_EXAMPLES = {
    json.loads(line)["what"].split(" (")[0]: json.loads(line)["frame"]
    for line in (Path(__file__).parent / "data" / "binance-wire-examples.jsonl").read_text().splitlines()
}


@pytest.mark.parametrize("implementation", ["compiled", "fastjsonschema"])
def test_binance_documented_examples_pass_the_shipped_schemas(implementation):
    options = {"implementation": implementation}
    assert make_validator(TRADE, options)(WIRE_EXAMPLES["trade event"])
    assert make_validator(TICKER_24H, options)(WIRE_EXAMPLES["24h ticker event"])  # O: 0 is documented
    assert make_validator(TICKER_1H, options)(WIRE_EXAMPLES["rolling window ticker"])


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"p": "-16500.5"}, "field 'p' (price): '-16500.5' is negative; the schema allows only positive decimals"),
        ({"p": "0.00000000"}, "field 'p' (price): '0.00000000' is zero; the schema allows only positive decimals"),
        ({"q": "0"}, "field 'q' (quantity): '0' is zero; the schema allows only positive decimals"),
        ({"q": "-0.001"}, "field 'q' (quantity): '-0.001' is negative; the schema allows only positive decimals"),
        # more digits than DECIMAL(38,18) holds exactly (the Spark job's type)
        ({"p": "1." + "1" * 19}, "field 'p' (price): '1.1111111111111111111' does not match decimal pattern"),
        # a trade time in the year 2286
        ({"T": 10**13}, "field 'T' (trade_time): 10000000000000 is greater than the maximum 4102444800000"),
        ({"t": -1}, "field 't' (trade_id): -1 is less than the minimum 0"),
    ],
)
def test_prices_quantities_and_times_are_checked_for_their_domain(change, expected):
    assert reason(TRADE, {**trade_payload(1), **change}).startswith(expected)


def test_a_ticker_price_change_may_be_negative_but_not_a_price():
    falling = {**ticker_payload(), "p": "-0.0015", "P": "-60.00", "v": "0", "b": "0"}  # quiet window, empty book
    assert make_validator(TICKER_24H, {})(falling) is falling
    assert reason(TICKER_24H, {**falling, "c": "-0.0025"}) == (
        "field 'c' (last_price): '-0.0025' is negative; the schema allows only zero or positive decimals")


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.mark.parametrize("implementation", ["compiled", "fastjsonschema"])
def test_event_time_far_ahead_of_the_local_clock_is_rejected(implementation):
    two_hours_ahead = {**trade_payload(1), "E": now_ms() + 2 * 3600_000}
    assert reason(TRADE, two_hours_ahead, implementation).endswith(
        "is 2 hours ahead of the local clock (max_clock_skew_seconds: 3600)")
    assert reason(TRADE, two_hours_ahead, implementation).startswith("field 'E' (event_time): ")
    lenient = make_validator(TRADE, {"implementation": implementation, "max_clock_skew_seconds": 3 * 3600})
    assert lenient(two_hours_ahead) is two_hours_ahead


def test_event_time_ahead_is_rejected_on_the_fused_path_too():
    fused = make_validator(TRADE, {}).fuse(make_normalizer(TRADE, {}))
    assert fused({**trade_payload(1), "E": now_ms()})["symbol"] == "BTCUSDT"
    with pytest.raises(InvalidRecord):
        fused({**trade_payload(1), "E": now_ms() + 2 * 3600_000})


def test_the_cached_clock_bound_follows_the_clock_both_ways():
    """The fast path compares with a cached "now + skew" bound instead of reading the clock per
    record: a value past a stale bound is checked against a fresh clock read, and the fused
    function refreshes the bound every millisecond, so a clock stepped back is followed."""
    validator = make_validator(TRADE, {"max_clock_skew_seconds": 1})
    fused = validator.fuse(make_normalizer(TRADE, {}))
    for check in (validator, fused):
        check({**trade_payload(1), "E": now_ms()})  # sets the bound
        time.sleep(0.3)
        just_inside = {**trade_payload(1), "E": now_ms() + 900}  # past the bound cached 0.3 s ago
        assert check(just_inside)
        with pytest.raises(InvalidRecord, match="ahead of the local clock"):
            check({**trade_payload(1), "E": now_ms() + 1500})
    validator.clock.bound[0] += 3_600_000  # as if the clock had been an hour ahead, then stepped back
    time.sleep(0.002)
    fused({**trade_payload(1), "E": now_ms()})  # a new millisecond: the bound is refreshed
    with pytest.raises(InvalidRecord, match="ahead of the local clock"):
        fused({**trade_payload(1), "E": now_ms() + 60_000})


def test_matched_pattern_values_are_remembered_within_a_bound():
    """Prices and quantities repeat: a value that matched its pattern is remembered (a set
    lookup instead of a regex), at most SEEN_VALUES per field; a bad value is never remembered."""
    from tickwire.plugins.validate_fields import SEEN_VALUES

    check = make_validator(TRADE, {})
    for i in range(SEEN_VALUES + 10):
        check({**trade_payload(1), "p": f"{i + 1}.5"})
    seen = check.fn.__globals__["v4_seen"]
    assert 0 < len(seen) <= SEEN_VALUES and "1.5" not in seen  # full, it started over
    for bad in ("0.000", "1.5\n", "-1.5", "1" * 21):
        with pytest.raises(InvalidRecord):
            check({**trade_payload(1), "p": bad})
        assert bad not in seen


@pytest.mark.parametrize("implementation", ["compiled", "fastjsonschema"])
def test_old_events_from_gap_fills_pass_unless_an_age_bound_is_set(implementation):
    three_days_old = {**trade_payload(1), "E": now_ms() - 3 * 86400_000}
    assert make_validator(TRADE, {"implementation": implementation})(three_days_old) is three_days_old
    bounded = {"implementation": implementation, "max_event_age_seconds": 86400}
    with pytest.raises(InvalidRecord) as info:
        make_validator(TRADE, bounded)(three_days_old)
    assert info.value.reason == "field 'E' (event_time): " + f"{three_days_old['E']} is 3 days old (max_event_age_seconds: 86400)"
