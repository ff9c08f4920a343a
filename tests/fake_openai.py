"""A small OpenAI-compatible chat-completions server for tests (stdlib only, real sockets).

    with FakeOpenAI() as fake:
        fake.queue("hello", FakeReply(tool_calls=[FakeToolCall("add", {"a": 1})]))
        fake.fail_next(429, 1, {"retry-after": "2"})
        fake.respond_with(lambda body: "echo: " + body["messages"][-1]["content"])  # when the queue is empty
        model = OpenAIModel("gpt-4o-mini", base_url=fake.base_url, api_key="k", ref="t", priced=False)
        ...
        fake.requests[-1]["messages"]     # the bodies received, in order
        fake.request_headers[-1]["authorization"]

POST /v1/chat/completions answers from the queue of scripted replies, as JSON or, with
`"stream": true`, as SSE chunks shaped like OpenAI's (a role delta, content deltas, tool-call
deltas by index with the arguments in fragments, a chunk with the finish reason, a usage chunk
when `stream_options.include_usage`, then `data: [DONE]`). GET /v1/models lists the model names
seen. With nothing queued and no responder the server answers 400, so a test fails at once rather
than retrying. A `RawReply` is sent as it is, for answers that are not completions (a proxy's HTML
page with status 200, `{"choices": []}`, a stream cut short: `sse(chunk, ..., done=False)`).

A responder (`fake.respond_with(fn)`) answers whatever the queue does not: it is called with the
request body (a dict) and returns a FakeReply or a string, so concurrent requests can be answered
deterministically by their content. Scripted failures (`fail_next`) still come first. If it raises,
the request is answered 400 with the exception's text.
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class FakeToolCall:
    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)  # a dict is sent as JSON text
    id: str | None = None  # None → "call_fake_N"; "" → sent without an id (some servers do that)

    def arguments_text(self) -> str:
        return self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)


@dataclass
class FakeReply:
    text: str | None = None
    tool_calls: list[FakeToolCall] = field(default_factory=list)
    prompt_tokens: int = 10
    completion_tokens: int = 5
    cached_tokens: int | None = None
    finish_reason: str | None = None  # None → "tool_calls" when there are tool calls, else "stop"
    refusal: str | None = None
    model: str | None = None  # None → the model the request named
    stream_usage: bool = True  # False: like servers that send no usage in a stream even when asked
    fragment_size: int = 3  # characters per content / arguments delta when streaming
    delay_s: float = 0.0  # wait before answering


@dataclass
class RawReply:
    """A reply sent as it is (streaming asked or not): for answers that are not chat completions.

    A `text/event-stream` body is sent without a length and the connection closed after it, so a
    stream can end anywhere (without `[DONE]`, or in the middle of a JSON chunk).
    """

    body: str
    status: int = 200
    content_type: str = "application/json"


def sse(*chunks: dict[str, Any] | str, done: bool = True) -> str:
    """A server-sent-events body: each chunk as a `data:` line (a dict as JSON), then `[DONE]`."""
    lines = [f"data: {c if isinstance(c, str) else json.dumps(c)}\n\n" for c in chunks]
    return "".join(lines) + ("data: [DONE]\n\n" if done else "")


@dataclass
class _Failure:
    status: int
    headers: dict[str, str]
    message: str


_STATUS_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_denied",
                 404: "not_found_error", 429: "rate_limit_exceeded"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):  # the client gave up (a timeout test)
            return
        super().handle_error(request, client_address)


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []  # request bodies, in order received
        self.request_headers: list[dict[str, str]] = []  # lower-cased header names
        self.paths: list[str] = []
        self._replies: deque[FakeReply | RawReply] = deque()
        self._failures: deque[_Failure] = deque()
        self.responder: Callable[[dict[str, Any]], FakeReply | str] | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- lifecycle --

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAI:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="fake-openai", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- scripting --

    def queue(self, *replies: FakeReply | RawReply | str) -> FakeOpenAI:
        """Add replies, answered in order (a string is a plain text reply)."""
        with self._lock:
            for r in replies:
                self._replies.append(FakeReply(text=r) if isinstance(r, str) else r)
        return self

    def fail_next(self, status: int, n: int = 1, headers: dict[str, str] | None = None,
                  message: str | None = None) -> FakeOpenAI:
        """Answer the next `n` chat requests with `status` (and these headers) before any reply."""
        with self._lock:
            for _ in range(n):
                self._failures.append(_Failure(status, dict(headers or {}),
                                               message or f"fake failure {status}"))
        return self

    def respond_with(self, fn: Callable[[dict[str, Any]], FakeReply | str] | None) -> FakeOpenAI:
        """Answer requests the queue does not with `fn(request_body)` (None: back to answering 400)."""
        with self._lock:
            self.responder = fn
        return self

    def clear(self) -> FakeOpenAI:
        """Drop the queued replies and scripted failures not used yet (the responder stays)."""
        with self._lock:
            self._replies.clear()
            self._failures.clear()
        return self

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._replies)

    # -- used by the handler --

    def _record(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> None:
        with self._lock:
            self.paths.append(path)
            self.requests.append(body)
            self.request_headers.append(headers)

    def _next(self, body: dict[str, Any] | None = None) -> _Failure | FakeReply | RawReply | None:
        with self._lock:
            if self._failures:
                return self._failures.popleft()
            if self._replies:
                return self._replies.popleft()
            responder = self.responder
        if responder is None:
            return None
        try:  # outside the lock: a responder may be slow, or look at self.requests
            reply = responder(body if body is not None else {})
        except Exception as exc:
            return _Failure(400, {}, f"fake OpenAI server: the responder raised {type(exc).__name__}: {exc}")
        return FakeReply(text=reply) if isinstance(reply, str) else reply

    def _call_id(self) -> str:
        return f"call_fake_{next(self._ids)}"


def _fragments(text: str, size: int) -> list[str]:
    size = max(1, size)
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


class _Handler(BaseHTTPRequestHandler):
    disable_nagle_algorithm = True  # headers and body go out at once, not 40 ms apart (delayed ACK)
    fake: FakeOpenAI
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    # -- plumbing --

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send_json(status, {"error": {"message": message, "type": _STATUS_TYPES.get(status, "api_error"),
                                           "param": None, "code": None}}, headers)

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            with self.fake._lock:
                names = sorted({str(b.get("model")) for b in self.fake.requests if b.get("model")})
            self._send_json(200, {"object": "list", "data": [
                {"id": n, "object": "model", "created": 0, "owned_by": "fake"} for n in names]})
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._error(400, "body is not JSON")
            return
        self.fake._record(self.path, body, {k.lower(): v for k, v in self.headers.items()})
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._error(404, f"no route {self.path}")
            return
        item = self.fake._next(body)
        if item is None:
            self._error(400, "fake OpenAI server: no scripted reply left")
            return
        if isinstance(item, _Failure):
            self._error(item.status, item.message, item.headers)
            return
        if isinstance(item, RawReply):
            self._raw(item)
            return
        if item.delay_s:
            time.sleep(item.delay_s)
        model = item.model or str(body.get("model") or "fake-model")
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._stream(item, model, include_usage)
        else:
            self._send_json(200, self._completion(item, model))

    # -- answers --

    def _raw(self, r: RawReply) -> None:
        data = r.body.encode()
        self.send_response(r.status)
        self.send_header("Content-Type", r.content_type)
        if r.content_type.startswith("text/event-stream"):
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _finish(self, r: FakeReply) -> str:
        return r.finish_reason or ("tool_calls" if r.tool_calls else "stop")

    def _usage(self, r: FakeReply) -> dict[str, Any]:
        usage: dict[str, Any] = {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                                 "total_tokens": r.prompt_tokens + r.completion_tokens}
        if r.cached_tokens is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": r.cached_tokens, "audio_tokens": 0}
        return usage

    def _ids(self, r: FakeReply) -> list[str | None]:
        return [tc.id if tc.id is not None else self.fake._call_id() for tc in r.tool_calls]

    def _completion(self, r: FakeReply, model: str) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": r.text, "refusal": r.refusal}
        if r.tool_calls:
            calls = []
            for tc, call_id in zip(r.tool_calls, self._ids(r), strict=True):
                call: dict[str, Any] = {"type": "function",
                                        "function": {"name": tc.name, "arguments": tc.arguments_text()}}
                if call_id:
                    call["id"] = call_id
                calls.append(call)
            message["tool_calls"] = calls
        return {"id": f"chatcmpl-fake{next(self.fake._ids)}", "object": "chat.completion",
                "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": self._finish(r)}],
                "usage": self._usage(r)}

    def _stream(self, r: FakeReply, model: str, include_usage: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        chunk_id = f"chatcmpl-fake{next(self.fake._ids)}"
        created = int(time.time())

        def send(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> None:
            chunk: dict[str, Any] = {"id": chunk_id, "object": "chat.completion.chunk", "created": created,
                                     "model": model, "choices": choices}
            if include_usage:
                chunk["usage"] = usage
            self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            self.wfile.flush()

        def delta(d: dict[str, Any]) -> None:
            send([{"index": 0, "delta": d, "logprobs": None, "finish_reason": None}])

        delta({"role": "assistant", "content": "", "refusal": None})
        if r.text:
            for frag in _fragments(r.text, r.fragment_size):
                delta({"content": frag})
        if r.refusal:
            for frag in _fragments(r.refusal, r.fragment_size):
                delta({"refusal": frag})
        for index, (tc, call_id) in enumerate(zip(r.tool_calls, self._ids(r), strict=True)):
            first: dict[str, Any] = {"index": index, "type": "function",
                                     "function": {"name": tc.name, "arguments": ""}}
            if call_id:
                first["id"] = call_id
            delta({"tool_calls": [first]})
            for frag in _fragments(tc.arguments_text(), r.fragment_size):
                delta({"tool_calls": [{"index": index, "function": {"arguments": frag}}]})
        send([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": self._finish(r)}])
        if include_usage and r.stream_usage:
            send([], self._usage(r))
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
