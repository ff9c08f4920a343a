"""The terminal debugger: `tether demo/run --break …`, `tether debug RUN_ID`, and the REPL itself.

The CLI flows run as real subprocesses on their own SQLite file (TETHER_HOME in tmp_path), with the
debugger's commands piped to stdin; the REPL's finer points run in-process on a memory store.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from decimal import ROUND_CEILING, Decimal
from pathlib import Path

import pytest
from rich.console import Console

import tether.examples.florist as florist
from tether.adapters.models.scripted import ScriptedModel, calls, reply
from tether.adapters.store.memory import MemoryStore
from tether.adapters.tools.function import tool
from tether.domain.agents import Limits
from tether.interfaces.cli.debugger import Debugger, DebuggerError, edit_in_editor
from tether.interfaces.cli.debugger_views import supplied
from tether.services.agents import Agent
from tether.services.runs import RunsService

AGENT = str(florist.AGENT_FILE)
PROMPT = "(debug) "


def roses() -> str:
    with florist.PRICES_FILE.open(newline="") as f:
        return next(r for r in csv.DictReader(f) if r["flower"] == "roses")["market_price_usd_per_stem"]


def cents(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.01"), rounding=ROUND_CEILING))


def answer_of(cmd: str, out: str) -> str:
    """What the debugger printed for one command: from its echoed prompt to the next prompt."""
    start = out.index(PROMPT + cmd + "\n") + len(PROMPT + cmd + "\n")
    end = out.find(PROMPT, start)
    return out[start:] if end < 0 else out[start:end]


def run_id_in(text: str) -> str:
    m = re.search(r"(?:runs show|debug) (run_[0-9a-f]+)", text)
    assert m, text
    return m.group(1)


def paused_at(text: str) -> list[str]:
    return re.findall(r"⏸ paused at (\S+ of step \d+(?:: \w+)?)", text)


# -- the CLI --------------------------------------------------------------------------------------


def test_demo_break_print_edit_continue(cli):
    """The acceptance test: stop before the calculator, look at its arguments, change them, go on."""
    price = roses()
    proc = cli("demo", "--break", "before_tool:calculator",
               stdin='p\nedit {"expression": "' + price + ' * 1.30"}\nc\n')
    assert proc.returncode == 0, proc.all
    out = proc.stdout
    assert paused_at(out) == ["before_tool of step 4: calculator"]
    shown = answer_of("p", out)
    assert f'"expression": "{price} * 1.15"' in shown
    assert "bp_1" in shown or "before_tool:calculator" in shown
    staged = answer_of('edit {"expression": "' + price + ' * 1.30"}', out)
    assert f"{price} * 1.30" in staged and "staged" in staged
    done = answer_of("c", out)
    charge = cents(Decimal(price) * Decimal("1.30"))  # 2.40 × 1.30 = 3.12
    assert "■ completed" in done
    assert f"charge ${charge} per stem" in done
    assert f" = {charge})" in done  # the calculator computed the edited expression


def test_pause_in_one_process_and_debug_it_in_another(cli):
    task = florist.TASK
    first = cli("run", AGENT, task, "--break", "before_tool:price_lookup", "--no-debug")
    assert first.returncode == 3, first.all
    run_id = run_id_in(first.stdout)
    assert f"{cli.prefix} debug {run_id}" in first.stdout
    assert PROMPT not in first.stdout  # --no-debug: no debugger

    added = cli("runs", "break", run_id, "after_model if step == 3")
    assert added.returncode == 0, added.all
    assert "bp_2" in added.stdout

    commands = ["w", "s", "w", "p result", "b", "cl 2", "tb before_finish", "b", "cl bp_3", "b",
                "frobnicate", "edit {bad", "p step 99", "item 5", "help", "c"]
    proc = cli("debug", run_id, stdin="\n".join(commands) + "\n")
    assert proc.returncode == 0, proc.all
    out = proc.stdout
    for cmd in commands:  # every command is echoed after the prompt: a readable transcript
        assert PROMPT + cmd + "\n" in out

    where = answer_of("w", out)
    assert "▶ #2 tool  price_lookup" in where and "paused here: before_tool" in where
    assert paused_at(out)[:2] == ["before_tool of step 2: price_lookup", "after_tool of step 2: price_lookup"]
    where_after = out.split(PROMPT + "w\n")[2]
    assert "paused here: after_tool" in where_after.split(PROMPT)[0]
    assert '"market_price_usd": "' + roses() + '"' in answer_of("p result", out)

    listed = answer_of("b", out)
    assert "bp_1" in listed and "before_tool:price_lookup" in listed and "hits 1" in listed
    assert "bp_2" in listed and "after_model if step == 3" in listed
    assert "bp_2 removed" in answer_of("cl 2", out)
    assert "bp_3 added: before_finish (once)" in answer_of("tb before_finish", out)  # numbers are not reused
    second_listing = out.split(PROMPT + "b\n")[2].split(PROMPT)[0]
    assert "bp_3   before_finish" in second_listing and "once" in second_listing
    assert "bp_2" not in second_listing
    assert "bp_3 removed" in answer_of("cl bp_3", out)
    last_listing = out.split(PROMPT + "b\n")[-1].split(PROMPT)[0]
    assert "bp_1" in last_listing and "bp_2" not in last_listing and "bp_3" not in last_listing

    assert "error: unknown command 'frobnicate'" in answer_of("frobnicate", out)
    assert "error:" in answer_of("edit {bad", out) and "not valid JSON" in answer_of("edit {bad", out)
    assert "error:" in answer_of("p step 99", out)
    assert "error:" in answer_of("item 5", out)
    helped = answer_of("help", out)
    for word in ("continue", "step", "where", "print", "edit", "skip", "approve", "deny", "break", "clear",
                 "fork", "abort", "detach"):
        assert word in helped
    assert "■ completed" in answer_of("c", out)  # the removed breakpoints did not stop it
    assert f"charge ${cents(Decimal(roses()) * Decimal('1.15'))} per stem" in out

    finished = cli("debug", run_id)
    assert finished.returncode == 0 and "already finished" in finished.stdout


def test_step_stops_at_the_very_next_stop(cli):
    proc = cli("demo", "--break", "before_tool:price_lookup", stdin="s\ns\ns\ns\ns\nw\nc\n")
    assert proc.returncode == 0, proc.all
    assert paused_at(proc.stdout) == [
        "before_tool of step 2: price_lookup", "after_tool of step 2: price_lookup", "before_model of step 3",
        "after_model of step 3", "before_tool of step 4: calculator", "after_tool of step 4: calculator"]
    where = answer_of("w", proc.stdout)
    assert re.search(r"▶ #4 tool  calculator\(.*\) → \S+.*paused here: after_tool", where)
    assert "  #3 model → calculator" in where


def test_skip_replaces_a_tool_call(cli):
    proc = cli("demo", "--break", "before_tool:calculator", stdin="skip 9.99\n")
    assert proc.returncode == 0, proc.all
    assert "charge $9.99 per stem" in proc.stdout
    run_id = run_id_in(proc.stdout)
    shown = cli("runs", "show", run_id)
    assert re.search(r"#4 tool  calculator\(.*\) → 9\.99  \(supplied by debugger\)", shown.stdout), shown.stdout
    assert "decision skip" in shown.stdout


def test_fork_detach_end_of_input_and_abort(cli):
    price = roses()
    result = json.dumps(json.dumps({"flower": "roses", "market_price_usd": "3.00"}))
    proc = cli("demo", "--break", "before_tool:calculator",
               stdin=f'fork 4 {{"result": "9.99"}}\nfork 2 {{"result": {result}}}\nw\nc\n')
    assert proc.returncode == 0, proc.all  # the REPL followed the second fork, which completed
    out = proc.stdout
    first_fork = answer_of('fork 4 {"result": "9.99"}', out)
    m = re.search(r"forked (run_\w+) at step 4 as new run (run_\w+)", first_fork)
    assert m, first_fork
    original = m.group(1)
    assert "charge $9.99 per stem" in first_fork
    assert "the fork ended completed; still debugging run " + original in first_fork
    second = out.split(PROMPT + "fork 2")[1].split(PROMPT)[0]
    assert "now debugging the fork" in second
    assert paused_at(second) == ["before_tool of step 4: calculator"]  # the fork inherits the breakpoint
    assert 'calculator({"expression": "3.00 * 1.15"})' in answer_of("w", out)
    assert "charge $3.45 per stem" in answer_of("c", out)
    assert f"is still paused: {cli.prefix} debug {original}" in out

    shown = cli("runs", "fork", original, "4", "--edit", '{"result": "7.77"}')  # the same, without a REPL
    assert shown.returncode == 0, shown.all
    assert "charge $7.77 per stem" in shown.stdout

    eof = cli("debug", original, stdin="p\n")
    assert eof.returncode == 3, eof.all
    assert f'"expression": "{price} * 1.15"' in answer_of("p", eof.stdout)
    assert "detached" in eof.stdout and f"{cli.prefix} debug {original}" in eof.stdout

    detached = cli("debug", original, stdin="detach\nq\n")
    assert detached.returncode == 3, detached.all
    assert PROMPT + "q" not in detached.stdout  # detach ended the REPL

    aborted = cli("debug", original, stdin="q\n")
    assert aborted.returncode == 1, aborted.all
    assert "cancelled" in answer_of("q", aborted.stdout)
    assert "already finished" in cli("debug", original).stdout


def test_bad_break_specs_exit_2_before_anything_runs(cli):
    proc = cli("run", AGENT, "hi", "--break", "before_tol")
    assert proc.returncode == 2, proc.all
    assert proc.stderr.startswith("error: ") and "did you mean 'before_tool'" in proc.stderr
    assert "run_" not in proc.stdout
    bad = cli("demo", "--break", "after_model if run.cost_usd >")
    assert bad.returncode == 2 and "bad condition" in bad.stderr and "run_" not in bad.stdout
    missing = cli("debug", "run_doesnotexist")
    assert missing.returncode == 2 and "no run 'run_doesnotexist'" in missing.stderr


# -- the REPL in-process ---------------------------------------------------------------------------


@tool(requires_approval=True)
def delete_file(path: str) -> str:
    """Delete a file."""
    return f"deleted {path}"


@tool
def read_file(path: str) -> str:
    """Read a file."""
    return f"contents of {path}"


def _script(request):
    results = [m.text for m in request.messages if m.role == "tool"]
    if not results:
        return calls([("read_file", {"path": "a.txt"}), ("delete_file", {"path": "/etc/passwd"})])
    return reply("done: " + " | ".join(results))


async def _debug(service: RunsService, run_id: str, commands: list[str]) -> tuple[str, object]:
    out = io.StringIO()
    console = Console(file=out, width=200, highlight=False, no_color=True)
    view = await service.get(run_id)
    final = await Debugger(service, view, console=console, stdin=io.StringIO("\n".join(commands) + "\n"),
                           interactive=False).run()
    return out.getvalue(), final


@pytest.mark.anyio
async def test_parallel_items_approval_and_item_selection():
    service = RunsService(MemoryStore())
    agent = Agent("files", ScriptedModel(_script), tools=[read_file, delete_file])
    view = await service.start(agent, "clean up", breakpoints=["before_tool:read_file"])
    assert sorted(i.reason for i in view.pending) == ["approval", "breakpoint"]
    out, final = await _debug(service, view.id, [
        "c", "approve [1]", "item 2", "p args", "item 1", "edit {\"path\": \"b.txt\"}", "item 2",
        'approve {"path": "/tmp/x"}'])
    assert "2 items pending" in out
    assert "error:" in answer_of("c", out) and "needs an answer first" in answer_of("c", out)
    assert "error:" in answer_of("approve [1]", out)  # item 1 is a breakpoint, not an approval
    assert '"path": "/etc/passwd"' in answer_of("p args", out)
    assert final.status == "completed"  # type: ignore[attr-defined]
    assert final.output == "done: contents of b.txt | deleted /tmp/x"  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_deny_answers_at_once_when_the_rest_can_go_on():
    service = RunsService(MemoryStore())
    agent = Agent("files", ScriptedModel(_script), tools=[read_file, delete_file])
    view = await service.start(agent, "clean up")
    assert [i.reason for i in view.pending] == ["approval"]
    out, final = await _debug(service, view.id, ["p", "deny not that one [/b]"])
    assert "needs an answer: approve" in answer_of("p", out)
    assert final.status == "completed"  # type: ignore[attr-defined]
    assert "a person denied this call: not that one [/b]" in final.output  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_budget_pause_edit_raises_the_limit():
    service = RunsService(MemoryStore())
    agent = Agent("files", ScriptedModel(_script), tools=[read_file, delete_file], limits=Limits(max_steps=1))
    view = await service.start(agent, "clean up")
    out, final = await _debug(service, view.id, ["approve", "edit {\"max_steps\": 0}", "edit {\"nope\": 3}",
                                                 "edit {\"max_steps\": 5}", "p staged", "c"])
    assert "on_budget" in out and '"max_steps": 1' in out
    assert "error:" in answer_of('edit {"max_steps": 0}', out)
    assert "unknown limit 'nope'" in answer_of('edit {"nope": 3}', out)
    assert '"max_steps": 5' in answer_of("p staged", out)
    assert final.status == "completed", out  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_edits_at_each_stop_and_stale_answers():
    service = RunsService(MemoryStore())
    agent = Agent("files", ScriptedModel(_script), tools=[read_file, delete_file])
    view = await service.start(agent, "clean up", breakpoints=["before_model", "before_finish"])
    out, final = await _debug(service, view.id, [
        "edit", "p messages", 'edit [{"role": "user", "content": "tidy up"}]', "s", "p output",
        "approve", "c", "p", 'edit "all done"', "w", "c"])
    assert "inline" in answer_of("edit", out)  # no terminal: no editor
    assert "user: clean up" in answer_of("p messages", out)
    assert "before_finish" in out
    assert final.status == "completed" and final.output == "all done"  # type: ignore[attr-defined]
    where = answer_of("w", out)
    assert "paused here: before_finish" in where and "deleted /etc/passwd" in where
    assert final.messages[0].text == "tidy up"  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_commands_follow_the_table_of_answers_and_show_edits_in_the_steps():
    """What each command may answer comes from domain/decisions.py; an edited result shows as edited."""
    service = RunsService(MemoryStore())
    agent = Agent("files", ScriptedModel(_script), tools=[read_file, delete_file])
    view = await service.start(agent, "clean up", breakpoints=["after_model if step == 1", "after_tool:read_file"])
    out, final = await _debug(service, view.id, [
        "skip 1", "rerun", "deny", "approve", "c", "item 2", 'edit "x"', "item 1", 'edit "changed"', "item 2",
        "approve"])
    assert "skip replaces a tool call before it runs" in answer_of("skip 1", out)
    assert "rerun answers an uncertain tool call" in answer_of("rerun", out)
    assert "deny answers a call that needs approval; this is a breakpoint item" in answer_of("deny", out)
    assert "approve it with other arguments instead" in answer_of('edit "x"', out)
    assert final.status == "completed"  # type: ignore[attr-defined]
    assert final.output == "done: changed | deleted /etc/passwd"  # type: ignore[attr-defined]
    edited = final.steps[1]  # type: ignore[attr-defined]
    assert (edited.result, edited.edited, supplied(edited)) == ("changed", True, "edited by debugger")


def test_editor_round_trip(tmp_path):
    script = tmp_path / "fake_editor.py"
    script.write_text("import json, sys\np = sys.argv[1]\nv = json.load(open(p))\nv['expression'] = '1 + 1'\n"
                      "open(p, 'w').write(json.dumps(v))\n")
    editor = f"{sys.executable} {script}"
    assert edit_in_editor({"expression": "2 * 3"}, editor=editor) == {"expression": "1 + 1"}
    empty = tmp_path / "empty_editor.py"
    empty.write_text("import sys\nopen(sys.argv[1], 'w').write('')\n")
    assert edit_in_editor([1], editor=f"{sys.executable} {empty}") is None
    broken = tmp_path / "broken_editor.py"
    broken.write_text("import sys\nopen(sys.argv[1], 'w').write('{oops')\n")
    with pytest.raises(DebuggerError, match=r"not JSON.*kept in"):
        edit_in_editor([1], editor=f"{sys.executable} {broken}")
    with pytest.raises(DebuggerError, match="cannot run the editor"):
        edit_in_editor([1], editor=str(Path(tmp_path) / "no-such-editor"))


@pytest.mark.anyio
async def test_a_pause_answered_elsewhere_meanwhile():
    service = RunsService(MemoryStore())
    agent = Agent("files", ScriptedModel(_script), tools=[read_file, delete_file])
    stale = await service.start(agent, "clean up")
    await service.answer(stale.id, default="approve")  # another actor answers first
    out = io.StringIO()
    console = Console(file=out, width=200, highlight=False, no_color=True)
    final = await Debugger(service, stale, console=console, stdin=io.StringIO("approve\np\n"),
                           interactive=False).run()
    text = out.getvalue()
    assert "error: run" in text and "already resumed" in text.lower()
    assert "no longer at that pause (it is completed)" in text
    assert final.status == "completed"
    assert PROMPT + "p" not in text  # the REPL ended with the run


@pytest.mark.anyio
async def test_fork_warns_about_side_effects_and_follows_a_fork_that_pauses():
    service = RunsService(MemoryStore())
    agent = Agent("files", ScriptedModel(_script), tools=[read_file, delete_file], limits=Limits(max_steps=1))
    view = await service.start(agent, "clean up")
    out, final = await _debug(service, view.id, ["approve", 'fork 2 {"result": "nothing there"}', "p", "detach"])
    forked = answer_of('fork 2 {"result": "nothing there"}', out)
    assert "warning: the parent already made these calls" in forked
    assert 'step 3: delete_file({"path": "/etc/passwd"})' in forked
    assert f"now debugging the fork {final.id}" in forked  # type: ignore[attr-defined]
    assert final.id != view.id and final.paused  # type: ignore[attr-defined]
    assert "approval of step 3: delete_file" in answer_of("p", out)
    assert f"run {view.id} (which you forked) is still paused" in out
