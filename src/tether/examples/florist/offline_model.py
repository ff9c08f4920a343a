"""An offline stand-in for a real model, so the florist demo runs without a key or a network.

`florist` is a deterministic function of the request. Like a real model it works only from the
conversation it is sent: it finds the flower and the profit in the user's question, asks
`price_lookup` for the price, parses the price out of that tool result, asks the `calculator`
for the selling price, and quotes the calculator's result. Change prices.csv and the answer
changes. Every answer starts with "[offline scripted model]" so nobody mistakes it for a real one.
Token usage is estimated (about 4 characters a token) so the demo shows plausible numbers.
"""

from __future__ import annotations

import contextlib
import json
import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation

from tether.adapters.models.scripted import call_tool, reply
from tether.domain.messages import Message
from tether.domain.models import ModelRequest, ModelResponse
from tether.domain.usage import Usage

LABEL = "[offline scripted model]"

_FLOWER_PATTERNS = [
    re.compile(r"\b(?:do|does|are|is)\s+(?:the\s+|my\s+)?([a-z]+(?:\s[a-z]+)?)\s+(?:cost|sell|go for)\b"),
    re.compile(r"\bprices?\s+(?:of|for)\s+(?:the\s+)?([a-z]+)"),
    re.compile(r"\b(?:cost|price)\s+of\s+(?:the\s+)?([a-z]+)"),
]
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*(?:%|percent\b)")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def florist(request: ModelRequest) -> ModelResponse:
    """The model's next response to `request`: a tool call, or the answer."""
    question, results = _question_and_results(request.messages)
    flower = _flower(question)
    profit = _percent(question)
    if flower is None:
        return _answer(request, "Which flower do you mean? Ask e.g. \"What do tulips cost, and what should "
                                "I charge for a 20% profit?\"")

    lookup = results.get("price_lookup")
    if lookup is None:
        return _call(request, "price_lookup", {"flower": flower})
    if lookup.startswith("Error:"):
        return _answer(request, f"I could not find a market price for {flower}. The price lookup said: "
                                f"{lookup.removeprefix('Error:').strip()}")
    try:
        row = json.loads(lookup)
        price = str(row["market_price_usd"])  # as written in the result, e.g. "2.40"
        Decimal(price)  # …and it must be a number
    except (ValueError, KeyError, TypeError, InvalidOperation):
        return _answer(request, f"I could not read a price out of the price lookup's answer: {lookup!r}")
    name, updated = str(row.get("flower", flower)), row.get("updated")
    quoted = f"{name.capitalize()} cost ${price} per stem on the market" + (
        f" (price list updated {updated})." if updated else ".")
    if profit is None:
        return _answer(request, quoted)

    factor = (100 + profit) / 100
    expression = f"{price} * {factor}"
    calc = results.get("calculator")
    if calc is None:
        return _call(request, "calculator", {"expression": expression})
    if calc.startswith("Error:"):
        return _answer(request, f"{quoted} The calculator failed on {expression}: "
                                f"{calc.removeprefix('Error:').strip()}")
    match = _NUMBER.search(calc)
    if match is None:
        return _answer(request, f"{quoted} I could not read the calculator's result: {calc!r}")
    # Quote the expression the calculator really got: a debugger edit may have changed it.
    for m in request.messages:
        for c in m.tool_calls:
            if c.name == "calculator":
                with contextlib.suppress(ValueError, AttributeError):
                    expression = json.loads(c.arguments).get("expression", expression)
    exact = Decimal(match.group())
    cents = exact.quantize(Decimal("0.01"), rounding=ROUND_CEILING)
    how = f"calculator: {expression} = {calc}"
    if cents != exact:
        how += ", rounded up to the cent"
    return _answer(request, f"{quoted} For a {profit}% profit, charge ${cents} per stem ({how}).")


def _question_and_results(messages: list[Message]) -> tuple[str, dict[str, str]]:
    """The latest user question, and the tool results since then by tool name (the first of each)."""
    question, results = "", dict[str, str]()
    for m in messages:
        if m.role == "user":
            question, results = m.text, {}
        elif m.role == "tool" and m.name:
            results.setdefault(m.name, m.text)
    return question, results


def _flower(question: str) -> str | None:
    text = question.lower()
    for pattern in _FLOWER_PATTERNS:
        if (m := pattern.search(text)) is not None:
            return m.group(1)
    return None


def _percent(question: str) -> Decimal | None:
    m = _PERCENT.search(question.lower())
    return Decimal(m.group(1)) if m else None


def _usage(request: ModelRequest, written: str) -> Usage:
    """Plausible token counts: about four characters a token."""
    seen = sum(len(m.text) + sum(len(c.name) + len(c.arguments) for c in m.tool_calls)
               for m in request.messages)
    seen += sum(len(json.dumps([t.name, t.description, t.parameters])) for t in request.tools)
    return Usage(input_tokens=max(1, seen // 4), output_tokens=max(1, len(written) // 4))


def _call(request: ModelRequest, name: str, arguments: dict[str, str]) -> ModelResponse:
    return call_tool(name, arguments, usage=_usage(request, name + json.dumps(arguments)))


def _answer(request: ModelRequest, text: str) -> ModelResponse:
    text = f"{LABEL} {text}"
    return reply(text, usage=_usage(request, text))
