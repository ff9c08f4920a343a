"""Errors in OpenAI's envelope `{"error": {"message", "type", "param", "code"}}`, with its status codes."""

from __future__ import annotations

import re
from typing import Any

_NOT_FIELDS = {"body", "query", "path", "header", "str", "int", "float", "bool", "none", "list", "dict"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return envelope(self.message, self.type, self.param, self.code)


def envelope(message: str, type: str = "invalid_request_error", param: str | None = None,
             code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def not_found(kind: str, object_id: str) -> ApiError:
    return ApiError(404, f"No {kind} found with id '{object_id}'.")


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """One sentence for pydantic's first error, OpenAI-style, and the parameter it concerns."""
    if not errors:
        return "The request is invalid.", None
    e = errors[0]
    raw = tuple(e.get("loc", ()))
    if raw and raw[-1] in ("str", "constrained-str") and isinstance(e.get("input"), list):
        # `str | list[...]` was sent a list: the list's own error says what is wrong
        e = next((o for o in errors[1:] if tuple(o.get("loc", ()))[:len(raw) - 1] == raw[:-1]), e)
    # pydantic adds union branches ("str", "list[ContentPart]", "function-after[...]") to the location
    loc = [x for x in e.get("loc", ()) if isinstance(x, int) or (
        re.fullmatch(r"[a-z_][a-z0-9_\[\]]*", x) and x not in _NOT_FIELDS)]
    # `tools[0].function.name`, as the server's own checks name a field
    param = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in loc).lstrip(".") or None
    kind = e.get("type", "")
    msg = str(e.get("msg", "invalid value"))
    if kind == "json_invalid":
        return ("We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
                "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid "
                "JSON.)"), None
    if kind == "missing" and param is None:
        return "The request body is missing: send a JSON object.", None
    if kind == "missing":
        return f"Missing required parameter: '{param}'.", param
    if kind == "extra_forbidden":  # the key as sent, even one the filter above drops ("x-foo")
        name = str(e["loc"][-1]) if e.get("loc") else param
        return f"Unrecognized request argument supplied: {name}", param
    if kind in ("model_type", "model_attributes_type", "dict_type") and param is None:
        return "The request body must be a JSON object.", None
    msg = msg.removeprefix("Value error, ")
    return (f"Invalid value for '{param}': {msg}." if param else f"Invalid request: {msg}."), param
