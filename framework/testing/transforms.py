"""The transform contract: what every transform, built-in or not, must do with any input.

A transform is a pure function of one payload (``factory(stream, options) -> transform``):

* it returns a record (a dict) or None (dropped on purpose), or raises
  :class:`~tickwire.framework.components.InvalidRecord` with a reason — never another exception,
  for **any** JSON value (checked with hypothesis: arbitrary JSON, and valid payloads with one
  field removed or replaced by arbitrary JSON);
* it accepts the payloads the author lists as valid;
* it does not change its input, and the same input gives the same output (apart from
  ``volatile`` fields such as ``ingested_at``, the clock at ingest), from one instance or two.

A transform that can **fuse** with the one after it (``transform.fuse(following)`` returns one
function doing both, as the built-in validate does with normalize) must give exactly the
chain's result for every payload the chain accepts, and raise (anything: the engine then runs
the chain to name the reason) for every payload the chain rejects.

Subclass :class:`TransformContract` with a ``transform_case`` fixture, and
:class:`FusedTransformContract` with a ``fused_case`` fixture returning ``(first, following)``.
Needs hypothesis (``pip install hypothesis``; tickwire's ``test`` extra has it).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

from tickwire.framework.components import InvalidRecord, TransformSpec
from tickwire.framework.schemas import StreamSpec

REMOVED = object()  # a field taken out of a valid payload


@dataclass
class TransformCase:
    """A transform under test: its spec, the stream and options it is built for, and payloads
    it must accept."""

    spec: TransformSpec
    stream: StreamSpec
    valid: list[dict]
    options: dict = field(default_factory=dict)
    volatile: tuple[str, ...] = ("ingested_at",)  # output fields read from the clock
    examples: int = 300  # hypothesis examples per property

    def build(self) -> Callable[[Any], dict | None]:
        return self.spec.factory(self.stream, copy.deepcopy(self.options))

    def stable(self, result: Any) -> Any:
        """``result`` without its volatile fields (what must be equal between two calls)."""
        if isinstance(result, dict):
            return {k: v for k, v in result.items() if k not in self.volatile}
        return result


def json_values():
    """Any JSON value: null, booleans, integers of any size, finite floats, text, arrays, objects."""
    from hypothesis import strategies as st

    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def near_valid_payloads(case: TransformCase):
    """A valid payload with one field (of the payload or the schema) removed or replaced by any JSON."""
    from hypothesis import strategies as st

    keys = sorted({k for p in case.valid for k in p} | set(case.stream.schema.get("properties", {})))

    def mutate(payload: dict, key: str, value: Any) -> dict:
        payload = copy.deepcopy(payload)
        if value is REMOVED:
            payload.pop(key, None)
        else:
            payload[key] = value
        return payload

    return st.builds(mutate, st.sampled_from(case.valid), st.sampled_from(keys), st.just(REMOVED) | json_values())


def outcome(transform: Callable[[Any], Any], payload: Any) -> tuple[str, Any]:
    """``("record", result)`` or ``("invalid", reason)``; any other exception fails the contract."""
    before = copy.deepcopy(payload)
    try:
        result = transform(payload)
    except InvalidRecord as exc:
        assert isinstance(exc.reason, str) and exc.reason.strip(), f"InvalidRecord without a reason for {payload!r}"
        verdict: tuple[str, Any] = ("invalid", exc.reason)
    except Exception as exc:  # noqa: BLE001 - that is what the contract forbids
        raise AssertionError(f"raised {type(exc).__name__}: {exc} for {payload!r} (only InvalidRecord may be raised)") from exc
    else:
        assert result is None or isinstance(result, dict), f"returned {type(result).__name__} for {payload!r} (a dict or None)"
        verdict = ("record", result)
    assert payload == before, f"changed its input: {before!r} became {payload!r}"
    return verdict


def _for_all(strategy, examples: int, check: Callable[[Any], None]) -> None:
    from hypothesis import HealthCheck, given, settings

    def property_(payload: Any) -> None:
        check(payload)

    settings(max_examples=examples, deadline=None, database=None, report_multiple_bugs=False,
             suppress_health_check=list(HealthCheck))(given(strategy)(property_))()


def check_accepts_valid_payloads(case: TransformCase) -> None:
    transform = case.build()
    for payload in case.valid:
        verdict, value = outcome(transform, payload)
        assert verdict == "record", f"rejected a valid payload {payload!r}: {value}"


def check_any_json(case: TransformCase) -> None:
    transform = case.build()
    _for_all(json_values(), case.examples, lambda payload: outcome(transform, payload))


def check_near_valid_payloads(case: TransformCase) -> None:
    transform = case.build()
    _for_all(near_valid_payloads(case), case.examples, lambda payload: outcome(transform, payload))


def check_deterministic(case: TransformCase) -> None:
    one, two = case.build(), case.build()

    def same(payload: Any) -> None:
        first, again, other = (outcome(t, payload) for t in (one, one, two))
        results = [(verdict, case.stable(value)) for verdict, value in (first, again, other)]
        assert results[0] == results[1] == results[2], f"different results for {payload!r}: {results}"

    for payload in case.valid:
        same(payload)
    _for_all(near_valid_payloads(case), case.examples, same)


def check_fused_matches_the_chain(first: TransformCase, following: TransformCase) -> None:
    """``first.fuse(following)`` gives the chain's record, and raises where the chain rejects."""
    a, b = first.build(), following.build()
    fuse = getattr(a, "fuse", None)
    assert callable(fuse), f"transform {first.spec.name!r} has no fuse()"
    fused = fuse(b)
    assert callable(fused), f"{first.spec.name}.fuse({following.spec.name}) returned {fused!r}, not a function"

    def agree(payload: Any) -> None:
        verdict, value = outcome(a, payload)
        if verdict == "record" and value is not None:
            verdict, value = outcome(b, value)
        try:
            got = fused(copy.deepcopy(payload))
        except Exception as exc:  # noqa: BLE001 - any exception means "run the chain"
            assert verdict == "invalid", f"fused raised {type(exc).__name__}: {exc} for {payload!r}, which the chain accepts"
            return
        assert verdict == "record", f"fused accepted {payload!r}, which the chain rejects: {value}"
        assert following.stable(got) == following.stable(value), f"fused gave {got!r}, the chain {value!r}"

    for payload in first.valid:
        agree(payload)
    _for_all(near_valid_payloads(first), first.examples, agree)
    _for_all(json_values(), first.examples, agree)


class TransformContract:
    """pytest mix-in: subclass it and define a ``transform_case`` fixture returning a :class:`TransformCase`."""

    def test_accepts_valid_payloads(self, transform_case: TransformCase) -> None:
        check_accepts_valid_payloads(transform_case)

    def test_any_json_is_a_record_or_invalid_record(self, transform_case: TransformCase) -> None:
        check_any_json(transform_case)

    def test_near_valid_payloads_are_a_record_or_invalid_record(self, transform_case: TransformCase) -> None:
        check_near_valid_payloads(transform_case)

    def test_deterministic(self, transform_case: TransformCase) -> None:
        check_deterministic(transform_case)


class FusedTransformContract:
    """pytest mix-in for a transform that fuses with the next: a ``fused_case`` fixture returns
    ``(first, following)``, two :class:`TransformCase` of the same stream."""

    def test_fused_matches_the_chain(self, fused_case: tuple[TransformCase, TransformCase]) -> None:
        check_fused_matches_the_chain(*fused_case)
