"""MCP servers as tools, against real servers run as subprocesses (no mocks of the SDK).

`mcp-server-time` and `mcp-server-git` from PyPI over stdio, and a tiny server of our own
(tests/mcp_servers/toy_server.py) over stdio and over streamable HTTP on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tether
from tether.adapters.models.scripted import ScriptedModel, call_tool, reply
from tether.adapters.store.memory import MemoryStore
from tether.adapters.tools.mcp import (
    McpServer,
    McpServerConfig,
    close_mcp_servers,
    configs_from_tables,
    import_mcp_json,
    mcp_tool_changes,
    mcp_tool_name,
    open_mcp_tools,
)
from tether.domain.errors import ConfigError
from tether.domain.models import ModelRequest
from tether.domain.tools import ToolContext, ToolError
from tether.services.runs import RunsService

pytestmark = pytest.mark.anyio

TOY = str(Path(__file__).parent / "mcp_servers" / "toy_server.py")
CTX = ToolContext("run_test", "call_test", 1)


def toy(name: str = "toy", **options) -> McpServerConfig:
    return McpServerConfig(name, command=sys.executable, args=[TOY], **options)


def time_server() -> McpServerConfig:
    return McpServerConfig("time", command=sys.executable, args=["-m", "mcp_server_time", "--local-timezone", "UTC"])


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except (OSError, IndexError):  # gone, or going: /proc/PID vanishes mid-read (ESRCH)
        return False
    return state != "Z"


async def gone(pid: int, within_s: float = 8.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def http_url():
    """The toy server over streamable HTTP on a free port of 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, TOY, "http", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the toy HTTP server did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.kill()
        proc.wait(5)


# -- real servers from PyPI ---------------------------------------------------------------------


async def test_time_server_over_stdio():
    tools, servers = await open_mcp_tools([time_server()])
    try:
        by_name = {t.name: t for t in tools}
        assert {"time__get_current_time", "time__convert_time"} <= set(by_name)
        now = by_name["time__get_current_time"]
        assert now.kind == "mcp" and now.cancellable
        assert now.description.startswith("[time] ")
        assert now.parameters["type"] == "object" and "timezone" in now.parameters["properties"]
        assert now.policy.timeout_s is None and now.policy.idempotent  # read-only by its annotations

        out = await now.call(now.validate({"timezone": "UTC"}), CTX)
        assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", out) and "UTC" in out

        # invalid arguments are refused before anything is sent
        server = servers[0]
        await server.close()
        with pytest.raises(ToolError, match=r"invalid arguments for time__get_current_time: "
                                            r"'timezone' is a required property"):
            now.validate({"tz": "UTC"})
        with pytest.raises(ToolError, match=r"'timezone': 3 is not of type 'string'"):
            now.validate({"timezone": 3})
        assert not server.connected and server.sessions_started == 1

        # a closed server reconnects on the next call (what a resumed run relies on)
        out = await now.call({"timezone": "Europe/Paris"}, CTX)
        assert "Europe/Paris" in out and server.sessions_started == 2
        # the server's own error (is_error) becomes a ToolError
        with pytest.raises(ToolError, match="Invalid timezone"):
            await now.call({"timezone": "Mars/Olympus_Mons"}, CTX)
    finally:
        await close_mcp_servers(servers)


async def test_git_server_over_stdio(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=Test", "-c", "user.email=test@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "hello.txt").write_text("hello\n")
    subprocess.run([*git, "add", "hello.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "first commit"], check=True)
    (repo / "new.txt").write_text("untracked\n")

    config = McpServerConfig("git", command=sys.executable, args=["-m", "mcp_server_git", "--repository", str(repo)])
    tools, servers = await open_mcp_tools([config])
    try:
        by_name = {t.name: t for t in tools}
        assert {"git__git_status", "git__git_log", "git__git_commit"} <= set(by_name)
        assert by_name["git__git_log"].policy.idempotent and not by_name["git__git_commit"].policy.idempotent

        status = await by_name["git__git_status"].call({"repo_path": str(repo)}, CTX)
        assert "new.txt" in status
        log = await by_name["git__git_log"].call({"repo_path": str(repo), "max_count": 5}, CTX)
        assert "first commit" in log
        # the server refuses a path outside the repository it was given: a tool error, not a crash
        with pytest.raises(ToolError, match="outside"):
            await by_name["git__git_status"].call({"repo_path": str(tmp_path)}, CTX)
        assert servers[0].sessions_started == 1
    finally:
        await close_mcp_servers(servers)


# -- our own server: results, errors, hangs and crashes ---------------------------------------


async def test_streamable_http_results_errors_and_hangs(http_url):
    tools, servers = await open_mcp_tools([McpServerConfig("web", url=http_url, timeout_s=1.0)])
    try:
        by_name = {t.name: t for t in tools}
        assert {"web__add", "web__weather", "web__fail", "web__hang", "web__crash"} <= set(by_name)

        assert await by_name["web__add"].call({"a": 2, "b": 3}, CTX) == "5"
        weather = json.loads(await by_name["web__weather"].call({"city": "Oslo"}, CTX))
        assert weather == {"city": "Oslo", "temperature_c": 21.5, "conditions": "sunny"}
        # the structured content itself, as the server sent it
        raw = await servers[0].call("weather", {"city": "Oslo"})
        assert raw.structured == weather and not raw.is_error

        with pytest.raises(ToolError, match="the disk is full"):
            await by_name["web__fail"].call({"message": "the disk is full"}, CTX)
        raw = await servers[0].call("fail", {"message": "x"})
        assert raw.is_error and "x" in raw.text

        started = time.monotonic()
        with pytest.raises(ToolError, match=r"MCP server 'web' did not answer hang within 1 s"):
            await by_name["web__hang"].call({}, CTX)
        assert time.monotonic() - started < 30  # bounded by the 1 s timeout (the tool hangs forever)
        # a new session serves the next call
        assert await by_name["web__add"].call({"a": 1, "b": 1}, CTX) == "2"
        assert servers[0].sessions_started == 2
    finally:
        await close_mcp_servers(servers)


async def test_a_crashed_stdio_server_is_restarted_on_the_next_call():
    tools, servers = await open_mcp_tools([toy(timeout_s=1.0)])
    by_name = {t.name: t for t in tools}
    try:
        first_pid = int(await by_name["toy__pid"].call({}, CTX))
        with pytest.raises(ToolError, match=r"MCP server 'toy' crashed: .*restarted on the next call"):
            await by_name["toy__crash"].call({}, CTX)
        assert await gone(first_pid)
        second_pid = int(await by_name["toy__pid"].call({}, CTX))
        assert second_pid != first_pid and servers[0].sessions_started == 2

        # a hung stdio server: the call fails quickly, the process is stopped, the next call works
        with pytest.raises(ToolError, match="did not answer hang within 1 s"):
            await by_name["toy__hang"].call({}, CTX)
        assert await gone(second_pid)
        assert await by_name["toy__add"].call({"a": 20, "b": 22}, CTX) == "42"
        third_pid = int(await by_name["toy__pid"].call({}, CTX))

        # a server that dies while idle is noticed and restarted by the next call, which succeeds
        os.kill(third_pid, signal.SIGKILL)
        assert await gone(third_pid)
        for _ in range(100):
            if not servers[0].connected:
                break
            await asyncio.sleep(0.02)
        fourth_pid = int(await by_name["toy__pid"].call({}, CTX))
        assert fourth_pid != third_pid and servers[0].sessions_started == 4
    finally:
        await close_mcp_servers(servers)
    assert await gone(fourth_pid), "closing the server must stop its process"


async def test_parallel_calls_share_a_session_and_close_ends_calls_in_flight():
    tools, servers = await open_mcp_tools([toy()])
    by_name = {t.name: t for t in tools}
    results = await asyncio.gather(*(by_name["toy__add"].call({"a": i, "b": 1}, CTX) for i in range(5)))
    assert results == ["1", "2", "3", "4", "5"] and servers[0].sessions_started == 1
    pid = int(await by_name["toy__pid"].call({}, CTX))

    hanging = asyncio.ensure_future(by_name["toy__hang"].call({}, CTX))
    await asyncio.sleep(0.2)
    await close_mcp_servers(servers)
    with pytest.raises(ToolError, match="was closed while hang was running"):
        await hanging
    assert await gone(pid)


async def test_servers_that_cannot_start_are_named():
    with pytest.raises(ConfigError, match=r"MCP server 'ghost' could not start: command not found: no-such-mcp-x"):
        await open_mcp_tools([McpServerConfig("ghost", command="no-such-mcp-x")])
    quits = McpServerConfig("quits", command=sys.executable,
                            args=["-c", "import sys; print('missing API key', file=sys.stderr); sys.exit(2)"])
    with pytest.raises(ConfigError, match=r"(?s)MCP server 'quits' could not start: .*missing API key"):
        await open_mcp_tools([quits])
    silent = McpServerConfig("silent", command=sys.executable, args=["-c", "import time; time.sleep(60)"],
                             startup_timeout_s=0.5)
    with pytest.raises(ConfigError, match=r"MCP server 'silent' did not start within 0.5 s"):
        await open_mcp_tools([silent])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConfigError, match=r"MCP server 'nobody' could not start: cannot connect"):
        await open_mcp_tools([McpServerConfig("nobody", url=f"http://127.0.0.1:{port}/mcp")])
    # at call time the same failure is a tool error the model sees
    with pytest.raises(ToolError, match=r"command not found.*tried again on the next call"):
        await McpServer(McpServerConfig("ghost", command="no-such-mcp-x")).call("x", {})


# -- secrets ------------------------------------------------------------------------------------


async def test_env_secrets_reach_the_server_but_never_the_record(monkeypatch):
    secret = "sk-test-7f3a9c1e5b"
    monkeypatch.setenv("SECRET_FOR_TEST", secret)
    config = toy(env={"TOKEN": "${SECRET_FOR_TEST}", "MODE": "test"})
    assert config.env["TOKEN"] == "${SECRET_FOR_TEST}"  # never stored expanded
    assert secret not in json.dumps(config.to_dict())
    safe = config.redacted()
    assert safe.env == {"TOKEN": "***", "MODE": "***"} and secret not in repr(safe)
    assert config.env["TOKEN"] == "${SECRET_FOR_TEST}"  # redacted() is a copy

    tools, servers = await open_mcp_tools([config])
    try:
        by_name = {t.name: t for t in tools}
        assert await by_name["toy__env"].call({"name": "TOKEN"}, CTX) == secret
        agent = tether.Agent("a", ScriptedModel([reply("ok")]), tools=tools)
        specs = json.dumps([dataclasses.asdict(s) for s in agent.snapshot().tools])
        assert secret not in specs and "toy__env" in specs
    finally:
        await close_mcp_servers(servers)

    # a secret a failing server prints is scrubbed from the error
    leaky = McpServerConfig("leaky", command=sys.executable, env={"TOKEN": "${SECRET_FOR_TEST}"},
                            args=["-c", "import os, sys; print('bad token', os.environ['TOKEN'], file=sys.stderr); "
                                        "sys.exit(1)"])
    with pytest.raises(ConfigError) as info:
        await open_mcp_tools([leaky])
    assert "bad token ***" in str(info.value) and secret not in str(info.value)

    monkeypatch.delenv("SECRET_FOR_TEST")
    with pytest.raises(ConfigError, match=r"env.TOKEN uses \$\{SECRET_FOR_TEST\}, but the environment variable"):
        await open_mcp_tools([config])


def test_url_passwords_and_headers_are_redacted():
    config = McpServerConfig("api", url="https://user:hunter2@example.com/mcp",
                             headers={"Authorization": "Bearer ${API_TOKEN}"})
    safe = config.redacted()
    assert safe.url == "https://***@example.com/mcp" and safe.headers == {"Authorization": "***"}
    assert "hunter2" not in json.dumps(safe.to_dict())


# -- configuration ------------------------------------------------------------------------------


def test_import_mcp_json_reads_a_claude_desktop_config(tmp_path):
    path = tmp_path / "claude_desktop_config.json"
    path.write_text(json.dumps({
        "mcpServers": {
            "filesystem": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"]},
            "github": {"command": "docker", "args": ["run", "-i", "--rm", "ghcr.io/github/github-mcp-server"],
                       "env": {"GITHUB_PERSONAL_ACCESS_TOKEN": "${GITHUB_TOKEN}"}, "alwaysAllow": []},
            "remote": {"type": "http", "url": "http://127.0.0.1:8000/mcp", "headers": {"X-Key": "k"}},
            "old": {"command": "uvx", "args": ["mcp-server-old"], "disabled": True},
        }
    }))
    configs = import_mcp_json(path)
    assert [c.name for c in configs] == ["filesystem", "github", "remote"]
    fs, gh, remote = configs
    assert fs.command == "npx" and fs.args[-1] == "/tmp" and fs.url is None
    assert gh.env == {"GITHUB_PERSONAL_ACCESS_TOKEN": "${GITHUB_TOKEN}"}
    assert remote.url == "http://127.0.0.1:8000/mcp" and remote.command is None and remote.headers == {"X-Key": "k"}
    assert import_mcp_json({"mcpServers": {"t": {"command": "uvx", "args": ["mcp-server-time"]}}})[0].args == [
        "mcp-server-time"]

    with pytest.raises(ConfigError, match="SSE transport is not supported"):
        import_mcp_json({"mcpServers": {"s": {"type": "sse", "url": "http://x/sse"}}})
    with pytest.raises(ConfigError, match="expected"):
        import_mcp_json({"servers_typo": {}})
    with pytest.raises(ConfigError, match="not found"):
        import_mcp_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        import_mcp_json(tmp_path / "bad.json")


def test_agent_file_tables_are_validated():
    configs = configs_from_tables({
        "time": {"command": "uvx", "args": ["mcp-server-time"], "timeout_s": 5},
        "web": {"url": "http://127.0.0.1:9000/mcp"},
    })
    assert configs[0].timeout_s == 5 and configs[1].url.endswith("/mcp")
    with pytest.raises(ConfigError, match="exactly one of `command`"):
        McpServerConfig.from_table("both", {"command": "x", "url": "http://127.0.0.1/mcp"})
    with pytest.raises(ConfigError, match="exactly one of `command`"):
        McpServerConfig.from_table("neither", {"args": ["x"]})
    with pytest.raises(ConfigError, match=r"unknown keys \['comand'\]"):
        McpServerConfig.from_table("typo", {"comand": "x"})
    with pytest.raises(ConfigError, match="`args` must be a list of strings"):
        McpServerConfig.from_table("t", {"command": "x", "args": "--flag"})
    with pytest.raises(ConfigError, match="quote numbers"):
        McpServerConfig.from_table("t", {"command": "x", "env": {"PORT": 8080}})
    with pytest.raises(ConfigError, match="positive number of seconds"):
        McpServerConfig.from_table("t", {"command": "x", "timeout_s": 0})
    with pytest.raises(ConfigError, match="same prefix"):
        configs_from_tables({"my server": {"command": "a"}, "my_server": {"command": "b"}})


def test_tool_names_cannot_collide_and_fit_openai_limits():
    assert mcp_tool_name("time", "get_current_time") == "time__get_current_time"
    assert mcp_tool_name("my server.v2", "files/read") == "my_server_v2__files_read"
    assert mcp_tool_name("a__b", "c") == "a_b__c"  # a server name never contains "__": the split is unambiguous
    long = mcp_tool_name("s" * 40, "t" * 40)
    assert len(long) == 64 and re.fullmatch(r"[A-Za-z0-9_-]+", long)
    assert long != mcp_tool_name("s" * 40, "t" * 39 + "u")


async def test_changed_tools_are_reported():
    tools, servers = await open_mcp_tools([toy()])
    await close_mcp_servers(servers)
    specs = tether.Agent("a", ScriptedModel([]), tools=tools).snapshot().tools
    assert mcp_tool_changes(specs, tools) == []
    fewer = [t for t in tools if t.name != "toy__add"]
    fewer[0].description += " (now better)"
    changed = mcp_tool_changes(specs, fewer)
    assert "MCP tool toy__add is no longer offered" in changed
    assert f"MCP tool {fewer[0].name} changed its description or schema" in changed


# -- a whole run --------------------------------------------------------------------------------


async def test_an_agent_run_calls_an_mcp_tool():
    tools, servers = await open_mcp_tools([time_server()])
    try:
        def script(request: ModelRequest):
            results = [m.text for m in request.messages if m.role == "tool"]
            if not results:
                return call_tool("time__get_current_time", {"timezone": "UTC"})
            return reply("It is " + json.loads(results[0])["datetime"])

        agent = tether.Agent("a", ScriptedModel(script), tools=tools)
        run = await RunsService(MemoryStore()).start(agent, "What time is it in UTC?")
        assert run.status == "completed", run
        assert re.fullmatch(r"It is \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", run.output)
        assert [s.type for s in run.steps] == ["model", "tool", "model"]
        snapshot_tools = {s.name: s for s in agent.snapshot().tools}
        assert snapshot_tools["time__get_current_time"].kind == "mcp"
        assert len(snapshot_tools["time__get_current_time"].schema_hash) == 16
    finally:
        await close_mcp_servers(servers)
    assert not servers[0].connected


def test_an_agent_file_with_an_mcp_server_runs_pauses_and_resumes_with_the_same_tools(tmp_path, monkeypatch):
    """The agent file's [mcp_servers.NAME]: tools listed at run start, recorded in the snapshot,
    sessions closed when the run pauses, and another service continues it with the same set."""
    import asyncio

    from tether.adapters.store.memory import MemoryStore
    from tether.services.agents import load_agent_file
    from tether.services.runs import RunsService

    (tmp_path / "clock_model.py").write_text(
        "from tether.adapters.models.scripted import call_tool, reply\n"
        "def script(request):\n"
        "    results = [m.text for m in request.messages if m.role == 'tool']\n"
        "    if not results:\n"
        "        return call_tool('time__get_current_time', {'timezone': 'UTC'})\n"
        "    return reply('It is ' + results[0])\n"
    )
    monkeypatch.setenv("CLOCK_SECRET", "s3cr3t-value")
    (tmp_path / "agent.toml").write_text(
        'name = "clock"\nmodel = "scripted:clock_model:script"\n'
        'breakpoints = ["before_tool:time__*"]\n'
        "[mcp_servers.time]\n"
        f"command = {json.dumps(sys.executable)}\n"
        'args = ["-m", "mcp_server_time", "--local-timezone", "UTC"]\n'
        'env = { CLOCK_TOKEN = "${CLOCK_SECRET}" }\n'
    )

    async def main():
        store = MemoryStore()
        first = RunsService(store)
        agent = load_agent_file(tmp_path / "agent.toml")
        run = await first.start(agent, "what time is it?")
        assert run.status == "paused" and run.pending[0].name == "time__get_current_time"
        specs = {t.name: t.kind for t in run.agent.tools}
        assert specs.get("time__get_current_time") == "mcp"
        assert not any(s.connected for s in agent._mcp)  # a paused run holds no MCP session
        assert "s3cr3t-value" not in repr(run.records)  # the secret never reaches the log
        second = RunsService(store)  # another process: finds the agent file again from the snapshot
        done = await second.answer(run.id)
        assert done.status == "completed" and done.output.startswith("It is ") and "UTC" in done.output
        await first.agent_for(run.agent)  # listing again works after the sessions closed

    asyncio.run(main())


async def test_an_agent_run_over_http_survives_a_server_crash_as_a_tool_error(http_url):
    """Mid-run, the stdio server crashes: the model sees a tool error, and its next call reconnects."""
    web = McpServerConfig("web", url=http_url)
    tools, servers = await open_mcp_tools([toy(), web])
    try:
        def script(request: ModelRequest):
            results = [m.text for m in request.messages if m.role == "tool"]
            if not results:
                return call_tool("web__add", {"a": 2, "b": 3})
            if len(results) == 1:
                return call_tool("toy__crash", {})
            if len(results) == 2:
                return call_tool("toy__add", {"a": 40, "b": 2})
            return reply(" | ".join(results))

        agent = tether.Agent("a", ScriptedModel(script), tools=tools)
        run = await RunsService(MemoryStore()).start(agent, "add, crash, add")
        assert run.status == "completed", run
        http_result, crash, after = run.output.split(" | ")
        assert http_result == "5"
        assert crash.startswith("Error: MCP server 'toy' crashed") and "restarted on the next call" in crash
        assert after == "42"
    finally:
        await close_mcp_servers(servers)
