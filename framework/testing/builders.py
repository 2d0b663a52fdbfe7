"""What a test needs to call a component: a stream, a payload, a run context, records.

Nothing here reads files of a source tree: schemas come from the ones tickwire ships (package
data) or from a path the caller gives, and the built-in transforms are found through the plugin
registry (the ``tickwire`` entry points), as ``tickwire run`` finds them.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from tickwire.framework.components import RunContext, TransformSpec
from tickwire.framework.metrics import Metrics
from tickwire.framework.schemas import StreamSpec, load_schema, shipped_schemas

TRADE_EPOCH_MS = 1672531200000  # 2023-01-01T00:00:00Z


def stream_spec(
    name: str = "trade",
    schema: str | Path = "trade.schema.json",
    *,
    table: str | None = None,
    symbols: list[str] | None = None,
    sinks: list[str] | None = None,
    transforms: list[tuple[str, dict]] | None = None,
    source: str = "test",
) -> StreamSpec:
    """A :class:`StreamSpec` from a schema file (a name is looked up in the schemas tickwire ships)."""
    path = Path(schema)
    if not path.is_absolute() and not path.exists():
        path = Path(str(shipped_schemas() / str(path)))
    return StreamSpec(
        name=name,
        source=source,
        channel="{symbol}@" + name,
        symbols=symbols or ["BTCUSDT"],
        schema_path=path,
        schema=load_schema(path),
        table=table or {"trade": "trades"}.get(name, name),
        topic=None,
        transforms=list(transforms) if transforms is not None else [("validate", {}), ("normalize", {})],
        sinks=list(sinks or []),
    )


def trade_payload(i: int, symbol: str = "BTCUSDT", *, price: str | None = None, quantity: str | None = None, event_ms: int | None = None) -> dict:
    """A Binance trade event; trade id ``i``. Prices carry trailing zeros and 8 decimals, like Binance."""
    t = event_ms if event_ms is not None else TRADE_EPOCH_MS + i
    return {
        "e": "trade",
        "E": t + 1,
        "s": symbol,
        "t": i,
        "p": price or f"{16500 + (i % 1000) / 100:.8f}",
        "q": quantity or f"{0.001 * (1 + i % 7):.8f}",
        "T": t,
        "m": bool(i % 2),
        "M": True,
    }


@lru_cache(maxsize=1)
def registered_transforms() -> dict[str, TransformSpec]:
    """Every transform the installed plugins register (built-in and third-party), by name."""
    from tickwire.framework.plugins import PluginManager  # loads every plugin: only when asked

    return dict(PluginManager().transforms)


def transform_chain(stream: StreamSpec, registry: dict[str, TransformSpec] | None = None) -> list[Callable[[dict], dict | None]]:
    """The stream's transforms (``stream.transforms``), built by their registered factories."""
    registry = registered_transforms() if registry is None else registry
    return [registry[name].factory(stream, dict(options)) for name, options in stream.transforms]


def normalized(stream: StreamSpec, payloads: list[dict]) -> list[dict]:
    """Payloads through the stream's transforms (by default the built-in validate → normalize)."""
    chain = transform_chain(stream)
    out = []
    for payload in payloads:
        record: dict | None = payload
        for transform in chain:
            record = transform(record)
        out.append(record)
    return out


def make_context(streams: list[StreamSpec], config_dir: str | Path = ".", *, metrics: Metrics | None = None,
                 dead_letters: bool = False, log: Any = None) -> RunContext:
    """A :class:`RunContext` for a component under test (fresh metrics registry)."""
    from tickwire.framework.logs import get_logger

    return RunContext(
        streams=list(streams),
        metrics=metrics or Metrics(),
        log=log or get_logger(component="test"),
        config_dir=Path(config_dir),
        dead_letters=dead_letters,
    )


async def await_me_maybe(value: Any) -> Any:
    """``value``, awaited first if it is awaitable (a hook may return either)."""
    return await value if inspect.isawaitable(value) else value
