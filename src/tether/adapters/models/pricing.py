"""Prices of model calls, from `genai-prices`' bundled snapshot (offline; never auto-updated).

Only call this for endpoints whose prices are really known (e.g. `openai:` refs against
api.openai.com): a local model named like a hosted one must not be billed.
"""

from __future__ import annotations

import warnings

from tether.domain.governor import Price


def price_usd(provider: str, model: str, input_tokens: int, output_tokens: int,
              cached_tokens: int = 0) -> float | None:
    """USD price of one call, or None when the provider or model is unknown (never an error).

    `input_tokens` counts all prompt tokens, cached ones included (as OpenAI reports them);
    `cached_tokens` is the part of them read from the prompt cache.
    """
    if not provider or not model:
        return None
    try:
        # Imported here: the package loads a large price table. Its bundled snapshot is used
        # unless someone starts `UpdatePrices`, which Tether never does.
        from genai_prices import Usage, calc_price

        usage = Usage(input_tokens=max(0, int(input_tokens)), output_tokens=max(0, int(output_tokens)),
                      cache_read_tokens=max(0, min(int(cached_tokens), int(input_tokens))))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = calc_price(usage, model, provider_id=provider)
        return float(result.total_price)
    except Exception:  # unknown provider/model, odd usage, a damaged table: the cost is just unknown
        return None


def unit_price(provider: str, model: str) -> Price | None:
    """The model's price per input and per output token (no cache discount: an upper bound for a
    reservation), or None when unknown."""
    per_in = price_usd(provider, model, 1_000_000, 0)
    per_out = price_usd(provider, model, 0, 1_000_000)
    if per_in is None or per_out is None:
        return None
    return Price.per_million(per_in, per_out)
