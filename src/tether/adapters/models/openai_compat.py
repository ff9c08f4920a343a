"""OpenAI-compatible chat-completions models (OpenAI, vLLM, Ollama, llama.cpp, LM Studio).

Uses the official SDK (`openai.AsyncOpenAI`, imported lazily) with the SDK's own retries off:
retries are ours (`retry.with_retries`). Tether messages are converted to chat-completions
messages here and answers back to Tether types; no SDK type leaves this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import os
import re
import sys
import weakref
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tether.adapters.models.retry import is_connection_error, is_retryable, status_of, with_retries
from tether.domain.errors import ModelError
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


def _usage(u: Any) -> Usage:
    if u is None:
        return Usage()
    details = getattr(u, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) if details is not None else None
    return Usage(int(getattr(u, "prompt_tokens", None) or 0), int(getattr(u, "completion_tokens", None) or 0),
                 int(cached or 0))


def _finish(reason: str | None, has_calls: bool) -> FinishReason:
    mapped = _FINISH.get(reason or "", "tool_calls" if has_calls else "stop")
    # Some servers (Ollama among them) say "stop" although they asked for tools.
    return "tool_calls" if has_calls and mapped == "stop" else mapped


def _tool_call(provider_id: str | None, name: str | None, arguments: str | None) -> ToolCall:
    return ToolCall(provider_id or new_id("call"), name or "", arguments or "", provider_id or None)


class BadAnswer(Exception):
    """The server answered with something that is not a chat completion."""


def from_completion(completion: Any) -> ModelResponse:
    choices = getattr(completion, "choices", None)
    if not choices:
        raise BadAnswer("the server's answer had no choices" if choices is not None
                        else f"the server's answer is not a chat completion: {str(completion)[:200]!r}")
    choice = choices[0]
    message = getattr(choice, "message", None)
    calls = []
    for tc in getattr(message, "tool_calls", None) or []:
        fn = getattr(tc, "function", None)
        if fn is None:  # a custom (non-function) tool call: not something Tether asked for
            continue
        calls.append(_tool_call(getattr(tc, "id", None), getattr(fn, "name", None),
                                getattr(fn, "arguments", None)))
    return ModelResponse(
        text=getattr(message, "content", None) or None,
        tool_calls=calls,
        finish_reason=_finish(getattr(choice, "finish_reason", None), bool(calls)),
        usage=_usage(getattr(completion, "usage", None)),
        refusal=getattr(message, "refusal", None) or None,
        model_name=getattr(completion, "model", None) or None,
    )


class _StreamAssembler:
    """Builds one ModelResponse from chat-completion chunks (tool calls assembled by index)."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.refusal: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage = Usage()
        self.model_name: str | None = None

    def add(self, chunk: Any) -> str:
        """Take one chunk; return its text fragment ("" when none)."""
        self.model_name = getattr(chunk, "model", None) or self.model_name
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            self.usage = _usage(usage)
        fragment = []
        for choice in getattr(chunk, "choices", None) or []:
            if (getattr(choice, "index", 0) or 0) != 0:
                continue
            delta = getattr(choice, "delta", None)
            if delta is not None:
                content = getattr(delta, "content", None)
                if content:
                    fragment.append(content)
                refusal = getattr(delta, "refusal", None)
                if refusal:
                    self.refusal.append(refusal)
                for position, tc in enumerate(getattr(delta, "tool_calls", None) or []):
                    self._add_call(position, tc)
            reason = getattr(choice, "finish_reason", None)
            if reason:
                self.finish_reason = reason
        text = "".join(fragment)
        if text:
            self.text.append(text)
        return text

    def _add_call(self, position: int, tc: Any) -> None:
        index = getattr(tc, "index", None)
        slot = self.calls.setdefault(index if isinstance(index, int) else position,
                                     {"id": None, "name": "", "arguments": ""})
        if getattr(tc, "id", None) and not slot["id"]:
            slot["id"] = tc.id
        fn = getattr(tc, "function", None)
        if fn is None:
            return
        name = getattr(fn, "name", None)
        if name and name != slot["name"]:  # sent once (OpenAI), or repeated whole by some servers
            slot["name"] += name
        arguments = getattr(fn, "arguments", None)
        if arguments:
            slot["arguments"] += arguments

    def response(self) -> ModelResponse:
        calls = [_tool_call(c["id"], c["name"], c["arguments"]) for _, c in sorted(self.calls.items())]
        return ModelResponse(
            text="".join(self.text) or None,
            tool_calls=calls,
            finish_reason=_finish(self.finish_reason, bool(calls)),
            usage=self.usage,
            refusal="".join(self.refusal) or None,
            model_name=self.model_name,
        )


# ---- errors -----------------------------------------------------------------------------------

_KEY_PATTERN = re.compile(r"\b(sk-[A-Za-z0-9_\-*]{3})[A-Za-z0-9_\-*.]*")


def _redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return _KEY_PATTERN.sub(r"\1***", text)


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
                completion = await client.chat.completions.create(**params)
                return from_completion(completion)
            return await self._stream(client, params, on_delta)

        try:
            return await with_retries(attempt, max_retries=self.max_retries, sleep=self._sleep)
        except ModelError:
            raise
        except BadAnswer as e:
            raise ModelError(_redact(f"{self._where()} failed: {e}", self._secrets())) from None
        except Exception as e:
            if not _is_model_call_error(e):
                raise
            raise ModelError(self.describe_error(e, attempts)) from None

    async def _stream(self, client: Any, params: dict[str, Any],
                      on_delta: Callable[[str], None]) -> ModelResponse:
        stream = await client.chat.completions.create(**params, stream=True,
                                                      stream_options={"include_usage": True})
        assembler = _StreamAssembler()
        emitted = False
        try:
            async with stream:
                async for chunk in stream:
                    fragment = assembler.add(chunk)
                    if fragment:
                        emitted = True
                        on_delta(fragment)
        except Exception as e:
            if emitted and _is_model_call_error(e):
                # Part of the answer was already shown; a retry would show it twice.
                raise ModelError(f"{self.describe_error(e, 1)} (the stream broke after partial output; "
                                 "not retried)") from None
            raise
        return assembler.response()

    def describe_error(self, exc: BaseException, attempts: int = 1) -> str:
        """A message for the user: what failed and what to do. Never contains the API key."""
        where = self._where()
        tried = f" (after {attempts} attempts)" if attempts > 1 else ""
        status = status_of(exc)
        if status is not None:
            try:
                phrase = http.HTTPStatus(status).phrase
            except ValueError:
                phrase = "error"
            hint = _HINTS.get(status) or ("server error" if status >= 500 else "")
            msg = f"{where} failed: {status} {phrase}"
            if hint:
                msg += f": {hint}"
            detail = _server_message(exc)
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
