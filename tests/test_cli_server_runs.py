"""Any run, from any face: runs that `tether serve` made (agent ref `api:RUN_ID`), acted on from the CLI.

A real server subprocess on loopback, the official `openai` SDK making the runs (an assistant with a
breakpoint before its calculator and a function tool the client answers), and the real `tether` CLI
on the same database: answer (continue), skip from the debugger, supply a client tool's output,
replay, fork — each works; cancel works with no model backend configured at all.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from fake_openai import FakeOpenAI, FakeReply, FakeToolCall

sys.path.insert(0, str(Path(__file__).resolve().parent / "sdk"))
from server import TetherServer  # tests/sdk/server.py: the subprocess launcher

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK's Assistants API warns

LOOKUP = {"type": "function", "function": {"name": "lookup", "description": "Look a word up.",
                                           "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}


SLOW_REPLY_S = 4.0  # a model call in flight far shorter than the server's heartbeat (30 s / 3)


def model(body: dict[str, Any]) -> FakeReply | str:
    """After a tool result: "The answer is RESULT"; else a calculator call, or a lookup when asked."""
    messages = body.get("messages") or []
    if messages[-1].get("role") == "tool":
        return f"The answer is {messages[-1]['content']}"
    if "take your time" in json.dumps(messages):
        return FakeReply(text="done slowly", delay_s=SLOW_REPLY_S)
    if "look it up" in json.dumps(messages):
        return FakeReply(tool_calls=[FakeToolCall("lookup", {"q": "weather"})])
    return FakeReply(tool_calls=[FakeToolCall("calculator", {"expression": "6*7"})])


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as f:
        f.respond_with(model)
        yield f


@pytest.fixture(scope="module")
def server(fake: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TetherServer]:
    with TetherServer(model_base_url=fake.base_url, home=tmp_path_factory.mktemp("serve")) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: TetherServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key="none", base_url=server.base_url, max_retries=0, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def assistant(client: openai.OpenAI) -> str:
    return client.beta.assistants.create(
        model="gpt-test", tools=[LOOKUP],  # type: ignore[list-item]
        extra_body={"tether_tools": [{"type": "calculator"}], "tether_breakpoints": ["before_tool:calculator"]},
    ).id


def debug_view(server: TetherServer, run_id: str) -> dict[str, Any]:
    return httpx2.get(f"{server.base_url}/tether/runs/{run_id}", timeout=10).json()  # type: ignore[no-any-return]


def paused_run(server: TetherServer, client: openai.OpenAI, assistant: str, task: str = "what is 6*7?"
               ) -> tuple[str, str, dict[str, Any]]:
    """A run made over HTTP, once it waits (at the breakpoint, or for the client's tool output)."""
    run = client.beta.threads.create_and_run(assistant_id=assistant,
                                             thread={"messages": [{"role": "user", "content": task}]})
    deadline = time.monotonic() + 30
    while (view := debug_view(server, run.id))["status"] != "paused":
        assert time.monotonic() < deadline and view["status"] in ("queued", "running"), view
        time.sleep(0.05)
    return run.id, run.thread_id, view


def answer_text(client: openai.OpenAI, thread_id: str) -> str:
    messages = client.beta.threads.messages.list(thread_id, order="desc", limit=1).data
    return messages[0].content[0].text.value  # type: ignore[union-attr]


def test_a_server_run_is_answered_from_the_cli_with_the_servers_configuration(cli, server, client, assistant,
                                                                               fake, tmp_path):
    run_id, thread_id, view = paused_run(server, client, assistant)
    assert view["pending"][0]["reason"] == "breakpoint"
    config = tmp_path / "tether.toml"  # the CLI finds the database and the model backend here, nowhere else
    config.write_text(f'[store]\nurl = "{server.database_url}"\n\n[models]\nbase_url = "{fake.base_url}"\n'
                      'api_key = "fake"\n')
    done = cli("runs", "answer", run_id, view["pending"][0]["id"], "--continue", "--config", str(config))
    assert done.returncode == 0, done.all
    assert "The answer is 42" in done.stdout
    assert client.beta.threads.runs.retrieve(run_id, thread_id=thread_id).status == "completed"
    assert answer_text(client, thread_id) == "The answer is 42"  # the server shows what the CLI did

    # TETHER_CONFIG does the same for every command
    again, thread_id, _ = paused_run(server, client, assistant)
    skipped = cli("debug", again, stdin="skip 99\n", extra_env={"TETHER_CONFIG": str(config)})
    assert skipped.returncode == 0, skipped.all
    assert answer_text(client, thread_id) == "The answer is 99"
    calc = [s for s in debug_view(server, again)["steps"] if s["name"] == "calculator"]
    assert [(s["result"], s["supplied_by"] is not None) for s in calc] == [("99", True)]  # never called


def test_a_server_run_is_supplied_replayed_and_forked_from_the_cli(cli, server, client, assistant, fake):
    env = {"TETHER_DATABASE_URL": server.database_url, "OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": "fake"}
    run_id, thread_id, view = paused_run(server, client, assistant, "look it up, please")
    assert view["pending"][0]["reason"] == "client_tool"
    supplied = cli("runs", "answer", run_id, view["pending"][0]["id"], "--supply", "sunny", extra_env=env)
    assert supplied.returncode == 0, supplied.all
    assert answer_text(client, thread_id) == "The answer is sunny"

    replayed = cli("runs", "replay", run_id, extra_env=env)
    assert replayed.returncode == 3, replayed.all  # its lookup is a client tool again: the replay waits for it
    assert "is paused" in replayed.stdout and "--supply OUTPUT" in replayed.stdout
    assert f"replayed {run_id} as run_" in replayed.stdout

    forked = cli("runs", "fork", run_id, "2", "--edit", '{"result": "rainy"}', "--no-debug", extra_env=env)
    assert forked.returncode == 0, forked.all
    assert "The answer is rainy" in forked.stdout
    # The fork of an API run gets a thread of its own, as a fork made over HTTP does: the Assistants API
    # shows it whole (the conversation it started from, then its answer) beside the parent's.
    (fork_id,) = set(re.findall(r"run_[0-9a-f]{26}", forked.stdout)) - {run_id}
    fork_thread = debug_view(server, fork_id)["thread_id"]
    assert fork_thread not in (None, thread_id)
    thread = client.beta.threads.retrieve(fork_thread)
    assert thread.metadata == {"forked_from": f"{thread_id}/{run_id}@2"}
    assert client.beta.threads.runs.retrieve(fork_id, thread_id=fork_thread).status == "completed"
    texts = [m.content[0].text.value for m in  # type: ignore[union-attr]
             client.beta.threads.messages.list(fork_thread, order="asc").data]
    assert texts == ["look it up, please", "The answer is rainy"]
    assert answer_text(client, thread_id) == "The answer is sunny"  # the parent's thread is as it was


def test_a_server_run_is_cancelled_from_the_cli_with_no_model_backend(cli, server, client, assistant):
    run_id, thread_id, _ = paused_run(server, client, assistant)
    # no OPENAI_BASE_URL, no OPENAI_API_KEY (the fixture removes them), no configuration: only the database
    assert "OPENAI_BASE_URL" not in cli.env and "TETHER_CONFIG" not in cli.env
    cancelled = cli("runs", "cancel", run_id, extra_env={"TETHER_DATABASE_URL": server.database_url})
    assert cancelled.returncode == 0, cancelled.all
    assert "cancelled" in cancelled.stdout
    assert client.beta.threads.runs.retrieve(run_id, thread_id=thread_id).status == "cancelled"
    shown = cli("runs", "show", run_id, extra_env={"TETHER_DATABASE_URL": server.database_url})
    assert shown.returncode == 0, shown.all


def test_a_cli_cancel_during_a_slow_model_call_of_the_server_ends_the_run_cancelled(cli, server, client,
                                                                                     assistant, fake):
    run = client.beta.threads.create_and_run(assistant_id=assistant, thread={"messages": [
        {"role": "user", "content": "take your time"}]})
    deadline = time.monotonic() + 30
    while not any("take your time" in json.dumps(b.get("messages")) for b in fake.requests):
        assert time.monotonic() < deadline, "the server never called the model"
        time.sleep(0.05)  # the model call is in flight now
    cancelled = cli("runs", "cancel", run.id, extra_env={"TETHER_DATABASE_URL": server.database_url})
    assert cancelled.returncode == 0, cancelled.all
    assert "cancelled" in cancelled.stdout
    assert client.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id).status == "cancelled"
    assert debug_view(server, run.id)["error"] == "cancelled by cli"


def test_a_wrong_configuration_is_one_clear_line(cli, tmp_path):
    missing = tmp_path / "nowhere.toml"
    for args, env in ((("runs", "list", "--config", str(missing)), {}),
                      (("runs", "list"), {"TETHER_CONFIG": str(missing)})):
        out = cli(*args, extra_env=env)
        assert out.returncode == 2, out.all
        assert out.stderr.startswith("error: ") and str(missing) in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "TETHER_CONFIG" in out.stderr  # says where the file came from
    typo = tmp_path / "typo.toml"
    typo.write_text('[stor]\nurl = "sqlite:///x.db"\n')
    out = cli("runs", "show", "run_x", "--config", str(typo))
    assert out.returncode == 2 and "stor" in out.stderr, out.all


def test_tether_config_is_the_configuration_of_serve_and_config_show_too(cli, tmp_path):
    config = tmp_path / "tether.toml"
    config.write_text('[server]\nport = 8765\n')
    shown = cli("config", "show", extra_env={"TETHER_CONFIG": str(config)})
    assert shown.returncode == 0, shown.all
    assert f"(from {config})" in shown.stdout and "port = 8765" in shown.stdout
    served = cli("serve", extra_env={"TETHER_CONFIG": str(tmp_path / "missing.toml")})
    assert served.returncode == 2 and "TETHER_CONFIG" in served.stderr, served.all


def test_a_secret_whose_variable_is_unset_is_needed_only_by_what_uses_it(cli, server, client, assistant, tmp_path):
    # The shape docs/server.md shows, on a machine where the CLI has none of the server's secrets
    # (the QA reproductions: an unset [models] api_key, an unset [server] api_keys).
    run_id, thread_id, view = paused_run(server, client, assistant)
    unset = {"OPENAI_KEY_UNSET", "TEAM_KEY_UNSET"}
    assert not unset & set(cli.env)
    models = tmp_path / "msecret.toml"
    models.write_text(f'[store]\nurl = "{server.database_url}"\n[models]\nbase_url = "http://x/v1"\n'
                      'api_key = "${OPENAI_KEY_UNSET}"\n')
    keys = tmp_path / "secret.toml"
    keys.write_text(f'[server]\napi_keys = ["${{TEAM_KEY_UNSET}}"]\n[store]\nurl = "{server.database_url}"\n')
    for config in (models, keys):
        for args in (("runs", "list"), ("runs", "show", run_id), ("runs", "break", run_id)):
            out = cli(*args, "--config", str(config))
            assert out.returncode == 0, out.all
            assert run_id in out.stdout or "before_tool:calculator" in out.stdout, out.all
        looked = cli("debug", run_id, "--config", str(config), stdin="detach\n")  # looks, calls no model
        assert looked.returncode == 3 and "stays paused" in looked.stdout, looked.all  # 3: still paused
        out = cli("runs", "list", extra_env={"TETHER_CONFIG": str(config)})
        assert out.returncode == 0 and run_id in out.stdout, out.all

    # Continuing the run calls its model, which needs the key: the error of the unset variable, as before.
    answered = cli("runs", "answer", run_id, view["pending"][0]["id"], "--continue", "--config", str(models))
    assert answered.returncode == 2, answered.all
    assert answered.stderr.strip() == (f"error: {models}: [models] api_key uses ${{OPENAI_KEY_UNSET}}, but the "
                                       "environment variable OPENAI_KEY_UNSET is not set"), answered.all
    assert debug_view(server, run_id)["status"] == "paused"  # nothing was done

    cancelled = cli("runs", "cancel", run_id, "--config", str(keys))
    assert cancelled.returncode == 0, cancelled.all
    assert client.beta.threads.runs.retrieve(run_id, thread_id=thread_id).status == "cancelled"
