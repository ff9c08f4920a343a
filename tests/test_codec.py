"""The hand-written encoders of the hot payloads (domain/fastjson.py) write pydantic's bytes."""

from __future__ import annotations

import math
import warnings
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tether.adapters.store.sql.schema import record_row
from tether.domain.codec import _payload_adapter, dump_payload, dump_payload_text, load_payload
from tether.domain.fastjson import encode_fast
from tether.domain.messages import ToolCall
from tether.domain.models import ModelResponse
from tether.domain.records import Finished, ModelCalled, Payload, Record, RunStatus, ToolFinished, ToolStarted
from tether.domain.usage import Usage

# Text with what JSON must escape (quotes, backslashes, control characters), what it must not
# (non-ASCII, U+2028, DEL) and astral characters; surrogates are tested apart (UTF-8 has none).
_special = st.sampled_from(['"', "\\", "\n", "\r", "\t", "\b", "\f", "\x00", "\x1f", "\x7f", "\u2028", "é", "😀",
                            "</script>", "\\u0000"])
text = st.one_of(st.text(), st.lists(st.one_of(_special, st.text(max_size=3))).map("".join))
opt_text = st.none() | text
ints = st.integers() | st.sampled_from([0, -1, 2**63, -(2**63) - 1, 10**40])
floats = st.floats() | st.sampled_from([0.0, -0.0, 1e-5, 1e-6, 9.99e-7, 1e16, 1e-4, 5e-324, 1.7976931348623157e308])
opt_floats = st.none() | floats

calls = st.builds(ToolCall, text, text, text, opt_text)
usages = st.builds(Usage, ints, ints, ints)
responses = st.builds(ModelResponse, opt_text, st.lists(calls, max_size=4), text, usages, opt_text, opt_text)
model_calls = st.builds(ModelCalled, ints, text, responses, opt_floats, floats, st.booleans(), opt_text, st.booleans())
tool_starts = st.builds(ToolStarted, ints, text, text, text, ints)
tool_ends = st.builds(ToolFinished, ints, text, text, opt_text, opt_text, floats, st.booleans())
ends = st.builds(Finished, st.sampled_from(RunStatus), opt_text, st.none(), opt_text, usages, opt_floats)
hot = st.one_of(model_calls, tool_starts, tool_ends, ends)


def pydantic_json(payload: Payload) -> bytes:
    return _payload_adapter().dump_json(payload)  # type: ignore[no-any-return]


def finite(payload: Payload) -> bool:
    """No NaN or infinity (written as null, as pydantic writes them, so they do not come back)."""
    values: list[Any] = [getattr(payload, "duration_s", 0.0), getattr(payload, "cost_usd", 0.0)]
    return all(v is None or math.isfinite(v) for v in values)


@settings(max_examples=600, deadline=None)
@given(hot)
def test_the_hot_payloads_are_encoded_by_hand_byte_for_byte_as_pydantic_does(payload: Payload) -> None:
    fast = encode_fast(payload)
    assert fast is not None, payload  # values of the declared types always take the hand-written path
    assert fast.encode() == pydantic_json(payload)
    assert dump_payload(payload) == pydantic_json(payload)
    assert dump_payload_text(payload) == fast
    if finite(payload):
        assert load_payload(dump_payload(payload), 2) == payload


@settings(max_examples=200, deadline=None)
@given(hot)
def test_a_record_row_holds_the_same_text_as_before(payload: Payload) -> None:
    row = record_row(Record("run_1", 3, 1.5, payload))
    assert row[:5] == ("run_1", 3, payload.kind, 2, 1.5)
    assert row[5] == pydantic_json(payload).decode()


# Values of other types than the fields declare: the hand-written path declines them, so pydantic's
# own conversions (an int where a float is declared becomes 3.0, a bool where an int is) stay its own.
odd_number = st.one_of(st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False))


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.builds(ToolFinished, ints, text, text, opt_text, opt_text, odd_number, st.booleans()),
    st.builds(ToolStarted, odd_number, text, text, text, odd_number),
    st.builds(Finished, st.sampled_from(RunStatus), opt_text, st.none() | st.dictionaries(text, ints) | text,
              opt_text, st.builds(Usage, odd_number, ints, ints), st.none() | odd_number),
    st.builds(ModelCalled, odd_number, text, responses, st.none() | odd_number, odd_number,
              st.booleans() | st.integers(0, 1), opt_text, st.booleans()),
))
def test_values_of_other_types_are_left_to_pydantic(payload: Payload) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydantic warns of the unexpected types it converts
        assert dump_payload(payload) == pydantic_json(payload)


def test_what_the_hand_written_path_declines() -> None:
    assert encode_fast(ToolFinished(1, "c", "n", None, None, 3)) is None  # type: ignore[arg-type]  (an int)
    assert encode_fast(ToolStarted(True, "c", "n", "{}")) is None  # a bool is not an int here
    assert encode_fast(ModelCalled(1, "f", ModelResponse(usage=Usage(1.0, 2, 3)))) is None  # type: ignore[arg-type]
    assert encode_fast(Finished(RunStatus.COMPLETED, "{}", structured={})) is None  # any JSON: pydantic's
    surrogate = ToolFinished(1, "c", "n", "a\ud800b")
    assert encode_fast(surrogate) is None
    try:  # whatever pydantic makes of it, the store sees the same
        expected: object = pydantic_json(surrogate)
    except Exception as e:
        expected = type(e)
    try:
        got: object = dump_payload(surrogate)
    except Exception as e:
        got = type(e)
    assert got == expected


def test_floats_are_written_as_pydantic_writes_them() -> None:
    cases = {0.1: "0.1", 1e-5: "0.00001", 9.638502822009547e-05: "0.00009638502822009547", 1e-7: "1e-7",
             -1e-7: "-1e-7", 1e16: "1e+16", 1e20: "1e+20", 12345.5: "12345.5", -0.0: "-0.0",
             math.inf: "null", -math.inf: "null", math.nan: "null"}
    for value, written in cases.items():
        payload = ToolFinished(1, "c", "n", duration_s=value)
        assert f'"duration_s":{written},' in dump_payload_text(payload)
        assert dump_payload(payload) == pydantic_json(payload)
