"""The Python API as a user meets it: sync and async runs, events, agent files, the default store."""

from __future__ import annotations

import asyncio

import pytest

import tether
from tether import Agent, tool
from tether.adapters.models.scripted import ScriptedModel, call_tool, reply


@tool
def shout(text: str) -> str:
    """Upper-case some text."""
    return text.upper()


def script(request):
    results = [m.text for m in request.messages if m.role == "tool"]
    return reply(f"I said {results[0]}") if results else call_tool("shout", {"text": "hi"})


@pytest.fixture(autouse=True)
def own_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TETHER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TETHER_DATABASE_URL", raising=False)
    monkeypatch.setattr("tether.services.runs._default", None)


def test_run_sync_uses_a_durable_sqlite_file_in_tether_home(tmp_path):
    run = Agent("shouter", ScriptedModel(script), tools=[shout]).run_sync("say hi")
    assert run.status == "completed" and run.output == "I said HI"
    assert (tmp_path / "home" / "tether.db").exists()
    again = tether.open_service()  # another service on the same file sees the run
    runs = asyncio.run(again.list())
    assert [r.id for r in runs] == [run.id] and runs[0].output == "I said HI"
    loaded = asyncio.run(again.get(run.id))
    assert [s.type for s in loaded.steps] == ["model", "tool", "model"]


def test_run_sync_works_inside_a_running_event_loop():
    agent = Agent("shouter", ScriptedModel(script), tools=[shout])

    async def notebook_cell():
        return agent.run_sync("say hi")  # as in Jupyter, where a loop is already running

    assert asyncio.run(notebook_cell()).output == "I said HI"


def test_await_run_and_iterate_events():
    agent = Agent("shouter", ScriptedModel(script), tools=[shout])

    async def main():
        run = await agent.run("say hi")
        kinds = [e.record.kind async for e in agent.iter("say hi") if e.type == "record"]
        return run, kinds

    run, kinds = asyncio.run(main())
    assert run.output == "I said HI"
    assert kinds == ["run_started", "model_call", "tool_started", "tool_finished", "model_call", "finished"]


def test_agent_files_load_tools_next_to_them(tmp_path):
    (tmp_path / "mytools.py").write_text("def double(n: int) -> int:\n    '''Double n.'''\n    return 2 * n\n")
    (tmp_path / "agent.toml").write_text(
        'name = "doubler"\nmodel = "scripted:x:y"\ntools = ["calculator", "mytools:double"]\n'
        '[limits]\nmax_steps = 3\non_max_steps = "finish"\n'
    )
    agent = tether.load_agent_file(tmp_path / "agent.toml")
    assert sorted(agent.tools) == ["calculator", "double"]
    assert agent.limits.max_steps == 3 and agent.limits.on_max_steps == "finish"
    assert agent.ref == f"file:{(tmp_path / 'agent.toml').resolve()}" and agent.file_hash


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model = ", "not valid TOML"),
        ('name = "x"', "no `model`"),
        ('model = "m"\ncolour = "red"', "unknown keys ['colour']"),
        ('model = "m"\ntools = ["no_such_builtin"]', "unknown built-in tool 'no_such_builtin'"),
        ('model = "m"\ntools = ["no_such_module:f"]', "cannot import module 'no_such_module'"),
        ('model = "m"\n[limits]\nmax_stepz = 3', "[limits] takes"),
    ],
)
def test_agent_file_mistakes_say_what_to_fix(tmp_path, text, message):
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(tether.ConfigError) as e:
        tether.load_agent_file(path)
    assert message in str(e.value)


def test_a_bad_model_reference_fails_before_a_run_exists(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(tether.ConfigError, match="OPENAI_BASE_URL"):
        Agent("x", "qwen2.5:7b").run_sync("hi")
    assert asyncio.run(tether.open_service().list()) == []


def test_tool_policies_in_agent_files(tmp_path):
    (tmp_path / "slowtools.py").write_text(
        "import asyncio\nasync def nap(s: float) -> str:\n    '''Sleep.'''\n    await asyncio.sleep(s)\n"
        "    return 'rested'\n"
    )
    (tmp_path / "agent.toml").write_text(
        'model = "scripted:x:y"\ntools = ["slowtools:nap", "calculator"]\n'
        "[policies.nap]\ntimeout_s = 0.05\nmax_result_chars = 10\n"
    )
    agent = tether.load_agent_file(tmp_path / "agent.toml")
    assert agent.tools["nap"].policy.timeout_s == 0.05 and agent.tools["nap"].policy.max_result_chars == 10
    assert agent.tools["calculator"].policy.timeout_s == 5  # untouched
    model = ScriptedModel([call_tool("nap", {"s": 1}), reply("done")])
    run = Agent("x", model, tools=agent.tools.values()).run_sync("go")
    assert run.steps[1].error == "the tool timed out after 0.05s"
    for bad, message in [
        ("[policies.nap]\ntimeout = 1\n", "[policies.nap] takes"),
        ("[policies.nap]\nretryable = true\n", "only if it is idempotent"),
        ("[policies.ghost]\ntimeout_s = 1\n", "'ghost', which is not one of the agent's tools"),
    ]:
        (tmp_path / "bad.toml").write_text('model = "m"\ntools = ["slowtools:nap"]\n' + bad)
        with pytest.raises(tether.ConfigError) as e:
            tether.load_agent_file(tmp_path / "bad.toml")
        assert message in str(e.value)


def test_built_in_tools_take_options_in_agent_files(tmp_path):
    (tmp_path / "agent.toml").write_text(
        'model = "scripted:x:y"\ntools = ["python", "calculator"]\n'
        '[tool_options.python]\nbackend = "monty"\nwall_s = 3\n'
    )
    agent = tether.load_agent_file(tmp_path / "agent.toml")
    assert "Monty" in agent.tools["python"].description
    for bad, message in [
        ('[tool_options.python]\nbackend = "docker"\n', 'not \'docker\''),
        ("[tool_options.python]\nwall_seconds = 3\n", "bad options for the python tool"),
        ('[tool_options.calculator]\nprecision = 3\n', "bad options for the calculator tool"),
        ('[tool_options.search]\nx = 1\n', "not in `tools`"),
    ]:
        (tmp_path / "bad.toml").write_text('model = "m"\ntools = ["python", "calculator"]\n' + bad)
        with pytest.raises(tether.ConfigError) as e:
            tether.load_agent_file(tmp_path / "bad.toml")
        assert message in str(e.value), str(e.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[policies.calculator]\nidempotent = "no"\n', "idempotent must be true or false"),
        ('[policies.calculator]\nrequires_approval = "false"\n', "requires_approval must be true or false"),
        ("[policies.calculator]\nmax_result_chars = -1\n", "max_result_chars must be a whole number of at least 1"),
        ('[policies.calculator]\ntimeout_s = "ten"\n', "timeout_s must be a positive number"),
        ("[policies.calculator]\nmax_concurrency = 0\n", "max_concurrency must be a whole number of at least 1"),
        ("[limits]\nmax_steps = -3\n", "max_steps must be a whole number of at least 1"),
        ('[limits]\nmax_tokens = "x"\n', "max_tokens must be a positive number"),
        ("[limits]\nmax_steps = 2.5\n", "max_steps must be a whole number"),
        ("[limits]\nmax_parallel_tools = 0\n", "max_parallel_tools must be a whole number of at least 1"),
        ('[limits]\non_max_steps = "explode"\n', 'on_max_steps must be "pause", "finish" or "fail"'),
        ("policies = 3\n", "`policies` must be a table"),
        ("settings = 3\n", "`settings` must be a table"),
        ("breakpoints = [5]\n", "breakpoint 1 must be a spec string or a table"),
        ("instructions = 5\n", "`instructions` must be a string"),
        ('output_schema = {type = "nonsense"}\n', "output_schema is not a valid JSON schema"),
        ('[tool_options.python]\nwall_s = "x"\n', "bad options for the python tool"),
    ],
)
def test_agent_file_values_of_the_wrong_type_are_refused_when_loaded(tmp_path, text, message):
    path = tmp_path / "agent.toml"
    path.write_text('model = "scripted:x:y"\ntools = ["calculator", "python"]\n' + text)
    with pytest.raises(tether.ConfigError) as e:
        tether.load_agent_file(path)
    assert message in str(e.value) and str(path) in str(e.value)
