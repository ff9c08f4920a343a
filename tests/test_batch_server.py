"""HTTP /v1/tether/batches on a real `tether serve` (a subprocess on 127.0.0.1) with two tenants and
the operator's [batches] caps, against a fake OpenAI-compatible model server that echoes each task."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from fake_openai import FakeOpenAI

sys.path.insert(0, str(Path(__file__).resolve().parent / "sdk"))
from server import TetherServer  # tests/sdk/server.py: the subprocess launcher

KEY_A, KEY_B = "sk-batch-tenant-a", "sk-batch-tenant-b"
AGENT = {"model": "gpt-4o-mini", "instructions": "Answer about {topic}."}


def echo(body: dict[str, Any]) -> str:
    return "echo: " + body["messages"][-1]["content"]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as f:
        f.respond_with(echo)
        yield f


def _serve(fake: FakeOpenAI, home: Path, batches: str) -> TetherServer:
    config = home / "tether.toml"
    config.write_text(f'[server]\napi_keys = ["{KEY_A}", "{KEY_B}"]\n[models]\nbase_url = "{fake.base_url}"\n'
                      f"[batches]\n{batches}\n")
    return TetherServer(model_base_url=fake.base_url, home=home, extra_args=["--config", str(config)])


@pytest.fixture(scope="module")
def server(fake, tmp_path_factory) -> Iterator[TetherServer]:
    with _serve(fake, tmp_path_factory.mktemp("batches"), "max_concurrency = 4\nmax_cases = 20") as srv:
        yield srv


def client(srv: TetherServer, key: str) -> httpx2.Client:
    return httpx2.Client(base_url=srv.root_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


@pytest.fixture(scope="module")
def a(server) -> Iterator[httpx2.Client]:
    with client(server, KEY_A) as c:
        yield c


@pytest.fixture(scope="module")
def b(server) -> Iterator[httpx2.Client]:
    with client(server, KEY_B) as c:
        yield c


def finished(http: httpx2.Client, batch_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        got = http.get(f"/v1/tether/batches/{batch_id}")
        assert got.status_code == 200, got.text
        batch = got.json()
        if batch["state"] != "open" or time.monotonic() > deadline:
            return batch
        time.sleep(0.1)


def expect_400(response: httpx2.Response, param: str | None, words: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert error["type"] == "invalid_request_error"


def test_a_batch_from_a_json_body_runs_in_the_background_and_is_the_tenants_own(server, a, b):
    created = a.post("/v1/tether/batches", json={
        "agent": AGENT, "name": "greetings", "concurrency": 2, "task_template": "{input}!",
        "cases": ["hello", {"id": "x", "input": "bye", "vars": {"topic": "farewells"}, "expected": "echo: bye!"}]})
    assert created.status_code == 200, created.text
    batch = created.json()
    assert batch["object"] == "tether.batch" and batch["total"] == 2 and batch["name"] == "greetings"
    done = finished(a, batch["id"])
    assert done["state"] == "done" and done["counts"]["completed"] == 2, done
    assert done["progress"]["completed"] == 2

    page = a.get(f"/v1/tether/batches/{batch['id']}/cases", params={"limit": 1})
    assert page.status_code == 200, page.text
    first = page.json()
    assert first["has_more"] and [c["key"] for c in first["data"]] == ["0"]
    assert first["data"][0]["output"] == "echo: hello!"
    rest = a.get(f"/v1/tether/batches/{batch['id']}/cases", params={"after": first["last_index"]}).json()
    assert [(c["key"], c["output"], c["expected"]) for c in rest["data"]] == [("x", "echo: bye!", "echo: bye!")]
    assert not rest["has_more"]
    completed = a.get(f"/v1/tether/batches/{batch['id']}/cases", params={"status": "failed"}).json()
    assert completed["data"] == []

    assert batch["id"] in [x["id"] for x in a.get("/v1/tether/batches").json()["data"]]
    assert batch["id"] not in [x["id"] for x in b.get("/v1/tether/batches").json()["data"]]
    for method, path in (("GET", ""), ("GET", "/cases"), ("POST", "/cancel"), ("DELETE", "")):
        other = b.request(method, f"/v1/tether/batches/{batch['id']}{path}")
        assert other.status_code == 404, (method, path, other.text)
    other = b.post(f"/v1/tether/batches/{batch['id']}/answer", json={"action": "abort"})
    assert other.status_code == 404, other.text

    assert batch_agents(server, batch["id"]) == 1  # its agent's settings, filed under it
    deleted = a.delete(f"/v1/tether/batches/{batch['id']}")
    assert deleted.status_code == 200 and deleted.json()["deleted"], deleted.text
    assert a.get(f"/v1/tether/batches/{batch['id']}").status_code == 404
    assert batch_agents(server, batch["id"]) == 0  # ... went with it


def batch_agents(srv: TetherServer, batch_id: str) -> int:
    with sqlite3.connect(srv.home / "t.db") as db:
        return int(db.execute("SELECT count(*) FROM objects WHERE kind = 'batch_agent' AND parent_id = ?",
                              (batch_id,)).fetchone()[0])


def test_a_batch_from_jsonl_text_and_from_an_uploaded_file(a):
    text = '{"input": "one"}\n"two"\n'
    created = a.post("/v1/tether/batches", json={"agent": AGENT, "input_jsonl": text})
    assert created.status_code == 200, created.text
    assert finished(a, created.json()["id"])["counts"]["completed"] == 2

    uploaded = a.post("/v1/tether/batches", files={"file": ("cases.jsonl", text.encode(), "application/jsonl")},
                      data={"batch": json.dumps({"agent": AGENT, "name": "uploaded"})})
    assert uploaded.status_code == 200, uploaded.text
    done = finished(a, uploaded.json()["id"])
    assert done["name"] == "uploaded" and done["counts"]["completed"] == 2
    outputs = {c["output"] for c in a.get(f"/v1/tether/batches/{done['id']}/cases").json()["data"]}
    assert outputs == {"echo: one", "echo: two"}


def test_cancel_and_answer_a_batch(a):
    created = a.post("/v1/tether/batches", json={"agent": {**AGENT, "tether_tools": [{"type": "calculator"}],
                                                           "tether_breakpoints": ["before_model"]},
                                                 "cases": ["stop here", "and here"]}).json()
    deadline = time.monotonic() + 60
    while (batch := a.get(f"/v1/tether/batches/{created['id']}").json())["counts"]["paused"] < 2:
        assert time.monotonic() < deadline, batch
        time.sleep(0.1)
    answered = a.post(f"/v1/tether/batches/{created['id']}/answer", json={"action": "abort", "reason": "enough"})
    assert answered.status_code == 200 and answered.json()["answered"] == 2, answered.text
    done = finished(a, created["id"])
    assert done["counts"]["cancelled"] == 2, done

    cancelled = a.post(f"/v1/tether/batches/{created['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"cases": ["x"]}, "agent", "Missing required parameter"),
    ({"agent": {"instructions": "x"}, "cases": ["x"]}, "agent.model", "Missing required parameter"),
    ({"agent": AGENT}, None, "exactly one of `cases`"),
    ({"agent": AGENT, "cases": ["x"], "input_jsonl": '"x"'}, None, "exactly one of `cases`"),
    ({"agent": AGENT, "cases": []}, "cases", "at least 1"),
    ({"agent": AGENT, "cases": ["x", {"text": "y"}]}, "cases[1]", "unknown keys"),
    ({"agent": AGENT, "cases": ["x", {"id": "a", "input": "y"}, {"id": "a", "input": "z"}]}, "cases[2]",
     "duplicate id"),
    ({"agent": AGENT, "input_jsonl": '"x"\nnot json\n'}, "input_jsonl", "line 2"),
    ({"agent": AGENT, "input_jsonl": "\n\n"}, "input_jsonl", "holds no case"),
    ({"agent": AGENT, "cases": ["x"], "concurrency": 0}, "concurrency", "greater than or equal to 1"),
    ({"agent": AGENT, "cases": ["x"], "concurrency": 5}, "concurrency", "above this server's cap of 4"),
    ({"agent": AGENT, "cases": ["x"] * 21}, "cases", "21 cases is above this server's cap of 20"),
    ({"agent": AGENT, "cases": ["x"], "max_cost_usd": -1}, "max_cost_usd", "greater than 0"),
    ({"agent": AGENT, "cases": ["x"], "max_tokens": "many"}, "max_tokens", "integer"),
    ({"agent": AGENT, "cases": ["x"], "on_budget": "wait"}, "on_budget", "'pause' or 'fail'"),
    ({"agent": AGENT, "cases": ["x"], "colour": "red"}, "colour", "Unrecognized request argument"),
    ({"agent": {**AGENT, "model": "replay:/etc/passwd"}, "cases": ["x"]}, "agent.model", "Invalid value"),
    ({"agent": {**AGENT, "tools": [{"type": "function", "function": {"name": "f"}}]}, "cases": ["x"]},
     "agent.tools[0]", "function tools"),
    ({"agent": {**AGENT, "tether_tools": [{"type": "mcp", "server": "nope"}]}, "cases": ["x"]},
     "agent.tether_tools[0].server", "nope"),
])
def test_a_bad_body_is_a_400_naming_the_field(a, body, param, words):
    expect_400(a.post("/v1/tether/batches", json=body), param, words)


def test_bad_uploads_queries_and_answers_are_400s_naming_the_field(a):
    batch = a.post("/v1/tether/batches", json={"agent": AGENT, "cases": ["x"]}).json()
    expect_400(a.post("/v1/tether/batches", data={"batch": json.dumps({"agent": AGENT})}), "file", "file")
    expect_400(a.post("/v1/tether/batches", files={"file": ("c.jsonl", b'"x"\n')}), "batch", "batch")
    expect_400(a.post("/v1/tether/batches", files={"file": ("c.jsonl", b'"x"\n')}, data={"batch": "{"}),
               "batch", "not JSON")
    expect_400(a.post("/v1/tether/batches", files={"file": ("c.jsonl", b'"x"\n{\n')},
                      data={"batch": json.dumps({"agent": AGENT})}), "file", "line 2")
    expect_400(a.post("/v1/tether/batches", files={"file": ("c.jsonl", b'"x"\n')},
                      data={"batch": json.dumps({"agent": AGENT, "concurrency": "two"})}), "batch.concurrency",
               "integer")
    expect_400(a.post("/v1/tether/batches", content=b"{", headers={"content-type": "application/json"}), None,
               "could not parse the JSON body")
    cases = f"/v1/tether/batches/{batch['id']}/cases"
    expect_400(a.get(cases, params={"status": "lost"}), "status", "'lost'")
    expect_400(a.get(cases, params={"limit": 0}), "limit", "greater than or equal to 1")
    expect_400(a.get(cases, params={"after": "x"}), "after", "integer")
    expect_400(a.get("/v1/tether/batches", params={"limit": 101}), "limit", "less than or equal to 100")
    answer = f"/v1/tether/batches/{batch['id']}/answer"
    expect_400(a.post(answer, json={"action": "maybe"}), "action", "'approve', 'continue', 'rerun' or 'abort'")
    expect_400(a.post(answer, json={"action": "abort", "max_cost_usd": 2}), None, "go with action \"continue\"")
    expect_400(a.post(answer, json={"action": "continue", "max_tokens": 0}), "max_tokens", "greater than")


def test_the_operators_dollar_cap_is_never_exceeded_by_a_request(fake, tmp_path):
    with _serve(fake, tmp_path, "max_cost_usd = 2.5") as srv, client(srv, KEY_A) as http:
        expect_400(http.post("/v1/tether/batches", json={"agent": AGENT, "cases": ["x"], "max_cost_usd": 3}),
                   "max_cost_usd", "above this server's cap of 2.5")
        expect_400(http.post("/v1/tether/batches", json={"agent": AGENT, "cases": ["x"]}), "max_cost_usd",
                   "required on this server")
        expect_400(http.post("/v1/tether/batches", json={"agent": AGENT, "cases": ["x"], "max_cost_usd": 1,
                                                         "per_case_max_cost_usd": 3}),
                   "per_case_max_cost_usd", "cap of 2.5")
        expect_400(http.post("/v1/tether/batches", json={"agent": AGENT, "cases": ["x"], "max_cost_usd": 1}),
                   "max_cost_usd", "price of model 'gpt-4o-mini' is unknown")  # the fake's price: nobody knows
        expect_400(http.post("/v1/tether/batches/batch_nope/answer", json={"action": "continue",
                                                                           "max_cost_usd": 9}),
                   "max_cost_usd", "cap of 2.5")


def test_a_batch_the_server_ran_goes_on_when_a_server_starts_again_after_a_kill(tmp_path):
    def slow_echo(body: dict[str, Any]) -> str:
        time.sleep(0.2)
        return echo(body)

    with FakeOpenAI() as slow:
        slow.respond_with(slow_echo)
        first = _serve(slow, tmp_path, "").start()
        try:
            with client(first, KEY_A) as http:
                batch = http.post("/v1/tether/batches", json={"agent": AGENT, "concurrency": 2,
                                                              "cases": [f"case {i}" for i in range(12)]}).json()
                deadline = time.monotonic() + 60
                while http.get(f"/v1/tether/batches/{batch['id']}").json()["counts"]["completed"] < 2:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
        finally:
            first.kill()
        with _serve(slow, tmp_path, "") as second, client(second, KEY_A) as http:
            done = finished(http, batch["id"])
            assert done["state"] == "done" and done["counts"]["completed"] == 12, done
            cases = http.get(f"/v1/tether/batches/{batch['id']}/cases").json()["data"]
            assert [c["output"] for c in cases] == [f"echo: case {i}" for i in range(12)]
            assert {c["attempt"] for c in cases} == {1}
    # every case's model call was made once, but those in flight at the kill (at most 2) twice
    asked = [m["messages"][-1]["content"] for m in slow.requests]
    assert sorted(set(asked)) == sorted(f"case {i}" for i in range(12)) and len(asked) <= 14, asked
