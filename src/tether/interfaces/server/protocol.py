"""uvicorn's HTTP/1.1 protocol (h11) with the bounds a public server needs against slow clients.

uvicorn bounds the idle time between keep-alive requests, but not how long a client may take to
send a request: a connection that trickles its header or body one byte at a time stays open for
ever, and enough of them exhaust the server. This protocol adds

- a header deadline: the whole request head must arrive within `header_timeout_s`, counted from
  the connection (or, on a kept-alive one, from the next request's first byte);
- a body deadline: the whole request body must arrive within `body_timeout_s` of its head;
- a write deadline: a client that stops reading what the server sends (its buffers full, writing
  paused) has `write_timeout_s` to make room again, or the connection is dropped; so clients that
  pipeline requests and never read their answers cannot hold connections either;
- a connection limit: beyond `max_connections` open connections, a new one is answered 503 and
  closed at once, so stalled connections cannot pile up to the process's file limit.

The read deadlines cover reading the request only: a response (an SSE stream that waits at a
breakpoint for an hour) is never cut by them, nor by the write deadline while its client reads. A
timed-out request is answered 408 when the server can still say so, then closed.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.h11_impl import H11Protocol

# h11's own limit on a request head (16 KiB): larger heads are answered 431, however they arrive
MAX_HEAD_BYTES = 16 * 1024
LINGER_S = 1.0  # how long an answered connection still reads (and drops) before it is closed


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 1000
    write_timeout_s: float = 30.0


def _envelope(message: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                 "code": code}}).encode()


def _raw_response(status: int, reason: str, message: str, code: str) -> bytes:
    """A whole HTTP/1.1 response in OpenAI's error envelope, for a connection about to be closed."""
    body = _envelope(message, code)
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n")
    return head.encode() + body


def _head_limited(app: ASGI3Application) -> ASGI3Application:
    """`app`, answering 431 to a request whose headers exceed MAX_HEAD_BYTES. h11 refuses such a head
    only while it is incomplete, so whether it did would depend on how the bytes were split."""

    async def bounded(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and sum(len(k) + len(v) + 4 for k, v in scope["headers"]) > MAX_HEAD_BYTES:
            body = _envelope(f"The request's headers are larger than {MAX_HEAD_BYTES // 1024} KiB.",
                             "headers_too_large")
            await send({"type": "http.response.start", "status": 431, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    return bounded


class BoundedH11Protocol(H11Protocol):
    limits = ConnectionLimits()  # a subclass per server sets its own (`protocol_class`)
    _last_warning = -1e9

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.app = _head_limited(self.app)
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: str | None = None  # "header" or "body": which deadline runs
        self._refused = False
        self._got_bytes = False
        self._lingering = False
        self._write_stall: asyncio.TimerHandle | None = None

    # -- connections -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.server_state.connections) >= self.limits.max_connections:
            self._refused = True
            now = self.loop.time()
            if now - BoundedH11Protocol._last_warning > 60:  # once a minute, not once a connection
                BoundedH11Protocol._last_warning = now
                self.logger.warning("refusing connections: %d are open (--max-connections)",
                                    self.limits.max_connections)
            transport.write(_raw_response(503, "Service Unavailable", "The server has too many open connections; "
                                          "try again shortly.", "too_many_connections"))
            transport.close()
            return
        super().connection_made(transport)
        self._arm("header")  # a connection that never sends a byte is a stalled header too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._disarm()
        self._unstall()
        super().connection_lost(exc)

    # -- a client that does not read --------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_stall is None:
            self._write_stall = self.loop.call_later(self.limits.write_timeout_s, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._unstall()

    def _unstall(self) -> None:
        if self._write_stall is not None:
            self._write_stall.cancel()
            self._write_stall = None

    def _stalled(self) -> None:
        self._write_stall = None
        self.logger.debug("dropping a connection that read nothing of its response for %ss",
                          self.limits.write_timeout_s)
        if self.cycle is not None:  # the app stops writing
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.abort()  # close() would wait for the buffer to drain, which it will not

    def data_received(self, data: bytes) -> None:
        if self._lingering:  # answered and closing: what still comes is dropped
            return
        self._got_bytes = True
        super().data_received(data)
        self._follow()

    def shutdown(self) -> None:
        if self._lingering:  # already answered (h11 may be in its error state): just close
            self.transport.close()
            return
        super().shutdown()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow(idle_ok=True)

    # -- deadlines -------------------------------------------------------------------------------

    def _follow(self, idle_ok: bool = False) -> None:
        """Arm or disarm the deadline for what the client is sending now (h11's view of it)."""
        if self.transport.is_closing():
            self._disarm()
        elif self.conn.their_state is h11.IDLE:
            # Between kept-alive requests uvicorn's keep-alive timeout applies; the header deadline
            # starts with the next request's first byte.
            if idle_ok:
                self._disarm()
                self._got_bytes = False
            elif self._phase != "header":
                self._arm("header")
        elif self.conn.their_state is h11.SEND_BODY:
            if self._phase != "body":
                self._arm("body")
        else:  # the request is read (DONE, MUST_CLOSE...): what remains is the response
            self._disarm()

    def _arm(self, phase: str) -> None:
        self._disarm()
        timeout = self.limits.header_timeout_s if phase == "header" else self.limits.body_timeout_s
        self._phase = phase
        self._deadline = self.loop.call_later(timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._phase = None, None

    def _expired(self) -> None:
        phase, self._deadline, self._phase = self._phase, None, None
        if self.transport.is_closing():
            return
        if phase == "header":
            self.logger.debug("closing a connection that did not send a request head within %ss",
                             self.limits.header_timeout_s)
            if self._got_bytes:  # a client that sent nothing is not owed an answer (browsers preconnect)
                self._answer_and_close(_raw_response(
                    408, "Request Timeout", f"The request's headers did not arrive within "
                    f"{self.limits.header_timeout_s:g} s.", "request_timeout"))
                return
        else:
            self.logger.debug("closing a connection that did not send its request body within %ss",
                             self.limits.body_timeout_s)
            cycle = self.cycle
            answer = cycle is not None and not cycle.response_started
            if cycle is not None:  # the app stops waiting for the body and writes nothing more
                cycle.disconnected = True
                cycle.message_event.set()
            if answer:
                self._answer_and_close(_raw_response(
                    408, "Request Timeout", f"The request's body did not arrive within "
                    f"{self.limits.body_timeout_s:g} s.", "request_timeout"))
                return
        self.transport.close()

    def _answer_and_close(self, response: bytes) -> None:
        """Write `response` and close, dropping what the client still sends for a moment: closing
        with unread bytes would reset the connection, and the response could be lost on its way."""
        self._disarm()
        self._lingering = True
        self.transport.write(response)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    # -- the head h11 refuses: OpenAI's envelope, not uvicorn's plain text ----------------------

    def send_400_response(self, msg: str) -> None:
        buffered = self.conn.trailing_data[0]
        too_large = len(buffered) >= MAX_HEAD_BYTES and b"\r\n\r\n" not in buffered
        if too_large:
            response = _raw_response(431, "Request Header Fields Too Large", "The request's headers are larger "
                                     f"than {MAX_HEAD_BYTES // 1024} KiB.", "headers_too_large")
        else:
            response = _raw_response(400, "Bad Request", "Invalid HTTP request: the request line or a header "
                                     "is malformed (control characters are not allowed in headers).",
                                     "invalid_http_request")
        self._answer_and_close(response)


def protocol_class(limits: ConnectionLimits) -> type[BoundedH11Protocol]:
    """The protocol class to give uvicorn (`http=`) for a server with these limits."""
    return type("BoundedH11Protocol", (BoundedH11Protocol,), {"limits": limits})
