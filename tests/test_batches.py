"""Batches: durable sets of cases run as ordinary runs, on a real SQLite file (and Postgres).

A case's run is made when it starts, with an id from (batch, key, attempt): a resume after a stop
skips finished cases, resumes interrupted ones and never makes a second run for one attempt.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
from pathlib import Path
from typing import Any

import pytest

from pg import postgres, postgres_url  # noqa: F401  (fixtures)
from tether import Agent, RunsService
from tether.adapters.models.scripted import ScriptedModel, call_tool, reply
from tether.adapters.store.sql import SqlStore
from tether.domain.batches import BatchOptions, BatchState, CaseStatus, cases_hash, cases_of
from tether.domain.errors import BatchInputChanged, BatchNotFound, ConfigError, InvalidRequest, ModelError, TetherError
from tether.domain.models import ModelRequest, ModelResponse
from tether.domain.records import RunStatus
from tether.domain.tools import ToolPolicy
from tether.domain.usage import Usage
from tether.services.batches import BatchesService
from tether.services.compose import services_for

pytestmark = pytest.mark.anyio


class World:
    """A side-effecting tool, and a model that calls it once per case and then answers; it can hold
    cases at a gate, fail chosen inputs, and counts the calls in flight at once."""

    def __init__(self) -> None:
        self.effects: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self.fail: set[str] = set()
        self.gate: asyncio.Event | None = None
        self.hold: set[str] = set()  # inputs held at the gate (all, when empty and a gate is set)
        self.in_flight = 0
        self.waiting = 0  # calls held at the gate now
        self.peak = 0
        self.entered = asyncio.Event()
        self.after_effect: Any = None
        self.gate_after_tool = False  # the gate holds only the calls after a tool result

    def effect(self, key: str) -> str:
        """Do the case's side effect (once per case, if the batch is right)."""
        self.effects[key] += 1
        if self.after_effect is not None:
            self.after_effect()
        return f"did {key}"

    async def complete(self, request: ModelRequest) -> ModelResponse:
        task = next(m.text for m in request.messages if m.role == "user")
        self.calls[task] += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            after_tool = request.messages[-1].role == "tool"
            held = not self.hold or task in self.hold
            if self.gate is not None and held and (after_tool or not self.gate_after_tool):
                self.entered.set()
                self.waiting += 1
                try:
                    await self.gate.wait()
                finally:
                    self.waiting -= 1
            await asyncio.sleep(0)
            if task in self.fail:
                raise ModelError(f"no answer for {task}")
            usage = Usage(input_tokens=10, output_tokens=5)
            if request.messages[-1].role == "tool":
                return reply(f"answer to {task}", usage=usage)
            return call_tool("effect", {"key": task}, usage=usage)
        finally:
            self.in_flight -= 1

    def agent(self, **kwargs: Any) -> Agent:
        model = ScriptedModel(self.complete, input_price_per_mtok=1.0, output_price_per_mtok=2.0)
        return Agent("batcher", model, tools=[self.effect], **kwargs)


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'tether.db'}"


@pytest.fixture
async def service(db: str) -> Any:
    store = SqlStore(db)
    yield BatchesService(RunsService(store))
    await store.close()


def tasks(n: int) -> list[str]:
    return [f"task {i}" for i in range(n)]


async def all_runs(service: BatchesService) -> list[Any]:
    return await service.runs.store.list_runs(limit=100_000)


async def test_a_batch_runs_every_case_and_reads_its_results(service: BatchesService) -> None:
    world = World()
    seen: list[Any] = []
    progress: list[Any] = []
    info = await service.create(world.agent(), cases_of(tasks(5)), BatchOptions(concurrency=2, name="five"))
    assert info.state == BatchState.OPEN and info.counts[CaseStatus.PENDING] == 5 and info.name == "five"
    done = await service.run(info.id, on_case=seen.append, on_progress=progress.append)
    assert done.state == BatchState.DONE and done.counts[CaseStatus.COMPLETED] == 5
    assert done.input_tokens == 5 * 20 and done.output_tokens == 5 * 10
    assert done.cost_usd == pytest.approx(5 * (20 * 1.0 + 10 * 2.0) / 1e6)
    assert world.effects == {t: 1 for t in tasks(5)}
    assert sorted(r.key for r in seen) == [str(i) for i in range(5)]
    assert progress[-1].completed == 5 and progress[-1].pending == 0 and progress[-1].eta_s == 0.0
    results = await service.cases(info.id)
    assert [r.output for r in results] == [f"answer to task {i}" for i in range(5)]
    first = results[0]
    assert (first.status, first.attempt, first.steps, first.input_tokens) == (CaseStatus.COMPLETED, 1, 3, 20)
    assert first.latency_s is not None and first.latency_s >= 0
    run = await service.runs.get(first.run_id or "")
    assert run.records[0].payload.batch.batch_id == info.id  # type: ignore[union-attr]
    assert [r.key for r in await service.cases(info.id, after=1, limit=2)] == ["2", "3"]
    assert await service.cases(info.id, status=CaseStatus.FAILED) == []
    assert [b.id for b in await service.list()] == [info.id]


async def test_vars_fill_the_instructions_and_the_task_template_and_leave_json_braces(
        service: BatchesService) -> None:
    world = World()
    agent = world.agent(instructions='Answer in {lang}. Reply as {"answer": "..."}; {unknown} stays.')
    cases = cases_of([{"input": "2+2", "vars": {"lang": "fr"}}, {"input": "3+3", "vars": {"lang": "de"}}])
    info = await service.create(agent, cases, BatchOptions(task_template="Q ({lang}): {input}"))
    await service.run(info.id)
    results = await service.cases(info.id)
    runs = [await service.runs.get(r.run_id or "") for r in results]
    assert [r.agent.instructions for r in runs] == [  # type: ignore[union-attr]
        'Answer in fr. Reply as {"answer": "..."}; {unknown} stays.',
        'Answer in de. Reply as {"answer": "..."}; {unknown} stays.']
    assert [r.messages[0].text for r in runs] == ["Q (fr): 2+2", "Q (de): 3+3"]
    assert agent.instructions.startswith("Answer in {lang}")  # the agent itself is unchanged


async def test_a_resume_after_stop_skips_finished_cases_and_resumes_interrupted_ones(
        service: BatchesService, tmp_path: Path) -> None:
    world = World()
    out = tmp_path / "results.jsonl"
    info = await service.create(world.agent(), cases_of(tasks(6)), BatchOptions(concurrency=2))
    stop = asyncio.Event()
    world.gate, world.hold = asyncio.Event(), {"task 2", "task 3"}

    async def stop_when_both_are_held() -> None:
        while world.waiting < 2:
            await asyncio.sleep(0.005)
        stop.set()

    stopper = asyncio.create_task(stop_when_both_are_held())
    stopped = await service.run(info.id, stop=stop, out=out)
    await stopper
    assert stopped.state == BatchState.OPEN
    assert stopped.counts[CaseStatus.COMPLETED] == 2
    assert stopped.counts[CaseStatus.QUEUED] == 2 and stopped.counts[CaseStatus.PENDING] == 2  # interrupted: resumable
    assert sorted(json.loads(line)["key"] for line in out.read_text().splitlines()) == ["0", "1"]
    assert len(await all_runs(service)) == 4
    calls_before = dict(world.calls)

    world.gate.set()
    done = await service.run(info.id, out=out)
    assert done.state == BatchState.DONE and done.counts[CaseStatus.COMPLETED] == 6
    assert len(await all_runs(service)) == 6  # one run per case: none made twice
    assert world.effects == {t: 1 for t in tasks(6)}
    assert world.calls["task 0"] == calls_before["task 0"] == 2  # finished cases were not run again
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["key"] for line in lines) == [str(i) for i in range(6)]  # each case once
    assert all(line["status"] == "completed" for line in lines)


async def test_a_stop_is_seen_after_the_queue_has_run_dry(service: BatchesService) -> None:
    """The last cases are held in flight after every other worker has finished: a stop still ends the
    run at once, leaving them resumable."""
    world = World()
    info = await service.create(world.agent(), cases_of(tasks(12)), BatchOptions(concurrency=4))
    stop = asyncio.Event()
    world.gate, world.hold = asyncio.Event(), {"task 10", "task 11"}
    ended: list[Any] = []

    async def stop_when_both_are_held() -> None:
        while world.waiting < 2 or len(ended) < 10:
            await asyncio.sleep(0.005)
        stop.set()

    stopper = asyncio.create_task(stop_when_both_are_held())
    stopped = await asyncio.wait_for(service.run(info.id, stop=stop, on_case=ended.append), 60)
    await stopper
    assert stopped.counts[CaseStatus.COMPLETED] == 10 and stopped.counts[CaseStatus.QUEUED] == 2
    world.gate.set()
    assert (await service.run(info.id)).counts[CaseStatus.COMPLETED] == 12
    assert len(await all_runs(service)) == 12


async def test_a_run_interrupted_after_its_tool_goes_on_from_its_log(service: BatchesService) -> None:
    """The stopped case's run is resumed, not restarted: its first model call and its tool call are not
    made again."""
    world = World()
    info = await service.create(world.agent(), cases_of(["only"]), BatchOptions(concurrency=1))
    stop = asyncio.Event()
    world.gate, world.gate_after_tool = asyncio.Event(), True  # its second model call waits...
    loop = asyncio.get_running_loop()
    world.after_effect = lambda: loop.call_soon_threadsafe(stop.set)  # ...and the batch is stopped meanwhile
    stopped = await service.run(info.id, stop=stop)
    assert stopped.counts[CaseStatus.QUEUED] == 1
    assert world.effects["only"] == 1
    calls = world.calls["only"]
    world.gate.set()
    done = await service.run(info.id)
    assert world.calls["only"] == calls + 1  # only the answer was asked for
    assert done.counts[CaseStatus.COMPLETED] == 1
    assert world.effects["only"] == 1 and len(await all_runs(service)) == 1


async def test_retry_failed_makes_a_second_attempt_only_for_failed_cases(service: BatchesService) -> None:
    world = World()
    world.fail = {"task 1", "task 3"}
    info = await service.create(world.agent(), cases_of(tasks(4)), BatchOptions(concurrency=4))
    first = await service.run(info.id)
    assert first.counts[CaseStatus.FAILED] == 2 and first.state == BatchState.DONE
    failed = await service.cases(info.id, status=CaseStatus.FAILED)
    assert [(r.key, r.error) for r in failed] == [("1", "no answer for task 1"), ("3", "no answer for task 3")]
    again = await service.run(info.id)  # without retry_failed: nothing to do
    assert again.counts == first.counts and len(await all_runs(service)) == 4

    world.fail = set()
    retried = await service.run(info.id, retry_failed=True)
    assert retried.counts[CaseStatus.COMPLETED] == 4
    results = await service.cases(info.id)
    assert [r.attempt for r in results] == [1, 2, 1, 2]
    assert len(await all_runs(service)) == 6  # two new runs, one per failed case
    assert len({r.run_id for r in results}) == 4 and results[1].run_id != failed[0].run_id
    assert world.calls["task 0"] == 2  # completed cases were not run again
    # what the batch spent counts every attempt: the failed first attempts spent nothing here
    assert retried.input_tokens == 4 * 20


async def test_a_resume_with_changed_input_is_refused(service: BatchesService) -> None:
    world = World()
    cases = cases_of(tasks(2))
    info = await service.create(world.agent(), cases, BatchOptions())
    with pytest.raises(BatchInputChanged, match="created from other input"):
        await service.run(info.id, cases_hash=cases_hash(cases_of(["task 0", "task one"])))
    assert (await service.run(info.id, cases_hash=cases_hash(cases))).counts[CaseStatus.COMPLETED] == 2


async def test_at_most_concurrency_cases_are_in_flight_and_tasks_stay_few(service: BatchesService) -> None:
    world = World()
    n, concurrency = 120, 4
    info = await service.create(world.agent(), cases_of(tasks(n)), BatchOptions(concurrency=concurrency))
    peak_tasks = 0

    def on_progress(_: Any) -> None:
        nonlocal peak_tasks
        peak_tasks = max(peak_tasks, len(asyncio.all_tasks()))

    world.gate = asyncio.Event()

    async def open_when_all_slots_are_held() -> None:
        while world.waiting < concurrency:
            await asyncio.sleep(0.005)
        world.gate.set()  # type: ignore[union-attr]

    opener = asyncio.create_task(open_when_all_slots_are_held())
    done = await service.run(info.id, on_progress=on_progress)
    await opener
    assert done.counts[CaseStatus.COMPLETED] == n
    assert world.peak == concurrency  # reached, never passed
    # workers, feeder, stopper, ticker, a flush, the test's, the opener and the heartbeat: O(concurrency)
    assert peak_tasks <= concurrency + 8 < n


async def test_resuming_a_big_batch_runs_only_the_cases_left(service: BatchesService) -> None:
    """The lead benchmarks 10,000 cases (TETHER_BATCH_CASES=10000); the suite runs a small one."""
    n = int(os.environ.get("TETHER_BATCH_CASES", "300"))
    world = World()
    info = await service.create(world.agent(), cases_of(tasks(n)), BatchOptions(concurrency=1))
    stop = asyncio.Event()
    finished = 0

    def on_case(_: Any) -> None:
        nonlocal finished
        finished += 1
        if finished == n - 10:
            stop.set()

    await service.run(info.id, stop=stop, on_case=on_case)
    world.calls.clear()
    done = await service.run(info.id, concurrency=8)
    assert done.counts[CaseStatus.COMPLETED] == n
    assert sum(world.calls.values()) == 10 * 2 and len(world.calls) == 10
    assert len(await all_runs(service)) == n


async def test_a_code_defined_agent_resumes_where_it_is_registered(db: str) -> None:
    world = World()
    store = SqlStore(db)
    try:
        batches = BatchesService(RunsService(store))
        agent = world.agent()
        info = await batches.create(agent, cases_of(tasks(2)), BatchOptions())
        elsewhere = BatchesService(RunsService(store))  # as another process would: the agent is unknown there
        with pytest.raises(ConfigError, match="resumes in a process where that agent is registered"):
            await elsewhere.run(info.id)
        elsewhere.runs.register(agent)
        assert (await elsewhere.run(info.id)).counts[CaseStatus.COMPLETED] == 2
    finally:
        await store.close()


async def test_an_agent_file_batch_resumes_from_its_stored_snapshot(db: str, tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('name = "filed"\nmodel = "scripted:tests.test_batches:echo_model"\n'
                    'instructions = "Say {word}."\n')
    store = SqlStore(db)
    try:
        import sys

        sys.path.insert(0, str(Path(__file__).parent.parent))
        created = BatchesService(RunsService(store))
        info = await created.create(Agent.from_file(path), cases_of([{"input": "x", "vars": {"word": "hi"}}]),
                                    BatchOptions())
        fresh = BatchesService(RunsService(store))  # knows no agent: rebuilds it from the file
        done = await fresh.run(info.id)
        assert done.counts[CaseStatus.COMPLETED] == 1
        assert (await fresh.cases(info.id))[0].output == "Say hi."
    finally:
        await store.close()


def echo_model(request: ModelRequest) -> str:
    """A model that answers with its instructions (for the agent file above)."""
    return request.messages[0].text


async def test_answer_approves_every_paused_case_at_once(service: BatchesService) -> None:
    world = World()
    agent = world.agent(policies={"effect": ToolPolicy(requires_approval=True)})
    info = await service.create(agent, cases_of(tasks(3)), BatchOptions(concurrency=3))
    paused = await service.run(info.id)
    assert paused.counts[CaseStatus.PAUSED] == 3 and paused.state == BatchState.OPEN
    results = await service.cases(info.id, status=CaseStatus.PAUSED)
    assert all(r.pause_reason and r.pause_reason.startswith("approval") for r in results)
    assert world.effects == {}
    assert await service.answer(info.id, action="continue") == 0  # an approval is not continued
    assert await service.answer(info.id, action="approve") == 3
    done = await service.run(info.id)
    assert done.counts[CaseStatus.COMPLETED] == 3 and world.effects == {t: 1 for t in tasks(3)}
    assert len(await all_runs(service)) == 3


async def test_answer_abort_and_a_raised_budget_is_stored(service: BatchesService) -> None:
    world = World()
    agent = world.agent(policies={"effect": ToolPolicy(requires_approval=True)})
    info = await service.create(agent, cases_of(tasks(2)), BatchOptions(max_cost_usd=1.0))
    await service.run(info.id)
    assert await service.answer(info.id, action="abort", max_cost_usd=2.5) == 2
    after = await service.get(info.id)
    assert after.counts[CaseStatus.CANCELLED] == 2 and after.options.max_cost_usd == 2.5
    with pytest.raises(InvalidRequest) as e:
        await service.answer(info.id, action="continue", max_cost_usd=-1)
    assert e.value.param == "max_cost_usd"
    with pytest.raises(InvalidRequest):
        await service.answer(info.id, action="maybe")  # type: ignore[arg-type]


async def test_cancel_stops_new_cases_and_cancels_paused_ones(service: BatchesService) -> None:
    world = World()
    agent = world.agent(policies={"effect": ToolPolicy(requires_approval=True)})
    info = await service.create(agent, cases_of(tasks(2)), BatchOptions())
    await service.run(info.id)
    cancelled = await service.cancel(info.id)
    assert cancelled.state == BatchState.CANCELLED and cancelled.counts[CaseStatus.CANCELLED] == 2
    with pytest.raises(Exception, match="was cancelled"):
        await service.run(info.id)


async def test_cancel_while_running_here_cancels_cases_in_flight(service: BatchesService) -> None:
    world = World()
    world.gate = asyncio.Event()
    info = await service.create(world.agent(), cases_of(tasks(5)), BatchOptions(concurrency=2))
    running = asyncio.create_task(service.run(info.id))
    await world.entered.wait()
    await service.cancel(info.id)
    done = await running
    assert done.state == BatchState.CANCELLED
    assert done.counts[CaseStatus.CANCELLED] == 2 and done.counts[CaseStatus.PENDING] == 3
    assert world.effects == {}


async def test_a_cancel_from_another_process_stops_a_batch_running_here(db: str) -> None:
    world = World()
    world.gate = asyncio.Event()
    here, there = SqlStore(db), SqlStore(db)
    try:
        batches = BatchesService(RunsService(here))
        info = await batches.create(world.agent(), cases_of(tasks(6)), BatchOptions(concurrency=2))
        running = asyncio.create_task(batches.run(info.id))
        while world.waiting < 2:
            await asyncio.sleep(0.005)
        await BatchesService(RunsService(there)).cancel(info.id)  # another owner, as another process
        done = await asyncio.wait_for(running, 60)
        assert done.state == BatchState.CANCELLED
        assert done.counts[CaseStatus.CANCELLED] == 2 and done.counts[CaseStatus.PENDING] == 4
    finally:
        await here.close()
        await there.close()


async def test_the_results_file_is_jsonl_or_csv_and_holds_ended_cases(service: BatchesService,
                                                                      tmp_path: Path) -> None:
    import csv

    world = World()
    world.fail = {"task 1"}
    info = await service.create(world.agent(), cases_of(tasks(3)), BatchOptions())
    await service.run(info.id)
    await service.results_file(info.id, tmp_path / "r.jsonl")
    await service.results_file(info.id, tmp_path / "r.csv")
    lines = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [(x["key"], x["status"]) for x in lines] == [("0", "completed"), ("1", "failed"), ("2", "completed")]
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [(r["key"], r["status"], r["error"]) for r in rows] == [
        ("0", "completed", ""), ("1", "failed", "no answer for task 1"), ("2", "completed", "")]
    # a retry leaves the failed attempt's line out of the file it rewrites: each case once
    world.fail = set()
    await service.run(info.id, retry_failed=True, out=tmp_path / "r.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert sorted((x["key"], x["status"], x["attempt"]) for x in lines) == [
        ("0", "completed", 1), ("1", "completed", 2), ("2", "completed", 1)]


async def test_delete_with_runs_and_prune_leaves_batch_runs_to_the_batch(service: BatchesService,
                                                                         tmp_path: Path) -> None:
    world = World()
    info = await service.create(world.agent(), cases_of(tasks(2)), BatchOptions())
    await service.run(info.id)
    lone = await service.runs.start(world.agent(), "lone")
    folder = tmp_path / "home" / "work" / lone.id
    folder.mkdir(parents=True)
    os.environ["TETHER_HOME"] = str(tmp_path / "home")
    try:
        assert await service.runs.prune(older_than_s=0, dry_run=True) == 1
        assert await service.runs.prune(older_than_s=3600) == 0  # not old enough
        assert await service.runs.prune(older_than_s=0) == 1  # the lone run, not the batch's
        assert not folder.exists()
    finally:
        del os.environ["TETHER_HOME"]
    assert await service.runs.info(lone.id) is None
    batch_runs = [r.run_id for r in await service.cases(info.id)]
    assert all([await service.runs.info(r or "") for r in batch_runs])
    await service.delete(info.id, with_runs=True)
    with pytest.raises(BatchNotFound):
        await service.get(info.id)
    assert await all_runs(service) == []
    with pytest.raises(InvalidRequest):
        await service.runs.prune(older_than_s=-1)


async def test_delete_without_runs_keeps_them_as_ordinary_runs(service: BatchesService) -> None:
    world = World()
    info = await service.create(world.agent(), cases_of(tasks(2)), BatchOptions())
    await service.run(info.id)
    await service.delete(info.id)
    assert len(await all_runs(service)) == 2
    assert await service.runs.prune(older_than_s=0) == 2  # no longer the batch's: pruned like the rest


async def test_a_batch_whose_case_another_process_advances_is_not_deleted_under_it(
        service: BatchesService) -> None:
    from tether.domain.batches import case_run_id
    from tether.domain.records import BatchRef

    world = World()
    agent = world.agent()
    info = await service.create(agent, cases_of(tasks(2)), BatchOptions())
    run_id = case_run_id(info.id, "0", 1)
    await service.store.start_cases(info.id, [(0, 1, run_id)])
    # The case's run, created and leased (as by a `batch run` in another process), not yet advanced.
    await service.runs.start(agent, "case 0", run_id=run_id, batch=BatchRef(info.id, "0", 1), drive=False)
    with pytest.raises(TetherError, match="running in another process"):
        await service.delete(info.id)
    assert (await service.get(info.id)).id == info.id  # nothing was deleted


async def test_bad_input_to_the_service(service: BatchesService) -> None:
    world = World()
    with pytest.raises(InvalidRequest, match="at least one case"):
        await service.create(world.agent(), [], BatchOptions())
    with pytest.raises(BatchNotFound, match="No batch found with id 'batch_nope'"):
        await service.run("batch_nope")
    info = await service.create(world.agent(), cases_of(["a"]), BatchOptions())
    with pytest.raises(InvalidRequest) as e:
        await service.run(info.id, concurrency=0)
    assert e.value.param == "concurrency"
    with pytest.raises(BatchNotFound):
        await service.get(info.id, tenant="someone-else")
    with pytest.raises(BatchNotFound):
        await service.cases(info.id, tenant="someone-else")
    with pytest.raises(InvalidRequest) as e:
        await service.cases(info.id, status="done")  # type: ignore[arg-type]
    assert e.value.param == "status"
    with pytest.raises(InvalidRequest):
        await service.run(info.id, concurrency=True)
    free = Agent("free", ScriptedModel(["x"], ref="scripted-unpriced"))
    free.model.cost_usd = lambda response: None  # type: ignore[method-assign]
    with pytest.raises(ConfigError, match="price of model"):
        await service.create(free, cases_of(["a"]), BatchOptions(max_cost_usd=1.0))


async def test_the_python_api_batch_from_a_list_and_from_a_file(db: str, tmp_path: Path) -> None:
    world = World()
    store = SqlStore(db)
    try:
        runs = RunsService(store)
        batch = await world.agent().batch(tasks(3), concurrency=2, service=runs)
        assert len(batch) == 3 and len(batch.completed) == 3 and batch.failed == [] and batch.paused == []
        assert [r.output for r in batch] == [f"answer to task {i}" for i in range(3)]
        path = tmp_path / "tasks.jsonl"
        path.write_text('{"input": "task 7", "id": "seven"}\n"task 8"\n')
        world.fail = {"task 8"}
        from_file = await world.agent().batch(path, service=runs)
        assert [r.key for r in from_file.completed] == ["seven"] and [r.key for r in from_file.failed] == ["1"]
        assert from_file.info.source == str(path.resolve())
        world.fail = set()
        again = await from_file.resume(retry_failed=True)
        assert len(again.completed) == 2
        path.write_text('{"input": "x"}\n{oops\n')
        with pytest.raises(InvalidRequest, match="line 2: not JSON"):
            await world.agent().batch(path, service=runs)
        with pytest.raises(InvalidRequest, match="concurrency"):
            await world.agent().batch(["a"], concurrency=0, service=runs)
    finally:
        await store.close()


def test_batch_sync_from_code_without_a_loop(db: str) -> None:
    store = SqlStore(db)
    try:
        agent = Agent("sync", ScriptedModel(lambda request: "ok"))
        batch = agent.batch_sync(["a", "b"], service=RunsService(store))
        assert [r.status for r in batch] == [CaseStatus.COMPLETED, CaseStatus.COMPLETED]
    finally:
        from tether.services.runs import run_blocking

        run_blocking(store.close())


async def test_spawned_batches_stop_cleanly_and_resume_open_takes_them_up(db: str) -> None:
    world = World()
    world.gate = asyncio.Event()
    store = SqlStore(db)
    try:
        services = services_for(RunsService(store))
        info = await services.batches.create(world.agent(), cases_of(tasks(3)), BatchOptions(concurrency=1))
        services.batches.spawn(info.id)
        await world.entered.wait()
        await services.batches.close()  # a server shutting down: the case in flight is left resumable
        stopped = await services.batches.get(info.id)
        assert stopped.counts[CaseStatus.QUEUED] == 1 and stopped.state == BatchState.OPEN
        world.gate.set()
        again = services_for(services.runs)  # a restarted server, same process (the agent is registered)
        assert await again.batches.resume_open() == [info.id]
        task = again.batches.spawned(info.id)
        assert task is not None
        await asyncio.wait_for(task, 30)
        assert again.batches.spawned(info.id) is None
        assert (await again.batches.get(info.id)).counts[CaseStatus.COMPLETED] == 3
        assert await again.batches.resume_open() == []  # it ended: nothing to take up again
    finally:
        await store.close()


@pytest.mark.postgres
async def test_a_batch_is_created_run_and_read_on_postgres(postgres_url: str) -> None:  # noqa: F811
    world = World()
    world.fail = {"task 2"}
    store = SqlStore(postgres_url)
    try:
        service = BatchesService(RunsService(store))
        info = await service.create(world.agent(), cases_of(tasks(4)), BatchOptions(concurrency=2),
                                    tenant="t1", source="tasks.jsonl")
        done = await service.run(info.id)
        assert done.counts[CaseStatus.COMPLETED] == 3 and done.counts[CaseStatus.FAILED] == 1
        assert done.source == "tasks.jsonl" and done.tenant == "t1"
        assert [b.id for b in await service.list(tenant="t1")] == [info.id] and await service.list(tenant="t2") == []
        failed = await service.cases(info.id, status=CaseStatus.FAILED)
        assert [(r.key, r.steps, r.error) for r in failed] == [("2", 0, "no answer for task 2")]
        world.fail = set()
        assert (await service.run(info.id, retry_failed=True)).counts[CaseStatus.COMPLETED] == 4
        await service.delete(info.id, with_runs=True)
        assert await store.list_runs() == []
    finally:
        await store.close()


async def test_creating_a_batch_is_one_transaction(service: BatchesService) -> None:
    """A case that cannot be stored (here: two with one key, which parsing refuses already) leaves no
    half-made batch behind."""
    from tether.domain.batches import Case

    world = World()
    with pytest.raises(Exception):  # noqa: B017  (the store's integrity error)
        await service.create(world.agent(), [Case(0, "k", "a"), Case(1, "k", "b")], BatchOptions())
    assert await service.list() == []


def test_run_status_values_are_case_status_values() -> None:
    assert {s.value for s in RunStatus} <= {s.value for s in CaseStatus}


async def test_a_database_written_before_batches_migrates_and_keeps_its_runs(tmp_path: Path) -> None:
    """tests/fixtures/decisions_v1.db predates the batch tables (and RunStarted.batch): it migrates,
    its runs still read (with no batch), and batches work in it."""
    import shutil
    import sqlite3

    from tether.adapters.store.migrations import LATEST

    db = tmp_path / "old.db"
    shutil.copy(Path(__file__).parent / "fixtures" / "decisions_v1.db", db)
    before = sqlite3.connect(db).execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
    assert before < LATEST
    store = SqlStore(f"sqlite:///{db}")
    try:
        service = BatchesService(RunsService(store))
        old = await all_runs(service)
        assert old
        for info in old:
            run = await service.runs.get(info.id)
            assert run.records[0].payload.batch is None  # type: ignore[union-attr]
        world = World()
        batch = await service.create(world.agent(), cases_of(tasks(2)), BatchOptions())
        assert (await service.run(batch.id)).counts[CaseStatus.COMPLETED] == 2
        assert len(await all_runs(service)) == len(old) + 2
    finally:
        await store.close()
    assert sqlite3.connect(db).execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == LATEST


async def test_a_batch_runs_on_the_memory_store() -> None:
    from tether.adapters.store.memory import MemoryStore

    world = World()
    world.fail = {"task 1"}
    service = BatchesService(RunsService(MemoryStore()))
    info = await service.create(world.agent(), cases_of(tasks(3)), BatchOptions(concurrency=2))
    done = await service.run(info.id)
    assert done.counts[CaseStatus.COMPLETED] == 2 and done.counts[CaseStatus.FAILED] == 1
    assert done.input_tokens == 2 * 20 and done.cost_usd == pytest.approx(2 * 40 / 1e6)
    failed = await service.cases(info.id, status=CaseStatus.FAILED)
    assert [(r.key, r.error, r.steps) for r in failed] == [("1", "no answer for task 1", 0)]
    assert (await service.cases(info.id))[0].steps == 3
    world.fail = set()
    assert (await service.run(info.id, retry_failed=True)).counts[CaseStatus.COMPLETED] == 3
    assert await service.runs.prune(older_than_s=0) == 0  # the batch's runs are the batch's
    await service.delete(info.id, with_runs=True)
    assert await service.runs.store.list_runs() == []


def test_the_docs_python_batch_example_runs_and_prints_what_it_says(tmp_path: Path) -> None:
    import subprocess
    import sys

    doc = (Path(__file__).parents[1] / "docs" / "batches-python.md").read_text()
    snippet = doc.split("```python\n", 1)[1].split("```", 1)[0]
    printed = doc.split("prints\n\n```\n", 1)[1].split("```", 1)[0]
    env = {**os.environ, "TETHER_HOME": str(tmp_path)}
    env.pop("TETHER_DATABASE_URL", None)
    out = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == printed


async def test_a_case_output_is_validated_by_the_agents_output_schema(service: BatchesService,
                                                                     tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"],
              "additionalProperties": False}
    agent = Agent("typed", ScriptedModel(lambda request: json.dumps({"answer": request.messages[-1].text})),
                  output_schema=schema)
    seen: list[Any] = []
    info = await service.create(agent, cases_of(["4"]), BatchOptions())
    await service.run(info.id, on_case=seen.append, out=tmp_path / "r.jsonl")
    assert seen[0].structured == {"answer": "4"}
    assert (await service.cases(info.id))[0].structured == {"answer": "4"}
    assert json.loads((tmp_path / "r.jsonl").read_text())["structured"] == {"answer": "4"}


async def test_two_processes_running_one_batch_never_make_a_second_run_for_a_case(db: str) -> None:
    world = World()
    one, two = SqlStore(db), SqlStore(db)
    try:
        first, second = BatchesService(RunsService(one)), BatchesService(RunsService(two))
        agent = world.agent()
        info = await first.create(agent, cases_of(tasks(30)), BatchOptions(concurrency=4))
        second.runs.register(agent)
        await asyncio.gather(first.run(info.id), second.run(info.id))
        done = await first.get(info.id)
        assert done.counts[CaseStatus.COMPLETED] == 30
        assert world.effects == {t: 1 for t in tasks(30)}
        assert len(await all_runs(first)) == 30
    finally:
        await one.close()
        await two.close()
