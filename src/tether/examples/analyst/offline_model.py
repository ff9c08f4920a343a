"""The analyst example's offline model: a deterministic stand-in that reads its tool results.

Round one it asks the `time` MCP server for the current time in UTC; round two it sends Python
code built from that time to the sandboxed `python` tool; then it answers with what Python
printed. Change the clock and the answer changes.
"""

from __future__ import annotations

import json

from tether.adapters.models.scripted import call_tool, reply
from tether.domain.models import ModelRequest, ModelResponse
from tether.domain.usage import Usage

LABEL = "[offline scripted model]"


def analyst(request: ModelRequest) -> ModelResponse:
    results = [m.text for m in request.messages if m.role == "tool"]
    tokens = Usage(sum(len(m.text) for m in request.messages) // 4, 12)
    if not results:
        return call_tool("time__get_current_time", {"timezone": "UTC"}, usage=tokens)
    if len(results) == 1:
        try:
            now = json.loads(results[0])["datetime"]
        except (ValueError, KeyError, TypeError):
            return reply(f"{LABEL} The time server did not answer usefully: {results[0]}", usage=tokens)
        code = (
            "from datetime import datetime, timezone\n"
            f"now = datetime.fromisoformat({now!r})\n"
            "new_year = datetime(now.year + 1, 1, 1, tzinfo=timezone.utc)\n"
            "days = (new_year - now).days\n"
            "print(f'{days} days from {now:%Y-%m-%d %H:%M} UTC to {new_year:%Y-%m-%d}')\n"
            "days\n"
        )
        return call_tool("python", {"code": code}, usage=tokens)
    printed = next((line for line in results[1].splitlines() if "days from" in line), results[1].strip())
    return reply(f"{LABEL} By the time server's clock and a Python computation: {printed}.", usage=tokens)
