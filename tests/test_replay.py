"""Both kinds of replay reproduce a run exactly, and a changed request is caught as divergence."""

from __future__ import annotations

import json

import pytest

from tether.adapters.models.replay import ReplayModel, read_cassette, write_cassette
from tether.adapters.models.scripted import ScriptedModel, call_tool, reply
from tether.adapters.store.memory import MemoryStore
from tether.adapters.tools.function import tool
from tether.domain.errors import ConfigError
from tether.domain.models import ModelRequest
from tether.services.agents import Agent
from tether.services.runs import RunsService

pytestmark = pytest.mark.anyio

calls_made: list[str] = []
PRICE = {"roses": "2.40"}


@tool
def price_lookup(flower: str) -> str:
    """Market price of a flower per stem."""
    calls_made.append(flower)
    return PRICE[flower]


def florist(request: ModelRequest):
    results = [m.text for m in request.messages if m.role == "tool"]
    if not results:
        return call_tool("price_lookup", {"flower": "roses"})
    if len(results) == 1:
        return call_tool("calculator", {"expression": f"{results[0]} * 1.15"})
    return reply(f"Roses cost ${results[0]}; charge ${results[1]}.")


def agent(model) -> Agent:
    return Agent("florist", model, instructions="Help the florist.", tools=[price_lookup, "calculator"])


@pytest.fixture
def service() -> RunsService:
    calls_made.clear()
    PRICE["roses"] = "2.40"
    return RunsService(MemoryStore())


def outputs(run):
    return [(s.type, s.name, s.arguments, s.text, s.result, s.error) for s in run.steps]


async def test_replay_model_from_a_cassette_reproduces_the_run(service, tmp_path):
    original = await service.start(agent(ScriptedModel(florist)), "What do roses cost?")
    assert original.output == "Roses cost $2.40; charge $2.76."
    path = tmp_path / "florist.cassette.jsonl"
    assert write_cassette(path, original.records) == 3
    text = path.read_text()
    assert "api_key" not in text.lower() and "authorization" not in text.lower()

    replayed = await service.start(agent(ReplayModel(read_cassette(path))), "What do roses cost?")
    assert replayed.output == original.output
    assert outputs(replayed) == outputs(original)
    assert calls_made == ["roses", "roses"]  # a replay *model* runs the tools live


async def test_replay_model_detects_divergence(service, tmp_path):
    original = await service.start(agent(ScriptedModel(florist)), "What do roses cost?")
    path = tmp_path / "c.jsonl"
    write_cassette(path, original.records)
    PRICE["roses"] = "3.00"  # the tool now answers differently: step 3's request differs
    replayed = await service.start(agent(ReplayModel(read_cassette(path))), "What do roses cost?")
    assert replayed.status == "failed"
    assert replayed.error.startswith("replay diverged at step 3")
    other_task = await service.start(agent(ReplayModel(read_cassette(path))), "What do tulips cost?")
    assert other_task.error.startswith("replay diverged at step 1")


async def test_full_replay_calls_nothing_and_reproduces_the_run(service):
    model = ScriptedModel(florist)
    original = await service.start(agent(model), "What do roses cost?")
    calls_made.clear()
    PRICE["roses"] = "9.99"  # would change the answer if the tool were really called
    replayed = await service.replay(original.id, full=True)
    assert replayed.status == "completed" and replayed.output == original.output
    assert calls_made == [] and model.calls == 3
    assert [s.result for s in replayed.steps] == [s.result for s in original.steps]
    assert replayed.records[0].payload.metadata == {"replay_of": original.id, "replay": "full"}


async def test_model_replay_of_a_stored_run_with_live_tools_diverges_when_a_tool_changed(service):
    original = await service.start(agent(ScriptedModel(florist)), "What do roses cost?")
    same = await service.replay(original.id)
    assert same.output == original.output
    PRICE["roses"] = "9.99"
    changed = await service.replay(original.id)
    assert changed.status == "failed" and "diverged at step 3" in changed.error


async def test_replay_is_exhausted_cleanly(service, tmp_path):
    original = await service.start(agent(ScriptedModel(florist)), "What do roses cost?")
    path = tmp_path / "c.jsonl"
    write_cassette(path, original.records[:3])  # only the first model call
    replayed = await service.start(agent(ReplayModel(read_cassette(path))), "What do roses cost?")
    assert replayed.status == "failed" and "only 1 model calls" in replayed.error


def test_cassettes_are_versioned_and_damage_is_reported(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    with pytest.raises(ConfigError, match=r"damaged|not a Tether cassette"):
        read_cassette(bad)
    newer = tmp_path / "newer.jsonl"
    newer.write_text(json.dumps({"format": "tether-cassette", "version": 99}) + "\n")
    with pytest.raises(ConfigError, match="version 99"):
        read_cassette(newer)
    with pytest.raises(ConfigError, match="cannot read cassette"):
        read_cassette(tmp_path / "missing.jsonl")
