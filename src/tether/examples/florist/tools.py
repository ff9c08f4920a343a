"""The florist's own tool: a typed Python function; Tether builds its schema from the signature and
the docstring, validates the model's arguments, and hands errors back to the model."""

from __future__ import annotations

import csv
from pathlib import Path

from tether import ToolError, tool

PRICES_FILE = Path(__file__).resolve().parent / "prices.csv"


def load_prices(path: Path = PRICES_FILE) -> dict[str, dict[str, str]]:
    """flower → its row of prices.csv (flower, market_price_usd_per_stem, updated)."""
    with path.open(newline="", encoding="utf-8") as f:
        return {row["flower"].strip().lower(): row for row in csv.DictReader(f)}


@tool(idempotent=True, timeout_s=5)
def price_lookup(flower: str) -> dict[str, str]:
    """Look up today's wholesale market price of a flower, per stem, in US dollars.

    Args:
        flower: The flower, e.g. "roses" or "tulips".
    """
    prices = load_prices()
    name = flower.strip().lower()
    row = prices.get(name) or prices.get(name + "s") or prices.get(name.removesuffix("s"))
    if row is None:
        raise ToolError(f"no market price for {flower!r}; the price list has: {', '.join(sorted(prices))}")
    return {"flower": row["flower"], "market_price_usd": row["market_price_usd_per_stem"], "per": "stem",
            "updated": row["updated"]}
