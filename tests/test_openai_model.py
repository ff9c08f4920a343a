"""OpenAIModel against a real (fake) OpenAI-compatible server; retries; pricing; model references."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from fake_openai import FakeOpenAI, FakeReply, FakeToolCall, RawReply, sse
from tether.adapters.models.openai_compat import OpenAIModel
from tether.adapters.models.pricing import price_usd
from tether.adapters.models.refs import resolve_model
from tether.adapters.models.replay import ReplayModel
from tether.adapters.models.retry import backoff_s, with_retries
from tether.adapters.models.scripted import ScriptedModel
from tether.adapters.store.memory import MemoryStore
from tether.domain.errors import ConfigError, ModelError
from tether.domain.messages import ImagePart, Message, RefusalPart, TextPart, ToolCall
from tether.domain.models import ModelRequest, ModelResponse, ToolSchema
from tether.domain.usage import Usage
from tether.services.agents import Agent
from tether.services.runs import RunsService

SECRET = "sk-secret-test-key"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ADMIN_KEY", "OPENAI_ORG_ID",
                 "OPENAI_PROJECT_ID", "OPENAI_CUSTOM_HEADERS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake() -> Any:
    with FakeOpenAI() as server:
        yield server


class Sleeps:
    """An injectable sleep that records the delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def make_model(fake: FakeOpenAI, *, api_key: str = "test-key", sleep: Sleeps | None = None,
               max_retries: int = 3, model: str = "gpt-4o-mini") -> OpenAIModel:
    return OpenAIModel(model, base_url=fake.base_url, api_key=api_key, ref=model, max_retries=max_retries,
                       priced=False, sleep=sleep or Sleeps())


async def run(model: Any, request: ModelRequest, on_delta: Any = None) -> ModelResponse:
    """One call, then close the model's connections (they belong to this test's event loop)."""
    try:
        return await model.complete(request, on_delta)  # type: ignore[no-any-return]
    finally:
        await model.aclose()


def ask(text: str = "hi", **kw: Any) -> ModelRequest:
    return ModelRequest([Message.user(text)], **kw)


# ---- request conversion --------------------------------------------------------------------


@pytest.mark.anyio
async def test_messages_tools_settings_and_schema_reach_the_server(fake: FakeOpenAI) -> None:
    fake.queue("ok")
    messages = [
        Message.system("be brief"),
        Message("developer", [TextPart("dev note")]),
        Message("user", [TextPart("what is this?"), ImagePart("https://x.test/a.png", detail="low")]),
        Message.assistant("let me look", [ToolCall("call_abc", "lookup", '{"q": "a"}', provider_id="srv_1")]),
        Message.tool("call_abc", "lookup", "a picture of a cat"),
        Message("assistant", [RefusalPart("I can't say")]),
        Message.assistant(None, [ToolCall("call_def", "noop", "{}")]),
        Message.tool("call_def", "noop", "done"),
        Message.user("thanks"),
    ]
    parameters = {"type": "object", "properties": {"q": {"type": "string"}}}
    tools = [ToolSchema("lookup", "Look things up.", parameters)]
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    request = ModelRequest(messages, tools, {"temperature": 0.2, "max_tokens": 50, "tool_choice": "auto",
                                             "seed": 7, "stop": ["END"], "not_for_the_server": 1},
                           output_schema=schema)
    await run(make_model(fake), request)

    body = fake.requests[0]
    assert body["model"] == "gpt-4o-mini"
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "developer", "content": "dev note"},
        {"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "https://x.test/a.png", "detail": "low"}}]},
        {"role": "assistant", "content": "let me look", "tool_calls": [
            {"id": "call_abc", "type": "function",
             "function": {"name": "lookup", "arguments": '{"q": "a"}'}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "a picture of a cat"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't say"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_def", "type": "function", "function": {"name": "noop", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_def", "content": "done"},
        {"role": "user", "content": "thanks"},
    ]
    assert body["tools"] == [{"type": "function", "function": {
        "name": "lookup", "description": "Look things up.", "parameters": parameters}}]
    assert body["temperature"] == 0.2 and body["max_tokens"] == 50 and body["seed"] == 7
    assert body["tool_choice"] == "auto" and body["stop"] == ["END"]
    assert "not_for_the_server" not in body
    assert body["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "output", "schema": schema}}
    assert "stream" not in body
    assert fake.request_headers[0]["authorization"] == "Bearer test-key"


@pytest.mark.anyio
async def test_no_tools_means_no_tools_key_and_no_tool_settings(fake: FakeOpenAI) -> None:
    fake.queue("ok")
    await run(make_model(fake), ask(settings={"tool_choice": "auto", "parallel_tool_calls": False}))
    body = fake.requests[0]
    assert "tools" not in body and "tool_choice" not in body and "parallel_tool_calls" not in body
    assert "response_format" not in body


# ---- responses ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_text_reply(fake: FakeOpenAI) -> None:
    fake.queue(FakeReply("Hello there", prompt_tokens=12, completion_tokens=3,
                         model="gpt-4o-mini-2024-07-18"))
    response = await run(make_model(fake), ask())
    assert response.text == "Hello there"
    assert response.tool_calls == []
    assert response.finish_reason == "stop"
    assert response.usage == Usage(12, 3, 0)
    assert response.model_name == "gpt-4o-mini-2024-07-18"
    assert response.refusal is None


@pytest.mark.anyio
async def test_tool_calls_keep_provider_ids(fake: FakeOpenAI) -> None:
    fake.queue(FakeReply(tool_calls=[FakeToolCall("add", {"a": 1, "b": 2}, id="call_srv_1"),
                                     FakeToolCall("echo", '{"broken json', id="call_srv_2"),
                                     FakeToolCall("noid", {}, id="")]))
    response = await run(make_model(fake), ask(tools=[ToolSchema("add", "", {"type": "object"})]))
    assert response.finish_reason == "tool_calls"
    assert response.text is None
    first, second, third = response.tool_calls
    assert (first.id, first.provider_id, first.name) == ("call_srv_1", "call_srv_1", "add")
    assert json.loads(first.arguments) == {"a": 1, "b": 2}
    assert (second.id, second.provider_id, second.arguments) == ("call_srv_2", "call_srv_2", '{"broken json')
    assert third.id.startswith("call_") and third.provider_id is None  # minted when the server gives none


@pytest.mark.anyio
async def test_stop_with_tool_calls_is_reported_as_tool_calls(fake: FakeOpenAI) -> None:
    fake.queue(FakeReply(tool_calls=[FakeToolCall("add", {"a": 1})], finish_reason="stop"))
    response = await run(make_model(fake), ask())
    assert response.finish_reason == "tool_calls"


@pytest.mark.anyio
async def test_usage_mapping_with_cached_tokens_and_refusal(fake: FakeOpenAI) -> None:
    fake.queue(FakeReply(refusal="I won't", prompt_tokens=2000, completion_tokens=40, cached_tokens=1536,
                         finish_reason="content_filter"))
    response = await run(make_model(fake), ask())
    assert response.usage == Usage(input_tokens=2000, output_tokens=40, cached_tokens=1536)
    assert response.refusal == "I won't"
    assert response.finish_reason == "content_filter"


@pytest.mark.anyio
async def test_length_finish_reason(fake: FakeOpenAI) -> None:
    fake.queue(FakeReply("truncat", finish_reason="length"))
    assert (await run(make_model(fake), ask())).finish_reason == "length"


# ---- streaming ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_streaming_text_deltas_and_usage(fake: FakeOpenAI) -> None:
    fake.queue(FakeReply("The quick brown fox", prompt_tokens=21, completion_tokens=4, cached_tokens=5,
                         fragment_size=4))
    deltas: list[str] = []
    response = await run(make_model(fake), ask(), deltas.append)
    assert deltas == ["The ", "quic", "k br", "own ", "fox"]
    assert response.text == "The quick brown fox"
    assert response.finish_reason == "stop"
    assert response.usage == Usage(21, 4, 5)
    assert response.model_name == "gpt-4o-mini"
    body = fake.requests[0]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


@pytest.mark.anyio
async def test_streaming_assembles_tool_calls_by_index(fake: FakeOpenAI) -> None:
    fake.queue(FakeReply("Checking.", tool_calls=[
        FakeToolCall("get_weather", {"city": "Paris", "unit": "celsius"}, id="call_w1"),
        FakeToolCall("get_time", {"tz": "Europe/Paris"}, id="call_t2"),
    ], fragment_size=5))
    deltas: list[str] = []
    response = await run(make_model(fake), ask(), deltas.append)
    assert "".join(deltas) == "Checking."
    assert response.finish_reason == "tool_calls"
    assert [(c.id, c.provider_id, c.name) for c in response.tool_calls] == [
        ("call_w1", "call_w1", "get_weather"), ("call_t2", "call_t2", "get_time")]
    assert json.loads(response.tool_calls[0].arguments) == {"city": "Paris", "unit": "celsius"}
    assert json.loads(response.tool_calls[1].arguments) == {"tz": "Europe/Paris"}


@pytest.mark.anyio
async def test_stream_without_usage_gives_zeros(fake: FakeOpenAI) -> None:
    fake.queue(FakeReply("hi", stream_usage=False))
    response = await run(make_model(fake), ask(), lambda _: None)
    assert response.text == "hi"
    assert response.usage == Usage(0, 0, 0)


# ---- retries and errors -------------------------------------------------------------------


@pytest.mark.anyio
async def test_retry_on_429_honours_retry_after(fake: FakeOpenAI) -> None:
    fake.fail_next(429, 2, {"retry-after": "7"})
    fake.queue("finally")
    sleeps = Sleeps()
    response = await run(make_model(fake, sleep=sleeps), ask())
    assert response.text == "finally"
    assert sleeps.delays == [7.0, 7.0]
    assert len(fake.requests) == 3


@pytest.mark.anyio
async def test_retry_after_ms_and_cap(fake: FakeOpenAI) -> None:
    fake.fail_next(429, 1, {"retry-after-ms": "250"})
    fake.fail_next(429, 1, {"retry-after": "3600"})
    fake.queue("ok")
    sleeps = Sleeps()
    await run(make_model(fake, sleep=sleeps), ask())
    assert sleeps.delays == [0.25, 30]


@pytest.mark.anyio
async def test_retry_on_500_then_success(fake: FakeOpenAI) -> None:
    fake.fail_next(500, 1)
    fake.queue("recovered")
    sleeps = Sleeps()
    response = await run(make_model(fake, sleep=sleeps), ask(), lambda _: None)  # streaming too
    assert response.text == "recovered"
    assert len(sleeps.delays) == 1 and 0.375 <= sleeps.delays[0] <= 0.5  # backoff with jitter
    assert len(fake.requests) == 2


@pytest.mark.anyio
async def test_gives_up_after_max_retries(fake: FakeOpenAI) -> None:
    fake.fail_next(503, 10)
    sleeps = Sleeps()
    with pytest.raises(ModelError) as info:
        await run(make_model(fake, sleep=sleeps, max_retries=2), ask())
    assert len(fake.requests) == 3 and len(sleeps.delays) == 2
    assert "503 Service Unavailable" in str(info.value) and "after 3 attempts" in str(info.value)


@pytest.mark.anyio
async def test_401_is_not_retried_and_never_shows_the_key(fake: FakeOpenAI,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    netloc = fake.base_url.split("://")[1].split("/")[0]
    fake.fail_next(401, 1, message=f"Incorrect API key provided: {SECRET}. Find your key at ... (host {netloc})")
    sleeps = Sleeps()
    model = make_model(fake, api_key=SECRET, sleep=sleeps)
    with pytest.raises(ModelError) as info:
        await run(model, ask())
    message = str(info.value)
    assert SECRET not in message and SECRET not in repr(info.value) and SECRET not in repr(model)
    assert netloc not in message.partition("server said")[2]  # what the server echoed hides its address
    assert message.startswith(f"model 'gpt-4o-mini' at {fake.base_url} failed: 401 Unauthorized")
    assert "OPENAI_API_KEY" in message
    assert sleeps.delays == [] and len(fake.requests) == 1
    assert info.value.__cause__ is None


@pytest.mark.anyio
@pytest.mark.parametrize("status", [400, 403, 404, 422])
async def test_client_errors_are_not_retried(fake: FakeOpenAI, status: int) -> None:
    fake.fail_next(status, 1, message="model 'nope' not found")
    sleeps = Sleeps()
    with pytest.raises(ModelError) as info:
        await run(make_model(fake, sleep=sleeps), ask())
    assert sleeps.delays == [] and len(fake.requests) == 1
    assert f"failed: {status} " in str(info.value) and "model 'nope' not found" in str(info.value)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.anyio
async def test_connection_refused_is_a_clear_model_error() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    sleeps = Sleeps()
    model = OpenAIModel("llama3", base_url=url, api_key=SECRET, ref="llama3", max_retries=2, priced=False,
                        sleep=sleeps)
    with pytest.raises(ModelError) as info:
        await run(model, ask())
    message = str(info.value)
    assert message.startswith(f"model 'llama3' at {url} failed: connection refused: is the server at {url} "
                              "running?")
    assert SECRET not in message
    assert len(sleeps.delays) == 2  # connection errors are retried


@pytest.mark.anyio
async def test_timeout_is_a_clear_model_error(fake: FakeOpenAI) -> None:
    fake.queue(FakeReply("late", delay_s=1.0))
    model = OpenAIModel("slow", base_url=fake.base_url, api_key="k", ref="slow", max_retries=0,
                        timeout_s=0.2, priced=False)
    with pytest.raises(ModelError, match=r"no answer within 0.2s"):
        await run(model, ask())


@pytest.mark.anyio
async def test_missing_key_for_openai_is_a_model_error() -> None:
    model = OpenAIModel("gpt-4o", base_url=None, api_key=None, ref="openai:gpt-4o", priced=True)
    with pytest.raises(ModelError, match="set OPENAI_API_KEY"):
        await run(model, ask())


@pytest.mark.anyio
async def test_on_delta_errors_propagate_unchanged(fake: FakeOpenAI) -> None:
    fake.queue("hello world")

    def boom(_: str) -> None:
        raise KeyError("from the callback")

    with pytest.raises(KeyError):
        await run(make_model(fake), ask(), boom)


class _Status(Exception):
    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"status {status}")
        self.status_code = status
        self.response = type("R", (), {"headers": headers or {}})()


@pytest.mark.anyio
@pytest.mark.parametrize(("status", "retried"), [(400, False), (401, False), (403, False), (404, False),
                                                 (422, False), (408, True), (409, True), (429, True),
                                                 (500, True), (502, True), (503, True)])
async def test_with_retries_statuses(status: int, retried: bool) -> None:
    calls = 0

    async def fn() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise _Status(status)
        return "ok"

    sleeps = Sleeps()
    if retried:
        assert await with_retries(fn, max_retries=3, sleep=sleeps) == "ok"
        assert calls == 2 and len(sleeps.delays) == 1
    else:
        with pytest.raises(_Status):
            await with_retries(fn, max_retries=3, sleep=sleeps)
        assert calls == 1 and sleeps.delays == []


@pytest.mark.anyio
async def test_with_retries_backoff_grows_and_is_capped() -> None:
    async def fn() -> None:
        raise ConnectionResetError("reset")

    sleeps = Sleeps()
    with pytest.raises(ConnectionResetError):
        await with_retries(fn, max_retries=6, base_delay=1, max_delay=8, sleep=sleeps)
    assert len(sleeps.delays) == 6
    for attempt, delay in enumerate(sleeps.delays):
        full = min(8, 2**attempt)
        assert 0.75 * full <= delay <= full
    assert all(0.75 * 8 <= backoff_s(20, base_delay=1, max_delay=8) <= 8 for _ in range(20))


@pytest.mark.anyio
async def test_with_retries_does_not_retry_other_errors() -> None:
    async def fn() -> None:
        raise ValueError("a bug")

    sleeps = Sleeps()
    with pytest.raises(ValueError):
        await with_retries(fn, max_retries=3, sleep=sleeps)
    assert sleeps.delays == []


# ---- answers that are not completions ----------------------------------------------------
#
# Each must end as a ModelError saying what came back, never as an empty "success". Transient-
# looking ones (a proxy's page, a cut stream, no choices, an empty answer) are retried as a 5xx is.

STREAM = "text/event-stream"
PAGE = ("<html><head><title>502 Bad Gateway</title></head>\n<body>  <h1>Bad Gateway</h1>\n"
        f"<p>Authorization: Bearer {SECRET} upstream {{url}} failed</p></body></html>")


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}]}


def completion(message: Any, finish: str | None = "stop") -> RawReply:
    return RawReply(json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
                                "choices": [{"index": 0, "message": message, "finish_reason": finish}]}))


def calling(function: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                                  "function": function}]}


ROLE = chunk({"role": "assistant", "content": ""})
# (path, reply, streamed, retried, what the error says)
BROKEN = [
    ("html-200", RawReply(PAGE, content_type="text/html"), False, True, "the server's answer is not JSON: '<html>"),
    ("html-200-as-json", RawReply(PAGE), False, True, "the server's answer is not JSON: '<html>"),
    ("empty-body", RawReply(""), False, True, "the server's answer is not JSON (an empty body)"),
    ("not-json", RawReply("upstream connect error"), False, True, "not JSON: 'upstream connect error'"),
    ("json-not-object", RawReply('"hello"'), False, True, "is not a chat completion: '\"hello\"'"),
    ("no-choices", RawReply('{"choices": []}'), False, True, "has no choices: '{\"choices\": []}'"),
    ("error-200", RawReply('{"error": {"message": "overloaded"}}'), False, True,
     "the server answered with an error: '{\"error\": {\"message\": \"overloaded\"}}'"),
    ("choice-not-object", RawReply('{"choices": ["hi"]}'), False, False, "the server's choices are not objects"),
    ("message-not-object", RawReply('{"choices": [{"message": "hi"}]}'), False, False,
     "the server's message is not an object: '{\"message\": \"hi\"}'"),
    ("message-null", completion(None), False, True, "the server's answer has no message"),
    ("content-not-string", completion({"role": "assistant", "content": 5}), False, False,
     "the answer's content is not a string"),
    ("empty-answer", completion({"role": "assistant", "content": ""}), False, True,
     "the model returned an empty answer (finish_reason 'stop', no content and no tool calls)"),
    ("blank-answer", completion({"role": "assistant", "content": "   \n "}), False, True,
     "the model returned an empty answer (finish_reason 'stop'"),
    ("empty-answer-unknown-finish", completion({"role": "assistant", "content": None}, "eos"), False, True,
     "the model returned an empty answer (finish_reason 'eos'"),
    ("finish-error", completion({"role": "assistant", "content": "half an"}, "error"), False, True,
     "the server says the answer failed (finish_reason 'error')"),
    ("tool-without-name", completion(calling({"arguments": "{}"}), "tool_calls"), False, True,
     "the model asked for a tool without naming it"),
    ("tool-arguments-not-text", completion(calling({"name": "add", "arguments": 5}), "tool_calls"), False, False,
     "the arguments of tool call 'add' are not a string"),
    ("stream-html-200", RawReply(PAGE, content_type="text/html"), True, True,
     "the server answered text/html instead of an event stream: '<html>"),
    ("stream-empty", RawReply("", content_type=STREAM), True, True,
     "the stream ended before the answer did (no finish_reason, no [DONE])"),
    ("stream-cut", RawReply(sse(ROLE, chunk({"tool_calls": [{"index": 0, "function": {"name": "add"}}]}),
                                done=False), content_type=STREAM), True, True,
     "the stream ended before the answer did"),
    ("stream-cut-mid-json", RawReply(sse(ROLE, done=False) + 'data: {"id": "chatcmpl-1", "choi\n\n',
                                     content_type=STREAM), True, True,
     "the stream sent an event that is not JSON: '{\"id\": \"chatcmpl-1\", \"choi'"),
    ("stream-error-event", RawReply(sse(ROLE, {"error": {"message": "overloaded"}}), content_type=STREAM), True, True,
     "the server sent an error in the stream: '{\"error\": {\"message\": \"overloaded\"}}'"),
    ("stream-empty-answer", RawReply(sse(ROLE, chunk({}, "stop")), content_type=STREAM), True, True,
     "the model returned an empty answer (finish_reason 'stop'"),
    ("stream-no-choices", RawReply(sse({"id": "x", "choices": []}), content_type=STREAM), True, True,
     "the model returned an empty answer"),
    ("stream-unknown-finish", RawReply(sse(ROLE, chunk({}, "eos")), content_type=STREAM), True, True,
     "the model returned an empty answer (finish_reason 'eos'"),
    ("stream-delta-not-object", RawReply(sse({"choices": [{"index": 0, "delta": "hi"}]}), content_type=STREAM),
     True, False, "the stream sent a choice that is not an object with a delta"),
    ("stream-tool-without-name", RawReply(sse(chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {
        "arguments": "{}"}}]}), chunk({}, "tool_calls")), content_type=STREAM), True, True,
     "the model asked for a tool without naming it"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("reply", "streamed", "retried", "says"), [case[1:] for case in BROKEN],
                         ids=[case[0] for case in BROKEN])
async def test_an_answer_that_is_not_a_completion_is_a_model_error(
        fake: FakeOpenAI, reply: RawReply, streamed: bool, retried: bool, says: str) -> None:
    reply.body = reply.body.replace("{url}", fake.base_url)
    fake.queue(*[reply] * 3)
    sleeps = Sleeps()
    with pytest.raises(ModelError) as info:
        await run(make_model(fake, api_key=SECRET, sleep=sleeps, max_retries=2), ask(),
                  (lambda _: None) if streamed else None)
    message = str(info.value)
    assert says in message
    assert len(fake.requests) == (3 if retried else 1) and len(sleeps.delays) == (2 if retried else 0)
    assert ("after 3 attempts" in message) == retried
    excerpt = message.split(" failed: ", 1)[1]
    assert SECRET not in message and f"127.0.0.1:{fake.port}" not in excerpt


@pytest.mark.anyio
async def test_a_proxy_page_is_retried_and_the_next_answer_used(fake: FakeOpenAI) -> None:
    fake.queue(RawReply(PAGE, content_type="text/html"), RawReply("", content_type=STREAM), "at last")
    sleeps = Sleeps()
    assert (await run(make_model(fake, sleep=sleeps), ask(), lambda _: None)).text == "at last"
    assert len(fake.requests) == 3 and len(sleeps.delays) == 2


@pytest.mark.anyio
async def test_a_stream_cut_after_text_was_shown_is_not_retried(fake: FakeOpenAI) -> None:
    fake.queue(RawReply(sse(ROLE, chunk({"content": "The answer is"}), done=False), content_type=STREAM))
    deltas: list[str] = []
    with pytest.raises(ModelError) as info:
        await run(make_model(fake), ask(), deltas.append)
    assert deltas == ["The answer is"] and len(fake.requests) == 1
    assert ("the stream ended before the answer did (no finish_reason, no [DONE]); the text so far: "
            "'The answer is' (the stream broke after partial output; not retried)") in str(info.value)


@pytest.mark.anyio
async def test_long_bodies_are_cut_and_whitespace_collapsed(fake: FakeOpenAI) -> None:
    fake.queue(RawReply("<p>\n\n  " + "x" * 1000 + "</p>", content_type="text/html"))
    with pytest.raises(ModelError) as info:
        await run(make_model(fake, max_retries=0), ask())
    assert str(info.value).endswith(": '<p> " + "x" * 196 + "…'")  # 200 characters


@pytest.mark.anyio
@pytest.mark.parametrize("streamed", [False, True])
async def test_what_is_still_a_valid_answer(fake: FakeOpenAI, streamed: bool) -> None:
    on_delta = (lambda _: None) if streamed else None
    # content "" with tool calls; arguments sent as an object (some servers do) become JSON text
    arguments: Any = {"a": 1}
    fake.queue(FakeReply("", tool_calls=[FakeToolCall("add", {"a": 1}, id="c1")]))
    fake.queue(RawReply(sse(chunk({"tool_calls": [{"index": 0, "id": "c2", "function": {
        "name": "add", "arguments": arguments}}]}), chunk({}, "tool_calls")), content_type=STREAM)
               if streamed else completion(calling({"name": "add", "arguments": arguments}), "tool_calls"))
    # an unknown finish reason with text is kept as it came
    fake.queue(RawReply(sse(ROLE, chunk({"content": "hi"}), chunk({}, "eos")), content_type=STREAM)
               if streamed else completion({"role": "assistant", "content": "hi"}, "eos"))
    model = make_model(fake)
    try:
        first = await model.complete(ask(), on_delta)
        second = await model.complete(ask(), on_delta)
        third = await model.complete(ask(), on_delta)
    finally:
        await model.aclose()
    assert (first.text, first.finish_reason, first.tool_calls[0].name) == (None, "tool_calls", "add")
    assert (second.tool_calls[0].name, second.tool_calls[0].arguments) == ("add", '{"a": 1}')
    assert (third.text, third.finish_reason) == ("hi", "eos")


@pytest.mark.anyio
async def test_a_server_that_ignores_stream_answers_in_one_piece(fake: FakeOpenAI) -> None:
    fake.queue(completion({"role": "assistant", "content": "whole"}))
    deltas: list[str] = []
    response = await run(make_model(fake), ask(), deltas.append)
    assert response.text == "whole" and deltas == ["whole"]


@pytest.mark.anyio
@pytest.mark.parametrize("streamed", [False, True])
async def test_a_run_given_a_proxy_page_fails_saying_what_came_back(
        fake: FakeOpenAI, streamed: bool) -> None:
    fake.queue(*[RawReply(PAGE.replace("{url}", fake.base_url), content_type="text/html")] * 3)
    agent = Agent("t", make_model(fake, api_key=SECRET, max_retries=2))
    try:
        run_ = await RunsService(MemoryStore()).start(
            agent, "hi", on_event=(lambda _: None) if streamed else None)
    finally:
        await agent.model.aclose()  # type: ignore[attr-defined]
    assert run_.status == "failed" and run_.output is None
    assert len(fake.requests) == 3  # retried as a 5xx would be
    assert bool(fake.requests[0].get("stream")) == streamed
    error = run_.error or ""
    assert "after 3 attempts" in error
    assert "'<html><head><title>502 Bad Gateway</title></head> <body> <h1>Bad Gateway</h1>" in error
    assert "Authorization: Bearer ***" in error and SECRET not in error
    assert f"127.0.0.1:{fake.port}" not in error.split(" failed: ", 1)[1]
    assert [m.role for m in run_.messages] == ["user"]  # no assistant message was made up


@pytest.mark.anyio
@pytest.mark.parametrize(("message", "finish", "says"), [
    ({"role": "assistant", "content": ""}, "length",
     "the model reached its output token limit before answering (finish_reason 'length')"),
    ({"role": "assistant", "content": None}, "content_filter", "the server's content filter withheld the answer"),
    ({"role": "assistant", "content": None, "refusal": "I can't help with that."}, "stop",
     "the model refused to answer: I can't help with that."),
])
async def test_a_run_whose_answer_is_empty_for_a_reason_fails_with_it(
        fake: FakeOpenAI, message: dict[str, Any], finish: str, says: str) -> None:
    fake.queue(completion(message, finish))
    agent = Agent("t", make_model(fake))
    try:
        run_ = await RunsService(MemoryStore()).start(agent, "hi")
    finally:
        await agent.model.aclose()  # type: ignore[attr-defined]
    assert run_.status == "failed" and says in (run_.error or "")
    assert len(fake.requests) == 1  # asking again would get the same
    assert [s.type for s in run_.steps] == ["model"]  # what came back is in the log


# ---- pricing ------------------------------------------------------------------------------


def test_price_of_a_known_openai_model() -> None:
    price = price_usd("openai", "gpt-4o", 1_000_000, 1_000_000, 0)
    assert price is not None and price > 0
    cached = price_usd("openai", "gpt-4o", 1_000_000, 1_000_000, 500_000)
    assert cached is not None and 0 < cached < price


def test_unknown_model_or_provider_has_no_price() -> None:
    assert price_usd("openai", "no-such-model-xyz", 100, 100, 0) is None
    assert price_usd("no-such-provider", "gpt-4o", 100, 100, 0) is None
    assert price_usd("openai", "", 100, 100, 0) is None


def test_openai_ref_is_priced() -> None:
    model = OpenAIModel("gpt-4o", base_url=None, api_key="k", ref="openai:gpt-4o", priced=True)
    response = ModelResponse("hi", usage=Usage(1000, 200, 0), model_name="gpt-4o-2024-08-06")
    cost = model.cost_usd(response)
    assert cost is not None and cost > 0
    assert model.cost_usd(ModelResponse("hi", usage=Usage(1000, 200, 0))) == cost


def test_bare_name_on_custom_base_url_is_not_priced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:11434/v1")
    model = resolve_model("gpt-4o")
    assert isinstance(model, OpenAIModel)
    assert model.cost_usd(ModelResponse("hi", usage=Usage(1000, 200, 0), model_name="gpt-4o")) is None
    # even if someone claims it is priced, a non-OpenAI endpoint is never billed
    claimed = OpenAIModel("gpt-4o", base_url="http://localhost:11434/v1", api_key="x", ref="gpt-4o",
                          priced=True)
    assert claimed.cost_usd(ModelResponse("hi", usage=Usage(1000, 200, 0))) is None


# ---- model references ---------------------------------------------------------------------


def test_openai_ref(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:11434/v1")  # ignored by openai: refs
    model = resolve_model("openai:gpt-4o-mini")
    assert isinstance(model, OpenAIModel)
    assert (model.model, model.ref, model.base_url, model.priced) == (
        "gpt-4o-mini", "openai:gpt-4o-mini", "https://api.openai.com/v1", True)
    assert SECRET not in repr(model)


def test_openai_ref_without_key() -> None:
    with pytest.raises(ConfigError, match="set OPENAI_API_KEY"):
        resolve_model("openai:gpt-4o-mini")


def test_anthropic_ref_is_not_available_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "x")
    with pytest.raises(ConfigError, match="anthropic models are not available yet"):
        resolve_model("anthropic:claude-sonnet-4")


def test_bare_name_with_colon_goes_to_the_compatible_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:11434/v1")
    model = resolve_model("qwen2.5:7b")
    assert isinstance(model, OpenAIModel)
    assert (model.model, model.ref, model.base_url, model.priced) == (
        "qwen2.5:7b", "qwen2.5:7b", "http://localhost:11434/v1", False)


def test_bare_name_without_any_backend() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_model("llama3")
    assert str(info.value) == (
        "no model backend configured for 'llama3': set OPENAI_BASE_URL (e.g. http://localhost:11434/v1 for "
        "Ollama) or OPENAI_API_KEY, or use a scripted:/replay: model")


def test_empty_refs() -> None:
    with pytest.raises(ConfigError):
        resolve_model("")
    with pytest.raises(ConfigError, match="names no model"):
        resolve_model("openai:")


@pytest.mark.anyio
async def test_bare_name_end_to_end(fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    fake.queue("from qwen")
    model = resolve_model("qwen2.5:7b")
    response = await run(model, ask())
    assert response.text == "from qwen"
    assert fake.requests[0]["model"] == "qwen2.5:7b"
    assert fake.request_headers[0]["authorization"] == "Bearer not-needed"
    assert model.cost_usd(response) is None


def test_replay_ref(tmp_path: Any) -> None:
    path = tmp_path / "run.cassette"
    path.write_text(json.dumps({"format": "tether-cassette", "version": 1, "source": ""}) + "\n")
    model = resolve_model(f"replay:{path}")
    assert isinstance(model, ReplayModel) and model.ref == f"replay:{path}"
    with pytest.raises(ConfigError, match="file references are refused here"):
        resolve_model(f"replay:{path}", allow_files=False)
    with pytest.raises(ConfigError, match="cannot read cassette"):
        resolve_model(f"replay:{tmp_path / 'missing'}")


@pytest.fixture
def script_module(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "tether_test_scripts.py").write_text(textwrap.dedent("""
        from tether.adapters.models.scripted import ScriptedModel

        instance = ScriptedModel(["from instance"], ref="mine")
        answers = ["one", "two"]

        def echo(request):
            return "echo: " + request.messages[-1].text

        class Holder:
            nested = ["nested"]

        number = 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "tether_test_scripts"


@pytest.mark.anyio
async def test_scripted_refs(script_module: str) -> None:
    instance = resolve_model(f"scripted:{script_module}:instance")
    assert isinstance(instance, ScriptedModel) and instance.ref == "mine"

    fn = resolve_model(f"scripted:{script_module}:echo")
    assert isinstance(fn, ScriptedModel) and fn.ref == f"scripted:{script_module}:echo"
    assert (await fn.complete(ask("ping"))).text == "echo: ping"

    listed = resolve_model(f"scripted:{script_module}:answers")
    assert [(await listed.complete(ask())).text for _ in range(2)] == ["one", "two"]
    again = resolve_model(f"scripted:{script_module}:answers")  # a fresh copy of the list
    assert (await again.complete(ask())).text == "one"

    nested = resolve_model(f"scripted:{script_module}:Holder.nested")
    assert (await nested.complete(ask())).text == "nested"


def test_scripted_ref_errors(script_module: str) -> None:
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module_xyz'"):
        resolve_model("scripted:no_such_module_xyz:script")
    with pytest.raises(ConfigError, match=f"module '{script_module}' has no attribute 'missing'"):
        resolve_model(f"scripted:{script_module}:missing")
    with pytest.raises(ConfigError, match="MODULE:ATTR"):
        resolve_model(f"scripted:{script_module}")
    with pytest.raises(ConfigError, match="is a int"):
        resolve_model(f"scripted:{script_module}:number")


def test_importing_refs_does_not_import_the_sdks() -> None:
    code = ("import sys, tether.adapters.models.refs, tether.adapters.models.retry, "
            "tether.adapters.models.pricing; "
            "heavy = [m for m in ('openai', 'genai_prices', 'httpx2') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
