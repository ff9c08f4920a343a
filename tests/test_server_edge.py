"""`tether serve` at its edge, through a real uvicorn subprocess on 127.0.0.1 and raw sockets: which
Host and Origin a keyless server answers (DNS rebinding), API keys sent as arbitrary bytes, slow
clients and the connection limit, what it prints at start, and what it refuses to serve.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from fake_openai import FakeOpenAI, FakeReply, FakeToolCall

sys.path.insert(0, str(Path(__file__).resolve().parent / "sdk"))
from server import TetherServer  # tests/sdk/server.py: the subprocess launcher

KEY = "sk-edge-key-one"
UNICODE_KEY = "clé-ключ-2"  # keys are compared as the UTF-8 bytes a client sends
MODEL_SECRET = "sk-openai-backend-secret"
URL_PASSWORD = "hunter2-url-password"
# Short read deadlines, so stalled clients are dropped within a test's patience.
DEADLINES = ["--header-timeout", "1", "--body-timeout", "1", "--write-timeout", "1"]


# -- raw HTTP ------------------------------------------------------------------------------------

def exchange(port: int, request: bytes, timeout_s: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send `request` as is on a new connection; the response's status, headers and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        with contextlib.suppress(OSError):  # the server answered and closed before reading it all
            s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < _length(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), data[:200]
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def _length(data: bytes) -> int:
    head, sep, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(head) + len(sep) + int(line.split(b":")[1])
    return 1 << 30  # no length: read to the end


def request(method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), *(k + b": " + v for k, v in headers),
             b"Connection: close", f"Content-Length: {len(body)}".encode()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def envelope(status: int, body: bytes, where: object = "") -> dict[str, Any]:
    parsed = json.loads(body)
    assert set(parsed) == {"error"} and set(parsed["error"]) == {"message", "type", "param", "code"}, (where, body)
    assert parsed["error"]["message"], (where, body)
    return parsed["error"]  # type: ignore[no-any-return]


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


# -- servers ---------------------------------------------------------------------------------------

def calculator_at_a_breakpoint(body: dict[str, Any]) -> FakeReply | str:
    if any(m.get("role") == "tool" for m in body.get("messages") or []):
        return "done"
    return FakeReply(tool_calls=[FakeToolCall("calculator", {"expression": "1+1"})])


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as f:
        f.respond_with(calculator_at_a_breakpoint)
        yield f


@pytest.fixture(scope="module")
def keyless(fake: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TetherServer]:
    with TetherServer(model_base_url=fake.base_url, home=tmp_path_factory.mktemp("keyless"),
                      extra_args=["--allowed-hosts", "tether.internal,[fd00::7]", *DEADLINES],
                      extra_env={"TETHER_SSE_KEEPALIVE_S": "0.5"}) as srv:
        yield srv
        assert srv.running, srv.output_tail()
        assert "Traceback" not in srv.stderr_text(), srv.output_tail()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TetherServer]:
    backend = f"http://backend:{URL_PASSWORD}@127.0.0.1:9/v1?api-key={URL_PASSWORD}"  # never called
    with TetherServer(model_base_url=backend, api_keys=[KEY, UNICODE_KEY], home=tmp_path_factory.mktemp("keyed"),
                      extra_args=["--max-connections", "30"], extra_env={"OPENAI_API_KEY": MODEL_SECRET}) as srv:
        yield srv
        assert srv.running, srv.output_tail()
        assert "Traceback" not in srv.stderr_text(), srv.output_tail()


# -- 4. DNS rebinding: a keyless server answers only loopback Host names, and local Origins -------------

REFUSED_HOSTS = [b"evil.example", b"evil.example:{port}", b"127.0.0.1.evil.example", b"localhost.evil.example",
                 b"", b"127.0.0.1:notaport", b"user@127.0.0.1", b"::1", b"[::1]x", b"localhost..",
                 b"127.0.0.1:99999", b"caf\xe9.example", b"[fd00::8]"]
SERVED_HOSTS = [b"localhost", b"LOCALHOST:{port}", b"localhost.", b"localhost.:{port}", b"127.0.0.1:{port}",
                b"127.0.0.2", b"[::1]:{port}", b"[::1]", b"[0:0::1]", b"tether.internal", b"Tether.Internal.:80",
                b"[fd00::7]:{port}"]
PATHS = ["/v1/assistants", "/v1/tether/runs/run_x", "/openapi.json", "/docs", "/"]


@pytest.mark.parametrize("host", REFUSED_HOSTS, ids=repr)
def test_a_keyless_server_refuses_foreign_hosts_on_every_path(keyless, host):
    host = host.replace(b"{port}", str(keyless.port).encode())
    for path in PATHS:
        status, headers, body = exchange(keyless.port, request("GET", path, [(b"Host", host)]))
        assert status == 400, (path, host, body)
        error = envelope(status, body, (path, host))
        assert error["code"] == "invalid_host" and "--allowed-hosts" in error["message"], error
        assert headers["content-type"] == "application/json"


@pytest.mark.parametrize("host", SERVED_HOSTS, ids=repr)
def test_a_keyless_server_answers_loopback_and_allowed_hosts(keyless, host):
    host = host.replace(b"{port}", str(keyless.port).encode())
    status, _, body = exchange(keyless.port, request("GET", "/v1/assistants", [(b"Host", host)]))
    assert status == 200, (host, body)


def test_missing_or_repeated_host_is_400_never_500(keyless):
    for raw in (b"GET /v1/assistants HTTP/1.0\r\n\r\n",  # HTTP/1.0 may omit Host: the guard refuses it
                b"GET /v1/assistants HTTP/1.1\r\nConnection: close\r\n\r\n",  # h11 refuses it
                request("GET", "/v1/assistants", [(b"Host", b"localhost"), (b"Host", b"evil.example")]),
                request("GET", "/v1/assistants", [(b"Host", b"localhost"), (b"Host", b"localhost")])):
        status, _, body = exchange(keyless.port, raw)
        assert status == 400, (raw, body)
        envelope(status, body, raw)


def test_a_keyless_server_refuses_changes_from_foreign_origins(keyless):
    port = keyless.port

    def post(origin: bytes | None, method: str = "POST", path: str = "/v1/threads") -> tuple[int, bytes]:
        headers = [(b"Host", f"127.0.0.1:{port}".encode()), (b"Content-Type", b"application/json")]
        headers += [(b"Origin", origin)] if origin is not None else []
        status, _, body = exchange(port, request(method, path, headers, b"{}" if method == "POST" else b""))
        return status, body

    for origin in (b"https://evil.example", b"http://evil.example:8000", b"null", b"http://127.0.0.1.evil.example",
                   b"file://", b"http://localhost:8000/path", b"garbage", b"http://[::1"):
        status, body = post(origin)
        assert status == 403, (origin, body)
        assert envelope(status, body, origin)["code"] == "invalid_origin"
    assert post(b"https://evil.example", "DELETE", "/v1/threads/thread_x")[0] == 403
    # The SDKs send no Origin; a page on loopback (any port) or an allowed host may
    for origin in (None, b"http://localhost:3000", f"http://127.0.0.1:{port}".encode(), b"http://[::1]:1",
                   b"https://tether.internal"):
        status, body = post(origin)
        assert status == 200 and json.loads(body)["object"] == "thread", (origin, body)
    # Reads are not changes (and a foreign page cannot read the answer without CORS)
    status, _, _ = exchange(port, request("GET", "/v1/assistants", [(b"Host", b"localhost"),
                                                                  (b"Origin", b"https://evil.example")]))
    assert status == 200


def test_a_keyed_server_checks_keys_not_hosts(keyed):
    """A browser never attaches a bearer key by itself, so a keyed server needs no Host or Origin check."""
    auth = (b"Authorization", b"Bearer " + KEY.encode())
    status, _, body = exchange(keyed.port, request("POST", "/v1/threads", [
        (b"Host", b"api.example.com"), (b"Origin", b"https://app.example.com"), auth,
        (b"Content-Type", b"application/json")], b"{}"))
    assert status == 200, body
    status, _, body = exchange(keyed.port, request("GET", "/v1/assistants", [(b"Host", b"evil.example")]))
    assert status == 401, body


@pytest.mark.parametrize("value", ["http://x", "x:80,", "*.example.com"])
def test_bad_allowed_hosts_exit_2_with_one_line(cli, value):
    proc = cli("serve", "--allowed-hosts", value, "--port", "1")
    assert proc.returncode == 2, proc.all
    assert "--allowed-hosts" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.all


# -- 6. auth never 500s: keys are bytes, compared in constant time ------------------------------------

def auth_request(*values: bytes) -> bytes:
    return request("GET", "/v1/assistants", [(b"Host", b"127.0.0.1"), *((b"Authorization", v) for v in values)])


@pytest.mark.parametrize("values", [
    [b"Bearer \xe9t\xe9-latin-1-bytes"],
    ["Bearer ключ-utf8".encode()],
    ["Bearer clé-ключ-3".encode()],  # close to a real key
    [b"Bearer " + KEY.encode() + b"\x80"],
    [b"Bearer \x01\x02\x7f\x1b[31m-terminal-escapes"],
    [b"Bearer " + b"k" * 15_000],
    [b"Basic " + KEY.encode()],
    [b"Bearer"],
    [b"Bearer " + KEY.encode(), b"Bearer " + KEY.encode()],  # repeated, even both right
    [b"Bearer " + KEY.encode(), b"Bearer wrong"],
    [b"Bearer wrong", b"Bearer " + KEY.encode()],
], ids=lambda v: repr(v)[:40])
def test_any_authorization_bytes_are_a_401_in_the_envelope(keyed, values):
    status, headers, body = exchange(keyed.port, auth_request(*values))
    assert status == 401, (values, body)
    error = envelope(status, body, values)
    assert headers["content-type"] == "application/json"
    message = error["message"]
    assert message.isprintable() and message.isascii() and len(message) < 300, message
    for value in values:
        token = value.partition(b" ")[2]
        assert len(token) < 6 or token.decode("latin-1") not in message, message


@pytest.mark.parametrize("values", [[b"Bearer a\x00b"], [b"Bearer " + b"k" * 100_000], [b"Bearer \r x"]],
                         ids=["nul", "100 KB", "bare CR"])
def test_headers_the_http_parser_refuses_are_4xx_in_the_envelope(keyed, values):
    """Control bytes are not allowed in an HTTP header, and a head may have at most 16 KiB: such a request
    never reaches the key check, and is answered 400 or 431 in OpenAI's envelope (never a 500)."""
    status, _, body = exchange(keyed.port, auth_request(*values))
    assert status in (400, 431), (status, body)
    envelope(status, body, values)
    assert b"kkkk" not in body


def test_keys_match_as_utf8_bytes_whatever_the_case_of_bearer(keyed):
    for value in (b"Bearer " + KEY.encode(), b"bearer " + KEY.encode(), b"BEARER  " + KEY.encode(),
                  b"Bearer " + UNICODE_KEY.encode()):
        status, _, body = exchange(keyed.port, auth_request(value))
        assert status == 200, (value, body)


# -- 7. slow clients are bounded ------------------------------------------------------------------------

def test_stalled_clients_are_closed_and_never_delay_normal_requests(keyless):
    """200 connections trickle a header, 50 a body: normal requests go on being answered, and the server
    closes every stalled connection (after its 1 s read deadlines)."""
    port = keyless.port
    header = request("GET", "/v1/assistants", [(b"Host", b"localhost"), (b"X-Slow", b"y" * 100)])
    body = b"{" + b" " * 500 + b"}"
    head_of_post = request("POST", "/v1/threads", [(b"Host", b"localhost"), (b"Content-Type", b"application/json")],
                           body)[: -len(body)]
    socks: dict[socket.socket, bytes] = {}  # what each still has to send
    for i in range(250):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setblocking(False)
        if i < 200:
            socks[s] = header
        else:
            s.sendall(head_of_post)
            socks[s] = body
    answers: dict[socket.socket, bytes] = {s: b"" for s in socks}
    open_ = set(socks)
    last = [0.0]

    def trickle() -> None:
        """Reads what the server sent; a socket it closed leaves `open_`. Every 0.5 s, one byte more
        from each open socket (so none could finish its request within the test)."""
        for s in list(open_):
            try:
                chunk = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            answers[s] += chunk
            if not chunk:
                open_.discard(s)
        if time.monotonic() - last[0] < 0.5:
            return
        last[0] = time.monotonic()
        for s in list(open_):
            try:
                s.send(socks[s][:1])
                socks[s] = socks[s][1:]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                open_.discard(s)

    try:
        with httpx2.Client(base_url=keyless.base_url, timeout=10) as normal:
            for _ in range(5):  # each answered (within the client's 10 s timeout) while 250 stall
                trickle()
                assert normal.get("/assistants").status_code == 200
                time.sleep(0.2)
        wait_for("every stalled connection to be closed", lambda: (trickle(), not open_)[1], timeout_s=20)
    finally:
        for s in socks:
            s.close()
    assert all(not a or a.startswith(b"HTTP/1.1 408 ") for a in answers.values()), set(answers.values())
    assert any(answers.values())  # clients that sent part of a request are told why (unless reset first)


def test_a_stream_outlives_the_read_deadlines(keyless):
    """The deadlines cover reading a request, never writing its response: a streamed run that waits at a
    breakpoint for longer than both keeps its stream, then finishes in it."""
    with httpx2.Client(base_url=keyless.base_url, timeout=30) as http:
        assistant = http.post("/assistants", json={
            "model": "gpt-test", "tether_tools": [{"type": "calculator"}],
            "tether_breakpoints": ["before_tool:calculator"]}).json()
        thread = http.post("/threads", json={"messages": [{"role": "user", "content": "add"}]}).json()
        began = time.monotonic()
        with http.stream("POST", f"/threads/{thread['id']}/runs", json={"assistant_id": assistant["id"],
                                                                          "stream": True}) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            run_id = None
            for line in lines:
                if line.startswith("data: {") and run_id is None:
                    run_id = json.loads(line[6:])["id"]
                if line == ": keep-alive" and time.monotonic() - began > 3:  # both deadlines are 1 s
                    break

            def paused() -> dict[str, Any] | None:
                view = http.get(f"/tether/runs/{run_id}").json()
                return view if view["pause_id"] else None

            view = wait_for("the pause", paused)
            assert http.post(f"/tether/runs/{run_id}/answer", json={"pause_id": view["pause_id"],
                                                                     "action": "continue"}).status_code == 200
            rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]" and "event: thread.run.completed" in rest, rest[-6:]


def test_a_client_that_reads_nothing_is_dropped(keyless):
    """A client asks for a big answer and reads none of it: once the server cannot write for the
    --write-timeout of 1 s (the socket's buffers are full), it drops the connection. A client that
    reads gets the whole answer."""
    with httpx2.Client(base_url=keyless.base_url, timeout=30) as http:
        have = len(http.get("/assistants", params={"limit": 100}).json()["data"])
        for _ in range(100 - have):  # 100 assistants of 100 KB: a list of them is 10 MB, more than the buffers
            assert http.post("/assistants", json={"model": "m", "instructions": "x" * 100_000}).status_code == 200
        whole = len(http.get("/assistants", params={"limit": 100}).content)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", keyless.port))
        s.sendall(request("GET", "/v1/assistants?limit=100", [(b"Host", b"localhost")]))
        time.sleep(4)  # the server fills the buffers, cannot write for 1 s, and drops this client
        received = 0
        s.settimeout(10)
        try:
            while chunk := s.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass
    assert received < whole, "the server kept the connection of a client that read nothing"
    with httpx2.Client(base_url=keyless.base_url, timeout=30) as http:  # a client that reads gets it all
        assert len(http.get("/assistants", params={"limit": 100}).content) == whole


def test_connections_beyond_the_limit_are_refused_at_once(keyed):
    """With --max-connections 30, a 31st connection is answered 503 and closed, without waiting for a
    request; once connections close, requests are served again."""
    idle = [socket.create_connection(("127.0.0.1", keyed.port), timeout=10) for _ in range(30)]
    try:
        for s in idle:  # an answered request: the server has surely accepted it (and keeps it alive)
            s.sendall(b"GET /v1/assistants HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                      + KEY.encode() + b"\r\n\r\n")
            data = b""
            while len(data) < _length(data):
                data += s.recv(65536)
            assert data.startswith(b"HTTP/1.1 200 "), data
        def refused() -> bytes:
            with socket.create_connection(("127.0.0.1", keyed.port), timeout=10) as s:
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                return data

        answer = wait_for("a refused connection", lambda: refused() or None)  # the 30 are accepted meanwhile
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 "), answer
        assert envelope(503, body)["code"] == "too_many_connections"
    finally:
        for s in idle:
            s.close()
    auth = {"Authorization": f"Bearer {KEY}"}
    wait_for("a request served", lambda: httpx2.get(f"{keyed.base_url}/assistants", headers=auth,
                                                    timeout=10).status_code == 200)


@pytest.mark.parametrize(("flag", "value"), [("--header-timeout", "0"), ("--body-timeout", "nan"),
                                             ("--max-connections", "-5"), ("--write-timeout", "inf")])
def test_bad_limits_exit_2_with_one_line(cli, flag, value):
    proc = cli("serve", flag, value, "--port", "1")
    assert proc.returncode == 2, proc.all
    assert flag in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.all


# -- 9. what is refused, how tools look, what the server says at start ------------------------------------

@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/files"), ("GET", "/v1/files"), ("GET", "/v1/files/file-abc"), ("GET", "/v1/files/file-abc/content"),
    ("DELETE", "/v1/files/file-abc"), ("POST", "/v1/vector_stores"), ("GET", "/v1/vector_stores/vs_1"),
    ("POST", "/v1/vector_stores/vs_1/file_batches"), ("DELETE", "/v1/vector_stores/vs_1/files/file-1")])
def test_files_and_vector_stores_are_a_400_that_says_so(keyed, method, path):
    headers = [(b"Host", b"127.0.0.1"), (b"Authorization", b"Bearer " + KEY.encode())]
    status, _, body = exchange(keyed.port, request(method, path, headers, b"{}" if method == "POST" else b""))
    assert status == 400, body
    error = envelope(status, body)
    assert "not supported" in error["message"] and error["code"] == "unsupported", error


def test_tools_carry_only_their_own_type_s_key(keyless):
    tools = [{"type": "code_interpreter"}, {"type": "function", "function": {"name": "get_weather"}}]
    with httpx2.Client(base_url=keyless.base_url, timeout=30) as http:
        r = http.post("/assistants", json={"model": "gpt-test", "tools": tools})
        assert r.status_code == 200, r.text
        for assistant in (r.json(), http.get(f"/assistants/{r.json()['id']}").json()):
            assert assistant["tools"][0] == {"type": "code_interpreter"}, assistant["tools"]
            assert set(assistant["tools"][1]) == {"type", "function"}, assistant["tools"]
            assert assistant["tools"][1]["function"]["name"] == "get_weather"
        run = http.post("/threads/runs", json={"assistant_id": r.json()["id"], "thread": {"messages": [
            {"role": "user", "content": "hi"}]}}).json()
        assert run["tools"][0] == {"type": "code_interpreter"}, run
        assert set(run["tools"][1]) == {"type", "function"}, run


def test_the_server_says_where_it_listens_and_never_a_secret(keyed):
    said = keyed.stderr_text() + keyed.stdout_text()
    assert f"http://127.0.0.1:{keyed.port}/v1" in said, said
    assert str(keyed.home / "t.db") in said and "2 API keys" in said, said
    assert "127.0.0.1:9/v1" in said and "MCP servers: none" in said and "refused" in said, said
    for secret in (KEY, UNICODE_KEY, MODEL_SECRET, URL_PASSWORD):
        assert secret not in said, secret
