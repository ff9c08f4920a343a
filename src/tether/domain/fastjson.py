"""Hand-written JSON encoders for the payloads every step writes (and a run's end), byte-identical
to pydantic's.

Pydantic's generic `dump_json` walks a schema for each record; three records a step made it a
visible share of a busy process's CPU. These encoders write the same bytes (field order, compact
separators, UTF-8 left unescaped, floats as pydantic formats them, NaN and infinities as null)
for values of exactly the fields' types. Anything else (an int where a float is declared, a
subclass, a lone surrogate) returns None, and the caller uses pydantic: odd values never take a
path of their own. tests/test_codec.py checks the equality with generated payloads.
"""

from __future__ import annotations

from collections.abc import Callable
from json.encoder import encode_basestring  # the C encoder when present; non-ASCII kept as is
from typing import Any

from tether.domain.messages import ToolCall
from tether.domain.models import ModelResponse
from tether.domain.records import Finished, ModelCalled, RunStatus, ToolFinished, ToolStarted
from tether.domain.usage import Usage

_s: Callable[[str], str] = encode_basestring  # a TypeError for anything but a str (None too)


class _Slow(Exception):
    """A value this module does not write as pydantic would: pydantic writes the payload."""


def encode_fast(payload: object) -> str | None:
    """The payload's JSON text if a hand-written encoder takes it, else None."""
    encoder = _ENCODERS.get(type(payload))
    if encoder is None:
        return None
    try:
        text = encoder(payload)
        if not text.isascii():
            text.encode()  # a lone surrogate is no UTF-8: pydantic says what becomes of it
    except (_Slow, TypeError, UnicodeEncodeError):
        return None
    return text


def _f(v: float | None) -> str:
    """A float as pydantic writes it: Python's shortest repr, but decimals down to 1e-5 and an
    exponent without a leading zero (1e-7, not 1e-07); NaN and infinities become null."""
    if type(v) is not float:
        if v is None:
            return "null"
        raise _Slow
    if 1e-4 <= v < 1e16 or v == 0.0 or -1e16 < v <= -1e-4:
        return repr(v)  # the common case: no exponent in either
    if v != v or v in (_INF, -_INF):
        return "null"
    r = repr(v)
    if "e-" not in r:
        return r
    mantissa, exp = r.split("e-")
    e = int(exp)
    if e > 5:
        return f"{mantissa}e-{e}"
    sign = "-" if mantissa[0] == "-" else ""
    return f"{sign}0.{'0' * (e - 1)}{mantissa.lstrip('-').replace('.', '')}"


_INF = float("inf")
_BOOL = {True: "true", False: "false"}  # 1 and 0 hash alike: callers check the type first


def _ints(*values: object) -> None:
    for v in values:
        if type(v) is not int:
            raise _Slow


def _bools(*values: object) -> None:
    for v in values:
        if type(v) is not bool:
            raise _Slow


def _tool_started(p: ToolStarted) -> str:
    if type(p.step) is not int or type(p.attempt) is not int:
        raise _Slow
    return (f'{{"step":{p.step},"call_id":{_s(p.call_id)},"name":{_s(p.name)},'
            f'"arguments":{_s(p.arguments)},"attempt":{p.attempt},"kind":"tool_started"}}')


def _tool_finished(p: ToolFinished) -> str:
    if type(p.step) is not int or type(p.reused) is not bool:
        raise _Slow
    result, error = p.result, p.error
    return (f'{{"step":{p.step},"call_id":{_s(p.call_id)},"name":{_s(p.name)},'
            f'"result":{"null" if result is None else _s(result)},'
            f'"error":{"null" if error is None else _s(error)},"duration_s":{_f(p.duration_s)},'
            f'"reused":{_BOOL[p.reused]},"kind":"tool_finished"}}')


def _call(c: ToolCall) -> str:
    if type(c) is not ToolCall:
        raise _Slow
    pid = c.provider_id
    return (f'{{"id":{_s(c.id)},"name":{_s(c.name)},"arguments":{_s(c.arguments)},'
            f'"provider_id":{"null" if pid is None else _s(pid)}}}')


def _model_called(p: ModelCalled) -> str:
    r, u = p.response, p.response.usage
    if type(r) is not ModelResponse or type(u) is not Usage or type(r.tool_calls) is not list:
        raise _Slow
    _ints(p.step, u.input_tokens, u.output_tokens, u.cached_tokens)
    _bools(p.reused, p.final)
    text, refusal, model_name, rejected = r.text, r.refusal, r.model_name, p.rejected
    return (f'{{"step":{p.step},"fingerprint":{_s(p.fingerprint)},"response":{{'
            f'"text":{"null" if text is None else _s(text)},'
            f'"tool_calls":[{",".join([_call(c) for c in r.tool_calls])}],'
            f'"finish_reason":{_s(r.finish_reason)},"usage":{{"input_tokens":{u.input_tokens},'
            f'"output_tokens":{u.output_tokens},"cached_tokens":{u.cached_tokens}}},'
            f'"refusal":{"null" if refusal is None else _s(refusal)},'
            f'"model_name":{"null" if model_name is None else _s(model_name)}}},'
            f'"cost_usd":{_f(p.cost_usd)},"duration_s":{_f(p.duration_s)},"reused":{_BOOL[p.reused]},'
            f'"rejected":{"null" if rejected is None else _s(rejected)},"final":{_BOOL[p.final]},'
            f'"kind":"model_call"}}')


def _finished(p: Finished) -> str:
    u = p.usage
    # A structured answer is any JSON value: pydantic writes those (the rest of the run's end is plain).
    if p.structured is not None or type(p.status) is not RunStatus or type(u) is not Usage:
        raise _Slow
    _ints(u.input_tokens, u.output_tokens, u.cached_tokens)
    output, error = p.output, p.error
    return (f'{{"status":"{p.status.value}","output":{"null" if output is None else _s(output)},'
            f'"structured":null,"error":{"null" if error is None else _s(error)},'
            f'"usage":{{"input_tokens":{u.input_tokens},"output_tokens":{u.output_tokens},'
            f'"cached_tokens":{u.cached_tokens}}},"cost_usd":{_f(p.cost_usd)},"kind":"finished"}}')


_ENCODERS: dict[type, Callable[[Any], str]] = {
    ToolStarted: _tool_started,
    ToolFinished: _tool_finished,
    ModelCalled: _model_called,
    Finished: _finished,
}
