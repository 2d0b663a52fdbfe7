"""The transform contract (tickwire.framework.testing.transforms) against the built-in validate
and normalize, alone and fused, for every stream tickwire ships; and against transforms that
break it, to show each check can fail."""

from __future__ import annotations

import json
from dataclasses import replace
from functools import cache
from pathlib import Path

import pytest

from tickwire.framework.components import InvalidRecord, TransformSpec
from tickwire.framework.testing import (
    FusedTransformContract, TransformCase, TransformContract, registered_transforms, stream_spec, trade_payload,
)
from tickwire.framework.testing.transforms import (
    check_any_json, check_deterministic, check_fused_matches_the_chain, check_near_valid_payloads,
)


SAMPLES = Path(__file__).parent / "samples"  # recorded frames, one file per stream: <stream>.jsonl
SCHEMAS = {"trade": "trade.schema.json", "ticker": "ticker_24h.schema.json", "ticker_1h": "ticker_1h.schema.json"}


def samples(stream: str) -> list[dict]:
    return [json.loads(line) for line in (SAMPLES / f"{stream}.jsonl").read_text().splitlines() if line.strip()]


STREAMS = {  # stream name → (schema, valid payloads)
    "trade": (SCHEMAS["trade"], samples("trade") + [trade_payload(7, price="123456789012345678.123456789012345678")]),
    "ticker": (SCHEMAS["ticker"], samples("ticker")),
    "ticker_1h": (SCHEMAS["ticker_1h"], samples("ticker_1h")),
}


@cache
def spec_of(stream: str):
    """One StreamSpec per stream: a transform fuses only with one built for the same stream."""
    return stream_spec(stream, STREAMS[stream][0])


def case(transform: str, stream: str) -> TransformCase:
    valid = STREAMS[stream][1]
    spec = spec_of(stream)
    if transform == "normalize":  # normalize's input is what validate let through
        valid = [registered_transforms()["validate"].factory(spec, {})(p) for p in valid]
    return TransformCase(spec=registered_transforms()[transform], stream=spec, valid=valid)


@pytest.fixture(params=sorted(STREAMS))
def stream_name(request) -> str:
    return request.param


class TestValidate(TransformContract):
    @pytest.fixture
    def transform_case(self, stream_name):
        return case("validate", stream_name)


class TestValidateWithFastjsonschema(TransformContract):
    @pytest.fixture
    def transform_case(self, stream_name):
        return replace(case("validate", stream_name), options={"implementation": "fastjsonschema"})


class TestNormalize(TransformContract):
    @pytest.fixture
    def transform_case(self, stream_name):
        return case("normalize", stream_name)


class TestValidateFusedWithNormalize(FusedTransformContract):
    @pytest.fixture
    def fused_case(self, stream_name):
        return case("validate", stream_name), case("normalize", stream_name)


# -- each check fails for a transform that breaks it ----------------------------------------------


def broken(factory, name: str) -> TransformCase:
    good = case("validate", "trade")
    return replace(good, spec=TransformSpec(name=name, factory=factory, description="broken on purpose"))


def test_a_transform_that_raises_keyerror_fails():
    def make(stream, options):
        return lambda r: {"price": r["p"]}  # a payload without "p" raises KeyError, not InvalidRecord

    with pytest.raises(AssertionError, match="raised (KeyError|TypeError).*only InvalidRecord may be raised"):
        check_any_json(broken(make, "keyerror"))


def test_a_transform_that_changes_its_input_fails():
    def make(stream, options):
        def strip(r):
            if not isinstance(r, dict):
                raise InvalidRecord("not an object")
            r.pop("M", None)
            return r
        return strip

    with pytest.raises(AssertionError, match="changed its input"):
        check_near_valid_payloads(broken(make, "mutating"))


def test_a_transform_that_depends_on_a_counter_fails():
    def make(stream, options):
        calls = iter(range(10**9))
        return lambda r: {"n": next(calls)}

    with pytest.raises(AssertionError, match="different results"):
        check_deterministic(broken(make, "counter"))


def test_a_fused_form_that_accepts_what_the_chain_rejects_fails():
    first, following = case("validate", "trade"), case("normalize", "trade")

    def make(stream, options):
        validate = registered_transforms()["validate"].factory(stream, options)

        def lenient(r):
            return validate(r)
        lenient.fuse = lambda normalize: (lambda r: normalize(r) if isinstance(r, dict) and "p" in r and "T" in r else {})
        return lenient

    first = replace(first, spec=TransformSpec(name="lenient", factory=make, description="fuses without validating"))
    with pytest.raises(AssertionError, match="fused accepted .* which the chain rejects"):
        check_fused_matches_the_chain(first, following)
