"""The florist: the classic tool-using agent example, runnable offline with `tether demo`.

A flower-shop agent is asked what roses cost and what to charge for a 15% profit. It looks the
price up with a typed Python tool (`tools.price_lookup`, reading `prices.csv`), works out the
price with the built-in `calculator`, and answers. `agent.toml` runs it on an offline scripted
model (`offline_model.florist`) that reads the tool results it is given, so the answer follows
the data; `demo.cassette.jsonl` is a recording of that run, for `--model replay:PATH`.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
AGENT_FILE = HERE / "agent.toml"
PRICES_FILE = HERE / "prices.csv"
CASSETTE_FILE = HERE / "demo.cassette.jsonl"
TASK = "What do roses cost on the market now, and what should I charge for a 15% profit?"
