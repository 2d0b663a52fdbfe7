"""A ``symbols: {select: …}`` selector is resolved by the source (Binance reads exchangeInfo); a
stream with a selector on a source type that cannot resolve one would get no symbol at all, so
it is a config error at the selector's line — never an idle stream."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tickwire.framework.testing.project import write_streams_yaml

REPO = Path(__file__).resolve().parent.parent

REPLAY_PLUGIN = '''
from tickwire.framework.components import SourceSpec
from tickwire.framework.hookspecs import hookimpl


@hookimpl
def tickwire_register_sources(register):
    register(SourceSpec(name="replay", factory=object, description="Replays recorded frames."))
'''


def project(tmp_path: Path, symbols, stream_symbols=None) -> Path:
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "replay_source.py").write_text(textwrap.dedent(REPLAY_PLUGIN))
    streams = {"trade": {"source": "binance"}, "ticker": {"source": "recorded"}}
    if stream_symbols is not None:
        streams["ticker"]["symbols"] = stream_symbols
    config = write_streams_yaml(
        tmp_path, sources={"binance": {"type": "binance"}, "recorded": {"type": "replay"}}, symbols=symbols,
        streams=streams, sinks={"db": {"type": "sqlite", "path": str(tmp_path / "t.db")}}, profiles={"local": {"sinks": ["db"]}})
    config.write_text(config.read_text() + "plugins:\n  directories: [local]\n")
    return config


def validate(config: Path, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tickwire.framework.cli", "-c", str(config), *(command or ["validate"])],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def line_of(config: Path, text: str) -> int:
    return next(i for i, line in enumerate(config.read_text().splitlines(), 1) if text in line)


def test_a_selector_on_a_source_that_cannot_resolve_it_is_a_config_error_at_its_line(tmp_path):
    config = project(tmp_path, ["BTCUSDT"], stream_symbols={"select": {"quote_assets": ["USDT"]}})
    for command in (["validate"], ["run", "--duration", "1", "--metrics-port", "0"]):
        out = validate(config, *command)
        assert out.returncode == 2, (command, out.stderr)
        assert "Traceback" not in out.stderr
        assert (f"{config}:{line_of(config, 'select:')}:7: streams.ticker.symbols: stream 'ticker': source 'recorded' "
                "(type replay) cannot resolve a selector (source types that can: binance); list the symbols instead") in out.stderr
    assert "stream 'trade'" not in out.stderr  # the binance stream has its list


def test_a_top_level_selector_inherited_by_such_a_stream_is_reported_at_the_top_level(tmp_path):
    config = project(tmp_path, {"select": "all"})
    out = validate(config)
    assert out.returncode == 2, out.stderr
    assert (f"{config}:{line_of(config, 'select: all')}:3: symbols: stream 'ticker': source 'recorded' (type replay) "
            "cannot resolve a selector") in out.stderr, out.stderr
    assert "stream 'trade'" not in out.stderr  # binance resolves it


def test_the_same_streams_with_symbol_lists_are_valid(tmp_path):
    config = project(tmp_path, ["BTCUSDT"], stream_symbols=["ETHUSDT"])
    out = validate(config)
    assert out.returncode == 0, out.stderr


def test_malformed_streams_and_sources_next_to_a_selector_are_reported_not_a_traceback(tmp_path):
    for streams in ("[trade, ticker]", "{trade: {source: [recorded], channel: '{symbol}@trade'}}"):
        config = tmp_path / "streams.yaml"
        config.write_text(f"version: 1\nsources: {{recorded: {{type: binance}}}}\nsymbols: {{select: all}}\n"
                          f"streams: {streams}\nsinks: {{}}\nprofiles: {{}}\n")
        out = validate(config)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert "is not of type" in out.stderr, out.stderr
