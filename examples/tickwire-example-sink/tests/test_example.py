"""The example plugin tested with tickwire's author kit. The kit is a pytest plugin that comes
with tickwire: the ``tickwire_context`` and ``tickwire_stream`` fixtures need no conftest.py."""

from __future__ import annotations

import csv

import pytest

from tickwire import InvalidRecord, SinkCase, SinkConformance, TransformCase, TransformContract, trade_payload

import tickwire_example_sink as plugin


def registered(hook: str):
    specs = []
    getattr(plugin, hook)(register=specs.append)
    return specs[0]


def typed(stream, row: dict) -> dict:
    """A CSV row back into the record's types (what the conformance suite compares)."""
    out = {}
    for column in stream.columns:
        text = row[column.name]
        if text == "" and column.nullable:
            out[column.name] = None
        elif column.logical in ("integer", "bigint"):
            out[column.name] = int(text)
        elif column.logical == "boolean":
            out[column.name] = text == "true"
        else:
            out[column.name] = text
    return out


def read_csv(path):
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


class TestCsvSink(SinkConformance):
    @pytest.fixture
    def sink_case(self, tmp_path, tickwire_context):
        folder = tmp_path / "out"
        return SinkCase(
            spec=registered("tickwire_register_sinks"),
            options={"directory": str(folder)},
            ctx_factory=lambda streams: tickwire_context(*streams),
            read_back=lambda case, stream: [typed(stream, row) for row in read_csv(folder / f"{stream.table}.csv")],
            # an empty stream cell is a dead letter of no stream (a frame the source could not place)
            read_dead_letters=lambda case: [{**d, "stream": d["stream"] or None} for d in read_csv(folder / "dead_letters.csv")],
        )


class TestOnlySymbols(TransformContract):
    @pytest.fixture
    def transform_case(self, tickwire_stream):
        return TransformCase(
            spec=registered("tickwire_register_transforms"),
            stream=tickwire_stream("trade"),
            options={"symbols": ["BTCUSDT"]},
            valid=[trade_payload(1, "BTCUSDT"), trade_payload(2, "ETHUSDT")],
        )


def test_only_symbols_drops_other_symbols_and_refuses_a_payload_without_one(tickwire_stream):
    keep_btc = plugin.make_symbol_filter(tickwire_stream("trade"), {"symbols": ["BTCUSDT"]})
    assert keep_btc(trade_payload(1, "BTCUSDT"))["s"] == "BTCUSDT"
    assert keep_btc(trade_payload(2, "ETHUSDT")) is None
    with pytest.raises(InvalidRecord, match="no symbol"):
        keep_btc({"e": "trade"})
