"""`tether serve` end to end: a real uvicorn subprocess on loopback, a real SQLite file, the official
`openai` SDK (Assistants API) and raw HTTP (`httpx2`) for the debug API.

What it pins down: the debug API over HTTP (breakpoints, answer/edit, the 409 of a lost race, the
SSE record stream with `Last-Event-ID`), a SIGKILLed server's runs finished by the next one from the
database, the checks of a public bind and of API keys, SIGTERM, and two servers on one database.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from fake_openai import FakeOpenAI, FakeReply, FakeToolCall

sys.path.insert(0, str(Path(__file__).resolve().parent / "sdk"))
from server import TetherServer, free_port  # tests/sdk/server.py: the subprocess launcher

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK's Assistants API warns

KEY = "sk-tether-test-server"
MODEL = "gpt-test"  # a bare name: goes to the fake backend through OPENAI_BASE_URL
CALC = {"tether_tools": [{"type": "calculator"}], "tether_breakpoints": ["before_tool:calculator"]}
TERMINAL = {"completed", "failed", "cancelled", "expired", "incomplete"}


# -- the fake model: replies chosen by a marker in the request's messages --------------------------

Handler = Callable[[dict[str, Any]], FakeReply | str]


class Script:
    """Routes each chat request to the handler of the marker its messages carry (else: an echo)."""

    def __init__(self, fake: FakeOpenAI) -> None:
        self.fake = fake
        self._lock = threading.Lock()
        self._handlers: dict[str, Handler] = {}

    def add(self, handler: Handler, label: str = "t") -> str:
        marker = f"<<{label}-{uuid.uuid4().hex[:10]}>>"
        with self._lock:
            self._handlers[marker] = handler
        return marker

    def __call__(self, body: dict[str, Any]) -> FakeReply | str:
        text = json.dumps(body.get("messages") or [])
        with self._lock:
            handlers = list(self._handlers.items())
        for marker, handler in handlers:
            if marker in text:
                return handler(body)
        return "echo"

    def requests(self, marker: str) -> list[dict[str, Any]]:
        with self.fake._lock:
            bodies = list(self.fake.requests)
        return [b for b in bodies if marker in json.dumps(b.get("messages") or [])]


def tool_results(body: dict[str, Any]) -> list[str]:
    return [str(m.get("content")) for m in body.get("messages") or [] if m.get("role") == "tool"]


def calculator_then_echo(expression: str = "2+2") -> Handler:
    """A calculator call first; after the tool result, a text answer that echoes it."""

    def handle(body: dict[str, Any]) -> FakeReply | str:
        results = tool_results(body)
        if not results:
            return FakeReply(tool_calls=[FakeToolCall("calculator", {"expression": expression})])
        return f"The answer is {results[-1]}"

    return handle


# -- fixtures ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as f:
        yield f


@pytest.fixture(scope="module")
def script(fake: FakeOpenAI) -> Script:
    s = Script(fake)
    fake.respond_with(s)
    return s


@pytest.fixture(scope="module")
def server(fake: FakeOpenAI, script: Script, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TetherServer]:
    home = tmp_path_factory.mktemp("serve-a")
    with TetherServer(model_base_url=fake.base_url, api_keys=[KEY], home=home,
                      extra_args=["--lease-ttl", "3"], extra_env={"TETHER_SSE_KEEPALIVE_S": "1"}) as srv:
        yield srv
        assert srv.running, f"the server died during the module\n{srv.output_tail()}"


def sdk(srv: TetherServer, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=srv.base_url, max_retries=0, timeout=30,
                         _strict_response_validation=True)


@pytest.fixture(scope="module")
def client(server: TetherServer) -> Iterator[openai.OpenAI]:
    c = sdk(server)
    yield c
    c.close()


def raw(srv: TetherServer, key: str | None = KEY) -> httpx2.Client:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return httpx2.Client(base_url=srv.base_url, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def http(server: TetherServer) -> Iterator[httpx2.Client]:
    with raw(server) as c:
        yield c


# -- helpers -----------------------------------------------------------------------------------------

def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 15.0, every_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every_s)


def debug(http: httpx2.Client, run_id: str) -> dict[str, Any]:
    r = http.get(f"/tether/runs/{run_id}")
    assert r.status_code == 200, r.text
    return r.json()


def wait_paused(http: httpx2.Client, run_id: str, stop: str = "before_tool") -> dict[str, Any]:
    def paused() -> dict[str, Any] | None:
        view = debug(http, run_id)
        assert view["status"] not in TERMINAL, view
        if view["status"] == "paused" and any(i["stop"] == stop for i in view["pending"]):
            return view
        return None

    return wait_for(f"run {run_id} to pause at {stop}", paused)  # type: ignore[no-any-return]


def wait_run(client: openai.OpenAI, thread_id: str, run_id: str, statuses: set[str],
             timeout_s: float = 15.0) -> Any:
    def reached() -> Any:
        run = client.beta.threads.runs.retrieve(run_id, thread_id=thread_id)
        return run if run.status in statuses else None

    return wait_for(f"run {run_id} to be {statuses}", reached, timeout_s)


def start_run(client: openai.OpenAI, assistant_id: str, marker: str, text: str = "compute") -> tuple[str, str]:
    thread = client.beta.threads.create(messages=[{"role": "user", "content": f"{text} {marker}"}])
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant_id)
    return thread.id, run.id


def assistant_texts(client: openai.OpenAI, thread_id: str) -> list[str]:
    messages = client.beta.threads.messages.list(thread_id=thread_id, order="asc").data
    return [c.text.value for m in messages if m.role == "assistant" for c in m.content if c.type == "text"]


def tool_outputs(client: openai.OpenAI, thread_id: str, run_id: str) -> list[tuple[str, str | None]]:
    steps = client.beta.threads.runs.steps.list(run_id, thread_id=thread_id, order="asc").data
    return [(c.function.name, c.function.output) for s in steps if s.step_details.type == "tool_calls"
            for c in s.step_details.tool_calls if c.type == "function"]


def answer(http: httpx2.Client, run_id: str, pause_id: str, action: str = "continue",
           payload: Any = None) -> httpx2.Response:
    return http.post(f"/tether/runs/{run_id}/answer", json={"pause_id": pause_id, "action": action,
                                                             "payload": payload})


@pytest.fixture(scope="module")
def calc_assistant(client: openai.OpenAI) -> Any:
    return client.beta.assistants.create(model=MODEL, instructions="Use the calculator.", extra_body=CALC)


# -- 1. the debug API end to end -------------------------------------------------------------------------

def test_breakpoint_edit_arguments_and_continue(client, http, script, calc_assistant):
    marker = script.add(calculator_then_echo("2+2"), "edit")
    thread_id, run_id = start_run(client, calc_assistant.id, marker)

    view = wait_paused(http, run_id)
    item = next(i for i in view["pending"] if i["stop"] == "before_tool")
    assert item["name"] == "calculator" and json.loads(item["arguments"]) == {"expression": "2+2"}
    assert [b["spec"] for b in view["breakpoints"]] == ["before_tool:calculator"]

    # The SDK sees a run at a breakpoint as in progress, with the pause as an extra field.
    run = client.beta.threads.runs.retrieve(run_id, thread_id=thread_id)
    assert run.status == "in_progress"
    pause = (run.model_extra or {}).get("tether_pause") or getattr(run, "tether_pause", None)
    assert pause and pause["pause_id"] == view["pause_id"], run

    # The service checks the answers; the route only passes them on, and each mistake names its field.
    unknown = http.post(f"/tether/runs/{run_id}/answer", json={"pause_id": view["pause_id"],
                                                                "answers": {"call_nope": {"action": "continue"}}})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "answers", unknown.text
    wrong = http.post(f"/tether/runs/{run_id}/answer", json={"pause_id": view["pause_id"], "answers": {
        item["id"]: {"action": "supply", "payload": "4"}}})
    assert wrong.status_code == 400 and "'supply' does not answer a breakpoint" in wrong.json()["error"]["message"]
    assert wrong.json()["error"]["param"] == f"answers.{item['id']}.action", wrong.text
    bad = answer(http, run_id, view["pause_id"], "edit", {"arguments": "not json"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "payload", bad.text
    assert "the arguments are not valid JSON" in bad.json()["error"]["message"]
    r = answer(http, run_id, view["pause_id"], "edit", {"arguments": {"expression": "3*7"}})
    assert r.status_code == 200, r.text
    after = r.json()
    if after["status"] == "paused" and after["pause_id"] != view["pause_id"]:  # the edit stopped again
        assert answer(http, run_id, after["pause_id"]).status_code == 200

    run = wait_run(client, thread_id, run_id, TERMINAL)
    assert run.status == "completed", run
    assert (run.model_extra or {}).get("tether_pause") is None
    bodies = script.requests(marker)
    assert len(bodies) == 2 and tool_results(bodies[-1]) == ["21"], bodies
    assert tool_outputs(client, thread_id, run_id) == [("calculator", "21")]
    assert assistant_texts(client, thread_id) == ["The answer is 21"]
    final = debug(http, run_id)
    assert final["status"] == "completed" and final["pause_id"] is None
    assert [s["type"] for s in final["steps"]] == ["model", "tool", "model"]


def test_fork_over_http_gets_a_new_thread_with_the_whole_conversation(client, http, script, calc_assistant):
    """Fork a finished API run at its tool step with another result: steps before it are reused (no
    model call), and the fork's new thread shows the user's message and the fork's own answer."""
    marker = script.add(calculator_then_echo("2+3"), "fork")
    thread_id, run_id = start_run(client, calc_assistant.id, marker, "add these")
    view = wait_paused(http, run_id)
    assert answer(http, run_id, view["pause_id"]).status_code == 200
    assert wait_run(client, thread_id, run_id, TERMINAL).status == "completed"
    calls_before = len(script.requests(marker))

    r = http.post(f"/tether/runs/{run_id}/fork", json={"step": 2, "edits": {"result": "500"}})
    assert r.status_code == 200, r.text
    fork = r.json()
    assert fork["id"] != run_id and fork["thread_id"] not in (None, thread_id)
    fork_run = wait_run(client, fork["thread_id"], fork["id"], TERMINAL)
    assert fork_run.status == "completed", fork_run
    assert len(script.requests(marker)) == calls_before + 1  # only the model call after the edit was made
    messages = client.beta.threads.messages.list(thread_id=fork["thread_id"], order="asc").data
    assert [(m.role, m.content[0].text.value) for m in messages] == [
        ("user", f"add these {marker}"), ("assistant", "The answer is 500")]
    assert client.beta.threads.retrieve(fork["thread_id"]).metadata["forked_from"].startswith(thread_id)

    # A wrong fork is a 400 naming the field
    for body, param in [({"step": 99, "edits": {"result": "1"}}, "step"),
                        ({"step": 2, "edits": {"bogus": 1}}, "edits"),
                        ({"step": 2, "edits": {"result": "1", "bogus": 1}}, "edits"),
                        ({"step": 1, "edits": {"result": "1"}}, "edits"),
                        ({"step": 2, "edits": {"arguments": "{not json"}}, "edits.arguments"),
                        ({"step": 1, "edits": {"messages": [{"nope": 1}]}}, "edits.messages")]:
        r = http.post(f"/tether/runs/{run_id}/fork", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)


def test_breakpoints_on_a_paused_run_and_cancel(client, http, script, calc_assistant):
    marker = script.add(calculator_then_echo("1+1"), "bp")
    thread_id, run_id = start_run(client, calc_assistant.id, marker)
    view = wait_paused(http, run_id)

    r = http.post(f"/tether/runs/{run_id}/breakpoints", json={"spec": "after_tool:calculator", "once": True})
    assert r.status_code == 200, r.text
    added = r.json()
    assert added["spec"] == "after_tool:calculator" and added["once"] is True
    listed = http.get(f"/tether/runs/{run_id}/breakpoints").json()
    assert listed["object"] == "list"
    assert {b["spec"] for b in listed["data"]} == {"before_tool:calculator", "after_tool:calculator"}
    assert added["id"] in {b["id"] for b in debug(http, run_id)["breakpoints"]}

    r = http.delete(f"/tether/runs/{run_id}/breakpoints/{added['id']}")
    assert r.status_code == 200 and r.json()["deleted"] is True, r.text
    assert [b["spec"] for b in http.get(f"/tether/runs/{run_id}/breakpoints").json()["data"]] == [
        "before_tool:calculator"]
    again = http.delete(f"/tether/runs/{run_id}/breakpoints/{added['id']}")
    assert again.status_code in (400, 404) and "error" in again.json(), again.text

    bad = http.post(f"/tether/runs/{run_id}/breakpoints", json={"spec": "nowhere:at all"})
    assert bad.status_code == 400 and bad.json()["error"]["message"], bad.text

    # Cancelling a run paused at a breakpoint (the SDK sees it in progress) works.
    run = client.beta.threads.runs.retrieve(run_id, thread_id=thread_id)
    assert run.status == "in_progress" and (run.model_extra or {}).get("tether_pause") is not None
    cancelled = client.beta.threads.runs.cancel(run_id, thread_id=thread_id)
    assert cancelled.status in ("cancelling", "cancelled"), cancelled
    run = wait_run(client, thread_id, run_id, TERMINAL)
    assert run.status == "cancelled", run
    assert debug(http, run_id)["status"] == "cancelled"
    stale = answer(http, run_id, view["pause_id"])
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "already_resumed", stale.text
    assert len(script.requests(marker)) == 1  # the model was not asked again


# -- 2. two clients racing to continue one pause ----------------------------------------------------------

def test_racing_answers_one_wins_the_other_gets_409(server, client, http, script, calc_assistant):
    marker = script.add(calculator_then_echo("2+2"), "race")
    thread_id, run_id = start_run(client, calc_assistant.id, marker)
    pause_id = wait_paused(http, run_id)["pause_id"]

    barrier = threading.Barrier(2)
    results: list[httpx2.Response] = []
    errors: list[BaseException] = []

    def post() -> None:
        try:
            with raw(server) as c:
                c.get("/tether/runs/" + run_id)  # connect first, so both posts leave together
                barrier.wait(timeout=10)
                results.append(answer(c, run_id, pause_id))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=post) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    codes = sorted(r.status_code for r in results)
    assert codes == [200, 409], [r.text for r in results]
    lost = next(r for r in results if r.status_code == 409).json()
    assert lost["error"]["code"] == "already_resumed" and lost["error"]["message"], lost
    assert set(lost["error"]) >= {"message", "type", "param", "code"}

    run = wait_run(client, thread_id, run_id, TERMINAL)
    assert run.status == "completed", run
    assert assistant_texts(client, thread_id) == ["The answer is 4"]  # continued once, not twice
    assert len(script.requests(marker)) == 2
    bogus = answer(http, run_id, "pause_never_was")  # not "already resumed": that pause never existed
    assert bogus.status_code == 400 and bogus.json()["error"]["param"] == "pause_id", bogus.text


def test_a_waiting_stream_sends_keep_alives_and_goes_on_after_an_answer(client, http, script, calc_assistant):
    """A streamed run that stops at a breakpoint keeps its stream open with keep-alive comments; once
    the pause is answered over the debug API, the same stream carries the run to its end."""
    marker = script.add(calculator_then_echo("5*5"), "keepalive")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": f"compute {marker}"}])
    body = {"assistant_id": calc_assistant.id, "stream": True}
    with http.stream("POST", f"/threads/{thread.id}/runs", json=body, headers={"OpenAI-Beta": "assistants=v2"},
                     timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        seen: list[str] = []
        run_id = None
        for line in lines:
            seen.append(line)
            if line.startswith("data: {") and run_id is None:
                run_id = json.loads(line[6:])["id"]
            if line == ": keep-alive":
                break
        assert run_id is not None
        view = wait_paused(http, run_id)
        assert answer(http, run_id, view["pause_id"]).status_code == 200
        for line in lines:
            seen.append(line)
            if line == "data: [DONE]":
                break
    events = [line[7:] for line in seen if line.startswith("event: ")]
    assert events[:2] == ["thread.run.created", "thread.run.queued"]
    assert "thread.run.completed" in events and events[-1] == "done", events
    assert wait_run(client, thread.id, run_id, TERMINAL).status == "completed"


# -- 3. the SSE stream of records, resumed with Last-Event-ID ---------------------------------------------

def read_events(lines: Iterator[str], stop: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    """SSE events ({"id", "event", "data"}) until `stop(events)`; comments are skipped."""
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    for line in lines:
        if not line:
            if current:
                events.append(current)
                current = {}
                if stop(events):
                    return events
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        current[field] = current.get(field, "") + value if field == "data" else value
    if current:
        events.append(current)
    return events


def test_event_stream_resumes_with_last_event_id(server, client, http, script, calc_assistant):
    marker = script.add(calculator_then_echo("6*7"), "sse")
    thread_id, run_id = start_run(client, calc_assistant.id, marker)
    pause_id = wait_paused(http, run_id)["pause_id"]
    url = f"/tether/runs/{run_id}/events"

    def records(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in events if "id" in e]

    with raw(server) as c, c.stream("GET", url) as r:  # a first look: two records, then hang up
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        first = records(read_events(r.iter_lines(), lambda ev: len(records(ev)) >= 2))
    assert [int(e["id"]) for e in first] == [1, 2]
    assert json.loads(first[0]["data"])["kind"] == "run_started"
    assert all(json.loads(e["data"])["seq"] == int(e["id"]) for e in first)
    last = first[-1]["id"]

    with raw(server) as c, c.stream("GET", url, headers={"Last-Event-ID": last}) as r:
        assert r.status_code == 200
        assert answer(http, run_id, pause_id).status_code == 200  # the rest comes live
        rest = read_events(r.iter_lines(), lambda ev: ev[-1].get("event") == "end")
    assert rest[-1]["event"] == "end"
    later = records(rest)
    seqs = [int(e["id"]) for e in later]
    assert seqs and seqs[0] == int(last) + 1 and seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    kinds = [json.loads(e["data"])["kind"] for e in later]
    assert "paused" in kinds and "decision" in kinds and kinds[-1] == "finished", kinds

    run = wait_run(client, thread_id, run_id, TERMINAL)
    assert run.status == "completed"
    # Joining a finished run: its records after the given id, then the end.
    with raw(server) as c, c.stream("GET", url, headers={"Last-Event-ID": str(seqs[-2])}) as r:
        tail = read_events(r.iter_lines(), lambda ev: ev[-1].get("event") == "end")
    assert [e.get("id") for e in tail] == [str(seqs[-1]), None] and tail[-1]["event"] == "end"


def first_event(lines: Iterator[str], keepalives: int = 0) -> str:
    """The first event a stream sends but a model's text delta, past at most `keepalives` keep-alives
    (else ": keep-alive")."""
    for line in lines:
        if line.startswith(":"):
            if keepalives == 0:
                return ": keep-alive"
            keepalives -= 1
        if line.startswith("event: ") and line != "event: delta":
            return line[7:]
    return "(closed)"


def test_a_finished_runs_stream_resumed_at_its_end_ends_at_once(server, client, http, script, calc_assistant):
    marker = script.add(lambda body: "done", "end")
    thread_id, run_id = start_run(client, client.beta.assistants.create(model=MODEL).id, marker)
    assert wait_run(client, thread_id, run_id, TERMINAL).status == "completed"
    url = f"/tether/runs/{run_id}/events"
    with raw(server) as c, c.stream("GET", url) as r:
        every = read_events(r.iter_lines(), lambda ev: ev[-1].get("event") == "end")
    last = int([e for e in every if "id" in e][-1]["id"])
    # At its last record, or past it: nothing will ever come, so the end comes at once, not keep-alives.
    for headers, params in (({"Last-Event-ID": str(last)}, {}), ({"Last-Event-ID": str(last + 5)}, {}),
                            ({}, {"after": last})):
        with raw(server) as c, c.stream("GET", url, headers=headers, params=params) as r:
            assert r.status_code == 200
            assert first_event(r.iter_lines()) == "end", (headers, params)

    # Joined while it runs, past what turns out to be its end: the end comes once it is over.
    marker = script.add(calculator_then_echo("1+2"), "past")
    thread_id, run_id = start_run(client, calc_assistant.id, marker)
    pause_id = wait_paused(http, run_id)["pause_id"]
    with raw(server) as c, c.stream("GET", f"/tether/runs/{run_id}/events", headers={"Last-Event-ID": "1000"}) as r:
        assert answer(http, run_id, pause_id).status_code == 200
        assert first_event(r.iter_lines(), keepalives=10) == "end"
    assert wait_run(client, thread_id, run_id, TERMINAL).status == "completed"


# -- 4. SIGKILL, and the next server finishes the runs -----------------------------------------------------

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def test_sigkill_mid_model_call_then_restart_finishes_every_run(fake, script, tmp_path):
    attempts: dict[str, int] = {}
    lock = threading.Lock()

    def slow_after_tool(tag: str) -> Handler:
        def handle(body: dict[str, Any]) -> FakeReply | str:
            results = tool_results(body)
            if not results:
                return FakeReply(tool_calls=[FakeToolCall("calculator", {"expression": "5*5"})])
            with lock:
                attempts[tag] = attempts.get(tag, 0) + 1
                first = attempts[tag] == 1
            return FakeReply(text=f"{tag} got {results[-1]}", delay_s=3.0 if first else 0.0)
        return handle

    def weather(body: dict[str, Any]) -> FakeReply | str:
        results = tool_results(body)
        if not results:
            return FakeReply(tool_calls=[FakeToolCall("get_weather", {"city": "Oslo"})])
        return f"Oslo is {results[-1]}"

    tags = [f"kill{i}" for i in range(4)]
    markers = {tag: script.add(slow_after_tool(tag), tag) for tag in tags}
    waiting_marker = script.add(weather, "wait")

    def srv() -> TetherServer:  # default 30 s leases: the dead server's runs are taken back before they expire
        return TetherServer(model_base_url=fake.base_url, api_keys=[KEY], home=tmp_path)

    first = srv().start()
    try:
        c = sdk(first)
        calc = c.beta.assistants.create(model=MODEL, extra_body={"tether_tools": [{"type": "calculator"}]})
        client_tools = c.beta.assistants.create(model=MODEL, tools=[WEATHER])
        runs = {tag: start_run(c, calc.id, markers[tag]) for tag in tags}
        waiting = start_run(c, client_tools.id, waiting_marker, "weather?")
        wait_run(c, *waiting, {"requires_action"})
        # Every run has done its model call and its tool call, and is in its second model call.
        wait_for("four runs in their second model call",
                 lambda: all(len(script.requests(markers[t])) == 2 for t in tags))
        time.sleep(0.3)
        assert first.kill() == -signal.SIGKILL
    finally:
        first.close()

    second = srv().start()
    try:
        c = sdk(second)
        for tag, (thread_id, run_id) in runs.items():
            run = wait_run(c, thread_id, run_id, TERMINAL, timeout_s=20)
            assert run.status == "completed", (tag, run, second.output_tail())
            assert assistant_texts(c, thread_id) == [f"{tag} got 25"], tag  # exactly one answer
            bodies = script.requests(markers[tag])
            assert [len(tool_results(b)) for b in bodies] == [0, 1, 1], tag  # only the lost call again
            assert tool_outputs(c, thread_id, run_id) == [("calculator", "25")]  # the tool ran once
            steps = c.beta.threads.runs.steps.list(run_id, thread_id=thread_id).data
            assert sorted(s.type for s in steps) == ["message_creation", "tool_calls"], steps

        thread_id, run_id = waiting
        run = c.beta.threads.runs.retrieve(run_id, thread_id=thread_id)
        assert run.status == "requires_action", run
        assert run.required_action is not None
        call = run.required_action.submit_tool_outputs.tool_calls[0]
        assert call.function.name == "get_weather"
        run = c.beta.threads.runs.submit_tool_outputs(run_id, thread_id=thread_id,
                                                      tool_outputs=[{"tool_call_id": call.id, "output": "sunny"}])
        run = wait_run(c, thread_id, run_id, TERMINAL)
        assert run.status == "completed", run
        assert assistant_texts(c, thread_id) == ["Oslo is sunny"]
        assert len(script.requests(waiting_marker)) == 2
    finally:
        second.close()


# -- 5. a public bind needs keys; keys are checked; SIGTERM ------------------------------------------------

def test_public_bind_without_keys_is_refused(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TETHER_API_KEYS", "TETHER_DATABASE_URL")}
    env.update(TETHER_HOME=str(tmp_path), NO_COLOR="1")
    proc = subprocess.run([sys.executable, "-m", "tether.interfaces.cli.app", "serve", "--host", "0.0.0.0",
                           "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "TETHER_API_KEYS" in out and "0.0.0.0" in out, out
    assert "Traceback" not in out, out


def test_wrong_or_missing_key_is_401_in_openais_envelope(server):
    with sdk(server, "sk-not-a-key") as wrong, pytest.raises(openai.AuthenticationError) as e:
        wrong.beta.assistants.list()
    assert e.value.status_code == 401
    body = e.value.body
    assert isinstance(body, dict) and body.get("message") and "sk-not-a-key" not in body["message"], body
    assert set(body) >= {"message", "type", "param", "code"}

    with raw(server, key=None) as anonymous:
        r = anonymous.get("/assistants")
        assert r.status_code == 401
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text
        r = anonymous.get("/tether/runs/run_nope")  # the debug API too
        assert r.status_code == 401 and "error" in r.json()


def test_sigterm_exits_zero_promptly(fake, script, tmp_path):
    marker = script.add(lambda body: FakeReply(text="slow", delay_s=1.0), "term")
    srv = TetherServer(model_base_url=fake.base_url, api_keys=[KEY], home=tmp_path,
                       extra_args=["--lease-ttl", "3"]).start()
    try:
        c = sdk(srv)
        a = c.beta.assistants.create(model=MODEL)
        start_run(c, a.id, marker)  # a run in flight when the signal comes
        wait_for("the model call", lambda: script.requests(marker))
        began = time.monotonic()
        code = srv.terminate(timeout_s=15)
        took = time.monotonic() - began
        assert code == 0, srv.output_tail()
        assert took < 14, f"SIGTERM took {took:.1f}s"  # the 1 s model call, not a hang (room for a loaded machine)
        assert "Traceback" not in srv.stderr_text(), srv.output_tail()
    finally:
        srv.close()


def test_sigterm_hands_runs_over_at_once(fake, script, tmp_path):
    """A run still in a model call when the server stops is interrupted after the grace period and its
    lease released: the next server resumes it at once, not after the lease's 30 s."""
    replies = iter([FakeReply(text="never seen", delay_s=20.0)])
    marker = script.add(lambda body: next(replies, "finished by the next server"), "handover")
    first = TetherServer(model_base_url=fake.base_url, api_keys=[KEY], home=tmp_path).start()  # default 30 s leases
    try:
        c = sdk(first)
        a = c.beta.assistants.create(model=MODEL)
        thread_id, run_id = start_run(c, a.id, marker)
        wait_for("the model call", lambda: script.requests(marker))
        assert first.terminate(timeout_s=30) == 0, first.output_tail()
    finally:
        first.close()
    began = time.monotonic()
    second = TetherServer(model_base_url=fake.base_url, api_keys=[KEY], home=tmp_path,
                          database_url=first.database_url).start()
    try:
        with sdk(second) as c2:
            run = wait_run(c2, thread_id, run_id, TERMINAL, timeout_s=20)
            assert run.status == "completed", run
            assert time.monotonic() - began < 25  # not after the lease's 30 s
            assert assistant_texts(c2, thread_id) == ["finished by the next server"]
    finally:
        second.close()


# -- 6. two servers on one database ------------------------------------------------------------------------

def test_two_servers_share_one_database(server, client, http, fake, script, calc_assistant):
    other = TetherServer(model_base_url=fake.base_url, api_keys=[KEY], home=server.home,
                         database_url=server.database_url, extra_args=["--lease-ttl", "3"]).start()
    try:
        with sdk(other) as b, raw(other) as b_http:
            marker = script.add(lambda body: "hello from A", "two")
            a_plain = client.beta.assistants.create(model=MODEL)
            thread_id, run_id = start_run(client, a_plain.id, marker, "hi")
            done = wait_run(client, thread_id, run_id, TERMINAL)
            assert done.status == "completed"
            seen = b.beta.threads.runs.retrieve(run_id, thread_id=thread_id)
            assert seen.status == done.status and seen.id == done.id
            assert seen.completed_at == done.completed_at
            a_msgs = client.beta.threads.messages.list(thread_id=thread_id).model_dump()["data"]
            b_msgs = b.beta.threads.messages.list(thread_id=thread_id).model_dump()["data"]
            assert a_msgs == b_msgs and len(a_msgs) == 2
            assert assistant_texts(b, thread_id) == ["hello from A"]
            assert b.beta.assistants.retrieve(a_plain.id).id == a_plain.id

            # A run paused on A is seen paused on B, and B can continue it.
            marker = script.add(calculator_then_echo("9-2"), "two-paused")
            thread_id, run_id = start_run(client, calc_assistant.id, marker)
            pause_id = wait_paused(http, run_id)["pause_id"]
            seen = b.beta.threads.runs.retrieve(run_id, thread_id=thread_id)
            assert seen.status == "in_progress" and (seen.model_extra or {})["tether_pause"]["pause_id"] == pause_id
            assert debug(b_http, run_id)["pause_id"] == pause_id
            assert answer(b_http, run_id, pause_id).status_code == 200
            run = wait_run(client, thread_id, run_id, TERMINAL)
            assert run.status == "completed"
            assert assistant_texts(client, thread_id) == assistant_texts(b, thread_id) == ["The answer is 7"]
    finally:
        other.close()
    assert server.running
