"""The Assistants behaviour as a service, without HTTP: the agent of an API run."""

from __future__ import annotations

import asyncio

import pytest

from tether.adapters.models.refs import ModelBackend
from tether.adapters.store.memory import MemoryStore
from tether.domain.agents import AgentSnapshot
from tether.domain.errors import ConfigError, InvalidRequest
from tether.domain.objects import StoredObject
from tether.services.assistants import ApiAgents, api_agent_resolver
from tether.services.server_tools import ServerTools

BACKEND = ModelBackend("http://127.0.0.1:9/v1", "sk-test")  # never called: agents are only built
SETTINGS = {"assistant_id": "asst_1", "model": "qwen2.5:7b", "instructions": "Be brief.",
            "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
            "tether_tools": [{"type": "calculator"}], "tether_breakpoints": ["before_tool:weather"],
            "temperature": 0.5, "top_p": None, "tool_choice": {"type": "function", "function": {"name": "weather"}},
            "response_format": {"type": "json_object"}, "max_prompt_tokens": 100, "max_completion_tokens": None}


def snapshot_of(run_id: str) -> AgentSnapshot:
    return AgentSnapshot(name="asst_1", model="qwen2.5:7b", instructions="", agent_ref=f"api:{run_id}")


def test_the_resolver_rebuilds_an_api_run_agent_from_its_stored_settings() -> None:
    store = MemoryStore()
    asyncio.run(store.put_object(StoredObject("run_1", "run", "local", 1.0, SETTINGS, "thread_1")))
    resolve = api_agent_resolver(store, ServerTools(), BACKEND, False)
    agent = asyncio.run(resolve(snapshot_of("run_1")))
    assert agent.ref == "api:run_1" and agent.name == "asst_1" and agent.instructions == "Be brief."
    assert sorted(agent.tools) == ["calculator", "weather"]
    assert agent.settings == {"temperature": 0.5, "parallel_tool_calls": True,
                              "response_format": {"type": "json_object"},
                              "tool_choice": {"type": "function", "function": {"name": "weather"}}}
    assert agent.limits.max_steps == 50 and agent.limits.max_prompt_tokens == 100


def test_the_resolver_refuses_a_run_without_stored_settings() -> None:
    resolve = api_agent_resolver(MemoryStore(), ServerTools(), BACKEND, False)
    with pytest.raises(ConfigError, match="run run_x has no stored settings"):
        asyncio.run(resolve(snapshot_of("run_x")))


@pytest.mark.parametrize(("change", "param", "message"), [
    ({"model": "replay:/etc/passwd"}, "model", "Invalid value for 'model'"),
    ({"tether_tools": [{"type": "calculator", "server": "x"}]}, "tether_tools[0].server", "only an mcp tool"),
    ({"tether_tools": [{"type": "nope"}]}, "tether_tools[0]", "no server-side tool 'nope'"),
    ({"tether_breakpoints": ["before_lunch"]}, "tether_breakpoints", "Invalid value for 'tether_breakpoints'"),
    ({"tools": [{"type": "function", "function": {"name": "calculator"}}]}, "tools", "Two tools have the same name"),
])
def test_bad_settings_are_domain_errors_naming_the_field(change: dict, param: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as e:
        ApiAgents(ServerTools(), BACKEND).check({**SETTINGS, **change})
    assert e.value.param == param
