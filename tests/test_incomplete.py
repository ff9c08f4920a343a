"""Hard token limits (Assistants `max_prompt_tokens` / `max_completion_tokens`) end a run "incomplete"."""

from __future__ import annotations

import pytest

from tether.adapters.models.replay import ReplayModel, read_cassette
from tether.adapters.models.scripted import ScriptedModel, call_tool, calls, reply
from tether.adapters.store.memory import MemoryStore
from tether.adapters.tools.function import tool
from tether.domain.agents import Limits
from tether.domain.errors import ConfigError
from tether.domain.models import ModelRequest, ModelResponse
from tether.domain.records import Finished, ModelCalled, ToolFinished
from tether.domain.usage import Usage
from tether.examples import florist
from tether.services.agents import Agent, load_agent_file
from tether.services.runs import RunsService

pytestmark = pytest.mark.anyio

ran: list[int] = []


@tool
async def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first
        b: the second
    """
    ran.append(a + b)
    return a + b


class Seen:
    """A scripted model's script that records every request it is sent."""

    def __init__(self, *responses: ModelResponse | str) -> None:
        self.requests: list[ModelRequest] = []
        self.responses = list(responses)

    def __call__(self, request: ModelRequest) -> ModelResponse | str:
        self.requests.append(request)
        return self.responses.pop(0)


@pytest.fixture
def service() -> RunsService:
    ran.clear()
    return RunsService(MemoryStore())


def used(inp: int, out: int) -> Usage:
    return Usage(input_tokens=inp, output_tokens=out)


async def start(service: RunsService, seen: Seen, limits: Limits | None = None, **options):
    model = ScriptedModel(seen)
    return await service.start(Agent("t", model, tools=[add], limits=limits, **options), "go"), model


def finished(run) -> Finished:
    last = run.records[-1].payload
    assert isinstance(last, Finished)
    return last


# -- max_completion_tokens ----------------------------------------------------------------------


async def test_completion_limit_passed_after_a_call_ends_the_run_incomplete(service):
    seen = Seen(call_tool("add", {"a": 1, "b": 2}, text="Let me add", usage=used(10, 5)),
                calls([("add", {"a": 3, "b": 4}), ("add", {"a": 5, "b": 6})], text="and more", usage=used(20, 8)),
                reply("never asked"))
    run, model = await start(service, seen, Limits(max_completion_tokens=12))
    assert run.status == "incomplete" and run.error == "max_completion_tokens"
    assert run.output is None
    assert model.calls == 2 and ran == [3]  # the second response's tools never ran
    # the response that went over is recorded, its text kept
    model_calls = [r.payload for r in run.records if isinstance(r.payload, ModelCalled)]
    assert [m.response.text for m in model_calls] == ["Let me add", "and more"]
    assert [s.text for s in run.steps if s.type == "model"] == ["Let me add", "and more"]
    # its tool calls got synthetic results: the history stays valid
    last_calls = model_calls[-1].response.tool_calls
    synthetic = [r.payload for r in run.records if isinstance(r.payload, ToolFinished)][-2:]
    assert [f.call_id for f in synthetic] == [c.id for c in last_calls]
    assert all(f.result is None and f.error == "not run: run incomplete" for f in synthetic)
    assert [m.role for m in run.messages][-3:] == ["assistant", "tool", "tool"]
    fin = finished(run)
    assert fin.status == "incomplete" and fin.error == "max_completion_tokens"
    assert (fin.usage.input_tokens, fin.usage.output_tokens) == (30, 13)


async def test_a_response_cut_short_by_the_limit_ends_the_run_incomplete(service):
    cut = ModelResponse(text="The answer is a long sto", finish_reason="length", usage=used(10, 4))
    run, _ = await start(service, Seen(cut), Limits(max_completion_tokens=100))
    assert run.status == "incomplete" and run.error == "max_completion_tokens"
    assert run.steps[-1].text == "The answer is a long sto"
    assert run.messages[-1].text == "The answer is a long sto"


async def test_length_without_the_limit_still_completes(service):
    cut = ModelResponse(text="cut", finish_reason="length", usage=used(10, 4))
    run, _ = await start(service, Seen(cut))
    assert run.status == "completed" and run.output == "cut"


async def test_a_final_answer_that_just_reaches_the_limit_completes(service):
    run, _ = await start(service, Seen(reply("done", usage=used(10, 7))), Limits(max_completion_tokens=7))
    assert run.status == "completed" and run.output == "done"


async def test_tool_calls_that_reach_the_limit_are_not_run(service):
    # the tools' results could never be sent: the next call is over the limit already
    run, model = await start(service, Seen(call_tool("add", {"a": 1, "b": 1}, usage=used(10, 7))),
                             Limits(max_completion_tokens=7))
    assert run.status == "incomplete" and run.error == "max_completion_tokens"
    assert model.calls == 1 and ran == []


async def test_the_remaining_completion_budget_is_sent_with_each_request(service):
    seen = Seen(call_tool("add", {"a": 1, "b": 2}, usage=used(10, 30)), reply("3", usage=used(20, 5)))
    run, _ = await start(service, seen, Limits(max_completion_tokens=100), settings={"temperature": 0.2})
    assert run.status == "completed" and run.output == "3"
    assert [r.settings for r in seen.requests] == [
        {"temperature": 0.2, "max_completion_tokens": 100},
        {"temperature": 0.2, "max_completion_tokens": 70},
    ]
    assert run.agent is not None and run.agent.settings == {"temperature": 0.2}  # the agent's own: unchanged


async def test_the_cap_is_the_smaller_of_the_budget_and_the_agents_setting(service):
    seen = Seen(call_tool("add", {"a": 1, "b": 2}, usage=used(10, 30)), reply("3", usage=used(20, 5)))
    await start(service, seen, Limits(max_completion_tokens=100), settings={"max_completion_tokens": 50})
    assert [r.settings["max_completion_tokens"] for r in seen.requests] == [50, 50]
    seen = Seen(call_tool("add", {"a": 1, "b": 2}, usage=used(10, 80)), reply("3", usage=used(20, 5)))
    await start(service, seen, Limits(max_completion_tokens=100), settings={"max_completion_tokens": 50})
    assert [r.settings["max_completion_tokens"] for r in seen.requests] == [50, 20]


async def test_an_agent_using_max_tokens_gets_the_cap_there_not_both(service):
    # OpenAI refuses a request with both max_tokens and max_completion_tokens
    seen = Seen(call_tool("add", {"a": 1, "b": 2}, usage=used(10, 80)), reply("3", usage=used(20, 5)))
    await start(service, seen, Limits(max_completion_tokens=100), settings={"max_tokens": 50})
    assert [r.settings for r in seen.requests] == [{"max_tokens": 50}, {"max_tokens": 20}]


# -- max_prompt_tokens --------------------------------------------------------------------------


async def test_prompt_limit_passed_by_a_call_ends_the_run_before_its_tools_run(service):
    seen = Seen(call_tool("add", {"a": 1, "b": 2}, text="adding", usage=used(100, 5)), reply("never asked"))
    run, model = await start(service, seen, Limits(max_prompt_tokens=90))
    # 100 > 90 after the first call, which asked for tools: they are not run
    assert run.status == "incomplete" and run.error == "max_prompt_tokens"
    assert model.calls == 1 and ran == []
    assert run.steps[0].text == "adding"


async def test_prompt_tokens_are_summed_over_the_runs_calls(service):
    seen = Seen(call_tool("add", {"a": 1, "b": 2}, usage=used(40, 5)),
                call_tool("add", {"a": 3, "b": 4}, usage=used(60, 5)),
                reply("never asked"))
    run, model = await start(service, seen, Limits(max_prompt_tokens=100))
    # 40 < 100: tools run; 100 is reached by the second call, whose tools would need a third
    assert run.status == "incomplete" and run.error == "max_prompt_tokens"
    assert model.calls == 2 and ran == [3]
    assert "max_completion_tokens" not in seen.requests[0].settings  # the prompt limit sends nothing


async def test_a_limit_reached_stops_the_run_before_the_next_call(service):
    # an answer at the limit that fails the output schema would need a correction: not asked for
    seen = Seen(reply("not json", usage=used(100, 5)), reply('{"n": 1}'))
    run, model = await start(service, seen, Limits(max_prompt_tokens=100),
                             output_schema={"type": "object", "properties": {"n": {"type": "integer"}}})
    assert run.status == "incomplete" and run.error == "max_prompt_tokens"
    assert model.calls == 1
    assert run.records[-2].payload.kind == "model_call" and run.records[-2].payload.rejected


async def test_the_run_index_shows_incomplete_with_its_reason(service):
    seen = Seen(reply("too long", usage=used(10, 20)))
    run, _ = await start(service, seen, Limits(max_completion_tokens=10))
    infos = await service.list()
    info = next(i for i in infos if i.id == run.id)
    assert info.status == "incomplete" and info.output == "max_completion_tokens"
    assert (info.input_tokens, info.output_tokens) == (10, 20)
    again = await service.get(run.id)  # folded back from the log
    assert again.status == "incomplete" and again.error == "max_completion_tokens"


# -- without limits nothing changes ------------------------------------------------------------


async def test_no_limit_no_change(service):
    seen = Seen(call_tool("add", {"a": 1, "b": 2}, usage=used(10**6, 10**6)),
                ModelResponse(text="cut", finish_reason="length", usage=used(10**6, 10**6)))
    run, _ = await start(service, seen, settings={"temperature": 0})
    assert run.status == "completed" and run.output == "cut"
    assert [r.settings for r in seen.requests] == [{"temperature": 0}, {"temperature": 0}]


async def test_the_shipped_cassette_still_replays_without_limits(service):
    # its fingerprints were computed before these limits existed
    agent = load_agent_file(florist.AGENT_FILE)
    assert agent.limits.max_prompt_tokens is None and agent.limits.max_completion_tokens is None
    run = await service.start(agent.with_model(ReplayModel(read_cassette(florist.CASSETTE_FILE))), florist.TASK)
    assert run.status == "completed", run.error


async def test_runs_with_limits_replay_exactly(service):
    def script(request: ModelRequest) -> ModelResponse:
        n = sum(m.role == "tool" for m in request.messages)
        return call_tool("add", {"a": n, "b": 1}, usage=used(10, 4)) if n < 2 else reply("two", usage=used(10, 4))

    agent = Agent("t", ScriptedModel(script), tools=[add], limits=Limits(max_completion_tokens=50,
                                                                         max_prompt_tokens=500))
    original = await service.start(agent, "go")
    assert original.status == "completed"
    replayed = await service.replay(original.id)
    assert replayed.status == "completed" and replayed.output == "two"
    full = await service.replay(original.id, full=True)
    assert full.status == "completed" and full.output == "two"


# -- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["max_prompt_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "100"])
def test_invalid_limits_are_refused(name, bad):
    with pytest.raises(ValueError, match=name):
        Limits(**{name: bad})


def test_valid_limits():
    lim = Limits(max_prompt_tokens=1, max_completion_tokens=10_000)
    assert (lim.max_prompt_tokens, lim.max_completion_tokens) == (1, 10_000)
    assert (Limits().max_prompt_tokens, Limits().max_completion_tokens) == (None, None)


def test_agent_files_take_the_limits(tmp_path):
    (tmp_path / "agent.toml").write_text(
        'model = "scripted:x:y"\n[limits]\nmax_prompt_tokens = 2000\nmax_completion_tokens = 500\n')
    agent = load_agent_file(tmp_path / "agent.toml")
    assert (agent.limits.max_prompt_tokens, agent.limits.max_completion_tokens) == (2000, 500)
    (tmp_path / "bad.toml").write_text('model = "scripted:x:y"\n[limits]\nmax_completion_tokens = 0\n')
    with pytest.raises(ConfigError, match="max_completion_tokens"):
        load_agent_file(tmp_path / "bad.toml")
