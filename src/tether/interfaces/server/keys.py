"""API keys, tenants and request ids: one middleware for every /v1/ path.

A request with a key the server knows acts for that key's tenant (its hash); a keyless server
serves one tenant, "local". Every answer carries `x-request-id`; run paths carry the poll hint.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import Response

from tether.domain.ids import new_id
from tether.interfaces.server.assistants import tenant_of
from tether.interfaces.server.errors import ApiError, error_response


def add_key_middleware(app: FastAPI, keys: list[str], *, poll_after_ms: int) -> None:
    digests = [(hashlib.sha256(k.encode()).digest(), k) for k in keys]

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request_id = new_id("req")
        if request.url.path.startswith("/v1/"):
            if keys:
                headers = [v for k, v in request.scope["headers"] if k == b"authorization"]
                token = _bearer(headers[0]) if len(headers) == 1 else None
                match = _key_of(token, digests)
                if match is None:
                    response: Response = error_response(_auth_error(len(headers), token), request)
                    response.headers["x-request-id"] = request_id
                    return response
                request.state.tenant = tenant_of(match)
            else:
                request.state.tenant = tenant_of(None)
        response = await call_next(request)
        response.headers["x-request-id"] = request_id
        if "/runs" in request.url.path:
            response.headers["openai-poll-after-ms"] = str(poll_after_ms)
        return response


def _bearer(header: bytes) -> bytes | None:
    """The token of an `Authorization: Bearer TOKEN` header, as the bytes sent (any bytes at all)."""
    scheme, _, token = header.strip().partition(b" ")
    return (token.strip() or None) if scheme.lower() == b"bearer" else None


def _key_of(token: bytes | None, digests: list[tuple[bytes, str]]) -> str | None:
    """The key `token` is. Every key is compared, in constant time, by their SHA-256 digests: how long
    it takes tells neither which key came close nor how long the keys are."""
    if token is None:
        return None
    digest = hashlib.sha256(token).digest()
    match = None
    for key_digest, key in digests:
        if hmac.compare_digest(digest, key_digest):
            match = key
    return match


def _auth_error(headers: int, token: bytes | None) -> ApiError:
    if headers > 1:  # proxies disagree on which of several counts: refuse them all
        return ApiError(401, "The request has more than one Authorization header. Send exactly one "
                             "(Authorization: Bearer YOUR_KEY).", code="invalid_api_key")
    if not token:
        return ApiError(401, "You didn't provide an API key. You need to provide your API key in an Authorization "
                             "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
    # A hint of which key was sent, as OpenAI gives, only if it is plain text (never control bytes)
    printable = all(0x21 <= b <= 0x7E for b in token)
    shown = token[:3].decode() + "*" * 4 + token[-2:].decode() if printable and len(token) > 8 else "****"
    return ApiError(401, f"Incorrect API key provided: {shown}. The server's keys are set with TETHER_API_KEYS.",
                    code="invalid_api_key")
