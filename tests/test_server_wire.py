"""`tether serve` on the wire: a real uvicorn process, fuzzed from its own OpenAPI document, and
plain HTTP checks of what the `openai` SDK relies on (see /work/shared/spec/assistants-api.md and
docs/server.md).

1. schemathesis generates requests (valid and invalid) for every operation of /openapi.json;
   no answer may be a 5xx, and every 4xx is OpenAI's envelope, never FastAPI's `{"detail": ...}`.
2. httpx2 checks headers, malformed bodies, nulls, refusals, pagination, 404s and tenants.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from fake_openai import FakeOpenAI

KEY1, KEY2, KEY3 = "k1", "k2", "k3"
AUTH1 = {"Authorization": f"Bearer {KEY1}"}
AUTH2 = {"Authorization": f"Bearer {KEY2}"}
AUTH3 = {"Authorization": f"Bearer {KEY3}"}  # a tenant only the cursor test uses
INCLUDE = "step_details.tool_calls[*].file_search.results[*].content"


# -- the server ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    root: str
    proc: subprocess.Popen[bytes]
    log: Path
    ids: dict[str, str]  # real objects of KEY1, by path parameter name

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _wait_ready(root: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tether serve exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            httpx2.get(f"{root}/openapi.json", timeout=2)
            return
        except httpx2.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"tether serve did not answer within {timeout_s}s:\n{log.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    fake = FakeOpenAI().start()
    if hasattr(fake, "respond_with"):
        fake.respond_with(lambda body: "fine, thanks")
    else:
        fake.queue(*["fine, thanks"] * 2000)
    home = tmp_path_factory.mktemp("tether-home")
    port = _free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("TETHER_DATABASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "TETHER_API_KEYS")}
    env.update({"TETHER_HOME": str(home), "OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": "x",
                "TETHER_API_KEYS": f"{KEY1},{KEY2},{KEY3}", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"})
    log = home / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tether.interfaces.cli.app", "serve", "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, cwd=str(home), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)
    root = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(root, proc, log)
        yield Server(root, proc, log, _seed(root))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        fake.close()


def _seed(root: str) -> dict[str, str]:
    """Real objects (an assistant, a thread with a finished run, its message and step) for the fuzzer."""
    with httpx2.Client(base_url=f"{root}/v1", headers=AUTH1, timeout=30) as c:
        asst = c.post("/assistants", json={"model": "gpt-test", "name": "seed"}).json()
        thread = c.post("/threads", json={"messages": [{"role": "user", "content": "hi"}]}).json()
        run = _finished(c, thread["id"], c.post(f"/threads/{thread['id']}/runs",
                                                json={"assistant_id": asst["id"]}).json())
        message = c.get(f"/threads/{thread['id']}/messages").json()["data"][0]
        step = c.get(f"/threads/{thread['id']}/runs/{run['id']}/steps").json()["data"][0]
    return {"assistant_id": asst["id"], "thread_id": thread["id"], "run_id": run["id"],
            "message_id": message["id"], "step_id": step["id"]}


def _finished(c: httpx2.Client, thread_id: str, run: dict[str, Any], timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while run["status"] in ("queued", "in_progress", "cancelling"):
        assert time.monotonic() < deadline, f"run {run['id']} is still {run['status']}"
        time.sleep(0.05)
        run = c.get(f"/threads/{thread_id}/runs/{run['id']}").json()
    return run


@pytest.fixture
def client(server: Server) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=f"{server.root}/v1", headers=AUTH1, timeout=30) as c:
        yield c


# -- what every error looks like -----------------------------------------------------------------


def assert_envelope(status: int, body: Any, where: str = "") -> dict[str, Any]:
    """OpenAI's error envelope: {"error": {"message": str, "type": str, "param": str|null, "code": str|null}}."""
    assert isinstance(body, dict) and "detail" not in body, f"{where}: not OpenAI's envelope: {body!r}"
    assert set(body) == {"error"}, f"{where}: {status} body {body!r}"
    error = body["error"]
    assert isinstance(error, dict), f"{where}: {body!r}"
    assert {"message", "type", "param", "code"} <= set(error), f"{where}: {body!r}"
    assert isinstance(error["message"], str) and error["message"], f"{where}: {body!r}"
    assert isinstance(error["type"], str) and error["type"], f"{where}: {body!r}"
    assert error["param"] is None or isinstance(error["param"], str), f"{where}: {body!r}"
    assert error["code"] is None or isinstance(error["code"], str), f"{where}: {body!r}"
    return error  # type: ignore[no-any-return]


def error_of(response: httpx2.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    return assert_envelope(status, response.json(), f"{response.request.method} {response.request.url}")


# -- 1. schemathesis over the served OpenAPI document ---------------------------------------------


def _openapi_document() -> dict[str, Any]:
    """The document `tether serve` serves at /openapi.json, built in-process for test collection
    (schemathesis' lazy `from_fixture` loader does not work with pytest 9's node ids, so the schema
    must exist at import time; test_fuzzed_document_is_the_served_one checks it is the served one)."""
    from tether.adapters.store.sql import open_store
    from tether.interfaces.server import create_app
    from tether.services.compose import services_for
    from tether.services.runs import RunsService

    return create_app(services_for(RunsService(open_store("memory://")))).openapi()


DOCUMENT = _openapi_document()
schema = schemathesis.openapi.from_dict(
    DOCUMENT, config=schemathesis.Config.from_dict({"phases": {"stateful": {"enabled": False}}}))
_calls = itertools.count()
BAD_MESSAGE_PARTS = ("supplied: None", "parameter: 'None'", "for 'None'", "Traceback")  # a lost parameter name


def test_fuzzed_document_is_the_served_one(server: Server) -> None:
    assert httpx2.get(f"{server.root}/openapi.json").json() == DOCUMENT


@schema.parametrize()
@settings(max_examples=20, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_fuzz_no_server_errors_and_openai_envelopes(case: Any, server: Server) -> None:
    # Every other call (not DELETE: the seeded objects must survive) goes to objects that exist.
    if case.method.upper() != "DELETE" and next(_calls) % 2 == 0 and case.path_parameters:
        for name in case.path_parameters:
            if name in server.ids:
                case.path_parameters[name] = server.ids[name]
    response = case.call(base_url=server.root, headers=AUTH1, timeout=15)
    where = f"{case.method} {case.formatted_path} -> {response.status_code}\n{response.text[:500]}"
    assert response.status_code < 500, f"{where}\n{server.tail()}"
    case.validate_response(response, checks=[not_a_server_error], headers=AUTH1,
                           transport_kwargs={"base_url": server.root})
    assert "x-request-id" in {k.lower() for k in response.headers}, where
    if 400 <= response.status_code < 500:
        assert response.status_code != 422, where
        message = assert_envelope(response.status_code, json.loads(response.content), where)["message"]
        assert not any(bad in message for bad in BAD_MESSAGE_PARTS), where


# -- 2. plain wire checks -------------------------------------------------------------------------


def make_assistant(c: httpx2.Client, **fields: Any) -> dict[str, Any]:
    r = c.post("/assistants", json={"model": "gpt-test", **fields})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def make_thread(c: httpx2.Client, *texts: str) -> dict[str, Any]:
    r = c.post("/threads", json={"messages": [{"role": "user", "content": t} for t in texts]})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def finished_run(c: httpx2.Client, **body: Any) -> dict[str, Any]:
    thread = make_thread(c, "hello")
    r = c.post(f"/threads/{thread['id']}/runs", json={"assistant_id": make_assistant(c)["id"], **body})
    assert r.status_code == 200, r.text
    run = _finished(c, thread["id"], r.json())
    assert run["status"] == "completed", run
    return run


def test_every_response_has_a_request_id(server: Server, client: httpx2.Client) -> None:
    responses = [
        httpx2.get(f"{server.root}/openapi.json"),
        client.get("/assistants"),
        client.post("/assistants", content=b"{", headers={"content-type": "application/json"}),
        client.get("/assistants/asst_nope"),
        client.get("/no/such/route"),
        client.put("/assistants"),
        httpx2.get(f"{server.root}/v1/assistants"),  # no key
        httpx2.get(f"{server.root}/v1/assistants", headers={"Authorization": "Bearer wrong-key"}),
        httpx2.get(f"{server.root}/nowhere"),
    ]
    ids = [r.headers.get("x-request-id") for r in responses]
    assert all(ids), [(r.request.url, r.status_code) for r, i in zip(responses, ids, strict=True) if not i]
    assert len(set(ids)) == len(ids)


def test_wrong_or_missing_key_is_401_in_the_envelope(server: Server) -> None:
    url = f"{server.root}/v1/assistants"
    error_of(httpx2.get(url), 401)
    assert error_of(httpx2.get(url, headers={"Authorization": "Bearer nope"}), 401)["code"] == "invalid_api_key"
    r = httpx2.post(url, json={"model": "m"}, headers={"Authorization": "Basic azE6"})
    error_of(r, 401)
    assert r.headers.get("x-should-retry") == "false"


def test_run_responses_have_the_poll_hint(client: httpx2.Client) -> None:
    thread = make_thread(client, "hi")
    created = client.post(f"/threads/{thread['id']}/runs", json={"assistant_id": make_assistant(client)["id"]})
    run = _finished(client, thread["id"], created.json())
    base = f"/threads/{thread['id']}/runs"
    responses = [created, client.get(f"{base}/{run['id']}"), client.get(base), client.get(f"{base}/{run['id']}/steps"),
                 client.post(f"{base}/{run['id']}", json={"metadata": {"k": "v"}})]
    for r in responses:
        assert r.status_code == 200, r.text
        assert int(r.headers["openai-poll-after-ms"]) > 0, (r.request.url, dict(r.headers))


def test_post_errors_tell_the_sdk_not_to_retry(client: httpx2.Client) -> None:
    thread = make_thread(client, "hi")
    failures = [
        (client.post("/assistants", content=b"{", headers={"content-type": "application/json"}), 400),
        (client.post("/assistants", json={"model": "m", "nope": 1}), 400),
        (client.post("/assistants/asst_nope", json={"name": "x"}), 404),
        (client.post("/threads/runs", json={"assistant_id": "asst_nope"}), 404),
        (client.post(f"/threads/{thread['id']}/runs", json={"assistant_id": "asst_nope"}), 404),
        (client.post(f"/threads/{thread['id']}/runs/run_nope/cancel"), 404),
        (client.post("/no/such/route", json={}), 404),
    ]
    for r, status in failures:
        error_of(r, status)
        assert r.headers.get("x-should-retry") == "false", (r.request.url, dict(r.headers))


def test_cancel_with_an_empty_json_body(client: httpx2.Client) -> None:
    thread = make_thread(client, "hi")
    r = client.post(f"/threads/{thread['id']}/runs", json={"assistant_id": make_assistant(client)["id"],
                                                           "tether_breakpoints": ["before_model"]})
    assert r.status_code == 200, r.text
    run = r.json()
    deadline = time.monotonic() + 30
    while not run.get("tether_pause"):  # paused at the breakpoint: active until cancelled
        assert time.monotonic() < deadline and run["status"] in ("queued", "in_progress"), run
        time.sleep(0.05)
        run = client.get(f"/threads/{thread['id']}/runs/{run['id']}").json()
    # what the SDK sends for runs.cancel: no body, content-length 0, content-type application/json
    cancel = f"/threads/{thread['id']}/runs/{run['id']}/cancel"
    r = client.post(cancel, content=b"", headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["id"] == run["id"] and r.json()["status"] in ("cancelling", "cancelled")
    assert _finished(client, thread["id"], r.json())["status"] == "cancelled"
    again = client.post(cancel, content=b"", headers={"content-type": "application/json"})
    assert "cancel" in error_of(again, 400)["message"].lower()


def test_steps_accept_the_file_search_include(client: httpx2.Client) -> None:
    run = finished_run(client)
    steps = f"/threads/{run['thread_id']}/runs/{run['id']}/steps"
    listed = client.get(steps, params={"include[]": INCLUDE})
    assert listed.status_code == 200, listed.text
    assert listed.json()["data"], listed.json()
    step_id = listed.json()["data"][0]["id"]
    one = client.get(f"{steps}/{step_id}", params={"include[]": INCLUDE})
    assert one.status_code == 200 and one.json()["id"] == step_id, one.text
    assert client.get(f"{steps}/{step_id}", params={"include[]": [INCLUDE, INCLUDE]}).status_code == 200
    for garbage in ("", "step_details", "*", INCLUDE + "x"):
        assert error_of(client.get(steps, params={"include[]": garbage}), 400)["param"] == "include[]"


def test_explicit_nulls_mean_the_defaults(client: httpx2.Client) -> None:
    nulls = {k: None for k in ("name", "description", "instructions", "tools", "tool_resources", "metadata",
                               "temperature", "top_p", "response_format", "reasoning_effort")}
    a = make_assistant(client, **nulls)
    assert (a["name"], a["description"], a["instructions"]) == (None, None, None)
    assert (a["tools"], a["metadata"], a["temperature"], a["top_p"]) == ([], {}, 1.0, 1.0)
    assert a["response_format"] == "auto"
    assert client.get(f"/assistants/{a['id']}").json() == a
    # an update with null puts the default back
    client.post(f"/assistants/{a['id']}", json={"temperature": 0.3, "name": "n", "metadata": {"k": "v"}})
    back = client.post(f"/assistants/{a['id']}", json={"temperature": None, "name": None, "metadata": None})
    assert back.status_code == 200, back.text
    assert (back.json()["temperature"], back.json()["name"], back.json()["metadata"]) == (1.0, None, {})
    # threads, messages and runs take nulls too
    t = client.post("/threads", json={"messages": None, "metadata": None, "tool_resources": None})
    assert t.status_code == 200 and t.json()["metadata"] == {}, t.text
    m = client.post(f"/threads/{t.json()['id']}/messages", json={"role": "user", "content": "hi",
                                                                 "attachments": None, "metadata": None})
    assert m.status_code == 200, m.text
    r = client.post(f"/threads/{t.json()['id']}/runs", json={
        "assistant_id": a["id"], "model": None, "instructions": None, "additional_instructions": None,
        "additional_messages": None, "tools": None, "metadata": None, "temperature": None, "top_p": None,
        "stream": None, "tool_choice": None, "parallel_tool_calls": None, "response_format": None,
        "max_prompt_tokens": None, "max_completion_tokens": None, "truncation_strategy": None})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "gpt-test" and r.json()["metadata"] == {} and r.json()["tools"] == []
    assert _finished(client, t.json()["id"], r.json())["status"] == "completed"


@pytest.mark.parametrize("path", ["/assistants", "/threads", "/threads/{thread}/messages", "/threads/{thread}/runs",
                                  "/threads/runs", "/assistants/{assistant}", "/threads/{thread}"])
@pytest.mark.parametrize("key", ["bogus", "x-odd-key", "Temperature"])
def test_an_unknown_body_key_is_named(client: httpx2.Client, path: str, key: str) -> None:
    a, t = make_assistant(client), make_thread(client)
    valid = {"/assistants": {"model": "gpt-test"}, "/threads": {}, "/threads/{thread}/messages":
             {"role": "user", "content": "hi"}, "/threads/{thread}/runs": {"assistant_id": a["id"]},
             "/threads/runs": {"assistant_id": a["id"]}, "/assistants/{assistant}": {}, "/threads/{thread}": {}}
    r = client.post(path.format(thread=t["id"], assistant=a["id"]), json={**valid[path], key: 1})
    error = error_of(r, 400)
    assert error["message"] == f"Unrecognized request argument supplied: {key}"
    assert error["type"] == "invalid_request_error"


FILES_REFUSED = [
    ("/assistants", {"model": "gpt-test", "tools": [{"type": "file_search"}]}),
    ("/assistants", {"model": "gpt-test", "tool_resources": {"file_search": {"vector_store_ids": ["vs_1"]}}}),
    ("/assistants", {"model": "gpt-test", "tool_resources": {"code_interpreter": {"file_ids": ["file-1"]}}}),
    ("/assistants/{assistant}", {"tools": [{"type": "file_search"}]}),
    ("/threads", {"tool_resources": {"code_interpreter": {"file_ids": ["file-1"]}}}),
    ("/threads", {"messages": [{"role": "user", "content": "x",
                                "attachments": [{"file_id": "file-1", "tools": [{"type": "file_search"}]}]}]}),
    ("/threads/{thread}", {"tool_resources": {"file_search": {"vector_store_ids": ["vs_1"]}}}),
    ("/threads/{thread}/messages", {"role": "user", "content": "x",
                                    "attachments": [{"file_id": "file-1", "tools": [{"type": "code_interpreter"}]}]}),
    ("/threads/{thread}/messages", {"role": "user", "content": [{"type": "image_file",
                                                                 "image_file": {"file_id": "file-1"}}]}),
    ("/threads/{thread}/runs", {"assistant_id": "{assistant}", "tools": [{"type": "file_search"}]}),
    ("/threads/runs", {"assistant_id": "{assistant}", "tool_resources": {"file_search": {"vector_store_ids": ["v"]}}}),
]


@pytest.mark.parametrize(("path", "body"), FILES_REFUSED, ids=[f"{p} {sorted(b)}" for p, b in FILES_REFUSED])
def test_files_and_vector_stores_are_refused_clearly(client: httpx2.Client, path: str, body: dict[str, Any]) -> None:
    a, t = make_assistant(client), make_thread(client)
    filled = json.loads(json.dumps(body).replace("{assistant}", a["id"]))
    error = error_of(client.post(path.format(thread=t["id"], assistant=a["id"]), json=filled), 400)
    assert "file" in error["message"].lower() and "vector store" in error["message"].lower(), error


def test_empty_tool_resources_are_accepted(client: httpx2.Client) -> None:
    empty = {"code_interpreter": {"file_ids": []}, "file_search": {"vector_store_ids": []}}
    assert client.post("/assistants", json={"model": "gpt-test", "tool_resources": empty}).status_code == 200
    assert client.post("/threads", json={"tool_resources": empty}).status_code == 200


MALFORMED = [
    ("POST", "/assistants", b"{not json", None),
    ("POST", "/assistants", b"", None),
    ("POST", "/assistants", b"[1, 2]", None),
    ("POST", "/assistants", b'"just a string"', None),
    ("POST", "/assistants", b"null", None),
    ("POST", "/assistants", b'{"model": 5}', "model"),
    ("POST", "/assistants", b'{"model": "m", "temperature": "hot"}', "temperature"),
    ("POST", "/assistants", b'{"model": "m", "temperature": 9}', "temperature"),
    ("POST", "/assistants", b'{"model": "m", "metadata": ["a"]}', "metadata"),
    ("POST", "/assistants", b'{"model": "m", "metadata": {"k": 1}}', None),
    ("POST", "/assistants", b'{"model": "m", "tools": {"type": "function"}}', "tools"),
    ("POST", "/assistants", b'{"model": "m", "tools": [{"type": "function"}]}', None),
    ("POST", "/assistants", b'{"model": "m", "tools": [{"type": "browser"}]}', None),
    ("POST", "/assistants", b'{"model": "m", "tool_resources": {"code_interpreter": true}}', None),
    ("POST", "/assistants", b'{"model": "m", "response_format": "json"}', "response_format"),
    ("POST", "/assistants", b'{"name": "no model"}', "model"),
    ("POST", "/threads", b"[]", None),
    ("POST", "/threads", b'{"messages": "hi"}', "messages"),
    ("POST", "/threads", b'{"messages": [{"role": "system", "content": "x"}]}', None),
    ("POST", "/threads", b'{"messages": [{"role": "user", "content": []}]}', None),
    ("POST", "/threads/runs", b'{"assistant_id": 7}', "assistant_id"),
    ("POST", "/threads/runs", b"{}", "assistant_id"),
    ("GET", "/assistants?limit=1000000000000000000000000000000", b"", "limit"),
    ("GET", "/assistants?limit=101", b"", "limit"),
    ("GET", "/assistants?limit=0", b"", "limit"),
    ("GET", "/assistants?limit=-1", b"", "limit"),
    ("GET", "/assistants?limit=ten", b"", "limit"),
    ("GET", "/assistants?order=sideways", b"", "order"),
    ("GET", "/threads/thread_x/runs/run_x/steps?include[]=garbage", b"", "include[]"),
    ("GET", "/threads/thread_x/runs/run_x/steps/step_x?include[]=%00", b"", "include[]"),
    ("POST", "/threads/thread_x/runs?include[]=nope", b'{"assistant_id": "a"}', "include[]"),
]


@pytest.mark.parametrize(("method", "path", "content", "param"), MALFORMED,
                         ids=[f"{m} {p} {c[:40]!r}" for m, p, c, _ in MALFORMED])
def test_malformed_requests_are_400_in_the_envelope(client: httpx2.Client, method: str, path: str, content: bytes,
                                                    param: str | None) -> None:
    r = client.request(method, path, content=content or None, headers={"content-type": "application/json"})
    error = error_of(r, 400)
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param, error
    assert "None" not in error["message"] and "Traceback" not in error["message"], error


def assert_list_envelope(body: dict[str, Any]) -> None:
    assert set(body) >= {"object", "data", "first_id", "last_id", "has_more"}, body
    assert body["object"] == "list" and isinstance(body["data"], list) and isinstance(body["has_more"], bool)
    assert body["first_id"] == (body["data"][0]["id"] if body["data"] else None)
    assert body["last_id"] == (body["data"][-1]["id"] if body["data"] else None)


def test_every_list_has_the_pagination_envelope(client: httpx2.Client) -> None:
    run = finished_run(client)
    t = run["thread_id"]
    for path in ("/assistants", f"/threads/{t}/messages", f"/threads/{t}/runs", f"/threads/{t}/runs/{run['id']}/steps",
                 f"/threads/{t}/messages?run_id={run['id']}", f"/threads/{t}/messages?run_id=run_none"):
        r = client.get(path)
        assert r.status_code == 200, r.text
        assert_list_envelope(r.json())
    empty = client.get(f"/threads/{make_thread(client)['id']}/messages").json()
    assert_list_envelope(empty)
    assert empty["data"] == [] and empty["has_more"] is False


def check_cursors(c: httpx2.Client, path: str, oldest_first: list[str]) -> None:
    """`after` and `before` in both orders give the right pages, which never overlap and cover the list."""
    for order in ("asc", "desc"):
        expected = oldest_first if order == "asc" else oldest_first[::-1]
        for limit in (1, 2, 3):
            # forwards with `after`
            seen: list[str] = []
            cursor: str | None = None
            while True:
                params: dict[str, Any] = {"order": order, "limit": limit, **({"after": cursor} if cursor else {})}
                body = c.get(path, params=params).json()
                assert_list_envelope(body)
                ids = [o["id"] for o in body["data"]]
                start = len(seen)
                assert ids == expected[start:start + limit], (order, limit, cursor, ids)
                assert body["has_more"] == (start + len(ids) < len(expected)), (order, limit, cursor, body)
                seen += ids
                if not body["has_more"]:
                    break
                cursor = body["last_id"]
            assert seen == expected
            # backwards with `before`, from past the last item
            seen = []
            cursor = expected[-1]
            tail = c.get(path, params={"order": order, "limit": limit, "after": expected[-2]}).json()
            assert [o["id"] for o in tail["data"]] == [expected[-1]] and tail["has_more"] is False
            seen = [cursor]
            while True:
                body = c.get(path, params={"order": order, "limit": limit, "before": cursor}).json()
                assert_list_envelope(body)
                ids = [o["id"] for o in body["data"]]
                end = len(expected) - len(seen)
                assert ids == expected[max(0, end - limit):end], (order, limit, cursor, ids)
                assert body["has_more"] == (end - len(ids) > 0), (order, limit, cursor, body)
                assert not set(ids) & set(seen)
                seen = ids + seen
                if not body["has_more"]:
                    break
                cursor = body["first_id"]
            assert seen == expected
        # both cursors: what lies strictly between them
        between = c.get(path, params={"order": order, "after": expected[1], "before": expected[-2]}).json()
        assert [o["id"] for o in between["data"]] == expected[2:-2]
        # a cursor at either end
        assert c.get(path, params={"order": order, "after": expected[-1]}).json()["data"] == []
        assert c.get(path, params={"order": order, "before": expected[0]}).json()["data"] == []
        # an empty cursor is no cursor
        for empty in ({"after": ""}, {"before": ""}, {"after": "", "before": ""}):
            page = c.get(path, params={"order": order, "limit": 100, **empty}).json()
            assert [o["id"] for o in page["data"]] == expected, empty


def test_cursors_on_messages(client: httpx2.Client) -> None:
    thread = make_thread(client, *[f"message {i}" for i in range(4)])
    for i in range(4, 7):
        assert client.post(f"/threads/{thread['id']}/messages", json={"role": "user", "content": f"m {i}"}
                           ).status_code == 200
    path = f"/threads/{thread['id']}/messages"
    everything = client.get(path, params={"order": "asc", "limit": 100}).json()["data"]
    assert [m["content"][0]["text"]["value"] for m in everything] == [
        *[f"message {i}" for i in range(4)], *[f"m {i}" for i in range(4, 7)]]
    check_cursors(client, path, [m["id"] for m in everything])


def test_cursors_on_assistants(server: Server) -> None:
    with httpx2.Client(base_url=f"{server.root}/v1", headers=AUTH3, timeout=30) as c:  # a tenant of its own
        made = [make_assistant(c, name=f"a{i}")["id"] for i in range(6)]
        assert [a["id"] for a in c.get("/assistants", params={"limit": 100}).json()["data"]] == made[::-1]
        check_cursors(c, "/assistants", made)


@pytest.mark.parametrize(("path", "kind", "object_id"), [
    ("/assistants/asst_x", "assistant", "asst_x"),
    ("/threads/thread_x", "thread", "thread_x"),
    ("/threads/thread_x/messages", "thread", "thread_x"),
    ("/threads/thread_x/runs", "thread", "thread_x"),
    ("/threads/{thread}/messages/msg_x", "message", "msg_x"),
    ("/threads/{thread}/runs/run_x", "run", "run_x"),
    ("/threads/{thread}/runs/run_x/steps", "run", "run_x"),
    ("/threads/{thread}/runs/{run}/steps/step_x", "run step", "step_x"),
    ("/tether/runs/run_x", "run", "run_x"),
])
def test_unknown_ids_are_404_naming_the_object(client: httpx2.Client, path: str, kind: str, object_id: str) -> None:
    run = finished_run(client)
    url = path.format(thread=run["thread_id"], run=run["id"])
    error = error_of(client.get(url), 404)
    assert error["message"] == f"No {kind} found with id '{object_id}'.", error
    assert error["type"] == "invalid_request_error"


def test_unknown_ids_on_update_and_delete(client: httpx2.Client) -> None:
    t = make_thread(client)
    for r, kind, object_id in [
        (client.post("/assistants/asst_x", json={"name": "n"}), "assistant", "asst_x"),
        (client.delete("/assistants/asst_x"), "assistant", "asst_x"),
        (client.post("/threads/thread_x", json={"metadata": {}}), "thread", "thread_x"),
        (client.delete("/threads/thread_x"), "thread", "thread_x"),
        (client.post(f"/threads/{t['id']}/messages/msg_x", json={"metadata": {}}), "message", "msg_x"),
        (client.delete(f"/threads/{t['id']}/messages/msg_x"), "message", "msg_x"),
        (client.post(f"/threads/{t['id']}/runs", json={"assistant_id": "asst_x"}), "assistant", "asst_x"),
        (client.post("/threads/runs", json={"assistant_id": "asst_x"}), "assistant", "asst_x"),
    ]:
        assert error_of(r, 404)["message"] == f"No {kind} found with id '{object_id}'.", r.request.url


def test_unknown_routes_and_methods_are_in_the_envelope(server: Server, client: httpx2.Client) -> None:
    for r in (client.get("/nope"), client.post("/nope", json={}), client.get("/assistants/a/b/c"),
              client.delete("/threads"), httpx2.get(f"{server.root}/nope")):
        assert r.status_code in (404, 405), r.text
        error_of(r, r.status_code)
    assert "Invalid URL" in error_of(client.get("/nope"), 404)["message"]


def test_tenants_are_isolated(server: Server, client: httpx2.Client) -> None:
    run = finished_run(client, metadata={"owner": "k1"})
    t, a = run["thread_id"], run["assistant_id"]
    message = client.get(f"/threads/{t}/messages").json()["data"][0]["id"]
    step = client.get(f"/threads/{t}/runs/{run['id']}/steps").json()["data"][0]["id"]
    with httpx2.Client(base_url=f"{server.root}/v1", headers=AUTH2, timeout=30) as other:
        theirs = make_assistant(other)
        for r in [
            other.get(f"/assistants/{a}"), other.post(f"/assistants/{a}", json={"name": "mine"}),
            other.delete(f"/assistants/{a}"),
            other.get(f"/threads/{t}"), other.post(f"/threads/{t}", json={"metadata": {}}),
            other.get(f"/threads/{t}/messages"), other.get(f"/threads/{t}/messages/{message}"),
            other.post(f"/threads/{t}/messages", json={"role": "user", "content": "x"}),
            other.post(f"/threads/{t}/messages/{message}", json={"metadata": {}}),
            other.delete(f"/threads/{t}/messages/{message}"),
            other.get(f"/threads/{t}/runs"), other.get(f"/threads/{t}/runs/{run['id']}"),
            other.get(f"/threads/{t}/runs/{run['id']}/steps"), other.get(f"/threads/{t}/runs/{run['id']}/steps/{step}"),
            other.post(f"/threads/{t}/runs", json={"assistant_id": theirs["id"]}),
            other.post(f"/threads/{t}/runs/{run['id']}", json={"metadata": {}}),
            other.post(f"/threads/{t}/runs/{run['id']}/cancel"),
            other.post("/threads/runs", json={"assistant_id": a}),
            other.post(f"/threads/{make_thread(other)['id']}/runs", json={"assistant_id": a}),
            other.get(f"/tether/runs/{run['id']}"),
            other.delete(f"/threads/{t}"),
        ]:
            error_of(r, 404)
        listed = [x["id"] for x in other.get("/assistants", params={"limit": 100}).json()["data"]]
        assert a not in listed and theirs["id"] in listed
    # and k1 still has everything, unchanged
    assert client.get(f"/assistants/{a}").json()["name"] is None
    assert client.get(f"/threads/{t}/messages/{message}").status_code == 200
    assert client.get(f"/threads/{t}/runs/{run['id']}").json()["metadata"] == {"owner": "k1"}
    assert theirs["id"] not in [x["id"] for x in client.get("/assistants", params={"limit": 100}).json()["data"]]


def test_the_server_logged_no_crash(server: Server) -> None:
    """Last: nothing above (the fuzzer included) made the server log an unexpected error."""
    text = server.log.read_text(errors="replace")
    assert "unexpected error" not in text and "Traceback" not in text, server.tail()
