"""Binance's decimals as exact integers: every price and quantity the simulator handles is a
count of 1e-8 units (Binance prints 8 decimals), so sums and averages never touch a float."""

from __future__ import annotations

UNIT = 10**8  # 1e-8: the smallest decimal Binance prints


def fmt8(units: int) -> str:
    """Integer 1e-8 units → Binance decimal string with 8 decimals ("43012.57000000")."""
    if units < 0:
        return "-" + fmt8(-units)
    return f"{units // UNIT}.{units % UNIT:08d}"


def parse8(text: str) -> int:
    """Binance decimal string → integer 1e-8 units (exact; raises ValueError on junk)."""
    neg = text.startswith("-")
    whole, _, frac = text.lstrip("-").partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()) or len(frac) > 8:
        raise ValueError(f"not a decimal with at most 8 places: {text!r}")
    units = int(whole) * UNIT + int(frac.ljust(8, "0") or 0)
    return -units if neg else units


def fmt_quote(units16: int) -> str:
    """Exact price*qty (1e-16 units) → at least 8 decimals, trailing zeros past 8 stripped."""
    whole, frac = divmod(units16, UNIT * UNIT)
    digits = f"{frac:016d}".rstrip("0")
    return f"{whole}.{digits.ljust(8, '0')}"


def round_div(a: int, b: int) -> int:
    """a / b rounded half up (a, b >= 0)."""
    return (2 * a + b) // (2 * b)
