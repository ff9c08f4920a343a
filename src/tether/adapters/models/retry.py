"""Retries with exponential backoff that honour the server's `retry-after`.

Generic over SDKs: an error is classified by its `status_code` (as the OpenAI and Anthropic SDKs'
status errors carry) and its `response.headers`, or as a connection failure or timeout.
Nothing here imports an SDK: their exception classes are looked up only if already loaded.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

RETRY_STATUSES = frozenset({408, 409, 429})
NEVER_RETRY_STATUSES = frozenset({400, 401, 403, 404, 422})


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an SDK error carries, or None."""
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) and not isinstance(status, bool) else None


def is_connection_error(exc: BaseException) -> bool:
    """A failure to reach the server or to hear back in time (no HTTP status)."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    openai = sys.modules.get("openai")
    if openai is not None and isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    for name in ("httpx2", "httpx"):
        mod = sys.modules.get(name)
        if mod is not None and isinstance(exc, mod.TransportError):
            return True
    anthropic = sys.modules.get("anthropic")
    return anthropic is not None and isinstance(exc, anthropic.APIConnectionError)


def is_retryable(exc: BaseException) -> bool:
    status = status_of(exc)
    if status is not None:
        if status in NEVER_RETRY_STATUSES:
            return False
        return status in RETRY_STATUSES or status >= 500
    return is_connection_error(exc)


def retry_after_s(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (`retry-after-ms`, `retry-after` as seconds or a date)."""
    response = getattr(exc, "response", None)
    headers: Mapping[str, str] | None = getattr(response, "headers", None)
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            delay = float(value)
        except ValueError:
            continue
        if math.isfinite(delay):
            return max(0.0, delay / divisor)
    value = headers.get("retry-after")
    if value:
        try:
            parsed = email.utils.parsedate_tz(value)
            if parsed is not None:
                return max(0.0, float(email.utils.mktime_tz(parsed) - time.time()))
        except (TypeError, ValueError, OverflowError):
            return None
    return None


def backoff_s(attempt: int, *, base_delay: float, max_delay: float) -> float:
    """Exponential backoff with jitter for retry number `attempt` (0-based): 75–100% of base·2^n."""
    delay = min(max_delay, base_delay * (2 ** min(attempt, 32)))
    return delay * (1 - 0.25 * random.random())


async def with_retries(
    fn: Callable[[], Awaitable[T]],
    *,
    max_retries: int,
    base_delay: float = 0.5,
    max_delay: float = 30,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    retryable: Callable[[BaseException], bool] = is_retryable,
) -> T:
    """Call `fn()`; on a retryable error wait and call again, at most `max_retries` more times.

    Retries connection errors, timeouts, 408, 409, 429 and 5xx; never 400/401/403/404/422.
    The wait is the server's `retry-after-ms`/`retry-after` (capped at `max_delay`) when given,
    otherwise exponential backoff with jitter. The last error is re-raised unchanged.
    """
    attempt = 0
    while True:
        try:
            return await fn()
        except Exception as exc:
            if attempt >= max_retries or not retryable(exc):
                raise
            asked = retry_after_s(exc)
            delay = min(max_delay, asked) if asked is not None else backoff_s(
                attempt, base_delay=base_delay, max_delay=max_delay)
            attempt += 1
            await sleep(delay)
