"""OpenAI-compatible chat-completions models (OpenAI, vLLM, Ollama, llama.cpp, LM Studio).

Uses the official SDK (`openai.AsyncOpenAI`, imported lazily) with the SDK's own retries off:
retries are ours (`retry.with_retries`). Tether messages are converted to chat-completions
messages here and answers back to Tether types; no SDK type leaves this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import os
import re
import sys
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tether.adapters.models.retry import is_connection_error, is_retryable, status_of, with_retries
from tether.domain.errors import ModelError
from tether.domain.governor import Price
from tether.domain.ids import new_id
from tether.domain.messages import ImagePart, Message, RefusalPart, TextPart, ToolCall
from tether.domain.models import FinishReason, ModelRequest, ModelResponse, ToolSchema
from tether.domain.usage import Usage

OPENAI_API_URL = "https://api.openai.com/v1"

# Request settings passed through to the server; any other key is Tether's own and not sent.
ALLOWED_SETTINGS = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "tool_choice",
                    "parallel_tool_calls", "seed", "stop", "response_format")
_TOOLS_ONLY_SETTINGS = frozenset({"tool_choice", "parallel_tool_calls"})

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
    "error": "error",
    "model_length": "length",  # Mistral: the model's context is full
}


def is_openai_endpoint(base_url: str | None) -> bool:
    """True for OpenAI's own API (no base URL, or https://api.openai.com/...)."""
    if base_url is None:
        return True
    parts = urlsplit(base_url)
    return parts.scheme == "https" and parts.hostname == "api.openai.com"


# ---- Tether → chat completions ----------------------------------------------------------------


def _all_text(parts: list[Any]) -> str:
    return "".join(p.text for p in parts if isinstance(p, TextPart))


def _message_to_openai(m: Message) -> dict[str, Any]:
    if m.role in ("system", "developer"):
        return {"role": m.role, "content": _all_text(m.content)}
    if m.role == "tool":
        return {"role": "tool", "tool_call_id": m.tool_call_id or "", "content": _all_text(m.content)}
    if m.role == "user":
        if all(isinstance(p, TextPart) for p in m.content):
            return {"role": "user", "content": _all_text(m.content)}
        parts: list[dict[str, Any]] = []
        for p in m.content:
            if isinstance(p, TextPart):
                parts.append({"type": "text", "text": p.text})
            elif isinstance(p, ImagePart):
                parts.append({"type": "image_url", "image_url": {"url": p.url, "detail": p.detail}})
            elif isinstance(p, RefusalPart):  # not a user thing; keep its words as text
                parts.append({"type": "text", "text": p.refusal})
        return {"role": "user", "content": parts}
    # assistant
    out: dict[str, Any] = {"role": "assistant"}
    if any(isinstance(p, RefusalPart) for p in m.content):
        out["content"] = [
            {"type": "text", "text": p.text} if isinstance(p, TextPart) else {"type": "refusal",
                                                                            "refusal": p.refusal}
            for p in m.content if isinstance(p, TextPart | RefusalPart)
        ]
    else:
        text = _all_text(m.content)
        out["content"] = text if text or not m.tool_calls else None
    if m.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    return out


def to_openai_messages(messages: list[Message]) -> list[dict[str, Any]]:
    return [_message_to_openai(m) for m in messages]


def to_openai_tools(tools: list[ToolSchema]) -> list[dict[str, Any]]:
    return [
        {"type": "function",
         "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
        for t in tools
    ]


def build_params(model: str, request: ModelRequest) -> dict[str, Any]:
    """The keyword arguments for `chat.completions.create` (without streaming options)."""
    params: dict[str, Any] = {"model": model, "messages": to_openai_messages(request.messages)}
    if request.tools:
        params["tools"] = to_openai_tools(request.tools)
    for key in ALLOWED_SETTINGS:
        if key in request.settings and request.settings[key] is not None:
            if key in _TOOLS_ONLY_SETTINGS and not request.tools:
                continue  # servers reject these without tools
            params[key] = request.settings[key]
    if request.output_schema is not None:
        params["response_format"] = {"type": "json_schema",
                                     "json_schema": {"name": "output", "schema": request.output_schema}}
    return params


# ---- chat completions → Tether ----------------------------------------------------------------
#
# Answers are read from the JSON as it came, not through the SDK's types: those take anything (a
# message that is a string, no choices at all) without a word, and a run would end "completed" with
# nothing in it. Whatever is not a usable answer raises BadAnswer instead.

EXCERPT_CHARS = 200

# The server says the answer failed (vLLM says "abort" for a request it gave up).
_FAILED = frozenset({"error", "abort"})


class BadAnswer(Exception):
    """The server answered, but not with a usable chat completion.

    `retry`: asking again may help (a proxy's error page, a cut stream, an empty answer), so it is
    done as for a 5xx; a field of the wrong type is a broken server, which would answer the same.
    `body` is what came back, shown as a short excerpt.
    """

    def __init__(self, problem: str, body: str | None = None, *, retry: bool) -> None:
        super().__init__(problem)
        self.problem, self.body, self.retry = problem, body, retry

    def describe(self, hidden: list[str]) -> str:
        """The problem and an excerpt of the body, without the `hidden` strings or any key."""
        if self.body is None:
            return self.problem
        # Redacted before it is cut, so that no secret survives as a prefix.
        text = _redact(" ".join(self.body.split())[:5 * EXCERPT_CHARS], hidden)
        if not text:
            return f"{self.problem} (an empty body)"
        return f"{self.problem}: {text[:EXCERPT_CHARS] + ('…' if len(text) > EXCERPT_CHARS else '')!r}"


def _json(data: str, problem: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise BadAnswer(problem, data, retry=True) from None


def _text_of(obj: dict[str, Any], name: str, body: str) -> str | None:
    """A text field of a message or delta (content, refusal): a string, or nothing."""
    value = obj.get(name)
    if value is None or isinstance(value, str):
        return value or None
    raise BadAnswer(f"the answer's {name} is not a string", body, retry=False)


def _count(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and value > 0 else 0


def _usage(u: Any) -> Usage:
    if not isinstance(u, dict):
        return Usage()
    details = u.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(_count(u.get("prompt_tokens")), _count(u.get("completion_tokens")), _count(cached))


def _finish(reason: Any, has_calls: bool) -> FinishReason:
    if not isinstance(reason, str) or not reason:
        return "tool_calls" if has_calls else "stop"
    mapped = _FINISH.get(reason, reason)  # a reason Tether does not know is kept as it came
    # Some servers (Ollama among them) say "stop" although they asked for tools.
    return "tool_calls" if has_calls and mapped == "stop" else mapped


def _arguments(arguments: Any, name: str, body: str | None) -> str:
    """The arguments of tool call `name` as JSON text (some servers send an object instead)."""
    if isinstance(arguments, dict):
        return json.dumps(arguments)
    if arguments is not None and not isinstance(arguments, str):
        raise BadAnswer(f"the arguments of tool call {name or '(not yet named)'!r} are not a string", body,
                        retry=False)
    return arguments or ""


def _tool_calls(listed: Any, body: str) -> list[dict[str, Any]]:
    """The tool calls of a message or a delta: objects, each with an object as its function."""
    calls = listed if isinstance(listed, list) else [listed] if listed else []
    if not all(isinstance(tc, dict) and isinstance(tc.get("function") or {}, dict) for tc in calls):
        raise BadAnswer("the server's tool calls are not objects", body, retry=False)
    return calls


def _tool_call(provider_id: Any, name: Any, arguments: Any, body: str | None) -> ToolCall:
    if not isinstance(name, str) or not name:
        raise BadAnswer("the model asked for a tool without naming it", body, retry=True)
    provider_id = provider_id if isinstance(provider_id, str) and provider_id else None
    return ToolCall(provider_id or new_id("call"), name, _arguments(arguments, name, body), provider_id)


def _checked(response: ModelResponse, body: str | None) -> ModelResponse:
    """The response, unless it failed or says nothing at all (both asked again, as for a 5xx).

    An empty answer cut by the token limit ("length") or withheld by a content filter is passed on:
    asking again would get the same, and the executor says which it was.
    """
    reason = response.finish_reason
    if reason in _FAILED:
        raise BadAnswer(f"the server says the answer failed (finish_reason {reason!r})", body, retry=True)
    if response.says_nothing() and reason not in ("length", "content_filter"):
        raise BadAnswer(f"the model returned an empty answer (finish_reason {reason!r}, no content and no "
                        "tool calls)", body, retry=True)
    return response


def from_completion(body: str) -> ModelResponse:
    """The answer of a call without streaming, from the body as it came."""
    data = _json(body, "the server's answer is not JSON")
    choices = data.get("choices") if isinstance(data, dict) else None
    if not choices:
        if not isinstance(data, dict):
            problem = "the server's answer is not a chat completion"
        elif data.get("error"):
            problem = "the server answered with an error"
        else:
            problem = "the server's answer has no choices"
        raise BadAnswer(problem, body, retry=True)
    if not isinstance(choices, list) or not isinstance(choices[0], dict):
        raise BadAnswer("the server's choices are not objects", body, retry=False)
    choice = choices[0]
    body = json.dumps(choice)  # what is shown from here on: the choice, not the envelope around it
    message = choice.get("message")
    if message is None:
        raise BadAnswer("the server's answer has no message", body, retry=True)
    if not isinstance(message, dict):
        raise BadAnswer("the server's message is not an object", body, retry=False)
    calls = []
    for tc in _tool_calls(message.get("tool_calls"), body):
        fn = tc.get("function")
        if fn is None:  # a custom (non-function) tool call: not something Tether asked for
            continue
        calls.append(_tool_call(tc.get("id"), fn.get("name"), fn.get("arguments"), body))
    model = data.get("model")
    return _checked(ModelResponse(
        text=_text_of(message, "content", body),
        tool_calls=calls,
        finish_reason=_finish(choice.get("finish_reason"), bool(calls)),
        usage=_usage(data.get("usage")),
        refusal=_text_of(message, "refusal", body),
        model_name=model if isinstance(model, str) and model else None,
    ), body)


async def _sse_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The data of each server-sent event (its `data:` lines, up to a blank line)."""
    data: list[str] = []
    async for line in lines:
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif not line and data:
            yield "\n".join(data)
            data = []
    # An event not ended by a blank line is incomplete, and dropped (as the SSE spec says).


class _StreamAssembler:
    """Builds one ModelResponse from chat-completion chunks (tool calls assembled by index)."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.refusal: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.done = False  # `[DONE]` came
        self.usage = Usage()
        self.model_name: str | None = None

    def add(self, data: str) -> str:
        """Take one event's data; return its text fragment ("" when none)."""
        if data == "[DONE]":
            self.done = True
            return ""
        chunk = _json(data, "the stream sent an event that is not JSON")
        if not isinstance(chunk, dict):
            raise BadAnswer("the stream sent an event that is not a chat completion chunk", data, retry=True)
        if chunk.get("error"):
            raise BadAnswer("the server sent an error in the stream", data, retry=True)
        model = chunk.get("model")
        self.model_name = model if isinstance(model, str) and model else self.model_name
        if chunk.get("usage") is not None:
            self.usage = _usage(chunk["usage"])
        choices = chunk.get("choices") or []
        fragment = []
        for choice in choices if isinstance(choices, list) else [choices]:
            if not isinstance(choice, dict) or not isinstance(choice.get("delta") or {}, dict):
                raise BadAnswer("the stream sent a choice that is not an object with a delta", data, retry=False)
            if (choice.get("index") or 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if content := _text_of(delta, "content", data):
                fragment.append(content)
            if refusal := _text_of(delta, "refusal", data):
                self.refusal.append(refusal)
            for position, tc in enumerate(_tool_calls(delta.get("tool_calls"), data)):
                self._add_call(position, tc, data)
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                self.finish_reason = reason
        text = "".join(fragment)
        if text:
            self.text.append(text)
        return text

    def _add_call(self, position: int, tc: dict[str, Any], data: str) -> None:
        index = tc.get("index")
        slot = self.calls.setdefault(index if isinstance(index, int) else position,
                                     {"id": None, "name": "", "arguments": ""})
        if isinstance(tc.get("id"), str) and not slot["id"]:
            slot["id"] = tc["id"]
        fn = tc.get("function") or {}
        name, arguments = fn.get("name"), fn.get("arguments")
        if isinstance(name, str) and name != slot["name"]:  # sent once (OpenAI), or repeated whole by some
            slot["name"] += name
        slot["arguments"] += _arguments(arguments, slot["name"], data)

    def response(self) -> ModelResponse:
        if self.finish_reason is None and not self.done:
            so_far = "".join(self.text)
            raise BadAnswer("the stream ended before the answer did (no finish_reason, no [DONE])"
                            + ("; the text so far" if so_far else ""), so_far or None, retry=True)
        calls = [_tool_call(c["id"], c["name"], c["arguments"], None) for _, c in sorted(self.calls.items())]
        return _checked(ModelResponse(
            text="".join(self.text) or None,
            tool_calls=calls,
            finish_reason=_finish(self.finish_reason, bool(calls)),
            usage=self.usage,
            refusal="".join(self.refusal) or None,
            model_name=self.model_name,
        ), None)


# ---- errors -----------------------------------------------------------------------------------

_KEY_PATTERN = re.compile(r"\b(sk-[A-Za-z0-9_\-*]{3})[A-Za-z0-9_\-*.]*")
# A credential echoed by a proxy's error page: "Authorization: Bearer …", "api-key: …".
_CREDENTIAL_PATTERN = re.compile(r"(?i)\b((?:authorization|api[-_]?key)[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic)\s+)?"
                                 r"|bearer\s+)[^\s\"',;<>]+")


def _redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return _CREDENTIAL_PATTERN.sub(r"\1***", _KEY_PATTERN.sub(r"\1***", text))


def _safe_url(url: str) -> str:
    """The URL without any user:password part."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _server_message(exc: BaseException) -> str:
    body = getattr(exc, "body", None)
    message: Any = None
    if isinstance(body, dict):
        message = body.get("message") or body.get("detail") or body.get("error")
    elif isinstance(body, str):
        message = body
    if not isinstance(message, str):
        return ""
    message = " ".join(message.split())
    return message[:300] + ("…" if len(message) > 300 else "")


def _causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in seen and len(seen) < 10:
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


def _is_timeout(exc: BaseException) -> bool:
    openai = sys.modules.get("openai")
    if openai is not None and isinstance(exc, openai.APITimeoutError):
        return True
    return any(isinstance(e, TimeoutError) or "timeout" in type(e).__name__.lower() for e in _causes(exc))


def _is_refused(exc: BaseException) -> bool:
    return any(isinstance(e, ConnectionRefusedError) or "refused" in str(e).lower() for e in _causes(exc))


def _is_model_call_error(exc: BaseException) -> bool:
    """An error from the SDK or the network (not from our own code or an `on_delta` callback)."""
    openai = sys.modules.get("openai")
    return (openai is not None and isinstance(exc, openai.OpenAIError)) or is_connection_error(exc)


_HINTS = {
    400: "the server rejected the request",
    401: "check OPENAI_API_KEY",
    403: "the API key has no access to this model or endpoint",
    404: "check the model name (is this model available at that server?)",
    408: "the server timed out",
    409: "the server reported a conflict",
    422: "the server could not process the request",
    429: "rate limited or out of quota",
}


# ---- the model --------------------------------------------------------------------------------


# One SDK client per event loop and endpoint (base URL, key, timeout); a loop's clients go with it.
_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str | None, float], Any]] = (
    weakref.WeakKeyDictionary())


class OpenAIModel:
    """A model behind an OpenAI-compatible chat-completions endpoint."""

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None, ref: str,
                 max_retries: int = 3, timeout_s: float = 120, priced: bool,
                 sleep: Callable[[float], Awaitable[Any]] | None = None) -> None:
        self.model = model
        self.ref = ref
        self.base_url = base_url.rstrip("/") if base_url else OPENAI_API_URL
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        # Prices are known only for OpenAI's own endpoint: a local model named like a hosted one
        # is not billed.
        self.priced = priced and is_openai_endpoint(base_url)
        self._api_key = api_key
        self._sleep = sleep or asyncio.sleep
        self._client: Any = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIModel({self.model!r}, base_url={_safe_url(self.base_url)!r}, ref={self.ref!r})"

    # -- client --

    def _where(self) -> str:
        return f"model {self.model!r} at {_safe_url(self.base_url)}"

    def _key(self) -> str:
        key = self._api_key if self._api_key is not None else os.environ.get("OPENAI_API_KEY")
        if key:
            return key
        if is_openai_endpoint(self.base_url):
            raise ModelError(f"{self._where()} failed: no API key: set OPENAI_API_KEY")
        return "not-needed"  # local servers (Ollama, llama.cpp, ...) accept any key

    def _get_client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            # A client's connection pool belongs to one event loop; a new loop gets a new client.
            # Models on the same endpoint share one (a server makes a model per run, and a new client
            # costs ~20 ms of certificate loading, on the event loop).
            shared = _CLIENTS.setdefault(loop, {})
            key = (self.base_url, self._key(), self.timeout_s)
            if key not in shared:
                # We hand the SDK a plain HTTP client: the SDK's own one closes itself from `__del__`
                # on whatever loop is running then, which breaks once its first loop is gone.
                from openai import AsyncOpenAI, DefaultAsyncHttpxClient

                shared[key] = AsyncOpenAI(api_key=key[1], base_url=self.base_url, max_retries=0,
                                          timeout=self.timeout_s,
                                          http_client=DefaultAsyncHttpxClient(timeout=self.timeout_s))
            self._client, self._client_loop = shared[key], loop
        return self._client

    async def aclose(self) -> None:
        """Close this model's client (shared by the models on its endpoint in this event loop)."""
        if self._client is not None:
            client, self._client = self._client, None
            for shared in _CLIENTS.values():
                for key in [k for k, c in shared.items() if c is client]:
                    del shared[key]
            with contextlib.suppress(RuntimeError):  # its event loop is gone
                await client.close()

    # -- calls --

    async def complete(self, request: ModelRequest,
                       on_delta: Callable[[str], None] | None = None) -> ModelResponse:
        params = build_params(self.model, request)
        client = self._get_client()
        attempts = 0

        async def attempt() -> ModelResponse:
            nonlocal attempts
            attempts += 1
            if on_delta is None:
                raw = await client.chat.completions.with_raw_response.create(**params)
                return from_completion(raw.text)
            return await self._stream(client, params, on_delta)

        def retryable(exc: BaseException) -> bool:
            return exc.retry if isinstance(exc, BadAnswer) else is_retryable(exc)

        try:
            return await with_retries(attempt, max_retries=self.max_retries, sleep=self._sleep,
                                      retryable=retryable)
        except ModelError:
            raise
        except Exception as e:
            if not (isinstance(e, BadAnswer) or _is_model_call_error(e)):
                raise
            raise ModelError(self.describe_error(e, attempts)) from None

    async def _stream(self, client: Any, params: dict[str, Any],
                      on_delta: Callable[[str], None]) -> ModelResponse:
        assembler = _StreamAssembler()
        emitted = False
        try:
            async with client.chat.completions.with_streaming_response.create(
                    **params, stream=True, stream_options={"include_usage": True}) as raw:
                content_type = raw.headers.get("content-type", "").lower()
                if content_type.startswith("application/json"):
                    # Some servers ignore `stream` and answer in one piece (or with an error).
                    response = from_completion(await raw.text())
                    if response.text:
                        on_delta(response.text)
                    return response
                if content_type and not content_type.startswith("text/event-stream"):
                    raise BadAnswer(f"the server answered {content_type.split(';')[0]} instead of an event "
                                    "stream", await raw.text(), retry=True)
                async for data in _sse_data(raw.iter_lines()):
                    fragment = assembler.add(data)
                    if fragment:
                        emitted = True
                        on_delta(fragment)
                    if assembler.done:
                        break
            return assembler.response()
        except Exception as e:
            if emitted and (isinstance(e, BadAnswer) or _is_model_call_error(e)):
                # Part of the answer was already shown; a retry would show it twice.
                raise ModelError(f"{self.describe_error(e, 1)} (the stream broke after partial output; "
                                 "not retried)") from None
            raise

    def describe_error(self, exc: BaseException, attempts: int = 1) -> str:
        """A message for the user: what failed and what to do. Never contains the API key."""
        where = self._where()
        tried = f" (after {attempts} attempts)" if attempts > 1 else ""
        status = status_of(exc)
        # What the server sent back hides its own address too: a tenant sees run errors, and the
        # operator's URL is not theirs.
        netloc = urlsplit(self.base_url).netloc
        hidden = [*self._secrets(), netloc, netloc.rpartition("@")[2]]
        if isinstance(exc, BadAnswer):
            msg = f"{where} failed: {exc.describe(hidden)}"
            msg += tried if exc.retry else ""
        elif status is not None:
            try:
                phrase = http.HTTPStatus(status).phrase
            except ValueError:
                phrase = "error"
            hint = _HINTS.get(status) or ("server error" if status >= 500 else "")
            msg = f"{where} failed: {status} {phrase}"
            if hint:
                msg += f": {hint}"
            detail = _redact(_server_message(exc), hidden)
            if detail:
                msg += f" (server said: {detail})"
            msg += tried if is_retryable(exc) else ""
        elif _is_timeout(exc):
            msg = f"{where} failed: no answer within {self.timeout_s:g}s{tried}"
        elif is_connection_error(exc):
            url = _safe_url(self.base_url)
            if _is_refused(exc):
                msg = f"{where} failed: connection refused: is the server at {url} running?"
            else:
                cause = _causes(exc)[-1]
                msg = (f"{where} failed: cannot connect ({type(cause).__name__}: {cause}): is the server at "
                       f"{url} running and reachable?")
            msg += tried
        else:
            msg = f"{where} failed: {type(exc).__name__}: {exc}"
        return _redact(msg, self._secrets())

    def _secrets(self) -> list[str]:
        return [self._api_key or "", os.environ.get("OPENAI_API_KEY", "")]

    def price(self) -> Price | None:
        """USD per token of this model at OpenAI (None for any other endpoint: unknown)."""
        if not self.priced:
            return None
        from tether.adapters.models.pricing import unit_price

        return unit_price("openai", self.model)

    def cost_usd(self, response: ModelResponse) -> float | None:
        if not self.priced:
            return None
        from tether.adapters.models.pricing import price_usd

        u = response.usage
        for name in dict.fromkeys(n for n in (response.model_name, self.model) if n):
            price = price_usd("openai", name, u.input_tokens, u.output_tokens, u.cached_tokens)
            if price is not None:
                return price
        return None
