"""Which Host and Origin a server answers: the defence of a keyless server against DNS rebinding.

A server without API keys trusts whoever reaches it, which is safe only if "whoever" is a program
on this machine. A web page elsewhere can reach it through the browser: it rebinds its own name
to 127.0.0.1 (the browser then sends `Host: evil.example`), or posts straight to
`http://127.0.0.1:8000` (the browser sends `Origin: https://evil.example`). So a keyless server
answers only requests addressed to a loopback name or address (or a name the operator allowed),
and refuses state-changing requests that a page of another origin sent.

A keyed server needs neither check: a browser never attaches a bearer key by itself, so a page
that does not know the key cannot act. It checks Host only if the operator lists allowed hosts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from tether.domain.hosts import allowed_host, host_of, is_loopback

UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class HostGuard:
    """Pure ASGI middleware: answers 400 to a Host it does not serve and 403 to a state-changing
    request from a foreign Origin, on every path, before any route or key check."""

    def __init__(self, app: ASGIApp, *, allowed_hosts: Iterable[str], check_origin: bool) -> None:
        self.app = app
        self.allowed = {allowed_host(h) for h in allowed_hosts}
        self.check_origin = check_origin

    def allows(self, host: str) -> bool:
        return "*" in self.allowed or host in self.allowed or is_loopback(host)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, message, code = refusal
        if scope["type"] == "websocket":  # closed before it is accepted: the client sees a 403
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                     "code": code}}).encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"x-should-retry", b"false")]})
        await send({"type": "http.response.body", "body": body})

    def refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        hosts = [v for k, v in headers if k.lower() == b"host"]
        if len(hosts) != 1:
            return 400, (f"The request must have exactly one Host header, not {len(hosts)}."), "invalid_host"
        raw = hosts[0].decode("latin-1")
        host = host_of(raw)
        if host is None or not self.allows(host):
            return 400, (f"This server does not answer requests for the host {_shown(raw)}. Without API keys it "
                         "answers only localhost, 127.0.0.1 and [::1] (a defence against DNS rebinding). To reach "
                         "it under another name, start it with --allowed-hosts NAME, or set TETHER_API_KEYS."
                         ), "invalid_host"
        if self.check_origin and scope.get("method") in UNSAFE_METHODS:
            origins = [v for k, v in headers if k.lower() == b"origin"]
            if origins and not all(self.origin_allowed(o.decode("latin-1")) for o in origins):
                return 403, (f"Requests from the web page at {_shown(origins[0].decode('latin-1'))} are refused: "
                             "a server without API keys accepts changes only from pages on localhost (or a "
                             "host given with --allowed-hosts)."), "invalid_origin"
        return None

    def origin_allowed(self, origin: str) -> bool:
        scheme, sep, authority = origin.strip().partition("://")  # "null" (a sandboxed page) has none
        if not sep or scheme.lower() not in ("http", "https") or "/" in authority:
            return False
        host = host_of(authority)
        return host is not None and self.allows(host)


def _shown(value: str, limit: int = 80) -> str:
    """A client's value fit for an error message: printable ASCII only, and short."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in value)
    return repr(clean if len(clean) <= limit else clean[:limit] + "...")

