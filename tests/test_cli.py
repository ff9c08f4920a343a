"""The `tether` CLI, run as a real subprocess on its own SQLite file (TETHER_HOME in tmp_path)."""

from __future__ import annotations

import csv
import json
import re
import signal
from decimal import ROUND_CEILING, Decimal
from pathlib import Path

import pytest

import tether.examples.florist as florist
from tether.domain.messages import Message, ToolCall
from tether.domain.models import ModelRequest
from tether.examples.florist.offline_model import LABEL
from tether.examples.florist.offline_model import florist as florist_model

AGENT = str(florist.AGENT_FILE)
CASSETTE = str(florist.CASSETTE_FILE)


def roses_price() -> tuple[str, str]:
    """The market price of roses in prices.csv, and that price × 1.15 in cents (rounded up)."""
    with florist.PRICES_FILE.open(newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["flower"] == "roses")
    price = row["market_price_usd_per_stem"]
    return price, str((Decimal(price) * Decimal("1.15")).quantize(Decimal("0.01"), rounding=ROUND_CEILING))


def run_id_in(text: str) -> str:
    m = re.search(r"runs show (run_[0-9a-f]+)", text)
    assert m, text
    return m.group(1)


def test_demo_answers_from_prices_csv_then_list_and_show_the_run(cli):
    price, charge = roses_price()
    demo = cli("demo")
    assert demo.returncode == 0, demo.all
    assert "offline scripted model" in demo.stdout
    assert "--model openai:" in demo.stdout  # how to run it on a real model
    assert f"{LABEL} Roses cost ${price} per stem" in demo.stdout
    assert f"charge ${charge} per stem" in demo.stdout
    assert "Traceback" not in demo.all
    run_id = run_id_in(demo.stdout)

    listed = cli("runs", "list")
    assert listed.returncode == 0, listed.all
    assert run_id in listed.stdout and "completed" in listed.stdout and "florist" in listed.stdout

    shown = cli("runs", "show", run_id)
    assert shown.returncode == 0, shown.all
    out = shown.stdout
    assert '#1 model → price_lookup({"flower": "roses"})' in out
    lookup = ('#2 tool  price_lookup({"flower": "roses"}) → '
              f'{{"flower": "roses", "market_price_usd": "{price}"')
    assert lookup in out
    assert f'#4 tool  calculator({{"expression": "{price} * 1.15"}}) → {charge}' in out
    assert "#5 model answer: [offline scripted model]" in out
    assert "tokens" in out and "completed" in out
    assert f"charge ${charge} per stem" in out


def _request(task: str, *results: tuple[str, str]) -> ModelRequest:
    messages = [Message.system("florist"), Message.user(task)]
    for i, (name, text) in enumerate(results):
        messages.append(Message.assistant(None, [ToolCall(f"call_{i}", name, "{}")]))
        messages.append(Message.tool(f"call_{i}", name, text))
    return ModelRequest(messages, fingerprint="x")


def test_offline_model_reads_the_tool_results_it_is_given():
    first = florist_model(_request(florist.TASK))
    calls = [(c.name, json.loads(c.arguments)) for c in first.tool_calls]
    assert calls == [("price_lookup", {"flower": "roses"})]
    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0

    def lookup(price: str) -> tuple[str, str]:
        return "price_lookup", json.dumps({"flower": "roses", "market_price_usd": price, "per": "stem",
                                           "updated": "2026-06-01"})

    second = florist_model(_request(florist.TASK, lookup("3.00")))
    assert json.loads(second.tool_calls[0].arguments) == {"expression": "3.00 * 1.15"}

    cheap = florist_model(_request(florist.TASK, lookup("2.40"), ("calculator", "2.76"))).text
    dear = florist_model(_request(florist.TASK, lookup("3.00"), ("calculator", "3.45"))).text
    assert cheap != dear
    assert cheap.startswith(LABEL) and dear.startswith(LABEL)
    assert "$2.40" in cheap and "charge $2.76" in cheap
    assert "$3.00" in dear and "charge $3.45" in dear
    odd = florist_model(_request(florist.TASK, lookup("1.85"), ("calculator", "2.1275"))).text
    assert "charge $2.13" in odd and "2.1275" in odd

    missing = florist_model(_request("What do daisies cost, and what should I charge for a 15% profit?",
                                     ("price_lookup", "Error: no market price for 'daisies'")))
    assert not missing.tool_calls
    assert missing.text.startswith(LABEL) and "could not find a market price for daisies" in missing.text


def test_price_lookup_reads_the_csv(tmp_path):
    from tether.examples.florist.tools import load_prices, price_lookup

    price, _ = roses_price()
    assert price_lookup("Roses")["market_price_usd"] == price
    assert price_lookup("rose")["flower"] == "roses"
    assert "per stem" in price_lookup.description  # from the docstring
    assert price_lookup.parameters["properties"]["flower"]["type"] == "string"
    prices = tmp_path / "prices.csv"
    prices.write_text("flower,market_price_usd_per_stem,updated\nroses,9.99,2030-01-01\n")
    assert load_prices(prices)["roses"]["market_price_usd_per_stem"] == "9.99"


def test_replay_of_the_shipped_cassette_reproduces_the_demo_exactly(cli):
    live = cli("run", AGENT, florist.TASK, "--json")
    assert live.returncode == 0, live.all
    replayed = cli("run", AGENT, florist.TASK, "--model", f"replay:{CASSETTE}", "--json")
    assert replayed.returncode == 0, replayed.all
    a, b = json.loads(live.stdout), json.loads(replayed.stdout)
    assert b["status"] == "completed"
    assert b["output"] == a["output"]
    assert b["agent"]["model"] == f"replay:{CASSETTE}"

    def steps(run):
        return [(s["type"], s.get("name"), s.get("arguments"), s.get("result"), s.get("text"))
                for s in run["steps"]]

    assert steps(b) == steps(a)
    recorded = [json.loads(line) for line in Path(CASSETTE).read_text().splitlines()[1:]]
    assert recorded[-1]["response"]["text"] == b["output"]


def test_replay_of_a_different_conversation_diverges(cli):
    other_task = "What do tulips cost on the market now, and what should I charge for a 15% profit?"
    proc = cli("run", AGENT, other_task, "--model", f"replay:{CASSETTE}")
    assert proc.returncode == 1, proc.all
    assert "diverged at step 1" in proc.all
    assert "Traceback" not in proc.all


def test_cassette_export_and_replay_commands(cli, tmp_path):
    first = cli("run", AGENT, florist.TASK)
    assert first.returncode == 0, first.all
    run_id = run_id_in(first.stdout)
    path = tmp_path / "mine.jsonl"
    exported = cli("runs", "cassette", run_id, str(path))
    assert exported.returncode == 0, exported.all
    assert "wrote 3 model calls" in exported.stdout
    again = cli("run", AGENT, florist.TASK, "--model", f"replay:{path}", "--json")
    assert again.returncode == 0, again.all
    assert json.loads(again.stdout)["output"].startswith(LABEL)

    for extra in ([], ["--full"]):
        replay = cli("runs", "replay", run_id, *extra)
        assert replay.returncode == 0, replay.all
        assert f"replay of {run_id}" in replay.stdout
        assert "■ completed" in replay.stdout


HELPERS = '''
import time
from tether import tool
from tether.adapters.tools.client import ClientTool
from tether.adapters.models.scripted import call_tool, reply

ask_owner = ClientTool("ask_owner", "Ask the shop owner.",
                       {"type": "object", "properties": {"question": {"type": "string"}}})


@tool(timeout_s=0.2)
def place_order(flower: str) -> str:
    """Order flowers from the wholesaler (slow, and not idempotent)."""
    time.sleep(0.4)
    return "ordered"


def script(request):
    results = [m.text for m in request.messages if m.role == "tool"]
    if not results:
        return call_tool("ask_owner", {"question": "Which flower?"})
    if len(results) == 1:
        return call_tool("place_order", {"flower": results[0]})
    return reply(f"Done: {results[0]} / {results[1]}")
'''


@pytest.fixture
def pausing_agent(tmp_path) -> Path:
    (tmp_path / "cli_test_helpers.py").write_text(HELPERS)
    path = tmp_path / "pausing.toml"
    path.write_text('name = "pauser"\nmodel = "scripted:cli_test_helpers:script"\n'
                    'tools = ["cli_test_helpers:ask_owner", "cli_test_helpers:place_order"]\n')
    return path


def _pending_call(text: str) -> tuple[str, str]:
    m = re.search(r"runs answer (run_[0-9a-f]+) (call_[0-9a-f]+)", text)
    assert m, text
    return m.group(1), m.group(2)


def test_pauses_exit_3_and_are_answered(cli, pausing_agent):
    started = cli("run", str(pausing_agent), "order something")
    assert started.returncode == 3, started.all
    assert "paused" in started.stdout and "client_tool" in started.stdout
    run_id, call_id = _pending_call(started.stdout)

    bad = cli("runs", "answer", run_id, call_id)
    assert bad.returncode == 2 and "error:" in bad.stderr

    supplied = cli("runs", "answer", run_id, call_id, "--supply", "tulips")
    assert supplied.returncode == 3, supplied.all  # the order timed out: now it is uncertain
    assert "uncertain" in supplied.stdout
    assert 'place_order({"flower": "tulips"})' in supplied.stdout
    same_run, uncertain_call = _pending_call(supplied.stdout)
    assert same_run == run_id and uncertain_call != call_id

    done = cli("runs", "answer", run_id, uncertain_call, "--supply", "ordered by hand")
    assert done.returncode == 0, done.all
    assert "Done: tulips / ordered by hand" in done.stdout

    shown = cli("runs", "show", run_id)
    assert "decision supply" in shown.stdout and "(supplied by cli)" in shown.stdout
    assert "■ completed" in shown.stdout

    again = cli("runs", "resume", run_id)
    assert again.returncode == 2 and "already finished" in again.stderr


def test_cancel_a_paused_run(cli, pausing_agent):
    started = cli("run", str(pausing_agent), "order something")
    run_id, _ = _pending_call(started.stdout)
    cancelled = cli("runs", "cancel", run_id)
    assert cancelled.returncode == 0, cancelled.all
    assert "cancelled" in cancelled.stdout
    listed = cli("runs", "list", "--status", "cancelled")
    assert run_id in listed.stdout
    again = cli("runs", "cancel", run_id)
    assert again.returncode == 2 and "already finished" in again.stderr


@pytest.mark.parametrize("case", ["missing file", "invalid toml", "unknown tool", "unknown run", "bare model",
                                  "unknown status"])
def test_user_mistakes_exit_2_without_a_traceback(cli, tmp_path, case):
    bad = tmp_path / "agent.toml"
    if case == "missing file":
        proc = cli("run", str(tmp_path / "nope.toml"), "hi")
        expected = "agent file not found"
    elif case == "invalid toml":
        bad.write_text('name = "x"\nmodel = "scripted:m:f"\ntools = [\n')
        proc = cli("run", str(bad), "hi")
        expected = "not valid TOML"
    elif case == "unknown tool":
        bad.write_text('model = "scripted:tether.examples.florist.offline_model:florist"\n'
                       'tools = ["calculater"]\n')
        proc = cli("run", str(bad), "hi")
        expected = "unknown built-in tool 'calculater'"
    elif case == "unknown run":
        proc = cli("runs", "show", "run_doesnotexist")
        expected = "no run 'run_doesnotexist'"
    elif case == "bare model":
        proc = cli("run", AGENT, "hi", "--model", "gpt-4o-mini")
        expected = "set OPENAI_BASE_URL"
    else:
        proc = cli("runs", "list", "--status", "weird")
        expected = "unknown status"
    assert proc.returncode == 2, proc.all
    assert proc.stderr.startswith("error: "), proc.all
    assert expected in proc.stderr
    assert "Traceback" not in proc.all


def test_help_is_useful(cli):
    top = cli("--help")
    assert top.returncode == 0
    for word in ("run", "demo", "runs"):
        assert word in top.stdout
    runs = cli("runs", "--help")
    for word in ("list", "show", "cancel", "resume", "answer", "replay", "cassette"):
        assert word in runs.stdout
    answer = cli("runs", "answer", "--help")
    assert "--rerun" in answer.stdout and "--supply" in answer.stdout and "--abort" in answer.stdout


# -- what a new user tripped on -------------------------------------------------------------------

STUCK = Path(__file__).parent / "crash"


def _status_everywhere(cli, run_id: str) -> set[str]:
    """The run's status as `runs show`, `runs list` and `runs list -s STATUS` each say it."""
    shown = re.search(r"^status (\w+)$", cli("runs", "show", run_id).stdout, re.M)
    listed = re.search(rf"^{run_id}\s+(\w+)", cli("runs", "list").stdout, re.M)
    assert shown and listed
    found_by = {s for s in ("queued", "running") if run_id in cli("runs", "list", "-s", s).stdout}
    return {shown.group(1), listed.group(1), *found_by}


def test_ctrl_c_during_a_sync_tool_keeps_its_result_and_says_how_to_resume(cli, tmp_path):
    marker = tmp_path / "stuck"
    env = {"TETHER_STUCK_FILE": str(marker), "TETHER_STUCK_S": "1", "PYTHONPATH": str(STUCK)}
    proc = cli.popen("run", str(STUCK / "stuck.toml"), "wait", extra_env=env)
    cli.wait_for(marker, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    run_id = re.search(r"run_[0-9a-f]+", err).group(0)  # type: ignore[union-attr]
    assert "Traceback" not in err
    assert f"is stopped (queued: nothing advances it). Continue it with `{cli.prefix} runs resume {run_id}`" in err

    assert _status_everywhere(cli, run_id) == {"queued"}  # one status, whichever view asks
    assert "wait_here({}) → waited" in cli("runs", "show", run_id).stdout  # the result that arrived is kept

    resumed = cli("runs", "resume", run_id, extra_env=env)
    assert resumed.returncode == 0, resumed.all
    assert "uncertain" not in resumed.stdout
    assert "the tool said: waited" in resumed.stdout  # the kept result, not a second call ("went on")


@pytest.fixture
def no_backend_runs(tmp_path, monkeypatch) -> dict[str, tuple[str, str | None]]:
    """Runs of an agent on a bare model name, made where a backend was configured: one interrupted
    (queued, no lease), two paused before their first model call. The CLI then has no backend."""
    import asyncio

    from tether.adapters.store.sql import SqlStore
    from tether.services.agents import load_agent_file
    from tether.services.runs import RunsService

    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    (tmp_path / "home").mkdir()
    path = tmp_path / "bare.toml"
    path.write_text('name = "bare"\nmodel = "gpt-4o-mini"\ntools = ["calculator"]\n')

    async def make() -> dict[str, tuple[str, str | None]]:
        service = RunsService(SqlStore(f"sqlite:///{tmp_path / 'home' / 'tether.db'}"))
        agent = load_agent_file(path)
        queued = await service.start(agent, "hi", drive=False)
        await service.store.release_lease(queued.id, service.owner)  # its process was interrupted
        out: dict[str, tuple[str, str | None]] = {"interrupted": (queued.id, None)}
        for name in ("paused", "paused2"):
            paused = await service.start(agent, "hi", breakpoints=["before_model"])
            assert paused.status == "paused"
            out[name] = (paused.id, paused.pending[0].id)
        await service.store.close()  # type: ignore[attr-defined]
        return out

    return asyncio.run(make())


def test_cancel_show_list_and_answer_need_no_model_backend(cli, no_backend_runs):
    interrupted, _ = no_backend_runs["interrupted"]
    for run_id, _ in no_backend_runs.values():
        assert cli("runs", "show", run_id).returncode == 0
    assert cli("runs", "list").returncode == 0

    for run_id in (interrupted, no_backend_runs["paused"][0]):
        cancelled = cli("runs", "cancel", run_id)
        assert cancelled.returncode == 0, cancelled.all
        assert f"run {run_id} is cancelled" in cancelled.stdout
        again = cli("runs", "cancel", run_id)  # it really ended: nothing is left locked or running
        assert again.returncode == 2 and "already finished (cancelled)" in again.stderr, again.all

    run_id, item = no_backend_runs["paused2"]
    aborted = cli("runs", "answer", run_id, item, "--abort")  # type: ignore[arg-type]
    assert aborted.returncode == 1, aborted.all  # exit 1: the run ended cancelled, as asked
    assert "■ cancelled" in aborted.stdout and "no model backend" not in aborted.all


def test_a_breakpoint_on_a_finished_run_is_refused(cli, pausing_agent):
    run_id, _ = _pending_call(cli("run", str(pausing_agent), "order something").stdout)
    assert cli("runs", "cancel", run_id).returncode == 0
    refused = cli("runs", "break", run_id, "before_tool")
    assert refused.returncode == 2, refused.all
    assert refused.stderr.startswith(f"error: run {run_id} already finished (cancelled)")
    assert f"{cli.prefix} runs fork" in refused.stderr
    assert "no breakpoints" in cli("runs", "break", run_id).stdout  # and none was added
