"""The terminal debugger: what `tether run --break …` opens when a run pauses, and `tether debug RUN_ID`.

A small REPL with pdb habits, driven through the runs service only (so it works on any paused run,
from any process). It shows where the run is paused, then reads commands:

    c, continue        answer the pause and go on: staged edits/answers are sent for their items,
                       "continue" for the rest; the steps are printed as they happen, until the run
                       pauses again (the REPL goes on) or ends (its answer is printed, the REPL ends)
    s, step (n, next)  the same, but "step" for every item without a staged answer: the run pauses
                       again at the very next stop. An item with a staged edit is sent as "edit",
                       which does not itself step; with a single item, `edit` + `s` goes on like
                       `c` (up to the next breakpoint)
    w, where (bt)      the run's steps so far, with a marker at the current stop
    p, print [WHAT]    the pending item(s) in full; WHAT: args, result, output, messages, usage,
                       cost, step N, breakpoints, staged
    edit [JSON]        stage an edit of the current item (without JSON: $EDITOR on the current value)
    skip RESULT        don't run the tool call: the model sees RESULT (answers it and goes on);
                       for a client tool or an uncertain call, it supplies RESULT
    rerun              run an uncertain call again
    approve [JSON]     approve a tool call that needs approval (with JSON: with these arguments)
    deny [MESSAGE]     deny it; the model sees MESSAGE
    item [N]           choose which pending item edit/skip/approve/deny apply to (default the first)
    b, break [SPEC]    add a breakpoint to this run (no SPEC: list them, with hit counts)
    tb, tbreak SPEC    add a one-shot breakpoint
    cl, clear N|ID     remove a breakpoint
    fork STEP [JSON]   a new run from STEP of this one, with edits ({"result": …}, {"arguments": {…}}
                       or {"messages": […]}); the REPL follows the fork if it pauses, else stays here
    q, quit, abort     cancel the run
    detach             leave the run paused and end the REPL (so does end of input)
    h, help, ?         the commands

`skip`, `approve` and `deny` answer the current item; when every other item can then simply go on,
the pause is answered right away (as with `c`), else the REPL moves to the next item that needs one.

Interactive (stdin a terminal): prompt-toolkit with history and completion; an empty line repeats
`s` or `c`. Otherwise lines are read from stdin and echoed after the prompt, so a debugging session
can be scripted (`printf 'p\\nc\\n' | tether debug RUN_ID`) and its transcript read.
"""
from __future__ import annotations

import contextlib
import difflib
import json
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from rich.console import Console
from rich.text import Text

from tether.domain.answers import Action, Continue, answer_value
from tether.domain.breakpoints import Stop
from tether.domain.decisions import actions_for, edits, needs_answer
from tether.domain.errors import TetherError
from tether.domain.records import TERMINAL, PauseReason, PendingItem, RunStarted
from tether.domain.steps import StepStatus
from tether.interfaces.cli.debugger_views import LiveView, Screen, Staged, compact, hint, where
from tether.interfaces.cli.invocation import cmd
from tether.interfaces.cli.render import STATUS_STYLE, RunPrinter, fmt_cost, fmt_tokens
from tether.services.answers import check_limits, current_value, final_text, make_answer, parse_json, parse_result

if TYPE_CHECKING:
    from tether.services.runs import RunsService, RunView

PROMPT = "(debug) "


class DebuggerError(TetherError):
    """A mistake in a debugger command: shown in red, and the REPL goes on."""


@dataclass(frozen=True)
class Command:
    names: tuple[str, ...]  # the first is the canonical name
    usage: str
    help: str


COMMANDS: tuple[Command, ...] = (
    Command(("continue", "c", "cont"), "c", "answer the pause (staged answers, else continue) and go on"),
    Command(("step", "s", "n", "next"), "s", "like c, but pause again at the very next stop"),
    Command(("where", "w", "bt"), "w", "the steps so far, with a marker at the current stop"),
    Command(("print", "p"), "p [WHAT]", "the pending item(s) in full; WHAT: args, result, output, messages, "
                                        "usage, cost, step N, breakpoints, staged"),
    Command(("edit",), "edit [JSON]", "stage an edit of the current item (no JSON: open $EDITOR)"),
    Command(("skip",), "skip RESULT", "don't call the tool: the model sees RESULT (and go on)"),
    Command(("rerun",), "rerun", "run an uncertain tool call again (and go on)"),
    Command(("approve",), "approve [JSON]", "approve the tool call, optionally with other arguments"),
    Command(("deny",), "deny [MESSAGE]", "deny the tool call; the model sees MESSAGE"),
    Command(("item",), "item [N]", "choose the pending item that edit/skip/approve/deny apply to"),
    Command(("break", "b"), "b [SPEC]", "add a breakpoint, e.g. b after_model if run.tokens > 500 (no SPEC: list)"),
    Command(("tbreak", "tb"), "tb SPEC", "add a one-shot breakpoint"),
    Command(("clear", "cl"), "cl N|ID", "remove a breakpoint"),
    Command(("fork",), "fork STEP [JSON]", 'a new run from STEP with edits, e.g. fork 4 {"result": "9.99"}'),
    Command(("abort", "q", "quit"), "q", "cancel the run and end the debugger"),
    Command(("detach",), "detach", "leave the run paused and end the debugger (so does end of input)"),
    Command(("help", "h", "?"), "help", "this list"),
)
_BY_NAME = {name: c.names[0] for c in COMMANDS for name in c.names}
PRINTABLE = ("args", "result", "output", "messages", "usage", "cost", "step", "breakpoints", "staged")


class Debugger:
    """The REPL on one paused run. `run()` returns the run as it stands when the REPL ends.

    `stdin`: where commands come from (default sys.stdin); `interactive`: use prompt-toolkit
    (default: when stdin is a terminal).
    """

    def __init__(self, service: RunsService, view: RunView, *, console: Console | None = None,
                 stdin: TextIO | None = None, interactive: bool | None = None) -> None:
        self.service = service
        self.view = view
        self.console = console or Console(highlight=False)
        self.screen = Screen(self.console)
        self.stdin = stdin or sys.stdin
        self.interactive = self.stdin.isatty() if interactive is None else interactive
        self.current = 0  # index of the pending item edit/skip/approve/deny apply to
        self.staged: dict[str, Staged] = {}  # item id → answer, for the current pause
        self.done = False
        self.last_move: str | None = None  # "continue" or "step": what an empty line repeats
        self._session: Any = None
        self.left: list[str] = []  # runs the REPL left paused when it followed a fork


    @property
    def run_id(self) -> str:
        return self.view.id

    # -- the loop --------------------------------------------------------------------------------

    async def run(self) -> RunView:
        if not self.view.paused:
            raise DebuggerError(f"run {self.run_id} is not paused (it is {self.view.status})")
        self.show_location()
        while not self.done:
            line = await self.read()
            if line is None:  # end of input
                self.detach()
                break
            await self.execute(line)
        for run_id in self.left:
            with contextlib.suppress(TetherError):
                if run_id != self.run_id and (await self.service.get(run_id)).paused:
                    self.out(Text.assemble((f"run {run_id} (which you forked) is still paused: ", "dim"),
                                           (cmd(f"debug {run_id}"), "bold")))
        return self.view

    async def read(self) -> str | None:
        if not self.interactive:
            line = self.stdin.readline()
            if not line:
                return None
            line = line.rstrip("\r\n")
            self.out(Text(PROMPT, style="bold") + Text(line))
            return line
        session = self._prompt_session()
        while True:
            try:
                line = await session.prompt_async(PROMPT)
            except KeyboardInterrupt:
                self.out(Text("(q aborts the run, detach leaves it paused)", style="dim"))
                continue
            except EOFError:
                return None
            if not line.strip() and self.last_move is not None:
                return self.last_move
            return str(line)

    def _prompt_session(self) -> Any:
        if self._session is None:
            from prompt_toolkit import PromptSession
            from prompt_toolkit.completion import WordCompleter
            from prompt_toolkit.history import FileHistory, History, InMemoryHistory

            history: History = InMemoryHistory()
            with contextlib.suppress(OSError, ImportError):
                from tether.services.compose import tether_home

                home = tether_home()
                home.mkdir(parents=True, exist_ok=True)
                history = FileHistory(str(home / "debugger_history"))
            words = sorted({*_BY_NAME, *PRINTABLE})
            self._session = PromptSession(history=history, completer=WordCompleter(words))
        return self._session

    async def execute(self, line: str) -> None:
        """Run one command line; a mistake is printed and the REPL goes on."""
        text = line.strip()
        if not text or text.startswith("#"):
            return
        word, _, rest = text.partition(" ")
        rest = rest.strip()
        name = _BY_NAME.get(word) or _BY_NAME.get(word.lower())
        try:
            if name is None:
                close = difflib.get_close_matches(word, list(_BY_NAME), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise DebuggerError(f"unknown command {word!r}{hint} (help lists the commands)")
            handler: Callable[[str], Any] = getattr(self, "cmd_" + name)
            result = handler(rest)
            if hasattr(result, "__await__"):
                await result
        except DebuggerError as e:
            self.error(str(e))
        except Exception as e:  # a TetherError from the service, or a bug: the session goes on
            self.error(str(e) if isinstance(e, TetherError) else f"{type(e).__name__}: {e}")
            await self.refresh()

    async def refresh(self) -> None:
        """Read the run again (someone else may have answered the pause meanwhile)."""
        try:
            view = await self.service.get(self.run_id)
        except Exception:
            return
        if view.pause_id != self.view.pause_id or view.status != self.view.status:
            self.out(Text(f"run {view.id} is no longer at that pause (it is {view.status})", style="yellow"))
            try:
                self.moved(view)
            except Exception as e:
                self.view, self.staged, self.current = view, {}, 0
                self.done = not view.paused
                self.error(f"{type(e).__name__}: {e}")

    # -- output ----------------------------------------------------------------------------------

    # -- output (debugger_views.py prints) -------------------------------------------------------

    def out(self, text: Text | str = "") -> None:
        self.screen.out(text)

    def error(self, message: str) -> None:
        self.screen.error(message)

    # -- where the run is ------------------------------------------------------------------------

    def item(self) -> PendingItem:
        pending = self.view.pending
        if not pending:
            raise DebuggerError(f"run {self.run_id} has nothing pending")
        return pending[min(self.current, len(pending) - 1)]

    def show_location(self) -> None:
        self.screen.location(self.view, self.current, self.staged)

    # -- looking ---------------------------------------------------------------------------------

    def cmd_help(self, rest: str) -> None:
        self.out(Text("commands:", style="bold"))
        width = max(len(c.usage) for c in COMMANDS)
        for c in COMMANDS:
            aliases = [n for n in c.names if n != c.usage.split()[0]]
            also = f"  (also {', '.join(aliases)})" if aliases else ""
            self.out(Text.assemble((f"  {c.usage:<{width}}  ", "bold"), c.help, (also, "dim")))
        self.out(Text("breakpoints: STOP[:TOOL_GLOB] [if CONDITION]; stops: before_model, after_model, "
                      "before_tool, after_tool, on_error, on_budget, before_finish, on_uncertain", style="dim"))


    def cmd_where(self, rest: str) -> None:
        self.screen.where(self.view)

    async def cmd_print(self, rest: str) -> None:
        what, _, arg = rest.partition(" ")
        what, arg = what.strip().lower(), arg.strip()
        view, screen = self.view, self.screen
        if not what:
            screen.pending(view, self.current, self.staged)
            return
        if what in ("args", "arguments"):
            item = self.item()
            step = next((s for s in view.steps if s.type == "model" and s.number == item.step), None)
            if item.arguments is not None:
                screen.block(f"arguments of {item.name}", parse_json(item.arguments))
            elif item.stop == Stop.AFTER_MODEL and step is not None and step.tool_calls:
                for _, name, args in step.tool_calls:
                    screen.block(f"arguments of {name}", parse_json(args))
            else:
                raise DebuggerError(f"no tool call at {item.stop or item.reason}, so no arguments")
        elif what == "result":
            item = self.item()
            tool_step = next((s for s in view.steps if item.call_id is not None and s.call_id == item.call_id), None)
            if tool_step is None:
                raise DebuggerError(f"no tool call at {item.stop or item.reason}, so no result")
            if tool_step.status == StepStatus.FAILED:
                screen.block("error", tool_step.error or "")
            elif tool_step.status == StepStatus.COMPLETED:
                screen.block("result", parse_result(tool_step.result or ""))
            else:
                self.out(Text(f"{tool_step.name} has not run yet", style="dim"))
        elif what == "output":
            text = final_text(view)
            if text is None:
                self.out(Text("no model text yet", style="dim"))
            else:
                screen.block("model text", text)
        elif what == "messages":
            screen.messages(view)
        elif what in ("usage", "tokens"):
            u = view.usage
            self.out(f"{fmt_tokens(u)} ({u.total_tokens:,} total"
                     + (f", {u.cached_tokens:,} cached" if u.cached_tokens else "") + ")")
        elif what == "cost":
            self.out(fmt_cost(view.cost_usd) + ("  (unknown: the model's price is not known)"
                                                if view.cost_usd is None else ""))
        elif what == "step":
            number = _int(arg, "p step N: the step's number")
            if not screen.step(view, number):
                n = len(view.steps)
                raise DebuggerError(f"run {self.run_id} has steps 1..{n}" if n else "no steps yet")
        elif what in ("breakpoints", "b", "break"):
            await self.cmd_break("")
        elif what == "staged":
            screen.staged(view, self.staged)
        else:
            raise DebuggerError(f"p what? one of {', '.join(PRINTABLE)} (or nothing: the pending items)")

    def cmd_item(self, rest: str) -> None:
        items = self.view.pending
        if rest:
            n = _int(rest, "item N: the pending item's number")
            if not 1 <= n <= len(items):
                raise DebuggerError(f"there {'is' if len(items) == 1 else 'are'} {len(items)} pending "
                                    f"item{'s' if len(items) != 1 else ''}; choose 1..{len(items)}")
            self.current = n - 1
        self.screen.items(self.view, self.current)

    # -- answering: the rules come from domain/decisions.py and services/answers.py --------------

    async def cmd_continue(self, rest: str) -> None:
        self.last_move = "continue"
        await self.send("continue")

    async def cmd_step(self, rest: str) -> None:
        self.last_move = "step"
        if self.view.pending and all(i.id in self.staged and self.staged[i.id].answer.action == "edit"
                                     for i in self.view.pending):
            self.out(Text("(an edit is sent as it is, and does not step: the run goes on to the next "
                          "breakpoint)", style="dim"))
        await self.send("step")

    def cmd_edit(self, rest: str) -> None:
        item = self.item()
        budget = item.reason == PauseReason.BUDGET  # its limits are edited, and sent with "continue"
        if not budget and "edit" not in actions_for(item):
            if "approve" in actions_for(item):
                raise DebuggerError("this call waits for approval: approve it with other arguments instead, "
                                    "e.g. approve {\"x\": 1}")
            if needs_answer(item):
                raise DebuggerError(f"a {item.reason} item cannot be edited; it needs {hint(item)}")
            raise DebuggerError(f"there is nothing to edit at {item.stop or item.reason}")
        current = self.current_value(item)
        if rest:
            new = _json(rest, f"the edit at {item.stop}")
        elif not self.interactive:
            raise DebuggerError(f"give the new value inline: edit JSON (stdin is not a terminal, so no editor). "
                                f"Now: {compact(current, 200)}")
        else:
            new = edit_in_editor(current)
            if new is None:
                self.out(Text("empty file: nothing staged", style="yellow"))
                return
            if new == current:
                self.out(Text("no change: nothing staged", style="yellow"))
                return
        if budget:
            try:
                limits = check_limits(new, current)
            except TetherError as e:
                raise DebuggerError(str(e)) from None
            if not limits:
                raise DebuggerError("no limit changed: nothing staged")
            self.staged[item.id] = Staged(Continue(limits), {"limits": limits})
            self.screen.block("staged: continue with the limits", limits)
            self.out(Text("c sends it and goes on; edit again to change it", style="dim"))
            return
        answer = make_answer(item, "edit", new, self.view)  # fails early on a bad value
        self.staged[item.id] = Staged(answer, new)
        for key, value in (answer_value(answer) or {}).items():
            self.screen.block(f"staged: edit the {key}", new if key in ("response", "messages") else value)
        self.out(Text("c sends it and goes on; edit again to change it", style="dim"))

    def current_value(self, item: PendingItem) -> Any:
        """What an edit of `item` replaces, as JSON data (a staged edit's value, if there is one)."""
        staged = self.staged.get(item.id)
        if item.reason == PauseReason.BUDGET:
            limits = current_value(item, self.view)
            if staged is not None and isinstance(staged.answer, Continue):
                limits.update(staged.answer.limits)
            return limits
        if staged is not None and staged.answer.action == "edit":
            return staged.value
        try:
            return current_value(item, self.view)
        except TetherError as e:
            raise DebuggerError(str(e)) from None

    async def cmd_skip(self, rest: str) -> None:
        item = self.item()
        if not rest:
            raise DebuggerError("give the result the model should see instead: skip RESULT")
        ok = actions_for(item)
        if "supply" in ok:  # a client tool's output, an uncertain call's result
            await self.answer_item(item, "supply", rest)
        elif "skip" in ok:
            await self.answer_item(item, "skip", rest)
        else:
            hint_ = "; edit its result instead (edit JSON)" if edits(item) == "result" else ""
            raise DebuggerError(f"skip replaces a tool call before it runs (before_tool); this is "
                                f"{item.stop or item.reason}{hint_}")

    async def cmd_rerun(self, rest: str) -> None:
        item = self.item()
        if "rerun" not in actions_for(item):
            raise DebuggerError("rerun answers an uncertain tool call (one cut off by a crash or a timeout)")
        await self.answer_item(item, "rerun", None)

    async def cmd_approve(self, rest: str) -> None:
        item = self.item()
        if "approve" not in actions_for(item):
            raise DebuggerError(f"approve answers a call that needs approval; this is a {item.reason} item "
                                "(c goes on)")
        payload = None
        if rest:
            args = _json(rest, "the arguments")
            if not isinstance(args, dict):
                raise DebuggerError('approve with arguments takes a JSON object, e.g. approve {"path": "a.txt"}')
            payload = {"arguments": args}
        await self.answer_item(item, "approve", payload)

    async def cmd_deny(self, rest: str) -> None:
        item = self.item()
        if "deny" not in actions_for(item):
            raise DebuggerError(f"deny answers a call that needs approval; this is a {item.reason} item "
                                "(skip RESULT replaces a tool call; q aborts the run)")
        await self.answer_item(item, "deny", rest or None)

    async def answer_item(self, item: PendingItem, action: Action, value: Any) -> None:
        """Stage an answer for one item; answer the pause at once if the others can simply go on."""
        self.staged[item.id] = Staged(make_answer(item, action, value, self.view), value)
        waiting = [i for i, it in enumerate(self.view.pending) if it.id not in self.staged and needs_answer(it)]
        if not waiting:
            await self.send("continue")
            return
        self.current = waiting[0]
        nxt = self.view.pending[self.current]
        self.out(Text.assemble(("staged ", "yellow"), (action, "bold"), (f" for {where(item)}; ", "yellow"),
                               (f"item {self.current + 1} ({where(nxt)}) still needs an answer: {hint(nxt)}",
                                "yellow")))

    async def send(self, default: Action) -> None:
        """Answer the pause (staged answers, `default` for the rest) and follow the run live."""
        view = self.view
        for i, item in enumerate(view.pending):
            if item.id not in self.staged and needs_answer(item):
                raise DebuggerError(f"item {i + 1} ({where(item)}) needs an answer first: {hint(item)}"
                                    + (" (item N chooses it)" if len(view.pending) > 1 else ""))
        answers = {item_id: s.answer for item_id, s in self.staged.items()}
        printer = RunPrinter(self.console, live=True)
        printer.load(view.records)
        live = LiveView(printer)
        with printer:
            new = await self.service.answer(self.run_id, answers, default=default, pause_id=view.pause_id,
                                            by="debugger", on_event=live)
        live.summary(new)
        self.moved(new)

    def moved(self, view: RunView) -> None:
        """The run went on (or someone else moved it): show where it is now, or end the REPL."""
        self.view, self.staged, self.current = view, {}, 0
        if view.paused:
            self.show_location()
        elif view.status in TERMINAL:
            self.done = True
        else:
            self.out(f"run {view.id} is {view.status}: another worker advances it; follow it with "
                     f"`{cmd(f'runs show {view.id}')}`")
            self.done = True

    # -- breakpoints and forks -------------------------------------------------------------------

    async def cmd_break(self, rest: str, *, once: bool = False) -> None:
        if not rest:
            bps = await self.service.breakpoints(self.run_id)
            if not bps:
                self.out(Text("no breakpoints (b SPEC adds one, e.g. b before_tool:delete_*)", style="dim"))
            for bp in bps:
                line = Text.assemble((f"  {bp.id:<6} ", "bold"), (bp.spec(), ""),
                                     (f"   hits {bp.hits}", "dim"))
                if bp.once:
                    line.append("  once" + (" (spent)" if bp.hits else ""), style="dim")
                if not bp.enabled:
                    line.append("  disabled", style="dim")
                self.out(line)
            return
        bp, warnings = await self.service.add_breakpoint(self.run_id, rest, once=once)
        self.out(Text.assemble(("breakpoint ", ""), (bp.id, "bold"), (" added: ", ""), (bp.spec(), "bold"),
                               (" (once)" if once else "", "dim")))
        for w in warnings:
            self.out(Text(f"warning: {w}", style="yellow"))

    async def cmd_tbreak(self, rest: str) -> None:
        if not rest:
            raise DebuggerError("tb SPEC: e.g. tb after_tool:price_lookup")
        await self.cmd_break(rest, once=True)

    async def cmd_clear(self, rest: str) -> None:
        if not rest:
            raise DebuggerError("cl N|ID: which breakpoint? (b lists them)")
        bp_id = f"bp_{rest}" if rest.isdigit() else rest
        await self.service.remove_breakpoint(self.run_id, bp_id)
        self.out(Text.assemble(("breakpoint ", ""), (bp_id, "bold"), (" removed", "")))

    async def cmd_fork(self, rest: str) -> None:
        first, _, edits_text = rest.partition(" ")
        step = _int(first, 'fork STEP [JSON]: e.g. fork 4 {"result": "9.99"}')
        edits = None
        if edits_text.strip():
            edits = _json(edits_text.strip(), "the fork's edits")
            if not isinstance(edits, dict):
                raise DebuggerError('the fork\'s edits are a JSON object: {"result": "…"} or {"arguments": {…}} '
                                    'at a tool step, {"messages": […]} at a model step')
        parent = self.run_id
        printer = RunPrinter(self.console, live=True)
        live = LiveView(printer)
        with printer:
            new = await self.service.fork(parent, step, edits, on_event=live)
        live.summary(new)
        self.out(Text.assemble(("forked ", ""), (parent, "bold"), (f" at step {step} as new run ", ""),
                               (new.id, "bold")))
        first_record = new.records[0].payload if new.records else None
        warnings = first_record.metadata.get("fork_warnings", []) if isinstance(first_record, RunStarted) else []
        if warnings:
            self.out(Text("warning: the parent already made these calls, which the fork may make again:",
                          style="yellow"))
            for w in warnings:
                self.out(Text(f"  {w}", style="yellow"))
        if new.paused:
            self.out(Text.assemble(("now debugging the fork ", ""), (new.id, "bold"), (f"; run {parent} stays "
                                   f"paused ({cmd(f'debug {parent}')})", "dim")))
            self.left.append(parent)
            self.moved(new)
            return
        style = STATUS_STYLE.get(new.status, "")
        self.out(Text.assemble(("the fork ended ", ""), (new.status, f"bold {style}"),
                               (f"; still debugging run {parent}, paused at {where(self.item())}", "")))

    # -- leaving ---------------------------------------------------------------------------------

    async def cmd_abort(self, rest: str) -> None:
        view = await self.service.cancel(self.run_id, by="debugger")
        self.view = view
        self.out(Text.assemble(("run ", ""), (view.id, "bold"), (" is ", ""),
                               (view.status, f"bold {STATUS_STYLE.get(view.status, '')}")))
        self.done = True

    def cmd_detach(self, rest: str) -> None:
        self.detach()

    def detach(self) -> None:
        at = where(self.item()) if self.view.pending else self.view.status
        self.out(Text.assemble(("detached: run ", ""), (self.run_id, "bold"), (f" stays paused at {at}; ", ""),
                               ("attach again with ", "dim"), (cmd(f"debug {self.run_id}"), "bold")))
        self.done = True


# -- helpers --------------------------------------------------------------------------------------


def edit_in_editor(value: Any, *, editor: str | None = None) -> Any:
    """Open $EDITOR (else vi) on `value` as pretty JSON; return what comes back (None: emptied)."""
    command = editor or os.environ.get("EDITOR") or "vi"
    fd, path = tempfile.mkstemp(prefix="tether-edit-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    keep = False
    try:
        try:
            code = subprocess.call([*shlex.split(command), path])
        except (OSError, ValueError) as e:
            raise DebuggerError(f"cannot run the editor {command!r} ({e}); set $EDITOR, or give the value "
                                "inline: edit JSON") from None
        if code != 0:
            raise DebuggerError(f"the editor {command!r} exited with status {code}: nothing staged")
        text = Path(path).read_text(encoding="utf-8")
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            keep = True
            raise DebuggerError(f"what the editor left is not JSON ({e.msg}, line {e.lineno} column {e.colno}); "
                                f"it is kept in {path}") from None
    finally:
        if not keep:
            with contextlib.suppress(OSError):
                os.unlink(path)



def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        hint = ' (text is a JSON string: "like this")' if text[:1] not in "{[\"" else ""
        raise DebuggerError(f"{what} is not valid JSON: {e.msg} at column {e.colno}{hint}") from None


def _int(text: str, usage: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise DebuggerError(usage) from None

