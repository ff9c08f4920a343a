"""Records to and from JSON, for stores and cassettes.

Every payload carries its `kind` and every content part its `type`, so decoding is exact.
Pydantic is loaded on first use only.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

from tether.domain.models import ModelResponse
from tether.domain.records import Payload, Record


@functools.cache
def _payload_adapter() -> Any:
    from pydantic import Field, TypeAdapter

    return TypeAdapter(Annotated[Payload, Field(discriminator="kind")])


@functools.cache
def _response_adapter() -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(ModelResponse)


def dump_payload(payload: Payload) -> bytes:
    return _payload_adapter().dump_json(payload)  # type: ignore[no-any-return]


def load_payload(data: str | bytes) -> Payload:
    return _payload_adapter().validate_json(data)  # type: ignore[no-any-return]


def record_to_dict(record: Record) -> dict[str, Any]:
    payload = _payload_adapter().dump_python(record.payload, mode="json")
    return {"run_id": record.run_id, "seq": record.seq, "ts": record.ts, "v": record.v, "payload": payload}


def record_from_dict(data: dict[str, Any]) -> Record:
    payload = _payload_adapter().validate_python(data["payload"])
    return Record(data["run_id"], data["seq"], data["ts"], payload, data.get("v", 1))


def response_to_dict(response: ModelResponse) -> dict[str, Any]:
    return _response_adapter().dump_python(response, mode="json")  # type: ignore[no-any-return]


def response_from_dict(data: dict[str, Any]) -> ModelResponse:
    return _response_adapter().validate_python(data)  # type: ignore[no-any-return]
