"""The simulator's symbol universe: which symbols are listed, their assets and status, and how
much of the market's trading each one carries — what ``/api/v3/exchangeInfo`` answers and the
control endpoints ``/_sim/list`` and ``/_sim/delist`` change at run time.

Two kinds of universe:

* open (the default, ``universe=0``): the ``--symbols`` to start with, and any symbol a client
  subscribes to is listed on first use, trading — the simulator as it always was;
* generated (``universe=N``): N seeded listings, shares per quote asset (``quote_assets``) and
  per status (``statuses``; the rest TRADING), like Binance spot. Only TRADING symbols trade;
  subscribing to any other symbol is accepted and stays silent, as on Binance. Trades are spread
  over the symbols by a Zipf law of exponent ``trade_skew`` over a seeded popularity rank (the
  big bases against the big quotes first), so a few symbols carry most of the trades.

Listing a symbol makes it TRADING (it starts trading at once, at the tail of the popularity
rank, or where it was before it was delisted); delisting sets another status and stops its
trades and tickers (its history stays for REST and ``/_sim/stats``).
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

from tickwire.plugins.binance.market import Market
from tickwire.plugins.binance.sim_config import SimConfig

TRADING = "TRADING"
STATUSES = ("TRADING", "END_OF_DAY", "HALT", "BREAK")  # Binance's symbol statuses (enums.md)
# Base assets by market size (the first ones are the most traded); then seeded made-up names.
KNOWN_BASES = (
    "BTC ETH BNB SOL XRP DOGE ADA TRX AVAX LINK DOT TON SHIB LTC BCH UNI NEAR APT ICP FIL ATOM ETC "
    "XLM HBAR ARB OP INJ SUI SEI TIA IMX RNDR STX GRT AAVE MKR LDO RUNE ALGO EGLD FTM SAND MANA AXS "
    "THETA FLOW CHZ CRV SNX COMP ENS KAVA ZEC DASH XTZ EOS IOTA NEO QTUM ONE ZIL ENJ BAT GALA APE "
    "PEPE WIF BONK FLOKI JUP PYTH WLD ORDI BLUR CAKE 1INCH SUSHI YFI BAL USDC FDUSD"
).split()
PERMISSION_SETS = (("SPOT", "MARGIN"), ("SPOT",))


@dataclass
class Listing:
    symbol: str
    base: str
    quote: str
    status: str
    margin: bool  # permission set SPOT+MARGIN (else SPOT only)
    weight: float  # share of the market's trades, relative to the others

    @property
    def permissions(self) -> tuple[str, ...]:
        return PERMISSION_SETS[0] if self.margin else PERMISSION_SETS[1]


def _rng(seed: int, *parts: object) -> random.Random:
    digest = hashlib.sha256(":".join(map(str, (seed, "universe", *parts))).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def split_symbol(symbol: str, quotes: list[str]) -> tuple[str, str]:
    """(base, quote) of a symbol: the longest known quote asset it ends with (else its last 4
    characters, or 3 of a short symbol)."""
    for quote in sorted(quotes, key=len, reverse=True):
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)], quote
    cut = 4 if len(symbol) > 6 else 3
    return symbol[:-cut] or symbol, symbol[-cut:]


def shares_to_counts(total: int, shares: dict[str, float]) -> dict[str, int]:
    """``total`` split by ``shares`` (largest remainders, so the counts add up exactly)."""
    norm = sum(shares.values())
    exact = {k: total * v / norm for k, v in shares.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - counts[k], reverse=True)[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


class Universe:
    """Every listing, by symbol; keeps the market's trading set and weights in step with it."""

    def __init__(self, cfg: SimConfig, market: Market):
        self.cfg = cfg
        self.market = market
        self.quotes = [q for q, _ in cfg.quote_assets]
        self.open = cfg.universe == 0 and not cfg.replay
        self.listings: dict[str, Listing] = {}
        if cfg.replay:
            for symbol in market.symbols:
                self._add(symbol, TRADING, 1.0)
        elif cfg.universe:
            self._generate(cfg.universe)
        else:
            for symbol in cfg.symbols:
                self._add(symbol, TRADING, 1.0)
        if not cfg.replay:  # --symbols are always listed and trading (a replay lists its capture's)
            self.list_symbols([s for s in cfg.symbols if s not in self.listings or self.listings[s].status != TRADING])

    # -- building ---------------------------------------------------------------------------
    def _bases(self, n: int) -> list[str]:
        """``n`` distinct base assets: the known ones, then seeded made-up names."""
        bases = list(KNOWN_BASES[:n])
        taken = set(bases) | set(self.quotes)
        rng = _rng(self.cfg.seed, "bases")
        letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        while len(bases) < n:
            name = "".join(rng.choice(letters) for _ in range(rng.choice((3, 4, 4, 5))))
            if name not in taken:
                taken.add(name)
                bases.append(name)
        return bases

    def _generate(self, size: int) -> None:
        cfg = self.cfg
        counts = shares_to_counts(size, dict(cfg.quote_assets))
        bases = self._bases(max(counts.values()) + len(self.quotes))
        rng = _rng(cfg.seed, "listings")
        candidates: list[tuple[float, str, str, str]] = []  # (popularity, symbol, base, quote)
        for q_index, quote in enumerate(self.quotes):
            pool = [b for b in bases if b != quote][: counts[quote]]
            for b_index, base in enumerate(pool):
                # big bases against big quotes first, with some seeded noise
                popularity = -math.log(b_index + 1) - 0.8 * q_index + rng.gauss(0.0, 0.5)
                candidates.append((popularity, base + quote, base, quote))
        candidates.sort(key=lambda c: -c[0])
        status_rng = _rng(cfg.seed, "statuses")
        for rank, (_, symbol, base, quote) in enumerate(candidates, 1):
            status = TRADING
            if rank > 20:  # the most traded symbols trade
                draw = status_rng.random()
                for name, share in cfg.statuses:
                    if draw < share:
                        status = name
                        break
                    draw -= share
            self._add(symbol, status, self._zipf(rank), base, quote, margin=rank <= size // 3)

    def _zipf(self, rank: int) -> float:
        return 1.0 / rank ** self.cfg.trade_skew if self.cfg.universe else 1.0

    def _add(self, symbol: str, status: str, weight: float, base: str | None = None,
             quote: str | None = None, margin: bool = True) -> Listing:
        if base is None or quote is None:
            base, quote = split_symbol(symbol, self.quotes)
        listing = Listing(symbol, base, quote, status, margin, weight)
        self.listings[symbol] = listing
        if status == TRADING:
            self.market.trade(symbol, weight if self.cfg.universe else None)
        return listing

    # -- run-time changes -------------------------------------------------------------------
    def subscribed(self, symbol: str) -> None:
        """A client subscribed to a stream of ``symbol``: an open universe lists it."""
        if self.open and symbol not in self.listings:
            self._add(symbol, TRADING, 1.0)

    def list_symbols(self, symbols: list[str]) -> list[str]:
        """List ``symbols`` (or make them TRADING again); they trade from now on."""
        for symbol in symbols:
            listing = self.listings.get(symbol)
            if listing is None:
                self._add(symbol, TRADING, self._zipf(len(self.listings) + 1))
            elif listing.status != TRADING:
                listing.status = TRADING
                self.market.trade(symbol, listing.weight if self.cfg.universe else None)
        return symbols

    def new_symbols(self, count: int, quote: str) -> list[str]:
        """``count`` symbols never listed before, against ``quote``, listed now."""
        taken = {l.base for l in self.listings.values() if l.quote == quote}
        names: list[str] = []
        for base in self._bases(len(self.listings) + count + len(KNOWN_BASES)):
            if len(names) == count:
                break
            if base not in taken and base + quote not in self.listings:
                names.append(base + quote)
        return self.list_symbols(names)

    def delist(self, symbols: list[str], status: str) -> list[str]:
        """Give ``symbols`` a status other than TRADING; their trades and tickers stop."""
        for symbol in symbols:
            self.listings[symbol].status = status
            self.market.halt(symbol)
        return symbols

    def by_status(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for listing in self.listings.values():
            out[listing.status] = out.get(listing.status, 0) + 1
        return out
