"""Black-box compatibility of `tether serve` with the official `openai` SDK (Assistants API v2).

The same file passes with openai 1.109.1, 2.54.0 and 3.x (tests/test_sdk_matrix.py runs the old
ones), so it uses only names that exist in all three, and strict response validation: any field the
SDK's models require and the server leaves out fails here as `APIResponseValidationError`.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest
from chat import last_user_text, message_text

from fake_openai import FakeOpenAI, FakeReply, FakeToolCall

# Fixtures (tests/sdk/conftest.py): `server` (tether serve, keys of tenants A and B), `fake` (the model
# backend) and `script` (replies by marker: `script.add(script.marker(), *replies)`, `script.requests(marker)`),
# `client` / `client_b` (sync clients of tenants A and B), `client_factory(key)`, `async_client_factory(key)`,
# `assistant` (tenant A's plain assistant, model gpt-test, with instructions).
# Nothing is imported from conftest: with several conftest.py files, the module `conftest` is ambiguous.

MODEL = "gpt-test"  # a bare name: goes to the fake backend through OPENAI_BASE_URL
BETA = {"OpenAI-Beta": "assistants=v2"}
POLL = 50  # ms, for the poll helpers
TERMINAL = {"requires_action", "cancelled", "completed", "failed", "expired", "incomplete"}

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME_TOOL = {"type": "function", "function": {
    "name": "get_time", "description": "The time in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


# -- helpers --





def err_message(exc: openai.APIStatusError) -> str:
    """The server's error message (1.x/2.x put the whole dict in `.message`; `.body` is the inner object)."""
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return str(exc)


def assert_envelope(exc: openai.APIStatusError, status: int, *, type_: str | None = "invalid_request_error") -> None:
    """The error came in OpenAI's envelope {"error": {"message", "type", "param", "code"}}."""
    assert exc.status_code == status, (exc.status_code, exc.body)
    body = exc.body
    assert isinstance(body, dict), f"error body is not an object: {body!r}"
    assert "detail" not in body, f"FastAPI-style error body instead of OpenAI's envelope: {body!r}"
    assert isinstance(body.get("message"), str) and body["message"], f"no error.message: {body!r}"
    for key in ("type", "param", "code"):
        assert key in body, f"error object lacks {key!r}: {body!r}"
    if type_ is not None:
        assert exc.type == type_, f"error.type {exc.type!r} != {type_!r}: {body!r}"
    assert exc.request_id, "no x-request-id header on the error response"


def wait_status(client: openai.OpenAI, thread_id: str, run_id: str, statuses: set[str],
                timeout_s: float = 20) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        run = client.beta.threads.runs.retrieve(run_id, thread_id=thread_id)
        if run.status in statuses:
            return run
        assert time.monotonic() < deadline, f"run {run_id} still {run.status!r}, wanted one of {statuses}"
        time.sleep(0.05)


def texts(client: openai.OpenAI, thread_id: str, **kw: Any) -> list[tuple[str, str]]:
    """(role, text) of the thread's messages, oldest first."""
    page = client.beta.threads.messages.list(thread_id=thread_id, order="asc", limit=100, **kw)
    out = []
    for m in page.data:
        out.append((m.role, "".join(c.text.value for c in m.content if c.type == "text")))
    return out


def new_thread(client: openai.OpenAI, *contents: str) -> Any:
    return client.beta.threads.create(messages=[{"role": "user", "content": c} for c in contents])


def chat_messages(body: dict[str, Any], role: str | None = None) -> list[dict[str, Any]]:
    return [m for m in body.get("messages") or [] if role is None or m.get("role") == role]


def system_text(body: dict[str, Any]) -> str:
    return "\n".join(message_text(m.get("content")) for m in body.get("messages") or []
                     if m.get("role") in ("system", "developer"))


class Collector(openai.AssistantEventHandler):
    """Records what an AssistantEventHandler sees."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self.text_deltas: list[str] = []
        self.texts_done: list[str] = []
        self.tool_calls_created: list[Any] = []
        self.tool_call_deltas: list[Any] = []
        self.tool_call_snapshots: dict[int, Any] = {}
        self.tool_calls_done: list[Any] = []
        self.steps_done: list[Any] = []
        self.exceptions: list[Exception] = []
        self.ended = False

    def on_event(self, event: Any) -> None:
        self.events.append(event.event)

    def on_text_delta(self, delta: Any, snapshot: Any) -> None:
        self.text_deltas.append(delta.value or "")

    def on_text_done(self, text: Any) -> None:
        self.texts_done.append(text.value)

    def on_tool_call_created(self, tool_call: Any) -> None:
        self.tool_calls_created.append(tool_call)

    def on_tool_call_delta(self, delta: Any, snapshot: Any) -> None:
        self.tool_call_deltas.append(delta)
        self.tool_call_snapshots[delta.index] = snapshot

    def on_tool_call_done(self, tool_call: Any) -> None:
        self.tool_calls_done.append(tool_call)

    def on_run_step_done(self, run_step: Any) -> None:
        self.steps_done.append(run_step)

    def on_exception(self, exception: Exception) -> None:
        self.exceptions.append(exception)

    def on_end(self) -> None:
        self.ended = True


class AsyncCollector(openai.AsyncAssistantEventHandler):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self.text_deltas: list[str] = []
        self.texts_done: list[str] = []
        self.ended = False

    async def on_event(self, event: Any) -> None:
        self.events.append(event.event)

    async def on_text_delta(self, delta: Any, snapshot: Any) -> None:
        self.text_deltas.append(delta.value or "")

    async def on_text_done(self, text: Any) -> None:
        self.texts_done.append(text.value)

    async def on_end(self) -> None:
        self.ended = True


# -- assistants, threads, messages --

def test_assistants_crud_and_list(client: openai.OpenAI) -> None:
    a = client.beta.assistants.create(model=MODEL, name="crud", description="d", instructions="Be brief.",
                                      tools=[WEATHER_TOOL], metadata={"k": "v"}, temperature=0.5, top_p=0.9)
    assert a.id.startswith("asst_") and a.object == "assistant"
    assert (a.model, a.name, a.description, a.instructions, a.metadata) == (MODEL, "crud", "d", "Be brief.", {"k": "v"})
    assert a.temperature == 0.5 and a.top_p == 0.9
    assert [t.type for t in a.tools] == ["function"] and a.tools[0].function.name == "get_weather"
    assert a.tools[0].function.parameters == WEATHER_TOOL["function"]["parameters"]

    got = client.beta.assistants.retrieve(a.id)
    assert got.model_dump() == a.model_dump()

    up = client.beta.assistants.update(a.id, name="crud2", metadata={"k": "w"}, tools=[])
    assert (up.id, up.name, up.metadata, up.tools, up.instructions) == (a.id, "crud2", {"k": "w"}, [], "Be brief.")
    assert client.beta.assistants.retrieve(a.id).name == "crud2"

    listed = client.beta.assistants.list(limit=100)
    assert a.id in [x.id for x in listed.data]

    # objects the server returned can be sent back as they are (the SDK dumps them with their extra keys)
    copy = client.beta.assistants.create(model=up.model, tools=a.tools, instructions=a.instructions,
                                         metadata=a.metadata)
    assert copy.tools == a.tools and copy.instructions == a.instructions
    client.beta.assistants.delete(copy.id)

    d = client.beta.assistants.delete(a.id)
    assert (d.id, d.object, d.deleted) == (a.id, "assistant.deleted", True)
    with pytest.raises(openai.NotFoundError) as ei:
        client.beta.assistants.retrieve(a.id)
    assert_envelope(ei.value, 404)
    assert err_message(ei.value) == f"No assistant found with id '{a.id}'."
    assert a.id not in [x.id for x in client.beta.assistants.list(limit=100).data]


def test_threads_create_retrieve_update_delete(client: openai.OpenAI) -> None:
    t = client.beta.threads.create(
        messages=[{"role": "user", "content": "first"},
                  {"role": "assistant", "content": "second"},
                  {"role": "user", "content": [{"type": "text", "text": "third"}], "metadata": {"n": "3"}}],
        metadata={"topic": "tests"})
    assert t.id.startswith("thread_") and t.object == "thread" and t.metadata == {"topic": "tests"}
    assert texts(client, t.id) == [("user", "first"), ("assistant", "second"), ("user", "third")]
    msgs = client.beta.threads.messages.list(thread_id=t.id, order="asc").data
    assert msgs[2].metadata == {"n": "3"}
    assert all(m.thread_id == t.id and m.object == "thread.message" for m in msgs)

    got = client.beta.threads.retrieve(t.id)
    assert (got.id, got.metadata) == (t.id, {"topic": "tests"})
    up = client.beta.threads.update(t.id, metadata={"topic": "changed"})
    assert up.metadata == {"topic": "changed"}
    assert client.beta.threads.retrieve(t.id).metadata == {"topic": "changed"}

    empty = client.beta.threads.create()
    assert client.beta.threads.messages.list(thread_id=empty.id).data == []

    d = client.beta.threads.delete(t.id)
    assert (d.id, d.object, d.deleted) == (t.id, "thread.deleted", True)
    with pytest.raises(openai.NotFoundError) as ei:
        client.beta.threads.retrieve(t.id)
    assert_envelope(ei.value, 404)
    assert t.id in err_message(ei.value)


def test_messages_create_retrieve_update_list_delete(client: openai.OpenAI) -> None:
    t = client.beta.threads.create()
    m1 = client.beta.threads.messages.create(t.id, role="user", content="plain string")
    m2 = client.beta.threads.messages.create(t.id, role="user", content=[{"type": "text", "text": "a part"},
                                                                        {"type": "text", "text": " and another"}],
                                             metadata={"x": "1"})
    assert m1.id.startswith("msg_") and m1.object == "thread.message" and m1.thread_id == t.id
    assert m1.role == "user" and m1.status == "completed"
    assert m1.content[0].type == "text" and m1.content[0].text.value == "plain string"
    assert m1.content[0].text.annotations == []
    assert "".join(c.text.value for c in m2.content) == "a part and another"
    assert m2.metadata == {"x": "1"}

    got = client.beta.threads.messages.retrieve(m1.id, thread_id=t.id)
    assert got.model_dump() == m1.model_dump()

    up = client.beta.threads.messages.update(m1.id, thread_id=t.id, metadata={"edited": "yes"})
    assert up.metadata == {"edited": "yes"} and up.content[0].text.value == "plain string"

    desc = client.beta.threads.messages.list(thread_id=t.id).data  # default order: desc
    assert [m.id for m in desc] == [m2.id, m1.id]
    asc = client.beta.threads.messages.list(thread_id=t.id, order="asc").data
    assert [m.id for m in asc] == [m1.id, m2.id]

    d = client.beta.threads.messages.delete(m1.id, thread_id=t.id)
    assert (d.id, d.object, d.deleted) == (m1.id, "thread.message.deleted", True)
    assert [m.id for m in client.beta.threads.messages.list(thread_id=t.id).data] == [m2.id]
    with pytest.raises(openai.NotFoundError) as ei:
        client.beta.threads.messages.retrieve(m1.id, thread_id=t.id)
    assert_envelope(ei.value, 404)
    assert m1.id in err_message(ei.value)


# -- runs: poll helpers --

def test_create_and_poll_text_reply(client: openai.OpenAI, assistant: Any, script: Any) -> None:
    mk = script.add(script.marker("poll"), FakeReply("Hello from the fake model.", prompt_tokens=21,
                                                     completion_tokens=7))
    t = new_thread(client, f"Say hello {mk}")
    # no poll_interval_ms: the helper sleeps what the server's openai-poll-after-ms says (1 s without it)
    run = client.beta.threads.runs.create_and_poll(thread_id=t.id, assistant_id=assistant.id)
    assert run.status == "completed", run
    assert run.id.startswith("run_") and run.object == "thread.run"
    assert (run.thread_id, run.assistant_id, run.model) == (t.id, assistant.id, MODEL)
    assert run.instructions == assistant.instructions
    assert run.completed_at is not None and run.started_at is not None and run.last_error is None
    assert run.usage is not None
    assert (run.usage.prompt_tokens, run.usage.completion_tokens, run.usage.total_tokens) == (21, 7, 28)

    msgs = client.beta.threads.messages.list(thread_id=t.id).data
    assert msgs[0].role == "assistant" and msgs[0].content[0].text.value == "Hello from the fake model."
    assert (msgs[0].run_id, msgs[0].assistant_id) == (run.id, assistant.id)
    assert msgs[1].role == "user" and msgs[1].run_id is None

    by_run = client.beta.threads.messages.list(thread_id=t.id, run_id=run.id).data
    assert [m.id for m in by_run] == [msgs[0].id]

    (body,) = script.requests(mk)
    assert body["model"] == MODEL
    assert assistant.instructions in system_text(body)
    assert last_user_text(body) == f"Say hello {mk}"


def test_poll_after_ms_header(client: openai.OpenAI, assistant: Any) -> None:
    t = new_thread(client, "header check")
    raw = client.beta.threads.runs.with_raw_response.create(thread_id=t.id, assistant_id=assistant.id)
    run = raw.parse()
    raw = client.beta.threads.runs.with_raw_response.retrieve(run.id, thread_id=t.id)
    value = raw.headers.get("openai-poll-after-ms")
    assert value is not None, f"no openai-poll-after-ms header on GET run; headers: {dict(raw.headers)}"
    assert value.isdigit() and 0 < int(value) <= 5000, value
    assert raw.headers.get("x-request-id"), "no x-request-id header"
    client.beta.threads.runs.poll(run.id, thread_id=t.id, poll_interval_ms=POLL)


def test_tool_call_round_trip(client: openai.OpenAI, assistant: Any, script: Any) -> None:
    mk = script.add(script.marker("tool"),
                    FakeReply(tool_calls=[FakeToolCall("get_weather", {"city": "Paris"})]),
                    "It is sunny in Paris.")
    t = new_thread(client, f"Weather in Paris? {mk}")
    run = client.beta.threads.runs.create(thread_id=t.id, assistant_id=assistant.id, tools=[WEATHER_TOOL])
    assert [x.function.name for x in run.tools] == ["get_weather"]
    run = client.beta.threads.runs.poll(run.id, thread_id=t.id, poll_interval_ms=POLL)
    assert run.status == "requires_action", run
    assert run.required_action is not None and run.required_action.type == "submit_tool_outputs"
    (call,) = run.required_action.submit_tool_outputs.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert run.usage is None or run.usage.total_tokens >= 0

    # the pending tool step: output not known yet
    steps = client.beta.threads.runs.steps.list(run.id, thread_id=t.id).data
    tool_steps = [s for s in steps if s.type == "tool_calls"]
    assert len(tool_steps) == 1
    assert tool_steps[0].step_details.tool_calls[0].id == call.id
    assert tool_steps[0].step_details.tool_calls[0].function.output is None

    run = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id, thread_id=t.id, tool_outputs=[{"tool_call_id": call.id, "output": "sunny, 22C"}],
        poll_interval_ms=POLL)
    assert run.status == "completed", run
    assert run.required_action is None
    assert texts(client, t.id)[-1] == ("assistant", "It is sunny in Paris.")

    bodies = script.requests(mk)
    assert len(bodies) == 2
    assert [tl["function"]["name"] for tl in bodies[0].get("tools") or []] == ["get_weather"]
    second = bodies[1]
    (asst_msg,) = [m for m in chat_messages(second, "assistant") if m.get("tool_calls")]
    (tool_msg,) = chat_messages(second, "tool")
    assert asst_msg["tool_calls"][0]["function"]["name"] == "get_weather"
    assert tool_msg["tool_call_id"] == asst_msg["tool_calls"][0]["id"]
    assert message_text(tool_msg["content"]) == "sunny, 22C"

    # steps after the run: tool_calls (output filled) and message_creation
    steps = client.beta.threads.runs.steps.list(run.id, thread_id=t.id, order="asc").data
    assert [s.type for s in steps] == ["tool_calls", "message_creation"]
    assert all(s.status == "completed" and s.run_id == run.id and s.thread_id == t.id for s in steps)
    assert all(s.object == "thread.run.step" and s.id.startswith("step_") for s in steps)
    fn = steps[0].step_details.tool_calls[0]
    assert (fn.id, fn.type, fn.function.name, fn.function.output) == (call.id, "function", "get_weather", "sunny, 22C")
    assert json.loads(fn.function.arguments) == {"city": "Paris"}
    last_msg = client.beta.threads.messages.list(thread_id=t.id, limit=1).data[0]
    assert steps[1].step_details.message_creation.message_id == last_msg.id
    for s in steps:
        got = client.beta.threads.runs.steps.retrieve(s.id, thread_id=t.id, run_id=run.id)
        assert got.model_dump() == s.model_dump()


def test_server_tools_run_first_and_only_client_calls_are_required(client: openai.OpenAI, script: Any) -> None:
    """A turn that mixes a server-side tool (tether_tools) and a client function: the server call
    runs first, required_action lists only the client's, and the step shows both with outputs."""
    a = client.beta.assistants.create(model=MODEL, tools=[WEATHER_TOOL],
                                      extra_body={"tether_tools": [{"type": "calculator"}]})
    assert [t.type for t in a.tools] == ["function"]  # the server's tools never join `tools`
    assert (a.model_extra or {}).get("tether_tools") == [{"type": "calculator"}]
    a = client.beta.assistants.update(a.id, tools=a.tools)  # an SDK round trip of `tools` keeps them client-side
    mk = script.add(script.marker("mix"),
                    FakeReply(tool_calls=[FakeToolCall("calculator", {"expression": "6*7"}),
                                          FakeToolCall("get_weather", {"city": "Oslo"})]),
                    "42, and cold.")
    t = new_thread(client, f"Compute and check the weather {mk}")
    run = client.beta.threads.runs.create_and_poll(thread_id=t.id, assistant_id=a.id, poll_interval_ms=POLL)
    assert run.status == "requires_action", run
    (call,) = run.required_action.submit_tool_outputs.tool_calls
    assert call.function.name == "get_weather"
    (step,) = [s for s in client.beta.threads.runs.steps.list(run.id, thread_id=t.id).data if s.type == "tool_calls"]
    outputs = {c.function.name: c.function.output for c in step.step_details.tool_calls}
    assert outputs == {"calculator": "42", "get_weather": None}
    run = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id, thread_id=t.id, tool_outputs=[{"tool_call_id": call.id, "output": "-3C"}],
        poll_interval_ms=POLL)
    assert run.status == "completed", run
    tool_results = sorted(message_text(m["content"]) for m in chat_messages(script.requests(mk)[1], "tool"))
    assert tool_results == ["-3C", "42"]


def test_stream_shows_a_server_tools_output_before_requires_action(client: openai.OpenAI, script: Any) -> None:
    a = client.beta.assistants.create(model=MODEL, tools=[WEATHER_TOOL],
                                      extra_body={"tether_tools": [{"type": "calculator"}]})
    mk = script.add(script.marker("smix"),
                    FakeReply(tool_calls=[FakeToolCall("calculator", {"expression": "6*7"}),
                                          FakeToolCall("get_weather", {"city": "Oslo"})]))
    t = new_thread(client, f"Compute and check the weather {mk}")
    handler = Collector()
    with client.beta.threads.runs.stream(thread_id=t.id, assistant_id=a.id, event_handler=handler) as stream:
        stream.until_done()
    assert handler.exceptions == []
    run = handler.get_final_run()
    assert run.status == "requires_action"
    (step,) = [snap for snap in stream.get_final_run_steps() if snap.type == "tool_calls"]
    outputs = {c.function.name: c.function.output for c in step.step_details.tool_calls}
    assert outputs == {"calculator": "42", "get_weather": None}, outputs
    client.beta.threads.runs.cancel(run.id, thread_id=t.id)


def test_code_interpreter_runs_in_the_sandbox(client: openai.OpenAI, script: Any) -> None:
    """{"type": "code_interpreter"} is served by Tether's sandboxed python tool, shown as such in steps."""
    try:
        a = client.beta.assistants.create(model=MODEL, tools=[{"type": "code_interpreter"}])
    except openai.BadRequestError as e:  # no sandbox on this machine: refused, saying why
        assert "code_interpreter is not available" in err_message(e)
        pytest.skip(f"no sandbox here: {err_message(e)}")
    mk = script.add(script.marker("ci"), FakeReply(tool_calls=[FakeToolCall("code_interpreter", {"code": "6*7"})]),
                    "It is 42.")
    t = new_thread(client, f"What is 6*7? {mk}")
    run = client.beta.threads.runs.create_and_poll(thread_id=t.id, assistant_id=a.id, poll_interval_ms=POLL)
    assert run.status == "completed", run
    (step,) = [s for s in client.beta.threads.runs.steps.list(run.id, thread_id=t.id).data if s.type == "tool_calls"]
    (call,) = step.step_details.tool_calls
    assert call.type == "code_interpreter" and call.code_interpreter.input == "6*7"
    assert "42" in call.code_interpreter.outputs[0].logs


def test_parallel_tool_calls(client: openai.OpenAI, script: Any) -> None:
    a = client.beta.assistants.create(model=MODEL, instructions="Use tools.", tools=[WEATHER_TOOL, TIME_TOOL])
    mk = script.add(script.marker("parallel"),
                    FakeReply(tool_calls=[FakeToolCall("get_weather", {"city": "Oslo"}),
                                          FakeToolCall("get_time", {"city": "Oslo"})]),
                    "Cold, and it is noon.")
    t = new_thread(client, f"Weather and time in Oslo {mk}")
    run = client.beta.threads.runs.create_and_poll(thread_id=t.id, assistant_id=a.id, poll_interval_ms=POLL)
    assert run.status == "requires_action", run
    assert run.parallel_tool_calls is True
    calls = run.required_action.submit_tool_outputs.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert len({c.id for c in calls}) == 2

    with pytest.raises(openai.BadRequestError) as ei:
        client.beta.threads.runs.submit_tool_outputs(run.id, thread_id=t.id,
                                                     tool_outputs=[{"tool_call_id": calls[0].id, "output": "cold"}])
    assert_envelope(ei.value, 400)
    assert client.beta.threads.runs.retrieve(run.id, thread_id=t.id).status == "requires_action"

    run = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id, thread_id=t.id, poll_interval_ms=POLL,
        tool_outputs=[{"tool_call_id": calls[1].id, "output": "12:00"},  # any order
                      {"tool_call_id": calls[0].id, "output": "cold"}])
    assert run.status == "completed", run
    assert texts(client, t.id)[-1] == ("assistant", "Cold, and it is noon.")

    second = script.requests(mk)[-1]
    (asst_msg,) = [m for m in chat_messages(second, "assistant") if m.get("tool_calls")]
    by_id = {m["tool_call_id"]: message_text(m["content"]) for m in chat_messages(second, "tool")}
    ids = [tc["id"] for tc in asst_msg["tool_calls"]]
    assert [by_id.get(i) for i in ids] == ["cold", "12:00"]

    (step,) = [s for s in client.beta.threads.runs.steps.list(run.id, thread_id=t.id).data if s.type == "tool_calls"]
    assert [(c.function.name, c.function.output) for c in step.step_details.tool_calls] == [
        ("get_weather", "cold"), ("get_time", "12:00")]


def test_text_then_tool_calls_in_one_reply(client: openai.OpenAI, script: Any) -> None:
    a = client.beta.assistants.create(model=MODEL, tools=[WEATHER_TOOL])
    mk = script.add(script.marker("text-tool"),
                    FakeReply("Let me check the weather.", tool_calls=[FakeToolCall("get_weather", {"city": "Rome"})]),
                    "Rome is warm.")
    t = new_thread(client, f"Rome? {mk}")
    run = client.beta.threads.runs.create_and_poll(thread_id=t.id, assistant_id=a.id, poll_interval_ms=POLL)
    assert run.status == "requires_action", run
    (call,) = run.required_action.submit_tool_outputs.tool_calls
    run = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id, thread_id=t.id, tool_outputs=[{"tool_call_id": call.id, "output": "warm"}],
        poll_interval_ms=POLL)
    assert run.status == "completed", run
    assert texts(client, t.id)[1:] == [("assistant", "Let me check the weather."), ("assistant", "Rome is warm.")]
    steps = client.beta.threads.runs.steps.list(run.id, thread_id=t.id, order="asc").data
    assert [s.type for s in steps] == ["message_creation", "tool_calls", "message_creation"]
    second = script.requests(mk)[-1]
    (asst_msg,) = [m for m in chat_messages(second, "assistant") if m.get("tool_calls")]
    assert message_text(asst_msg.get("content")) == "Let me check the weather."


def test_function_tool_without_parameters(client: openai.OpenAI, script: Any) -> None:
    ping = {"type": "function", "function": {"name": "ping"}}
    a = client.beta.assistants.create(model=MODEL, tools=[ping])
    assert a.tools[0].function.name == "ping"
    mk = script.add(script.marker("noparams"), FakeReply(tool_calls=[FakeToolCall("ping", {})]), "pong received")
    t = new_thread(client, f"ping {mk}")
    run = client.beta.threads.runs.create_and_poll(thread_id=t.id, assistant_id=a.id, poll_interval_ms=POLL)
    assert run.status == "requires_action", run
    (call,) = run.required_action.submit_tool_outputs.tool_calls
    assert call.function.name == "ping"
    run = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id, thread_id=t.id, tool_outputs=[{"tool_call_id": call.id, "output": "pong"}],
        poll_interval_ms=POLL)
    assert run.status == "completed", run
    first = script.requests(mk)[0]
    assert [tl["function"]["name"] for tl in first["tools"]] == ["ping"]


def test_tools_attached_but_unused(client: openai.OpenAI, script: Any) -> None:
    a = client.beta.assistants.create(model=MODEL, tools=[WEATHER_TOOL, TIME_TOOL])
    mk = script.add(script.marker("unused"), "No tools needed.")
    t = new_thread(client, f"Just chat {mk}")
    run = client.beta.threads.runs.create_and_poll(thread_id=t.id, assistant_id=a.id, poll_interval_ms=POLL)
    assert run.status == "completed", run
    assert run.required_action is None
    assert texts(client, t.id)[-1] == ("assistant", "No tools needed.")
    steps = client.beta.threads.runs.steps.list(run.id, thread_id=t.id).data
    assert [s.type for s in steps] == ["message_creation"]


# -- streaming --

def test_runs_stream_text_with_event_handler(client: openai.OpenAI, assistant: Any, script: Any) -> None:
    reply = "Streaming works, in several small fragments."
    mk = script.add(script.marker("stream"), FakeReply(reply, fragment_size=4))
    t = new_thread(client, f"stream please {mk}")
    handler = Collector()
    with client.beta.threads.runs.stream(thread_id=t.id, assistant_id=assistant.id, event_handler=handler) as s:
        s.until_done()
    assert handler.exceptions == []
    assert handler.ended
    assert "".join(handler.text_deltas) == reply
    assert len(handler.text_deltas) > 1, "the text came in one delta: the model's stream was not passed on live"
    assert handler.texts_done == [reply]
    run = handler.get_final_run()
    assert run.status == "completed" and run.thread_id == t.id
    assert run.usage is not None and run.usage.total_tokens == 15
    ev = handler.events
    assert ev[0] == "thread.run.created" and ev[-1] == "thread.run.completed", ev
    for name in ("thread.run.in_progress", "thread.run.step.created", "thread.message.created",
                 "thread.message.delta", "thread.message.completed", "thread.run.step.completed"):
        assert name in ev, (name, ev)
    assert ev.index("thread.message.created") < ev.index("thread.message.delta") < ev.index(
        "thread.message.completed") < ev.index("thread.run.completed")
    assert texts(client, t.id)[-1] == ("assistant", reply)
    assert handler.get_final_messages()[0].content[0].text.value == reply


def test_stream_tool_calls_then_submit_tool_outputs_stream(client: openai.OpenAI, script: Any) -> None:
    a = client.beta.assistants.create(model=MODEL, tools=[WEATHER_TOOL])
    args = {"city": "Lisbon", "unit": "celsius"}
    mk = script.add(script.marker("stream-tool"),
                    FakeReply(tool_calls=[FakeToolCall("get_weather", args)], fragment_size=5),
                    FakeReply("Lisbon: 25 degrees.", fragment_size=3))
    t = new_thread(client, f"Lisbon weather {mk}")
    h1 = Collector()
    with client.beta.threads.runs.stream(thread_id=t.id, assistant_id=a.id, event_handler=h1) as s:
        s.until_done()
    assert h1.exceptions == []
    run = h1.get_final_run()
    assert run.status == "requires_action", run
    assert h1.events[-1] == "thread.run.requires_action", h1.events
    assert [c.type for c in h1.tool_calls_created] == ["function"]
    assert h1.tool_calls_created[0].function.name == "get_weather"
    (call,) = run.required_action.submit_tool_outputs.tool_calls
    assert call.id == h1.tool_calls_created[0].id
    assert [c.id for c in h1.tool_calls_done] == [call.id]  # fired at thread.run.requires_action
    assert json.loads(h1.tool_calls_done[0].function.arguments) == args

    h2 = Collector()
    with client.beta.threads.runs.submit_tool_outputs_stream(
            thread_id=t.id, run_id=run.id, tool_outputs=[{"tool_call_id": call.id, "output": "25C"}],
            event_handler=h2) as s:
        s.until_done()
    assert h2.exceptions == [] and h2.ended
    assert "".join(h2.text_deltas) == "Lisbon: 25 degrees."
    assert h2.texts_done == ["Lisbon: 25 degrees."]
    assert h2.get_final_run().status == "completed"
    assert h2.events[-1] == "thread.run.completed", h2.events
    (tool_msg,) = chat_messages(script.requests(mk)[-1], "tool")
    assert message_text(tool_msg["content"]) == "25C"
    # the tool step's completion (output filled) comes as a full step object in the new stream
    done_tools = [c for st in h2.steps_done if st.type == "tool_calls" for c in st.step_details.tool_calls]
    assert [(c.id, c.function.output) for c in done_tools] == [(call.id, "25C")], h2.events

    # The SDK's handler turns the first delta of a tool call (index i) into on_tool_call_created only; later
    # deltas at that index fire on_tool_call_delta. OpenAI sends {id, type, name, arguments: ""} first, then
    # the arguments in fragments, so handlers that stream arguments see them.
    assert h1.tool_call_deltas, ("on_tool_call_delta never fired: each tool call arrived as one delta; send "
                                 "its id/type/name first, then the arguments as further deltas at its index")
    snap = h1.tool_call_snapshots[0]
    assert snap.function.name == "get_weather", snap
    assert json.loads(snap.function.arguments) == args, snap.function.arguments


def test_stream_parallel_tool_calls(client: openai.OpenAI, script: Any) -> None:
    a = client.beta.assistants.create(model=MODEL, tools=[WEATHER_TOOL, TIME_TOOL])
    mk = script.add(script.marker("stream-parallel"),
                    FakeReply(tool_calls=[FakeToolCall("get_weather", {"city": "Bern"}),
                                          FakeToolCall("get_time", {"city": "Bern"})], fragment_size=4),
                    "Bern: mild, 9am.")
    t = new_thread(client, f"Bern {mk}")
    h1 = Collector()
    with client.beta.threads.runs.stream(thread_id=t.id, assistant_id=a.id, event_handler=h1) as s:
        s.until_done()
    assert h1.exceptions == []
    run = h1.get_final_run()
    assert run.status == "requires_action", run
    calls = run.required_action.submit_tool_outputs.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert [c.function.name for c in h1.tool_calls_created] == ["get_weather", "get_time"]
    # snapshots as the handler accumulated them (ids, names and arguments not duplicated or mixed up)
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in h1.tool_calls_done] == [
        (calls[0].id, "get_weather", {"city": "Bern"}), (calls[1].id, "get_time", {"city": "Bern"})]
    (step,) = [st for st in h1.get_final_run_steps() if st.type == "tool_calls"]
    assert [c.id for c in step.step_details.tool_calls] == [c.id for c in calls]

    h2 = Collector()
    with client.beta.threads.runs.submit_tool_outputs_stream(
            thread_id=t.id, run_id=run.id, event_handler=h2,
            tool_outputs=[{"tool_call_id": calls[0].id, "output": "mild"},
                          {"tool_call_id": calls[1].id, "output": "9am"}]) as s:
        s.until_done()
    assert h2.exceptions == [] and h2.get_final_run().status == "completed"
    assert "".join(h2.text_deltas) == "Bern: mild, 9am."


def test_stream_text_then_tool_call(client: openai.OpenAI, script: Any) -> None:
    a = client.beta.assistants.create(model=MODEL, tools=[WEATHER_TOOL])
    mk = script.add(script.marker("stream-text-tool"),
                    FakeReply("Checking.", tool_calls=[FakeToolCall("get_weather", {"city": "Kyiv"})]))
    t = new_thread(client, f"Kyiv {mk}")
    h = Collector()
    with client.beta.threads.runs.stream(thread_id=t.id, assistant_id=a.id, event_handler=h) as s:
        s.until_done()
    assert h.exceptions == []
    assert "".join(h.text_deltas) == "Checking." and h.texts_done == ["Checking."]
    assert [c.function.name for c in h.tool_calls_created] == ["get_weather"]
    run = h.get_final_run()
    assert run.status == "requires_action", run
    ev = h.events
    assert ev.index("thread.message.completed") < ev.index("thread.run.requires_action"), ev
    assert [st.type for st in h.steps_done] == ["message_creation"], ev  # the tool step is still pending
    client.beta.threads.runs.cancel(run.id, thread_id=t.id)
    wait_status(client, t.id, run.id, {"cancelled"})


def test_stream_model_failure_is_run_failed(client: openai.OpenAI, assistant: Any, fake: FakeOpenAI) -> None:
    t = new_thread(client, "this run's model backend fails")
    fake.fail_next(500, n=10, headers={"retry-after-ms": "0"}, message="backend exploded")
    try:
        handler = Collector()
        with client.beta.threads.runs.stream(thread_id=t.id, assistant_id=assistant.id, event_handler=handler) as s:
            s.until_done()  # must not raise: the failure is an event, then the stream ends
    finally:
        fake.clear()
    assert handler.exceptions == []
    assert handler.ended
    assert "thread.run.failed" in handler.events, handler.events
    run = handler.get_final_run()
    assert run.status == "failed"
    assert run.last_error is not None and run.last_error.code in ("server_error", "rate_limit_exceeded")
    assert run.last_error.message and "http://" not in run.last_error.message  # the backend's address stays private
    assert run.failed_at is not None
    assert client.beta.threads.runs.retrieve(run.id, thread_id=t.id).status == "failed"
    # the thread is usable again
    client.beta.threads.messages.create(t.id, role="user", content="after the failure")


def test_a_run_answers_even_after_an_assistant_message(client: openai.OpenAI, assistant: Any, script: Any) -> None:
    """A thread ending with an assistant message (a prepared conversation, or "regenerate") still gets
    a model call and a new answer."""
    mk = script.add(script.marker("again"), "Hello again.", "Third answer.")
    t = client.beta.threads.create(messages=[{"role": "user", "content": f"say hi {mk}"},
                                             {"role": "assistant", "content": "hi"}])
    run = client.beta.threads.runs.create_and_poll(thread_id=t.id, assistant_id=assistant.id, poll_interval_ms=POLL)
    assert run.status == "completed" and run.usage is not None and run.usage.total_tokens > 0
    run = client.beta.threads.runs.create_and_poll(thread_id=t.id, assistant_id=assistant.id, poll_interval_ms=POLL)
    assert run.status == "completed"
    assert texts(client, t.id) == [("user", f"say hi {mk}"), ("assistant", "hi"), ("assistant", "Hello again."),
                                   ("assistant", "Third answer.")]


def test_oversized_message_is_refused(client: openai.OpenAI) -> None:
    t = client.beta.threads.create()
    with pytest.raises(openai.BadRequestError) as e:
        client.beta.threads.messages.create(t.id, role="user", content="x" * 256_001)
    assert e.value.param == "content"


def test_create_and_run_poll(client: openai.OpenAI, assistant: Any, script: Any) -> None:
    mk = script.add(script.marker("car-poll"), "created and ran")
    run = client.beta.threads.create_and_run_poll(
        assistant_id=assistant.id, poll_interval_ms=POLL,
        thread={"messages": [{"role": "user", "content": f"go {mk}"}], "metadata": {"via": "create_and_run"}})
    assert run.status == "completed", run
    assert run.thread_id.startswith("thread_")
    assert client.beta.threads.retrieve(run.thread_id).metadata == {"via": "create_and_run"}
    assert texts(client, run.thread_id) == [("user", f"go {mk}"), ("assistant", "created and ran")]


def test_create_and_run_stream(client: openai.OpenAI, assistant: Any, script: Any) -> None:
    mk = script.add(script.marker("car-stream"), "streamed new thread")
    handler = Collector()
    with client.beta.threads.create_and_run_stream(
            assistant_id=assistant.id, thread={"messages": [{"role": "user", "content": f"go {mk}"}]},
            event_handler=handler) as s:
        s.until_done()
    assert handler.exceptions == [] and handler.ended
    assert handler.events[0] == "thread.created", handler.events
    assert "".join(handler.text_deltas) == "streamed new thread"
    run = handler.get_final_run()
    assert run.status == "completed"
    assert texts(client, run.thread_id)[-1] == ("assistant", "streamed new thread")


# -- runs list, steps --

def test_runs_list_and_steps(client: openai.OpenAI, assistant: Any) -> None:
    t = new_thread(client, "one")
    r1 = client.beta.threads.runs.create_and_poll(thread_id=t.id, assistant_id=assistant.id, poll_interval_ms=POLL)
    client.beta.threads.messages.create(t.id, role="user", content="two")
    r2 = client.beta.threads.runs.create_and_poll(thread_id=t.id, assistant_id=assistant.id, poll_interval_ms=POLL,
                                                  metadata={"n": "2"})
    assert (r1.status, r2.status) == ("completed", "completed")
    assert r2.metadata == {"n": "2"}
    assert [r.id for r in client.beta.threads.runs.list(thread_id=t.id).data] == [r2.id, r1.id]
    assert [r.id for r in client.beta.threads.runs.list(thread_id=t.id, order="asc").data] == [r1.id, r2.id]
    page = client.beta.threads.runs.list(thread_id=t.id, limit=1)
    assert [r.id for r in page.data] == [r2.id] and page.has_more is True
    assert [r.id for r in client.beta.threads.runs.list(thread_id=t.id)] == [r2.id, r1.id]  # auto-paging

    up = client.beta.threads.runs.update(r1.id, thread_id=t.id, metadata={"tag": "first"})
    assert up.metadata == {"tag": "first"}

    (step,) = client.beta.threads.runs.steps.list(r2.id, thread_id=t.id).data
    assert step.type == "message_creation" and step.status == "completed"
    assert step.step_details.type == "message_creation"
    assert step.assistant_id == assistant.id
    got = client.beta.threads.runs.steps.retrieve(step.id, thread_id=t.id, run_id=r2.id)
    assert got.id == step.id
    # include[] (bracket query) is accepted
    include = ["step_details.tool_calls[*].file_search.results[*].content"]
    client.beta.threads.runs.steps.list(r2.id, thread_id=t.id, include=include)
    client.beta.threads.runs.steps.retrieve(step.id, thread_id=t.id, run_id=r2.id, include=include)
    client.beta.threads.messages.create(t.id, role="user", content="three")
    r3 = client.beta.threads.runs.create(thread_id=t.id, assistant_id=assistant.id, include=include)
    assert client.beta.threads.runs.poll(r3.id, thread_id=t.id, poll_interval_ms=POLL).status == "completed"
    assert texts(client, t.id) == [("user", "one"), ("assistant", "echo: one"), ("user", "two"),
                                   ("assistant", "echo: two"), ("user", "three"), ("assistant", "echo: three")]


# -- pagination --

def test_pagination_assistants_both_orders(client: openai.OpenAI) -> None:
    ids = [client.beta.assistants.create(model=MODEL, name=f"page-{i}").id for i in range(7)]

    page = client.beta.assistants.list(limit=3, order="asc")
    assert len(page.data) == 3 and page.has_more is True
    raw = client.beta.assistants.with_raw_response.list(limit=3, order="asc")
    env = json.loads(raw.text)
    assert env.get("object") == "list", env
    assert env.get("first_id") == env["data"][0]["id"] and env.get("last_id") == env["data"][-1]["id"], env

    asc = [a.id for a in client.beta.assistants.list(limit=3, order="asc")]
    desc = [a.id for a in client.beta.assistants.list(limit=3, order="desc")]
    assert len(asc) == len(set(asc)) and desc == asc[::-1]
    assert [i for i in asc if i in ids] == ids  # in creation order
    assert asc[-7:] == ids  # nothing of this tenant was created after them
    assert [a.id for a in client.beta.assistants.list(limit=100)] == desc  # default order: desc

    def page_ids(**kw: Any) -> list[str]:
        return [a.id for a in client.beta.assistants.list(limit=3, **kw).data]

    assert page_ids(order="asc", after=ids[2]) == ids[3:6]
    assert page_ids(order="asc", before=ids[4]) == ids[1:4]
    assert page_ids(order="desc", after=ids[4]) == [ids[3], ids[2], ids[1]]
    assert page_ids(order="desc", before=ids[2]) == [ids[5], ids[4], ids[3]]
    last = client.beta.assistants.list(limit=3, order="asc", after=ids[3])
    assert [a.id for a in last.data] == ids[4:7] and last.has_more is False
    assert page_ids(order="asc", after=ids[6]) == []

    first = client.beta.assistants.list(limit=3, order="desc")
    assert first.has_next_page()
    nxt = first.get_next_page()
    assert [a.id for a in nxt.data] == ids[3:0:-1]


def test_pagination_messages(client: openai.OpenAI) -> None:
    t = client.beta.threads.create(messages=[{"role": "user", "content": f"m{i}"} for i in range(7)])
    asc = list(client.beta.threads.messages.list(thread_id=t.id, limit=3, order="asc"))
    assert [message_text_of(m) for m in asc] == [f"m{i}" for i in range(7)]
    desc = list(client.beta.threads.messages.list(thread_id=t.id, limit=2))
    assert [m.id for m in desc] == [m.id for m in asc][::-1]
    ids = [m.id for m in asc]
    page = client.beta.threads.messages.list(thread_id=t.id, limit=3, order="asc", after=ids[1])
    assert [m.id for m in page.data] == ids[2:5] and page.has_more is True
    page = client.beta.threads.messages.list(thread_id=t.id, limit=3, order="desc", before=ids[1])
    assert [m.id for m in page.data] == [ids[4], ids[3], ids[2]]


def message_text_of(m: Any) -> str:
    return "".join(c.text.value for c in m.content if c.type == "text")


# -- errors --

def test_authentication_errors(client_factory: Any) -> None:
    wrong = client_factory("sk-wrong-key")
    with pytest.raises(openai.AuthenticationError) as ei:
        wrong.beta.assistants.list()
    assert_envelope(ei.value, 401)
    with pytest.raises(openai.AuthenticationError) as ei:
        wrong.beta.threads.create()
    assert_envelope(ei.value, 401)

    missing = client_factory("unused")
    with pytest.raises(openai.AuthenticationError) as ei:
        missing.beta.assistants.list(extra_headers={"Authorization": openai.Omit()})
    assert_envelope(ei.value, 401)
    with pytest.raises(openai.AuthenticationError) as ei:
        missing.beta.threads.runs.list("thread_x", extra_headers={"Authorization": openai.Omit()})
    assert_envelope(ei.value, 401)


def test_not_found_errors(client: openai.OpenAI, assistant: Any) -> None:
    t = new_thread(client, "exists")
    cases = [
        ("asst_nope", lambda: client.beta.assistants.retrieve("asst_nope")),
        ("asst_nope", lambda: client.beta.assistants.update("asst_nope", name="x")),
        ("asst_nope", lambda: client.beta.assistants.delete("asst_nope")),
        ("thread_nope", lambda: client.beta.threads.retrieve("thread_nope")),
        ("thread_nope", lambda: client.beta.threads.update("thread_nope", metadata={})),
        ("thread_nope", lambda: client.beta.threads.delete("thread_nope")),
        ("thread_nope", lambda: client.beta.threads.messages.list(thread_id="thread_nope")),
        ("thread_nope", lambda: client.beta.threads.messages.create("thread_nope", role="user", content="x")),
        ("msg_nope", lambda: client.beta.threads.messages.retrieve("msg_nope", thread_id=t.id)),
        ("msg_nope", lambda: client.beta.threads.messages.update("msg_nope", thread_id=t.id, metadata={})),
        ("run_nope", lambda: client.beta.threads.runs.retrieve("run_nope", thread_id=t.id)),
        ("run_nope", lambda: client.beta.threads.runs.cancel("run_nope", thread_id=t.id)),
        ("run_nope", lambda: client.beta.threads.runs.submit_tool_outputs(
            "run_nope", thread_id=t.id, tool_outputs=[{"tool_call_id": "call_x", "output": "y"}])),
        ("run_nope", lambda: client.beta.threads.runs.steps.list("run_nope", thread_id=t.id)),
        ("asst_nope", lambda: client.beta.threads.runs.create(thread_id=t.id, assistant_id="asst_nope")),
        ("thread_nope", lambda: client.beta.threads.runs.create(thread_id="thread_nope", assistant_id=assistant.id)),
        ("asst_nope", lambda: client.beta.threads.create_and_run(assistant_id="asst_nope")),
    ]
    problems = []
    for missing_id, call in cases:
        try:
            call()
        except openai.NotFoundError as exc:
            try:
                assert_envelope(exc, 404)
                assert missing_id in err_message(exc), err_message(exc)
            except AssertionError as a:
                problems.append(f"{missing_id}: {a}")
        except openai.APIError as exc:
            problems.append(f"{missing_id}: {type(exc).__name__} {getattr(exc, 'status_code', '')} {exc}")
        else:
            problems.append(f"{missing_id}: no error")
    assert problems == []
    with pytest.raises(openai.NotFoundError) as ei:
        client.beta.assistants.retrieve("asst_x")
    assert err_message(ei.value) == "No assistant found with id 'asst_x'."
    assert (ei.value.type, ei.value.param, ei.value.code) == ("invalid_request_error", None, None)


def _post(client: openai.OpenAI, path: str, body: dict[str, Any]) -> Any:
    return client.post(path, body=body, cast_to=object, options={"headers": BETA})


def test_bad_requests(client: openai.OpenAI, assistant: Any) -> None:
    t = new_thread(client, "bad requests")
    cases: list[tuple[str, str | None, Any]] = [
        ("missing model", "model", lambda: _post(client, "/assistants", {"name": "no model"})),
        ("model not a string", "model", lambda: client.beta.assistants.create(model=123)),  # type: ignore[arg-type]
        ("temperature a string", "temperature",
         lambda: client.beta.assistants.create(model=MODEL, temperature="hot")),  # type: ignore[arg-type]
        ("metadata not an object", "metadata",
         lambda: client.beta.assistants.create(model=MODEL, metadata="x")),  # type: ignore[arg-type]
        ("unknown tool type", "tools", lambda: client.beta.assistants.create(model=MODEL, tools=[{"type": "bogus"}])),
        ("file_search tool", "tools",
         lambda: client.beta.assistants.create(model=MODEL, tools=[{"type": "file_search"}])),
        ("vector stores", "tool_resources",
         lambda: client.beta.assistants.create(
             model=MODEL, tool_resources={"file_search": {"vector_store_ids": ["vs_1"]}})),
        ("thread vector stores", "tool_resources",
         lambda: client.beta.threads.create(tool_resources={"file_search": {"vector_store_ids": ["vs_1"]}})),
        ("attachments", "attachments",
         lambda: client.beta.threads.messages.create(
             t.id, role="user", content="see file",
             attachments=[{"file_id": "file-1", "tools": [{"type": "file_search"}]}])),
        ("message role system", "role",
         lambda: client.beta.threads.messages.create(t.id, role="system", content="x")),  # type: ignore[arg-type]
        ("message without content", "content",
         lambda: _post(client, f"/threads/{t.id}/messages", {"role": "user"})),
        ("run without assistant_id", "assistant_id", lambda: _post(client, f"/threads/{t.id}/runs", {})),
        ("run with file_search tool", "tools",
         lambda: client.beta.threads.runs.create(thread_id=t.id, assistant_id=assistant.id,
                                                 tools=[{"type": "file_search"}])),
        ("limit out of range", "limit", lambda: client.beta.assistants.list(limit=1000)),
        ("order not asc/desc", "order", lambda: client.beta.assistants.list(order="sideways")),  # type: ignore[arg-type]
    ]
    problems = []
    for what, param, call in cases:
        try:
            call()
        except openai.BadRequestError as exc:
            try:
                assert_envelope(exc, 400)
                if param is not None:
                    assert exc.param is not None and param in exc.param, f"param {exc.param!r}, wanted {param!r}"
            except AssertionError as a:
                problems.append(f"{what}: {a}")
        except openai.APIStatusError as exc:
            problems.append(f"{what}: {type(exc).__name__} {exc.status_code} {exc.body!r}")
        except Exception as exc:
            problems.append(f"{what}: {type(exc).__name__}: {exc}")
        else:
            problems.append(f"{what}: accepted (no error)")
    assert problems == [], "\n".join(problems)


def raw_request(server: Any, method: str, path: str, data: bytes | None, key: str | None) -> tuple[int, Any]:
    """A request without the SDK: (status, parsed JSON body or the text)."""
    headers = {"Content-Type": "application/json", **BETA}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(server.base_url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def test_malformed_bodies_are_400_in_the_envelope(server: Any, client: openai.OpenAI) -> None:
    key = client.api_key
    for path, data in (("/assistants", b"{not json"), ("/assistants", b"[1, 2]"), ("/threads", b'"a string"')):
        status, body = raw_request(server, "POST", path, data, key)
        assert status == 400, (path, data, status, body)
        assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
        assert body["error"].get("type") == "invalid_request_error" and body["error"].get("message"), body
    # the SDK's cancel sends no body at all (content-length 0, content-type json): that must be accepted
    t = client.beta.threads.create()
    status, body = raw_request(server, "POST", f"/threads/{t.id}/runs/run_nope/cancel", b"", key)
    assert status == 404, (status, body)


def test_unsupported_features_say_so(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as ei:
        client.beta.assistants.create(model=MODEL, tools=[{"type": "file_search"}])
    msg = err_message(ei.value).lower()
    assert "file_search" in msg or "file search" in msg, msg


# -- cancel, the one-active-run rule --

def test_cancel_run_waiting_on_tool_outputs(client: openai.OpenAI, script: Any) -> None:
    a = client.beta.assistants.create(model=MODEL, tools=[WEATHER_TOOL])
    mk = script.add(script.marker("cancel-ra"), FakeReply(tool_calls=[FakeToolCall("get_weather", {"city": "X"})]))
    t = new_thread(client, f"cancel me {mk}")
    run = client.beta.threads.runs.create_and_poll(thread_id=t.id, assistant_id=a.id, poll_interval_ms=POLL)
    assert run.status == "requires_action", run
    c = client.beta.threads.runs.cancel(run.id, thread_id=t.id)
    assert c.id == run.id and c.status in ("cancelling", "cancelled")
    run = wait_status(client, t.id, run.id, {"cancelled"})
    assert run.cancelled_at is not None and run.required_action is None
    # no longer active: the thread takes messages and runs
    client.beta.threads.messages.create(t.id, role="user", content="next")
    r2 = client.beta.threads.runs.create_and_poll(thread_id=t.id, assistant_id=a.id, poll_interval_ms=POLL)
    assert r2.status == "completed", r2
    with pytest.raises(openai.BadRequestError) as ei:  # a finished run cannot be cancelled
        client.beta.threads.runs.cancel(r2.id, thread_id=t.id)
    assert_envelope(ei.value, 400)
    assert client.beta.threads.runs.retrieve(r2.id, thread_id=t.id).status == "completed"
    with pytest.raises(openai.BadRequestError) as ei:  # submitting to a cancelled run
        client.beta.threads.runs.submit_tool_outputs(
            run.id, thread_id=t.id, tool_outputs=[{"tool_call_id": "call_x", "output": "late"}])
    assert_envelope(ei.value, 400)


def test_cancel_run_in_progress(client: openai.OpenAI, assistant: Any, script: Any) -> None:
    mk = script.add(script.marker("cancel-ip"), FakeReply("too late", delay_s=2))
    t = new_thread(client, f"slow {mk}")
    run = client.beta.threads.runs.create(thread_id=t.id, assistant_id=assistant.id)
    deadline = time.monotonic() + 10
    while not script.requests(mk):  # the model call is under way
        assert time.monotonic() < deadline, "the model was never called"
        time.sleep(0.02)
    assert client.beta.threads.runs.retrieve(run.id, thread_id=t.id).status in ("queued", "in_progress")
    c = client.beta.threads.runs.cancel(run.id, thread_id=t.id)
    assert c.status in ("cancelling", "cancelled")
    run = wait_status(client, t.id, run.id, TERMINAL)
    assert run.status == "cancelled", run
    time.sleep(2.2)  # the slow reply arrives: it must not show up nor revive the run
    assert client.beta.threads.runs.retrieve(run.id, thread_id=t.id).status == "cancelled"
    assert [r for r, _ in texts(client, t.id)] == ["user"]


def test_one_active_run_per_thread(client: openai.OpenAI, script: Any) -> None:
    a = client.beta.assistants.create(model=MODEL, tools=[WEATHER_TOOL])
    mk = script.add(script.marker("active"), FakeReply(tool_calls=[FakeToolCall("get_weather", {"city": "Y"})]))
    t = new_thread(client, f"busy {mk}")
    run = client.beta.threads.runs.create_and_poll(thread_id=t.id, assistant_id=a.id, poll_interval_ms=POLL)
    assert run.status == "requires_action", run
    try:
        with pytest.raises(openai.BadRequestError) as ei:
            client.beta.threads.runs.create(thread_id=t.id, assistant_id=a.id)
        assert_envelope(ei.value, 400)
        msg = err_message(ei.value)
        assert "already has an active run" in msg and run.id in msg and t.id in msg, msg

        with pytest.raises(openai.BadRequestError) as ei:
            client.beta.threads.messages.create(t.id, role="user", content="not now")
        assert_envelope(ei.value, 400)
        msg = err_message(ei.value)
        assert "is active" in msg and run.id in msg, msg

        with pytest.raises(openai.BadRequestError) as ei:  # additional_messages go the same way
            client.beta.threads.runs.create(thread_id=t.id, assistant_id=a.id,
                                            additional_messages=[{"role": "user", "content": "x"}])
        assert_envelope(ei.value, 400)
        # other threads are not affected
        other = client.beta.threads.runs.create_and_poll(
            thread_id=new_thread(client, "other").id, assistant_id=a.id, poll_interval_ms=POLL)
        assert other.status == "completed"
    finally:
        client.beta.threads.runs.cancel(run.id, thread_id=t.id)
    wait_status(client, t.id, run.id, {"cancelled"})


# -- tenants --

def test_tenant_isolation(client: openai.OpenAI, client_b: openai.OpenAI, assistant: Any) -> None:
    t = new_thread(client, "tenant A's secret")
    run = client.beta.threads.runs.create_and_poll(thread_id=t.id, assistant_id=assistant.id, poll_interval_ms=POLL)
    msg = client.beta.threads.messages.list(thread_id=t.id).data[0]
    step = client.beta.threads.runs.steps.list(run.id, thread_id=t.id).data[0]
    a_b = client_b.beta.assistants.create(model=MODEL, name="tenant B's")
    t_b = new_thread(client_b, "tenant B's thread")

    attempts = {
        "assistants.retrieve": lambda: client_b.beta.assistants.retrieve(assistant.id),
        "assistants.update": lambda: client_b.beta.assistants.update(assistant.id, name="stolen"),
        "assistants.delete": lambda: client_b.beta.assistants.delete(assistant.id),
        "threads.retrieve": lambda: client_b.beta.threads.retrieve(t.id),
        "threads.update": lambda: client_b.beta.threads.update(t.id, metadata={"x": "y"}),
        "threads.delete": lambda: client_b.beta.threads.delete(t.id),
        "messages.list": lambda: client_b.beta.threads.messages.list(thread_id=t.id),
        "messages.create": lambda: client_b.beta.threads.messages.create(t.id, role="user", content="hi"),
        "messages.retrieve": lambda: client_b.beta.threads.messages.retrieve(msg.id, thread_id=t.id),
        "runs.list": lambda: client_b.beta.threads.runs.list(thread_id=t.id),
        "runs.retrieve": lambda: client_b.beta.threads.runs.retrieve(run.id, thread_id=t.id),
        "steps.list": lambda: client_b.beta.threads.runs.steps.list(run.id, thread_id=t.id),
        "steps.retrieve": lambda: client_b.beta.threads.runs.steps.retrieve(step.id, thread_id=t.id, run_id=run.id),
        "runs.create on A's thread": lambda: client_b.beta.threads.runs.create(thread_id=t.id, assistant_id=a_b.id),
        "runs.create with A's assistant": lambda: client_b.beta.threads.runs.create(thread_id=t_b.id,
                                                                                    assistant_id=assistant.id),
        "create_and_run with A's assistant": lambda: client_b.beta.threads.create_and_run(assistant_id=assistant.id),
    }
    leaks = []
    for what, call in attempts.items():
        try:
            call()
            leaks.append(f"{what}: succeeded")
        except openai.NotFoundError:
            pass
        except openai.APIError as exc:
            leaks.append(f"{what}: {type(exc).__name__} {getattr(exc, 'status_code', '')} (wanted 404)")
    assert leaks == []
    assert assistant.id not in [x.id for x in client_b.beta.assistants.list(limit=100)]
    assert a_b.id not in [x.id for x in client.beta.assistants.list(limit=100)]
    assert client.beta.assistants.retrieve(assistant.id).name == "sdk-suite"  # untouched


# -- run settings --

def test_max_completion_tokens_incomplete(client: openai.OpenAI, assistant: Any, script: Any) -> None:
    mk = script.add(script.marker("maxtok"), FakeReply("This answer is cut", completion_tokens=5,
                                                       finish_reason="length"))
    t = new_thread(client, f"long answer please {mk}")
    run = client.beta.threads.runs.create_and_poll(thread_id=t.id, assistant_id=assistant.id,
                                                   max_completion_tokens=5, poll_interval_ms=POLL)
    assert run.status == "incomplete", run
    assert run.incomplete_details is not None and run.incomplete_details.reason == "max_completion_tokens"
    assert run.max_completion_tokens == 5
    (body,) = script.requests(mk)
    assert body.get("max_completion_tokens", body.get("max_tokens")) == 5, body
    msg = client.beta.threads.messages.list(thread_id=t.id, limit=1).data[0]
    assert msg.role == "assistant" and msg.status == "incomplete", msg
    assert msg.incomplete_details is not None and msg.incomplete_details.reason == "max_tokens"


def test_truncation_last_messages(client: openai.OpenAI, assistant: Any, script: Any) -> None:
    mk = script.add(script.marker("trunc"), "saw the last two")
    t = new_thread(client, *[f"message {i} {mk}" for i in range(1, 6)])
    run = client.beta.threads.runs.create_and_poll(
        thread_id=t.id, assistant_id=assistant.id, poll_interval_ms=POLL,
        truncation_strategy={"type": "last_messages", "last_messages": 2})
    assert run.status == "completed", run
    assert run.truncation_strategy is not None
    assert (run.truncation_strategy.type, run.truncation_strategy.last_messages) == ("last_messages", 2)
    (body,) = script.requests(mk)
    convo = [message_text(m.get("content")) for m in body["messages"] if m.get("role") not in ("system", "developer")]
    assert convo == [f"message 4 {mk}", f"message 5 {mk}"], convo
    assert assistant.instructions in system_text(body)  # instructions are never truncated away


def test_instructions_override_additional_instructions_and_messages(client: openai.OpenAI, assistant: Any,
                                                                    script: Any) -> None:
    mk1 = script.add(script.marker("override"), "overridden")
    t1 = new_thread(client, f"hi {mk1}")
    r1 = client.beta.threads.runs.create_and_poll(thread_id=t1.id, assistant_id=assistant.id, poll_interval_ms=POLL,
                                                  instructions="Speak like a pirate.")
    assert r1.status == "completed" and r1.instructions == "Speak like a pirate."
    sys1 = system_text(script.requests(mk1)[0])
    assert "Speak like a pirate." in sys1 and assistant.instructions not in sys1, sys1

    mk2 = script.add(script.marker("additional"), "added")
    t2 = new_thread(client, f"hi {mk2}")
    r2 = client.beta.threads.runs.create_and_poll(
        thread_id=t2.id, assistant_id=assistant.id, poll_interval_ms=POLL,
        additional_instructions="Also be kind.",
        additional_messages=[{"role": "user", "content": f"an additional message {mk2}"},
                             {"role": "user", "content": [{"type": "text", "text": "and a part"}]}])
    assert r2.status == "completed"
    assert assistant.instructions in r2.instructions and "Also be kind." in r2.instructions
    body = script.requests(mk2)[0]
    sys2 = system_text(body)
    assert assistant.instructions in sys2 and "Also be kind." in sys2, sys2
    assert sys2.index(assistant.instructions) < sys2.index("Also be kind.")
    users = [message_text(m.get("content")) for m in chat_messages(body, "user")]
    assert users == [f"hi {mk2}", f"an additional message {mk2}", "and a part"], users
    # additional messages become part of the thread
    assert texts(client, t2.id) == [("user", f"hi {mk2}"), ("user", f"an additional message {mk2}"),
                                    ("user", "and a part"), ("assistant", "added")]


def test_run_model_and_tools_override(client: openai.OpenAI, assistant: Any, script: Any) -> None:
    mk = script.add(script.marker("model-override"), "from the other model")
    t = new_thread(client, f"which model {mk}")
    run = client.beta.threads.runs.create_and_poll(thread_id=t.id, assistant_id=assistant.id, model="gpt-other",
                                                   temperature=0.2, poll_interval_ms=POLL)
    assert run.status == "completed" and run.model == "gpt-other" and run.temperature == 0.2
    (body,) = script.requests(mk)
    assert body["model"] == "gpt-other" and body.get("temperature") == 0.2


# -- async client --

def test_async_client_runs_concurrently(async_client_factory: Any) -> None:
    async def main() -> None:
        client = async_client_factory()
        try:
            a = await client.beta.assistants.create(model=MODEL, name="async")
            threads = await asyncio.gather(*[
                client.beta.threads.create(messages=[{"role": "user", "content": f"async question {i}"}])
                for i in range(6)])
            runs = await asyncio.gather(*[
                client.beta.threads.runs.create_and_poll(thread_id=t.id, assistant_id=a.id, poll_interval_ms=POLL)
                for t in threads])
            assert [r.status for r in runs] == ["completed"] * 6
            for i, t in enumerate(threads):
                page = await client.beta.threads.messages.list(thread_id=t.id)
                assert page.data[0].content[0].text.value == f"echo: async question {i}"

            handler = AsyncCollector()
            t = await client.beta.threads.create(messages=[{"role": "user", "content": "async stream"}])
            async with client.beta.threads.runs.stream(thread_id=t.id, assistant_id=a.id,
                                                       event_handler=handler) as s:
                await s.until_done()
            assert handler.ended and "".join(handler.text_deltas) == "echo: async stream"
            assert handler.texts_done == ["echo: async stream"]
            assert (await handler.get_final_run()).status == "completed"

            seen = [x.id async for x in client.beta.assistants.list(limit=2)]
            assert a.id in seen and len(seen) == len(set(seen))
            with pytest.raises(openai.NotFoundError):
                await client.beta.threads.retrieve("thread_missing")
        finally:
            await client.close()

    asyncio.run(main())


def test_sdk_version_is_the_one_asked_for() -> None:
    expected = os.environ.get("TETHER_SDK_EXPECT_OPENAI")
    if expected:
        assert openai.__version__ == expected


def test_server_still_healthy(server: Any) -> None:
    assert server.running, server.output_tail()
    assert "Traceback" not in server.stderr_text(), server.output_tail(8000)
