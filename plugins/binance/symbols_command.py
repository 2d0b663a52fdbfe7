"""``tickwire symbols``: the symbols each Binance source would take, and how they are spread.

It resolves every stream's ``symbols:`` exactly as ``tickwire run`` does at start — a list as
written, a selector against ``GET /api/v3/exchangeInfo`` of the source's ``rest_url`` — and
prints, per source: the symbols, the channels (symbols × streams), how the channels fill the
connections (``max_streams_per_connection``), and with ``--shard I/N`` this shard's part and
the size of every shard of N. ``--format json`` prints the same as one JSON object.

Exit codes: 0; 1 when exchangeInfo cannot be read; 2 for a config error.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import click

from tickwire.framework.backoff import Backoff
from tickwire.framework.logs import configure, get_logger
from tickwire.framework.metrics import Metrics
from tickwire.framework.options import with_defaults
from tickwire.framework.sharding import WHOLE, Shard, shard_of, shard_option
from tickwire.plugins.binance.options import CONFIG_SCHEMA
from tickwire.plugins.binance.rest import BinanceRest
from tickwire.plugins.binance.subscriptions import SubscriptionPlan
from tickwire.plugins.binance.symbol_watch import SymbolListUnavailable, SymbolWatch

ANSWER_WITHIN_S = 60.0  # a command waits no longer (a run keeps honouring Retry-After)


def _channels(streams, wanted: dict[str, list[str]]) -> list[str]:
    by_name = {s.name: s for s in streams}
    return sorted(by_name[name].channel.format(symbol=sym.lower()).lower() for name, symbols in wanted.items() for sym in symbols)


async def resolve_source(name: str, options: dict, streams, shard: Shard) -> dict:
    """What source ``name`` would take: a JSON-ready dict (SymbolListUnavailable if a selector
    cannot be resolved)."""
    opts = with_defaults(CONFIG_SCHEMA, options)
    log = get_logger(plugin="binance-source", component="symbols", source=name)
    everything = SymbolWatch(name, streams, WHOLE, log, Metrics())
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30, connect=10)) as session:
        rest = BinanceRest(opts["rest_url"], session, weight_per_minute=float(opts["rest_weight_per_minute"]),
                           backoff=Backoff(0.5, 2.0), log=log, max_retries=2)
        wanted_all = await everything.initial(rest, Backoff(0.5, 2.0), attempts=2)
    cap = int(opts["max_streams_per_connection"])
    symbols_all = sorted({s for symbols in wanted_all.values() for s in symbols})
    mine = {stream: shard.select(symbols) for stream, symbols in wanted_all.items()}
    channels = _channels(streams, mine)
    shards = []
    for index in range(shard.count):
        part = {stream: [s for s in symbols if shard_of(s, shard.count) == index] for stream, symbols in wanted_all.items()}
        part_channels = _channels(streams, part)
        shards.append({
            "shard": str(Shard(index, shard.count)),
            "symbols": len({s for symbols in part.values() for s in symbols}),
            "channels": len(part_channels),
            "connections": len(SubscriptionPlan(part_channels, cap).slots),
        })
    return {
        "rest_url": opts["rest_url"],
        "max_streams_per_connection": cap,
        "streams": {
            spec.name: {"channel": spec.channel, "selector": spec.selector, "symbols": mine[spec.name]}
            for spec in streams
        },
        "symbols_before_sharding": len(symbols_all),
        "symbols": sorted({s for symbols in mine.values() for s in symbols}),
        "channels": len(channels),
        "connections": [len(slot) for slot in SubscriptionPlan(channels, cap).slots],
        "shards": shards,
    }


def _render_text(report: dict) -> list[str]:
    lines = [f"shard {report['shard']}" if report["shard"] != str(WHOLE) else "all symbols (no --shard)"]
    for name, source in report["sources"].items():
        lines.append(f"source {name} ({source['rest_url']}):")
        for stream, info in source["streams"].items():
            how = "selector " + json.dumps(info["selector"]["select"]) if info["selector"] else "list"
            lines.append(f"  stream {stream} ({info['channel']}): {len(info['symbols'])} symbols by {how}")
        lines.append(f"  {len(source['symbols'])} symbols (of {source['symbols_before_sharding']} before sharding), "
                     f"{source['channels']} channels")
        conns = source["connections"]
        lines.append(f"  {len(conns)} connection{'s' if len(conns) != 1 else ''} of at most "
                     f"{source['max_streams_per_connection']} streams: {', '.join(map(str, conns)) or 'none'}")
        if len(source["shards"]) > 1:
            lines.append("  shards: " + "; ".join(f"{s['shard']}: {s['symbols']} symbols, {s['channels']} channels, "
                                                  f"{s['connections']} connections" for s in source["shards"]))
        symbols = source["symbols"]
        lines.append("  symbols: " + (" ".join(symbols) if symbols else "none"))
    return lines


@click.command("symbols")
@click.option("--profile", default=None, help="Only the streams of this profile (default: every stream).")
@shard_option
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_obj
def symbols_command(app, profile: str | None, shard: Shard | None, output_format: str) -> None:
    """Print the symbols each Binance source would take (lists as written, selectors resolved
    from exchangeInfo), and how they spread over connections and shards."""
    configure("json" if output_format == "json" else "console", "error")  # stdout is the report; why it failed goes to stderr
    config = app.config
    streams = config.profile_streams(config.profile(profile)) if profile else list(config.streams.values())
    shard = shard or WHOLE
    report = {"shard": str(shard), "sources": {}}
    for name, (kind, options) in config.sources.items():
        mine = [s for s in streams if s.source == name]
        if kind != "binance" or not mine:
            continue
        try:
            report["sources"][name] = asyncio.run(asyncio.wait_for(resolve_source(name, options, mine, shard), ANSWER_WITHIN_S))
        except SymbolListUnavailable as exc:
            raise click.ClickException(str(exc)) from None
        except asyncio.TimeoutError:  # Binance kept answering 429/418 with Retry-After, or a stalled connection
            raise click.ClickException(f"source {name}: no symbol list from {options.get('rest_url', 'the REST URL')} "
                                       f"within {ANSWER_WITHIN_S:g}s") from None
    if output_format == "json":
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo("\n".join(_render_text(report)))
