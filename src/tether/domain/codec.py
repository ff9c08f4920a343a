"""Records to and from JSON, for stores and cassettes.

Every payload carries its `kind` and every content part its `type`, so decoding is exact.
Pydantic is loaded on first use only. The payloads every step writes (model_call, tool_started,
tool_finished) and a run's end (finished) have hand-written encoders (`tether.domain.fastjson`),
byte-identical to pydantic's; a value of another type than its field's goes to pydantic. Records of
format 1 (decisions with an untyped payload) are read into today's types by `decision_from_v1`.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Annotated, Any

from tether.domain.answers import (
    Abort,
    Answer,
    Approve,
    Continue,
    Deny,
    EditArguments,
    EditMessages,
    EditOutput,
    EditResponse,
    EditResult,
    Rerun,
    Skip,
    Step,
    Supply,
)
from tether.domain.breakpoints import Stop
from tether.domain.fastjson import encode_fast
from tether.domain.messages import ToolCall, message_from_dict
from tether.domain.models import ModelResponse
from tether.domain.records import Decision, Payload, Record


@functools.cache
def _payload_adapter() -> Any:
    from pydantic import Field, TypeAdapter

    return TypeAdapter(Annotated[Payload, Field(discriminator="kind")])


@functools.cache
def _response_adapter() -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(ModelResponse)


def dump_payload(payload: Payload) -> bytes:
    """The payload's JSON (UTF-8), as pydantic writes it."""
    fast = encode_fast(payload)
    if fast is not None:
        return fast.encode()
    return _payload_adapter().dump_json(payload)  # type: ignore[no-any-return]


def dump_payload_text(payload: Payload) -> str:
    """The payload's JSON as text, for a store's text column (no round trip through bytes)."""
    fast = encode_fast(payload)
    if fast is not None:
        return fast
    return _payload_adapter().dump_json(payload).decode()  # type: ignore[no-any-return]


def load_payload(data: str | bytes, v: int | None = None) -> Payload:
    """A payload from its JSON; `v`, the record's format version, if known (else told by shape)."""
    if (v is None or v < 2) and ('"decision"' in data if isinstance(data, str) else b'"decision"' in data):
        parsed = json.loads(data)
        if parsed.get("kind") == "decision" and "answer" not in parsed:
            return decision_from_v1(parsed)
    return _payload_adapter().validate_json(data)  # type: ignore[no-any-return]


def record_to_dict(record: Record) -> dict[str, Any]:
    payload = _payload_adapter().dump_python(record.payload, mode="json")
    return {"run_id": record.run_id, "seq": record.seq, "ts": record.ts, "v": record.v, "payload": payload}


def record_from_dict(data: dict[str, Any]) -> Record:
    p = data["payload"]
    v = data.get("v", 1)
    if v < 2 and p.get("kind") == "decision" and "answer" not in p:
        payload: Payload = decision_from_v1(p)
    else:
        payload = _payload_adapter().validate_python(p)
    return Record(data["run_id"], data["seq"], data["ts"], payload, v)


def response_to_dict(response: ModelResponse) -> dict[str, Any]:
    return _response_adapter().dump_python(response, mode="json")  # type: ignore[no-any-return]


def response_from_dict(data: dict[str, Any]) -> ModelResponse:
    return _response_adapter().validate_python(data)  # type: ignore[no-any-return]


# -- format 1 ------------------------------------------------------------------------------------

_STOP_STEP = re.compile(r"([a-z_]+):(\d+)")


def decision_from_v1(d: dict[str, Any]) -> Decision:
    """A format-1 decision: `action` beside an untyped `payload`, and an item id that was either
    a call id or "STOP:STEP" (the only place such an id is still read apart)."""
    item_id = d["item_id"]
    call_id: str | None = item_id
    step: int | None = None
    stop: Stop | None = None
    if m := _STOP_STEP.fullmatch(item_id):
        call_id, stop, step = None, Stop(m.group(1)), int(m.group(2))
    answer = _answer_from_v1(d["action"], d.get("payload"))
    return Decision(d["pause_id"], item_id, answer, d.get("by", "api"), call_id, step, stop)


def _answer_from_v1(action: str, payload: Any) -> Answer:
    p = payload if isinstance(payload, dict) else {}
    if action == "continue":
        return Continue(dict(p.get("limits") or {}))
    if action == "skip":
        return Skip(_text(payload))
    if action == "supply":
        return Supply(_text(payload))
    if action == "deny":
        return Deny(payload if isinstance(payload, str) else p.get("message"))
    if action == "approve":
        args = p.get("arguments")
        return Approve(None if args is None else args if isinstance(args, str) else json.dumps(args))
    if action == "edit":
        return _edit_from_v1(p)
    simple: dict[str, Answer] = {"step": Step(), "rerun": Rerun(), "abort": Abort()}
    if action in simple:
        return simple[action]
    raise ValueError(f"a format-1 decision with an unknown action {action!r}")


def _edit_from_v1(p: dict[str, Any]) -> Answer:
    old = p.get("old")
    if "messages" in p:
        return EditMessages([message_from_dict(m) for m in p["messages"]],
                            None if old is None else [message_from_dict(m) for m in old])
    if "response" in p:
        r = p["response"]
        calls = [ToolCall(c["id"], c["name"], c.get("arguments") or "{}") for c in r.get("tool_calls", [])]
        return EditResponse(r.get("text"), calls, None if old is None else message_from_dict(old))
    if "arguments" in p:
        args = p["arguments"]
        return EditArguments(args if isinstance(args, str) else json.dumps(args), old)
    if "result" in p:
        return EditResult(_text(p["result"]), None if old is None else _text(old))
    if "output" in p:
        return EditOutput(_text(p["output"]), None if old is None else _text(old))
    raise ValueError("a format-1 edit needs messages, response, arguments, result or output")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
