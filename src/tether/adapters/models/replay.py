"""The `replay` model: serves recorded responses in order and checks each request's fingerprint.

A recording is a cassette file (JSON lines: a header, then one line per model call) or the
`model_call` records of an earlier run. Cassettes hold responses only: never headers or keys.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.domain.codec import response_from_dict, response_to_dict
from tether.domain.errors import ConfigError, ReplayDiverged
from tether.domain.models import ModelRequest, ModelResponse
from tether.domain.records import ModelCalled, Record

CASSETTE_FORMAT = "tether-cassette"
CASSETTE_VERSION = 1


@dataclass(slots=True)
class Recorded:
    step: int
    fingerprint: str
    response: ModelResponse
    cost_usd: float | None


def from_records(records: Iterable[Record]) -> list[Recorded]:
    return [
        Recorded(r.payload.step, r.payload.fingerprint, r.payload.response, r.payload.cost_usd)
        for r in records
        if isinstance(r.payload, ModelCalled)
    ]


def write_cassette(path: str | Path, records: Iterable[Record], *, source: str = "") -> int:
    entries = from_records(records)
    lines = [json.dumps({"format": CASSETTE_FORMAT, "version": CASSETTE_VERSION, "source": source})]
    for e in entries:
        lines.append(json.dumps({"step": e.step, "fingerprint": e.fingerprint, "cost_usd": e.cost_usd,
                                 "response": response_to_dict(e.response)}, ensure_ascii=False))
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(entries)


def read_cassette(path: str | Path) -> list[Recorded]:
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read cassette {p}: {e.strerror}") from None
    try:
        header = json.loads(lines[0]) if lines else {}
        if header.get("format") != CASSETTE_FORMAT:
            raise ConfigError(f"{p} is not a Tether cassette (no '{CASSETTE_FORMAT}' header line)")
        if header.get("version") != CASSETTE_VERSION:
            raise ConfigError(f"{p} is cassette version {header.get('version')}; this Tether reads "
                              f"version {CASSETTE_VERSION}")
        out = []
        for line in lines[1:]:
            if line.strip():
                d: dict[str, Any] = json.loads(line)
                out.append(Recorded(d["step"], d["fingerprint"], response_from_dict(d["response"]),
                                    d.get("cost_usd")))
        return out
    except (ValueError, KeyError) as e:
        raise ConfigError(f"cassette {p} is damaged: {e}") from None


class ReplayModel:
    def __init__(self, recording: list[Recorded], *, ref: str = "replay") -> None:
        self.ref = ref
        self._recording = recording
        self._next = 0
        self.calls = 0

    async def complete(self, request: ModelRequest,
                       on_delta: Callable[[str], None] | None = None) -> ModelResponse:
        self.calls += 1
        if self._next >= len(self._recording):
            raise ReplayDiverged(self._next + 1, f"the recording has only {len(self._recording)} model "
                                 "calls, and the run asked for another")
        entry = self._recording[self._next]
        if entry.fingerprint != request.fingerprint:
            raise ReplayDiverged(entry.step, "the request differs from the recorded one (the conversation, "
                                 "instructions, tools or settings changed)")
        self._next += 1
        self._cost = entry.cost_usd
        if on_delta is not None and entry.response.text:
            on_delta(entry.response.text)
        return entry.response

    def price(self) -> None:
        return None  # a replay calls nothing: it reserves nothing either (its costs are the recording's)

    def cost_usd(self, response: ModelResponse) -> float | None:
        return self._cost
