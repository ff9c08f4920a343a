"""The governor: every model call reserves its worst case before it is made, against the run's own
limits and the shared budgets in the store, and settles its real spend with its `model_call` record.

Units (the worst-case count, the arithmetic, the sentences), the stores (memory, SQLite, Postgres:
all or nothing, concurrent processes, stale reservations, a kill between the call and its record),
and the issue's budget test at the runs-service level: 64 concurrent runs under one $1.00 budget.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pg import postgres, postgres_url  # noqa: F401  (fixtures)

HERE = Path(__file__).parent / "crash"
sys.path.insert(0, str(HERE))

import budget_agent  # noqa: E402
from budget_agent import Gauge, agent  # noqa: E402

from tether.adapters.models.scripted import ScriptedModel, call_tool, reply  # noqa: E402
from tether.adapters.store.memory import MemoryStore  # noqa: E402
from tether.adapters.store.sql import SqlStore  # noqa: E402
from tether.domain.agents import AgentSnapshot, Limits  # noqa: E402
from tether.domain.codec import load_payload  # noqa: E402
from tether.domain.errors import ConfigError  # noqa: E402
from tether.domain.governor import (  # noqa: E402
    DEFAULT_MAX_OUTPUT_TOKENS,
    Ask,
    BudgetState,
    Price,
    Spend,
    shared_refusal,
    worst_case_input_tokens,
)
from tether.domain.ids import new_id  # noqa: E402
from tether.domain.messages import Message, ToolCall  # noqa: E402
from tether.domain.models import ModelRequest, ToolSchema  # noqa: E402
from tether.domain.records import ModelCalled, Record, RunStarted  # noqa: E402
from tether.domain.usage import Usage  # noqa: E402
from tether.engine.governor import BudgetGovernor  # noqa: E402
from tether.services.agents import Agent  # noqa: E402
from tether.services.operator import load_operator_config  # noqa: E402
from tether.services.runs import RunsService  # noqa: E402

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- the worst case ----------------------------------------------------------------------------

TEXTS = [
    "Hello, world! How are you today?",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    json.dumps({"city": "Zürich", "temps": [1.5, -3, 22], "ok": True}),
    "東京は日本の首都です。人口は約1400万人です。",
    "🙂🚀🎉 naïve café — résumé",
    "a" * 1000,
]


@pytest.mark.parametrize("text", TEXTS)
def test_the_worst_case_input_count_is_above_any_byte_level_tokenizers_count(text):
    """No tokenizer here: a byte-level BPE token is at least one UTF-8 byte, so a text's tokens are at
    most its bytes, and a chat template adds a few a message. Rough rules (~4 characters, ~0.75 words
    a token) give far fewer: the bound is above them all, and above the bytes."""
    request = ModelRequest([Message.system("Be brief."), Message.user(text)])
    worst = worst_case_input_tokens(request)
    assert worst >= len(text.encode()) + len(b"Be brief.") + 2 * 4  # bytes, and ~4 template tokens a message
    assert worst >= len(text) / 4 and worst >= len(text.split()) / 0.75
    assert worst >= len(text)  # one token a character: more than any tokenizer makes of these


def test_the_worst_case_counts_tool_calls_tool_schemas_and_the_output_schema():
    bare = ModelRequest([Message.user("go")])
    call = ToolCall("call_1", "add", json.dumps({"a": 1, "b": 2}))
    full = ModelRequest([Message.user("go"), Message.assistant(None, [call]), Message.tool("call_1", "add", "3")],
                        tools=[ToolSchema("add", "Add two numbers.", {"type": "object", "properties": {}})],
                        output_schema={"type": "object"})
    assert worst_case_input_tokens(full) > worst_case_input_tokens(bare) + len('{"a": 1, "b": 2}') + len("Add two")


def test_a_price_and_a_refusal_sentence_name_the_figures():
    price = Price.per_million(2.0, 8.0)
    assert price.cost(1_000_000, 500_000) == pytest.approx(6.0)
    ask = Ask("run_1", 3, ("b1",), 1000, 500, 0.03)
    budget = BudgetState("b1", max_usd=1.0, spent_usd=0.98, reserved_usd=0.01)
    sentence = shared_refusal(budget, "b1", ask)
    assert "budget b1: $0.98 spent + $0.01 reserved of $1.00; this call may cost up to $0.03" in sentence
    assert "put_budget('b1', ...), then continue this run" in sentence
    batch = shared_refusal(BudgetState("batch_x", max_usd=1.0, spent_usd=0.98), "batch_x", ask)
    assert "`tether batch answer batch_x --continue --max-cost USD`" in batch
    tokens = shared_refusal(BudgetState("batch_x", max_tokens=1000, spent_tokens=900), "batch_x", ask)
    assert "`tether batch answer batch_x --continue --max-tokens N`" in tokens  # the flag of its limit
    case = shared_refusal(BudgetState("batch_x/ab12", max_usd=0.1, spent_usd=0.09), "batch_x/ab12", ask)
    assert "a case's own budget (--per-case-max-cost of batch batch_x)" in case
    assert "does not exist" in shared_refusal(None, "gone", ask)


def test_an_old_run_started_record_reads_with_no_budgets():
    """A run_started written before budgets existed (no `budgets` key) folds with none."""
    old = ('{"agent": {"name": "x", "model": "scripted"}, "input": [], "thread_id": null, "fork": null, '
           '"metadata": {}, "kind": "run_started"}')
    payload = load_payload(old, 2)
    assert isinstance(payload, RunStarted) and payload.budgets == []


# -- the stores --------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlStore | MemoryStore]:
    if request.param == "memory":
        s: SqlStore | MemoryStore = MemoryStore()
    elif request.param == "sqlite":
        s = SqlStore(f"sqlite:///{tmp_path / 'tether.db'}")
    else:
        s = SqlStore(str(request.getfixturevalue("postgres_url")))
    try:
        yield s
    finally:
        await s.close()


async def leased_run(store, owner: str = "me", ttl_s: float = 60.0) -> str:
    run_id = new_id("run")
    await store.create_run(Record(run_id, 1, time.time(), RunStarted(AgentSnapshot("x", "scripted"), [])),
                           owner=owner, lease_ttl_s=ttl_s)
    return run_id


async def test_a_reservation_is_all_or_nothing_across_budgets(any_store):
    await any_store.put_budget("wide", max_usd=10.0, max_tokens=None)
    await any_store.put_budget("narrow", max_usd=None, max_tokens=1000)
    run = await leased_run(any_store)
    assert await any_store.reserve(run, "g1", ["wide", "narrow"], 0.5, 800) is None
    assert await any_store.reserve(run, "g2", ["wide", "narrow"], 0.5, 800) == "narrow"
    wide, narrow = await any_store.get_budget("wide"), await any_store.get_budget("narrow")
    assert (wide.reserved_usd, narrow.reserved_tokens) == (pytest.approx(0.5), 800)  # g2 took nothing
    await any_store.release("g1")
    wide, narrow = await any_store.get_budget("wide"), await any_store.get_budget("narrow")
    assert (wide.reserved_usd, narrow.reserved_tokens) == (pytest.approx(0.0), 0)
    assert await any_store.reserve(run, "g3", ["wide"], None, 10) == "wide"  # unknown price: no dollar budget
    assert await any_store.reserve(run, "g4", ["narrow"], None, 10) is None  # ... a token budget is fine
    assert await any_store.reserve(run, "g5", ["missing"], 0.1, 10) == "missing"


async def test_a_settled_spend_commits_with_its_record_and_takes_the_reservation_back(any_store):
    await any_store.put_budget("b", max_usd=1.0, max_tokens=None)
    run = await leased_run(any_store)
    assert await any_store.reserve(run, "g1", ["b"], 0.4, 5000) is None
    from tether.domain.models import ModelResponse

    record = Record(run, 2, time.time(), ModelCalled(1, "f", ModelResponse("hi", usage=Usage(10, 5)), 0.01))
    any_store.append([record], Spend("g1", run, ("b",), 0.01, 15))
    await any_store.sync()
    b = await any_store.get_budget("b")
    assert (b.spent_usd, b.spent_tokens, b.reserved_usd, b.reserved_tokens) == (pytest.approx(0.01), 15,
                                                                                pytest.approx(0.0), 0)
    await any_store.put_budget("b", max_usd=2.0, max_tokens=None)  # raised: what was spent stays
    b = await any_store.get_budget("b")
    assert (b.max_usd, b.spent_usd) == (2.0, pytest.approx(0.01))
    await any_store.delete_budget("b")
    assert await any_store.get_budget("b") is None
    from tether.domain.errors import InvalidRequest

    for bad in ({"max_usd": -1.0, "max_tokens": None}, {"max_usd": float("nan"), "max_tokens": None},
                {"max_usd": None, "max_tokens": 2.5}, {"max_usd": "1", "max_tokens": None}):
        with pytest.raises(InvalidRequest, match="must be"):
            await any_store.put_budget("bad", **bad)
    assert await any_store.get_budget("bad") is None


async def test_a_reservation_whose_runs_lease_expired_is_reaped_when_a_reserve_is_refused(any_store):
    await any_store.put_budget("b", max_usd=1.0, max_tokens=None)
    dead = await leased_run(any_store, owner="dead", ttl_s=0.2)
    live = await leased_run(any_store)
    assert await any_store.reserve(dead, "g_dead", ["b"], 0.7, 10) is None
    assert await any_store.reserve(live, "g_live", ["b"], 0.5, 10) == "b"  # the dead one's still counts
    await asyncio.sleep(0.3)  # its lease expires: its process is gone, and so is its call
    assert await any_store.reserve(live, "g_live", ["b"], 0.5, 10) is None
    b = await any_store.get_budget("b")
    assert b.reserved_usd == pytest.approx(0.5)


async def test_a_runs_own_reservations_go_when_another_owner_takes_its_lease(any_store):
    await any_store.put_budget("b", max_usd=1.0, max_tokens=None)
    run = await leased_run(any_store, owner="old")
    assert await any_store.reserve(run, "g", ["b"], 0.7, 10) is None
    assert await any_store.take_over_lease(run, "old", "new", 60.0)
    assert (await any_store.get_budget("b")).reserved_usd == pytest.approx(0.0)


async def test_a_budget_warns_once_at_80_percent(any_store):
    await any_store.put_budget("b", max_usd=1.0, max_tokens=None)
    run = await leased_run(any_store)
    assert await any_store.reserve(run, "g1", ["b"], 0.5, 10) is None
    assert await any_store.warn_budgets(["b"], 0.8) == []
    assert await any_store.reserve(run, "g2", ["b"], 0.35, 10) is None
    (warned,) = await any_store.warn_budgets(["b"], 0.8)
    assert warned.id == "b" and warned.warned
    assert await any_store.warn_budgets(["b"], 0.8) == []
    await any_store.put_budget("b", max_usd=1.05, max_tokens=None)  # raised, and still past 80 %: once more
    assert [w.id for w in await any_store.warn_budgets(["b"], 0.8)] == ["b"]


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_two_processes_reserving_at_once_never_over_commit(backend, tmp_path, request):
    url = f"sqlite:///{tmp_path / 'tether.db'}" if backend == "sqlite" else str(request.getfixturevalue("postgres_url"))
    store = SqlStore(url)
    await store.put_budget("shared", max_usd=1.0, max_tokens=None)
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    children = [subprocess.Popen([sys.executable, str(HERE / "reserve_child.py"), url, "shared", "8", str(i), str(go)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                for i in range(2)]
    for child in children:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
    go.touch()
    granted = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        granted.append(int(out.split()[-1]))
    b = await store.get_budget("shared")
    await store.close()
    assert sum(granted) == 33  # $0.03 each in $1.00, from both processes together: never a 34th
    assert b.reserved_usd == pytest.approx(0.99) and b.reserved_usd <= 1.0


# -- the executor and the runs service ---------------------------------------------------------


def recorder(script):
    seen: list[ModelRequest] = []

    def model(request: ModelRequest):
        seen.append(request)
        return script(request)

    return model, seen


async def test_a_budgeted_call_carries_the_default_output_cap_and_keeps_its_fingerprint():
    script, seen = recorder(lambda r: reply("done", usage=Usage(10, 5)))
    store = MemoryStore()
    service = RunsService(store)
    await store.put_budget("b", max_usd=None, max_tokens=100_000)
    free = await service.start(Agent("x", ScriptedModel(script)), "go")
    capped = await service.start(Agent("x", ScriptedModel(script)), "go", budgets=["b"])
    assert "max_completion_tokens" not in seen[0].settings
    assert seen[1].settings["max_completion_tokens"] == DEFAULT_MAX_OUTPUT_TOKENS
    fingerprints = [r.payload.fingerprint for v in (free, capped) for r in v.records
                    if isinstance(r.payload, ModelCalled)]
    assert fingerprints[0] == fingerprints[1]  # a replay matches whatever cap a budget gave
    assert (await store.get_budget("b")).spent_tokens == 15


async def test_a_run_limit_is_refused_before_the_call_that_could_pass_it():
    """The old rule let a call start under max_tokens and end past it; now its worst case must fit."""
    script, seen = recorder(lambda r: call_tool("add", {}, usage=Usage(100, 10)) if len(seen) < 9 else reply("x"))
    run = await RunsService(MemoryStore()).start(
        Agent("x", ScriptedModel(script), settings={"max_tokens": 100}, limits=Limits(max_tokens=1000)), "go")
    assert run.status == "paused" and run.pending[0].reason == "budget"
    assert "past max_tokens 1,000" in run.pending[0].detail
    assert run.usage.total_tokens <= 1000


async def test_a_dollar_budget_needs_a_known_price_and_an_existing_budget():
    store = MemoryStore()
    service = RunsService(store)
    await store.put_budget("dollars", max_usd=1.0, max_tokens=None)
    await store.put_budget("tokens", max_usd=None, max_tokens=10_000)

    class Unpriced(ScriptedModel):
        def price(self):
            return None

    with pytest.raises(ConfigError, match="budget dollars has a dollar limit, but the price of model"):
        await service.start(Agent("x", Unpriced(["hi"])), "go", budgets=["dollars"])
    from tether.domain.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="budgets must be a list of budget ids"):
        await service.start(Agent("x", ScriptedModel(["hi"])), "go", budgets="tokens")
    with pytest.raises(ConfigError, match="no budget 'nope'"):
        await service.start(Agent("x", ScriptedModel(["hi"])), "go", budgets=["nope"])
    ok = await service.start(Agent("x", Unpriced(["hi"])), "go", budgets=["tokens"])
    assert ok.status == "completed"


async def test_an_operators_price_prices_the_reservation_and_the_recorded_cost():
    store = MemoryStore()
    governor = BudgetGovernor(store, prices={"scripted:cheap": Price.per_million(1.0, 2.0)})
    service = RunsService(store, governor=governor)
    await store.put_budget("b", max_usd=1.0, max_tokens=None)
    run = await service.start(Agent("x", ScriptedModel([reply("hi", usage=Usage(1000, 500))], ref="scripted:cheap")),
                              "go", budgets=["b"])
    (call,) = [r.payload for r in run.records if isinstance(r.payload, ModelCalled)]
    assert call.cost_usd == pytest.approx(0.002)  # 1000 × $1/M + 500 × $2/M, not the model's own $0
    assert (await store.get_budget("b")).spent_usd == pytest.approx(0.002)


def test_openai_models_say_their_price_only_for_openais_own_endpoint():
    from tether.adapters.models.openai_compat import OpenAIModel

    hosted = OpenAIModel("gpt-4o-mini", api_key="k", ref="openai:gpt-4o-mini", priced=True).price()
    assert hosted is not None and hosted.input_usd > 0 and hosted.output_usd > hosted.input_usd
    local = OpenAIModel("gpt-4o-mini", base_url="http://127.0.0.1:11434/v1", api_key="k", ref="gpt-4o-mini",
                        priced=True)
    assert local.price() is None  # a local model named like a hosted one is not billed
    assert OpenAIModel("no-such-model", api_key="k", ref="openai:no-such-model", priced=True).price() is None


def test_prices_and_budgets_in_the_operator_configuration(tmp_path):
    path = tmp_path / "tether.toml"
    path.write_text('[budgets]\ndefault_max_output_tokens = 512\n\n[prices."qwen2.5:7b"]\ninput = 0.1\noutput = 0.4\n')
    config = load_operator_config(path)
    assert config.default_max_output_tokens == 512
    assert config.prices["qwen2.5:7b"] == Price.per_million(0.1, 0.4)
    bad = {
        '[budgets]\ndefault_max_output_tokens = 0\n': "default_max_output_tokens must be at least 1",
        '[budgets]\ncap = 5\n': "unknown key 'cap' in [budgets]",
        '[prices."m"]\ninput = 1\n': 'needs output',
        '[prices."m"]\ninput = -1\noutput = 1\n': "input must be a price of 0 or more",
        '[prices."m"]\ninput = "cheap"\noutput = 1\n': "input must be a number",
        '[prices."m"]\ninput = 1\noutput = 1\ncached = 0.5\n': "unknown key 'cached'",
        '[prices]\nm = 3\n': "must be a table",
    }
    for text, message in bad.items():
        path.write_text(text)
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_operator_config(path)


async def test_a_call_that_is_never_recorded_gives_its_reservation_back(tmp_path):
    """Cancelled mid-call, failed, or failed into an on_error pause: nothing stays reserved."""
    from tether.domain.errors import ModelError

    store = SqlStore(f"sqlite:///{tmp_path / 'tether.db'}")
    service = RunsService(store)
    await store.put_budget("b", max_usd=1.0, max_tokens=None)
    started = asyncio.Event()

    async def slow(request):
        started.set()
        await asyncio.sleep(30)
        return reply("late")

    def failing(request):
        raise ModelError("the server is down")

    priced = {"input_price_per_mtok": 1.0, "output_price_per_mtok": 1.0}
    running = asyncio.create_task(service.start(Agent("x", ScriptedModel(slow, **priced)), "go", budgets=["b"]))
    await started.wait()
    assert (await store.get_budget("b")).reserved_usd > 0
    (run_id,) = [r.id for r in await store.list_runs()]
    await service.cancel(run_id)
    assert (await running).status == "cancelled"
    assert (await store.get_budget("b")).reserved_usd == pytest.approx(0)

    failed = await service.start(Agent("x", ScriptedModel(failing, **priced)), "go", budgets=["b"])
    assert failed.status == "failed"
    paused = await service.start(Agent("x", ScriptedModel(failing, **priced)), "go", budgets=["b"],
                                 breakpoints=["on_error"])
    assert paused.status == "paused"
    b = await store.get_budget("b")
    assert (b.reserved_usd, b.spent_usd) == (pytest.approx(0), 0)
    await store.close()


# -- the budget test: 64 concurrent runs, one $1.00 budget -----------------------------

RUNS = int(os.environ.get("TETHER_BUDGET_RUNS", "64"))


async def logged_costs(store) -> tuple[float, dict[str, str]]:
    """The sum of every model call's cost in the runs' logs, and each run's status."""
    total, statuses = 0.0, {}
    for info in await store.list_runs(limit=100_000):
        statuses[info.id] = info.status
        for r in await store.load(info.id):
            if isinstance(r.payload, ModelCalled):
                total += r.payload.cost_usd
    return total, statuses


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_64_concurrent_runs_never_spend_past_a_shared_dollar_budget(backend, tmp_path, request):
    url = f"sqlite:///{tmp_path / 'tether.db'}" if backend == "sqlite" else str(request.getfixturevalue("postgres_url"))
    store = SqlStore(url)
    service = RunsService(store)
    service.register(agent)
    # The runs would spend RUNS × 3 × $0.005 = $0.96 in all: $0.75 cannot pay for every one of them.
    await store.put_budget("batch_x", max_usd=0.75, max_tokens=None)
    Gauge.peak = Gauge.calls = 0
    warnings: list[str] = []

    def on_event(event):
        if event.type == "budget_warning":
            warnings.append(event.detail)

    views = await asyncio.gather(*(service.start(agent, f"task {i}", budgets=["batch_x"], on_event=on_event)
                                   for i in range(RUNS)))
    spent, _ = await logged_costs(store)
    budget = await store.get_budget("batch_x")
    assert Gauge.peak >= 48 * RUNS // 64, f"only {Gauge.peak} calls were in flight at once"
    assert spent <= 0.75 and budget.spent_usd == pytest.approx(spent) and budget.reserved_usd == pytest.approx(0)
    assert spent >= 0.7  # calls waited for others' reservations to settle rather than pause early
    paused = [v for v in views if v.status == "paused"]
    assert paused and any(v.status == "completed" for v in views)
    for v in paused:
        (item,) = v.pending
        assert item.reason == "budget" and item.detail.startswith("budget batch_x: $")
        assert "of $0.75" in item.detail and "raise it" in item.detail
    assert len(warnings) == 1 and "batch_x" in warnings[0]  # once, whichever run crossed 80 %

    await store.put_budget("batch_x", max_usd=10.0, max_tokens=None)  # raised: the paused runs can go on
    answered = await asyncio.gather(*(service.answer(v.id) for v in paused))
    assert {v.status for v in answered} == {"completed"}
    spent, _ = await logged_costs(store)
    budget = await store.get_budget("batch_x")
    assert budget.spent_usd == pytest.approx(spent) and spent == pytest.approx(RUNS * 3 * 0.005)
    await store.close()


@pytest.mark.parametrize("fault", ["commit.before:4", "commit.after:3"])
def test_a_kill_mid_way_and_a_resume_still_spend_no_more_than_the_budget(tmp_path, fault):
    """SIGKILL inside a commit (records and spends written and not committed, or committed and nobody
    told), then every run resumed by another process: the dead process's reservations go with its
    leases, and the budget's spend is the sum of the logged costs."""
    url = f"sqlite:///{tmp_path / 'tether.db'}"
    setup = SqlStore(url)
    asyncio.run(setup.put_budget("batch_k", max_usd=1.0, max_tokens=None))
    asyncio.run(setup.close())
    env = {**os.environ, "TETHER_FAULT_AT": fault, "PYTHONPATH": str(HERE)}
    child = subprocess.run([sys.executable, str(HERE / "budget_child.py"), url, str(RUNS), "batch_k"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert child.stdout.startswith("ready") and child.returncode == -signal.SIGKILL, child.stderr

    async def after() -> None:
        store = SqlStore(url)
        mid_spent, statuses = await logged_costs(store)
        assert 0 < mid_spent <= 1.0 and (await store.get_budget("batch_k")).spent_usd == pytest.approx(mid_spent)
        service = RunsService(store)
        service.register(agent)
        orphans = await service.orphaned_runs()
        assert orphans  # the dead child's runs
        await asyncio.gather(*(service.resume(r) for r in orphans))
        spent, statuses = await logged_costs(store)
        budget = await store.get_budget("batch_k")
        assert spent <= 1.0 and budget.spent_usd == pytest.approx(spent) and budget.reserved_usd == pytest.approx(0)
        assert "paused" in statuses.values() and set(statuses.values()) <= {"paused", "completed"}
        await store.close()

    asyncio.run(after())


def test_the_budget_agent_module_is_what_the_tests_assume():
    assert budget_agent.ROUNDS == 3 and budget_agent.USAGE.total_tokens == 1000


def test_the_budgets_doc_example_runs(tmp_path):
    """docs/budgets.md's example, as a user runs it: the excess runs pause with the budget's figures, and
    once it is raised they all finish, having spent 20 × $0.0026."""
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "budgets.md").read_text()
    code = re.search(r"^```python\n(.*?)^```", text, re.S | re.M).group(1)
    (tmp_path / "example.py").write_text(code)
    out = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    counts, detail, spent = out.stdout.splitlines()
    assert re.fullmatch(r"\d+ completed, \d+ paused", counts) and not counts.endswith(" 0 paused")
    assert detail.startswith("budget nightly: $") and "of $0.05; this call may cost up to $0.0081" in detail
    assert spent == "spent $0.0520 of $0.20"


async def test_a_database_from_before_the_governor_migrates_and_its_runs_go_on(tmp_path):
    """tests/fixtures/budgets_v4.db was written by the code before (tests/budgets_v4_fixture.py): its
    runs fold with no shared budgets, its budget pause is answered with a raised limit, a finished
    run forks, and the new tables are there."""
    import shutil

    import budgets_v4_fixture as fixture

    db = tmp_path / "old.db"
    shutil.copy(Path(__file__).parent / "fixtures" / "budgets_v4.db", db)
    store = SqlStore(f"sqlite:///{db}")
    service = RunsService(store)
    service.register(fixture.agent)
    views = {v.status: v for v in [await service.get(i.id) for i in await store.list_runs()]}
    assert set(views) == {"completed", "paused"}
    for v in views.values():
        assert isinstance(v.records[0].payload, RunStarted) and v.records[0].payload.budgets == []
    paused = views["paused"]
    (item,) = paused.pending
    assert item.reason == "budget" and "max_tokens" in item.detail
    answered = await service.answer(paused.id, {item.id: ("continue", {"limits": {"max_tokens": 100_000}})})
    assert answered.status == "completed" and answered.output == "result 4"
    fork = await service.fork(views["completed"].id, 3)
    assert fork.status == "completed" and fork.output == "result 4"
    await store.put_budget("new", max_usd=1.0, max_tokens=None)
    assert (await store.get_budget("new")).max_usd == 1.0
    await store.close()


async def test_a_call_refused_while_others_held_room_that_settled_meanwhile_tries_again():
    """The others' calls may settle between a refused reservation and the look at the budget: the
    call then fits with nothing reserved, and must be tried again, not paused with room to spare."""

    class SettlesMeanwhile(MemoryStore):
        refused = False

        async def reserve(self, *args, **kwargs):
            refused = await super().reserve(*args, **kwargs)
            self.refused = self.refused or refused is not None
            return refused

        async def get_budget(self, budget_id):
            if self.refused:
                await self.release("g_other")  # another run's call settles just after ours was refused
            return await super().get_budget(budget_id)

    store = SettlesMeanwhile()
    await store.put_budget("b", max_usd=None, max_tokens=10_000)
    other = await leased_run(store)
    assert await store.reserve(other, "g_other", ["b"], None, 9_000) is None
    run = await RunsService(store).start(Agent("x", ScriptedModel([reply("hi", usage=Usage(10, 5))])), "go",
                                         budgets=["b"])
    assert run.status == "completed", run.pending
    assert (await store.get_budget("b")).spent_tokens == 15
