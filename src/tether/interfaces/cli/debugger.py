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

from tether.domain.errors import TetherError
from tether.domain.events import Event
from tether.domain.messages import Message, message_to_dict
from tether.domain.records import TERMINAL, Action, Decision, Paused, PendingItem, RunStarted
from tether.domain.steps import Step
from tether.interfaces.cli.invocation import cmd
from tether.interfaces.cli.render import (
    STATUS_STYLE,
    RunPrinter,
    call_text,
    fmt_cost,
    fmt_duration,
    fmt_tokens,
    one_line,
)

if TYPE_CHECKING:
    from tether.services.runs import RunsService, RunView

PROMPT = "(debug) "
COMPACT = 100  # characters of text, arguments and results in the one-line views


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
_NEEDS_ANSWER = {
    "approval": "approve [JSON] or deny [MESSAGE] (or skip RESULT)",
    "client_tool": "skip OUTPUT (the client tool's output)",
    "uncertain": "rerun, or skip RESULT (supply its result)",
}


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
        self.soft = not self.console.is_terminal
        self.stdin = stdin or sys.stdin
        self.interactive = self.stdin.isatty() if interactive is None else interactive
        self.current = 0  # index of the pending item edit/skip/approve/deny apply to
        self.staged: dict[str, tuple[Action, Any]] = {}  # item id → answer, for the current pause
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

    def out(self, text: Text | str = "") -> None:
        """Print a line; a plain string is printed as it is (never read as rich markup)."""
        self.console.print(text if isinstance(text, Text) else Text(text), soft_wrap=self.soft)

    def error(self, message: str) -> None:
        self.out(Text.assemble(("error: ", "bold red"), (message, "red")))

    def block(self, label: str, value: Any, indent: str = "  ") -> None:
        """A labelled value: short ones on one line, JSON pretty on the lines below."""
        if isinstance(value, str):
            lines = value.splitlines() or [""]
            if len(lines) == 1 and len(value) <= 100:
                self.out(Text.assemble((f"{indent}{label}: ", "bold"), value))
                return
            self.out(Text(f"{indent}{label}:", style="bold"))
            for line in lines:
                self.out(indent + "  " + line)
            return
        dumped = json.dumps(value, indent=2, ensure_ascii=False, default=str)
        if "\n" not in dumped or len(json.dumps(value, ensure_ascii=False, default=str)) <= 80:
            self.out(Text.assemble((f"{indent}{label}: ", "bold"),
                                   (json.dumps(value, ensure_ascii=False, default=str), "yellow")))
            return
        self.out(Text(f"{indent}{label}:", style="bold"))
        for line in dumped.splitlines():
            self.out(Text(indent + "  " + line, style="yellow"))

    # -- where the run is ------------------------------------------------------------------------

    def item(self) -> PendingItem:
        pending = self.view.pending
        if not pending:
            raise DebuggerError(f"run {self.run_id} has nothing pending")
        return pending[min(self.current, len(pending) - 1)]

    def show_location(self) -> None:
        view = self.view
        items = view.pending
        if len(items) == 1:
            item = items[0]
            self.out(Text.assemble(("⏸ paused at ", "bold magenta"), (_where(item), "bold"),
                                   (f"  ({_why(item)})", "dim")))
            self.describe(item, full=False)
        else:
            self.out(Text.assemble(("⏸ paused: ", "bold magenta"), (f"{len(items)} items pending", "bold"),
                                   ("  (a parallel batch; `item N` chooses the one edit/skip/approve/deny "
                                    "apply to)", "dim")))
            for i, item in enumerate(items):
                mark = "▶" if i == self.current else " "
                self.out(Text.assemble((f"{mark} [{i + 1}] ", "bold"), (_where(item), "bold"),
                                       (f"  ({_why(item)})", "dim")))
                self.describe(item, full=False, indent="      ")
        self.out(Text(f"run {view.id} · {len(_steps(view))} steps so far · {fmt_tokens(view.usage)} · cost "
                      f"{fmt_cost(view.cost_usd)}", style="dim"))
        self.out(Text("c continue · s step · edit [JSON] · skip RESULT · p print · w where · "
                      "b breakpoints · q abort · detach · help", style="dim"))

    def describe(self, item: PendingItem, *, full: bool, indent: str = "  ") -> None:
        """What the item holds: the call and its arguments, the result, the model's text, ..."""
        view = self.view
        limit = None if full else COMPACT
        step = _step(view, item)

        def show(label: str, value: Any, short: Text) -> None:
            if full:
                self.block(label, value, indent)
            else:
                self.out(Text(indent) + short)

        if item.call_id is not None:  # a tool call: before_tool, after_tool, on_error, approval, ...
            show("tool", item.name or "?", call_text(item.name, item.arguments, limit))
            if full:
                self.block("arguments", _parse(item.arguments), indent)
            if item.stop in ("after_tool", "on_error") and step is not None:
                if step.status == "failed":
                    show("error", step.error or "", Text.assemble(("→ error: ", "red"),
                                                                  (one_line(step.error, limit), "red")))
                elif step.status == "completed":
                    show("result", _parse_structured(step.result or ""),
                         Text.assemble(("→ ", "dim"), (one_line(step.result, limit), "green")))
        elif item.stop == "after_model" and step is not None:
            show("model text", step.text if step.text is not None else "(none)",
                 Text.assemble(("model text: ", "bold"),
                               one_line(step.text, limit) if step.text else ("(none)", "dim")))
            if step.tool_calls:
                calls = Text("tool calls: ", style="bold")
                for i, (_, name, args) in enumerate(step.tool_calls):
                    calls += Text(", ") if i else Text()
                    calls += call_text(name, args, limit)
                show("tool calls", [{"name": n, "arguments": _parse(a)} for _, n, a in step.tool_calls], calls)
            else:
                self.out(Text(f"{indent}no tool calls: this is the answer", style="dim"))
        elif item.stop == "before_model":
            self.out(Text(f"{indent}about to call the model with {len(view.messages)} messages", style="bold"))
            if full:
                self.print_messages(indent)
            elif view.messages:
                self.out(Text.assemble((f"{indent}last: ", "dim"), _message_line(view.messages[-1], limit)))
        elif item.stop == "before_finish":
            output = _final_text(view)
            show("answer", output or "", Text.assemble(("answer: ", "bold"), (one_line(output, limit), "green")))
        if full:
            self.out(Text.assemble((f"{indent}item: ", "dim"), (item.id, ""), ("  reason: ", "dim"), (item.reason, ""),
                                   ("  stop: ", "dim"), (item.stop or "—", ""), ("  step: ", "dim"),
                                   (str(item.step) if item.step is not None else "—", "")))
            if item.detail:
                self.out(Text.assemble((f"{indent}why: ", "dim"), (item.detail, "")))
        elif item.stop in ("on_error", "on_budget") and item.call_id is None:
            self.out(Text(indent + item.detail, style="yellow"))
        if item.reason == "budget":
            self.block("limits", _limits(view), indent)
            if not full:
                self.out(Text(f"{indent}raise one with edit, e.g. edit {{\"max_steps\": 10}}; c goes on",
                              style="dim"))
        if item.reason in _NEEDS_ANSWER and item.id not in self.staged:
            self.out(Text(f"{indent}needs an answer: {_NEEDS_ANSWER[item.reason]}", style="yellow"))
        if item.id in self.staged:
            action, payload = self.staged[item.id]
            self.out(Text.assemble((f"{indent}staged: ", "bold yellow"), (action, "bold"),
                                   ("" if payload is None else " " + _compact(payload, limit), "yellow")))

    def print_messages(self, indent: str = "  ") -> None:
        for i, m in enumerate(self.view.messages):
            self.out(Text(f"{indent}[{i}] ") + _message_line(m, None))

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
        view = self.view
        marks: dict[int, list[str]] = {}
        for item in view.pending:
            if item.step is not None:
                marks.setdefault(item.step, []).append(item.stop or item.reason)
        steps = _steps(view)
        shown = {s.number for s in steps}
        for s in steps:
            self._step_line(s, marks.get(s.number))
        for number in sorted(set(marks) - shown):  # a stop before its step exists: before_model, on_budget
            self.out(Text.assemble(("▶ ", "bold magenta"), (f"#{number} ", "bold"), ("(not started)", "dim"),
                                   (f"   ◀ paused here: {', '.join(marks[number])}", "bold magenta")))
        if not steps and not marks:
            self.out(Text("no steps yet", style="dim"))

    def _step_line(self, s: Step, mark: list[str] | None) -> None:
        line = Text("▶ " if mark else "  ", style="bold magenta")
        line.append(f"#{s.number} ", style="bold")
        if s.type == "model":
            line.append("model ", style="cyan")
            if s.tool_calls:
                line.append("→ ", style="dim")
                for i, (_, name, args) in enumerate(s.tool_calls):
                    if i:
                        line.append(", ")
                    line.append_text(call_text(name, args, 60))
            elif s.text is not None:
                line.append("answer: ", style="green")
                line.append(one_line(s.text, COMPACT))
        else:
            line.append("tool  ", style="magenta")
            line.append_text(call_text(s.name, s.arguments, 60))
            if s.status == "completed":
                line.append(" → ", style="dim")
                line.append(one_line(s.result, 60), style="green")
                if s.supplied_by:
                    line.append(f"  ({_supplied(s)})", style="yellow")
            elif s.status == "failed":
                line.append(" → error: ", style="red")
                line.append(one_line(s.error, 60), style="red")
            else:
                line.append("  … not run yet" if s.status == "pending" else "  … started", style="yellow")
        if s.reused:
            line.append("  (reused)", style="dim")
        if mark:
            line.append(f"   ◀ paused here: {', '.join(mark)}", style="bold magenta")
        self.out(line)

    async def cmd_print(self, rest: str) -> None:
        what, _, arg = rest.partition(" ")
        what, arg = what.strip().lower(), arg.strip()
        view = self.view
        if not what:
            several = len(view.pending) > 1
            for i, item in enumerate(view.pending):
                if several:
                    mark = "▶" if i == self.current else " "
                    self.out(Text.assemble((f"{mark} [{i + 1}] ", "bold"), (_where(item), "bold")))
                else:
                    self.out(Text(_where(item), style="bold"))
                self.describe(item, full=True, indent="      " if several else "  ")
            return
        if what in ("args", "arguments"):
            item = self.item()
            if item.arguments is not None:
                self.block(f"arguments of {item.name}", _parse(item.arguments))
            elif item.stop == "after_model" and (step := _step(view, item)) is not None and step.tool_calls:
                for _, name, args in step.tool_calls:
                    self.block(f"arguments of {name}", _parse(args))
            else:
                raise DebuggerError(f"no tool call at {item.stop or item.reason}, so no arguments")
        elif what == "result":
            item = self.item()
            step = _step(view, item)
            if step is None or step.type != "tool":
                raise DebuggerError(f"no tool call at {item.stop or item.reason}, so no result")
            if step.status == "failed":
                self.block("error", step.error or "")
            elif step.status == "completed":
                self.block("result", _parse_structured(step.result or ""))
            else:
                self.out(Text(f"{step.name} has not run yet", style="dim"))
        elif what == "output":
            text = _final_text(view)
            if text is None:
                self.out(Text("no model text yet", style="dim"))
            else:
                self.block("model text", text)
        elif what == "messages":
            self.print_messages()
        elif what in ("usage", "tokens"):
            u = view.usage
            self.out(f"{fmt_tokens(u)} ({u.total_tokens:,} total"
                     + (f", {u.cached_tokens:,} cached" if u.cached_tokens else "") + ")")
        elif what == "cost":
            self.out(fmt_cost(view.cost_usd) + ("  (unknown: the model's price is not known)"
                                                if view.cost_usd is None else ""))
        elif what == "step":
            self.print_step(_int(arg, "p step N: the step's number"))
        elif what in ("breakpoints", "b", "break"):
            await self.cmd_break("")
        elif what == "staged":
            if not self.staged:
                self.out(Text("nothing staged: c sends continue for every item", style="dim"))
            for item in view.pending:
                if item.id in self.staged:
                    action, payload = self.staged[item.id]
                    self.block(f"{_where(item)}: {action}", payload)
        else:
            raise DebuggerError(f"p what? one of {', '.join(PRINTABLE)} (or nothing: the pending items)")

    def print_step(self, number: int) -> None:
        steps = {s.number: s for s in _steps(self.view)}
        s = steps.get(number)
        if s is None:
            raise DebuggerError(f"run {self.run_id} has steps 1..{len(steps)}" if steps else "no steps yet")
        self.out(Text.assemble((f"step {s.number}: ", "bold"), (s.type, "cyan" if s.type == "model" else "magenta"),
                               (f"  {s.status}" + ("  (reused)" if s.reused else ""), "dim")))
        if s.type == "model":
            self.block("text", s.text if s.text is not None else "(none)")
            if s.tool_calls:
                self.block("tool calls", [{"id": i, "name": n, "arguments": _parse(a)} for i, n, a in s.tool_calls])
            self.out(Text(f"  {fmt_tokens(s.usage)} · {fmt_cost(s.cost_usd)} · {fmt_duration(s.duration_s)}",
                          style="dim"))
        else:
            self.out(Text.assemble(("  tool: ", "bold"), (s.name or "?", "bold"), (f"  ({s.call_id})", "dim")))
            self.block("arguments", _parse(s.arguments))
            if s.status == "failed":
                self.block("error", s.error or "")
            elif s.status == "completed":
                self.block("result", _parse_structured(s.result or ""))
                if s.supplied_by:
                    self.out(Text(f"  ({_supplied(s)})", style="yellow"))
            if s.attempts > 1:
                self.out(Text(f"  {s.attempts} attempts", style="dim"))
            if s.status in ("completed", "failed") and not s.supplied_by:
                self.out(Text(f"  {fmt_duration(s.duration_s)}", style="dim"))

    def cmd_item(self, rest: str) -> None:
        items = self.view.pending
        if rest:
            n = _int(rest, "item N: the pending item's number")
            if not 1 <= n <= len(items):
                raise DebuggerError(f"there {'is' if len(items) == 1 else 'are'} {len(items)} pending "
                                    f"item{'s' if len(items) != 1 else ''}; choose 1..{len(items)}")
            self.current = n - 1
        for i, item in enumerate(items):
            mark = "▶" if i == self.current else " "
            self.out(Text.assemble((f"{mark} [{i + 1}] ", "bold"), (_where(item), "bold"),
                                   (f"  ({_why(item)})", "dim")))

    # -- answering -------------------------------------------------------------------------------

    async def cmd_continue(self, rest: str) -> None:
        self.last_move = "continue"
        await self.send("continue")

    async def cmd_step(self, rest: str) -> None:
        self.last_move = "step"
        if all(self.staged.get(i.id, ("step",))[0] == "edit" for i in self.view.pending):
            self.out(Text("(an edit is sent as it is, and does not step: the run goes on to the next "
                          "breakpoint)", style="dim"))
        await self.send("step")

    def cmd_edit(self, rest: str) -> None:
        item = self.item()
        if item.reason == "approval":
            raise DebuggerError("this call waits for approval: approve it with other arguments instead, "
                                "e.g. approve {\"x\": 1}")
        if item.reason not in ("breakpoint", "budget"):
            raise DebuggerError(f"a {item.reason} item cannot be edited; it needs {_NEEDS_ANSWER.get(item.reason)}")
        current = self.current_value(item)
        if rest:
            new = _json(rest, f"the edit at {item.stop}")
        elif not self.interactive:
            raise DebuggerError(f"give the new value inline: edit JSON (stdin is not a terminal, so no editor). "
                                f"Now: {_compact(current, 200)}")
        else:
            new = edit_in_editor(current)
            if new is None:
                self.out(Text("empty file: nothing staged", style="yellow"))
                return
            if new == current:
                self.out(Text("no change: nothing staged", style="yellow"))
                return
        if item.reason == "budget":
            limits = _check_limits(new, current)
            self.staged[item.id] = ("continue", {"limits": limits})
            self.block("staged: continue with the limits", limits)
            self.out(Text("c sends it and goes on; edit again to change it", style="dim"))
            return
        from tether.services.answers import edit_payload

        payload = edit_payload(item, new, self.view)  # fails early on a bad value; the service checks again
        self.staged[item.id] = ("edit", new)
        for key, value in payload.items():
            if key != "old":
                shown = _parse(value) if key == "arguments" else new if key in ("response", "messages") else value
                self.block(f"staged: edit the {key}", shown)
        self.out(Text("c sends it and goes on; edit again to change it", style="dim"))

    def current_value(self, item: PendingItem) -> Any:
        """What an edit of `item` replaces, as JSON data (a staged edit's value, if there is one)."""
        view, stop = self.view, item.stop
        if item.reason == "budget":
            limits = _limits(view)
            staged = self.staged.get(item.id)
            if staged is not None and isinstance(staged[1], dict):
                limits.update(staged[1].get("limits", {}))
            return limits
        if item.id in self.staged and self.staged[item.id][0] == "edit":
            return self.staged[item.id][1]
        if stop == "before_tool":
            return _parse(item.arguments)
        if stop in ("after_tool", "on_error") and item.call_id is not None:
            step = _step(view, item)
            if step is None:
                raise DebuggerError(f"no step for {item.call_id}")
            return _parse_structured(step.result if step.result is not None else step.error or "")
        if stop == "after_model":
            step = _step(view, item)
            if step is None:
                raise DebuggerError(f"no model step {item.step}")
            return {"text": step.text, "tool_calls": [{"id": i, "name": n, "arguments": _parse(a)}
                                                      for i, n, a in step.tool_calls]}
        if stop == "before_model":
            return [_plain_message(m) for m in view.messages]
        if stop == "before_finish":
            return _final_text(view)
        raise DebuggerError(f"there is nothing to edit at {stop or item.reason}")

    async def cmd_skip(self, rest: str) -> None:
        item = self.item()
        if not rest:
            raise DebuggerError("give the result the model should see instead: skip RESULT")
        if item.reason in ("client_tool", "uncertain"):
            await self.answer_item(item, "supply", rest)
        elif item.reason == "approval" or (item.reason == "breakpoint" and item.stop == "before_tool"):
            await self.answer_item(item, "skip", rest)
        else:
            hint = "; edit its result instead (edit JSON)" if item.stop in ("after_tool", "on_error") else ""
            raise DebuggerError(f"skip replaces a tool call before it runs (before_tool); this is "
                                f"{item.stop or item.reason}{hint}")

    async def cmd_rerun(self, rest: str) -> None:
        item = self.item()
        if item.reason != "uncertain":
            raise DebuggerError("rerun answers an uncertain tool call (one cut off by a crash or a timeout)")
        await self.answer_item(item, "rerun", None)

    async def cmd_approve(self, rest: str) -> None:
        item = self.item()
        if item.reason != "approval":
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
        if item.reason != "approval":
            raise DebuggerError(f"deny answers a call that needs approval; this is a {item.reason} item "
                                "(skip RESULT replaces a tool call; q aborts the run)")
        await self.answer_item(item, "deny", rest or None)

    async def answer_item(self, item: PendingItem, action: Action, payload: Any) -> None:
        """Stage an answer for one item; answer the pause at once if the others can simply go on."""
        self.staged[item.id] = (action, payload)
        waiting = [i for i, it in enumerate(self.view.pending)
                   if it.id not in self.staged and it.reason not in ("breakpoint", "budget")]
        if not waiting:
            await self.send("continue")
            return
        self.current = waiting[0]
        nxt = self.view.pending[self.current]
        self.out(Text.assemble(("staged ", "yellow"), (action, "bold"), (f" for {_where(item)}; ", "yellow"),
                               (f"item {self.current + 1} ({_where(nxt)}) still needs an answer: "
                                f"{_NEEDS_ANSWER.get(nxt.reason, 'c')}", "yellow")))

    async def send(self, default: Action) -> None:
        """Answer the pause (staged answers, `default` for the rest) and follow the run live."""
        view = self.view
        answers: dict[str, tuple[Action, Any]] = {}
        for i, item in enumerate(view.pending):
            if item.id in self.staged:
                answers[item.id] = self.staged[item.id]
            elif item.reason in ("breakpoint", "budget"):
                answers[item.id] = (default, None)
            else:
                raise DebuggerError(f"item {i + 1} ({_where(item)}) needs an answer first: "
                                    f"{_NEEDS_ANSWER.get(item.reason, 'c')}" + (" (item N chooses it)"
                                                                               if len(view.pending) > 1 else ""))
        printer = RunPrinter(self.console, live=True)
        printer.load(view.records)
        live = _LiveView(printer)
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
        live = _LiveView(printer)
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
                               (f"; still debugging run {parent}, paused at {_where(self.item())}", "")))

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
        where = _where(self.item()) if self.view.pending else self.view.status
        self.out(Text.assemble(("detached: run ", ""), (self.run_id, "bold"), (f" stays paused at {where}; ", ""),
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


_LIMITS = {"max_steps": int, "max_tokens": int, "max_cost_usd": float, "max_wall_s": float}


def _limits(view: RunView) -> dict[str, Any]:
    """The run's budgets now: its agent's, as raised by earlier answers to budget pauses."""
    agent_limits = view.agent.limits if view.agent is not None else None
    limits = {name: getattr(agent_limits, name, None) for name in _LIMITS}
    for r in view.records:
        p = r.payload
        if isinstance(p, Decision) and p.action == "continue" and isinstance(p.payload, dict):
            limits.update({k: v for k, v in p.payload.get("limits", {}).items() if k in _LIMITS})
    return limits


def _check_limits(new: Any, current: dict[str, Any]) -> dict[str, Any]:
    """The limits an edit at on_budget changes (checked: known names, numbers)."""
    if not isinstance(new, dict):
        raise DebuggerError('at on_budget, edit the limits: a JSON object such as {"max_steps": 10}')
    changed = {}
    for name, value in new.items():
        kind = _LIMITS.get(name)
        if kind is None:
            raise DebuggerError(f"unknown limit {name!r}; the limits are {', '.join(_LIMITS)}")
        ok = (value is None and name != "max_steps") or (
            isinstance(value, int | float) and not isinstance(value, bool) and value > 0
            and (kind is float or isinstance(value, int)))
        if not ok:
            raise DebuggerError(f"{name} must be a positive {'whole number' if kind is int else 'number'}"
                                + ("" if name == "max_steps" else " (or null: no limit)"))
        if value != current.get(name):
            changed[name] = value
    if not changed:
        raise DebuggerError("no limit changed: nothing staged")
    return changed


class _LiveView:
    """The live view of a run going on, minus the pause record (the debugger shows where the run
    stopped itself). A failure to print must not stop the run: it is reported once, then the view
    goes quiet and `summary` says how the run ended."""

    def __init__(self, printer: RunPrinter) -> None:
        self.printer = printer
        self.broken: Exception | None = None

    def __call__(self, event: Event) -> None:
        if self.broken is not None or (event.record is not None and isinstance(event.record.payload, Paused)):
            return
        try:
            self.printer.on_event(event)
        except Exception as e:
            self.broken = e
            self.printer.console.print(Text(f"(the live view failed: {type(e).__name__}: {e}; the run goes on)",
                                            style="yellow"))

    def summary(self, view: RunView) -> None:
        if self.broken is None or view.status not in TERMINAL:
            return
        console = self.printer.console
        console.print(Text.assemble(("■ ", ""), (view.status, f"bold {STATUS_STYLE.get(view.status, '')}")))
        if view.error:
            console.print(Text.assemble(("error: ", "bold red"), (view.error, "red")))
        if view.output is not None:
            console.print(Text("answer:", style="bold"))
            console.print(Text(view.output))


def _where(item: PendingItem) -> str:
    """"before_tool of step 4: calculator", "approval of step 2: delete_file", "on_budget at step 5"."""
    what = item.stop or item.reason
    if item.reason in ("approval", "client_tool", "uncertain"):
        what = item.reason.replace("_", " ")
    step = f" of step {item.step}" if item.step is not None else ""
    return f"{what}{step}" + (f": {item.name}" if item.name else "")


def _why(item: PendingItem) -> str:
    if item.breakpoint_id is not None:
        return f"{item.breakpoint_id}: {item.detail.removeprefix('breakpoint ')}"
    return item.detail or item.reason


def _steps(view: RunView) -> list[Step]:
    """The run's steps, with the edits answers made to tool calls shown (arguments, results)."""
    try:
        steps = view.steps
    except Exception:  # a log the step view cannot read (e.g. tool calls replaced at after_model): show none
        return []
    by_call = {s.call_id: s for s in steps if s.call_id is not None}
    for r in view.records:
        p = r.payload
        if isinstance(p, Decision) and p.item_id in by_call and isinstance(p.payload, dict):
            s = by_call[p.item_id]
            if p.action in ("edit", "approve") and "arguments" in p.payload:
                new = p.payload["arguments"]
                s.arguments = new if isinstance(new, str) else json.dumps(new, ensure_ascii=False)
            elif p.action == "edit" and "result" in p.payload:
                new = p.payload["result"]
                s.result = new if isinstance(new, str) else json.dumps(new, ensure_ascii=False)
                s.error, s.status, s.supplied_by = None, "completed", f"edited by {p.by}"
    return steps


def _supplied(s: Step) -> str:
    by = s.supplied_by or ""
    return by if by.startswith("edited by") else f"supplied by {by}, not called"


def _step(view: RunView, item: PendingItem) -> Step | None:
    for s in _steps(view):
        if (item.call_id is not None and s.call_id == item.call_id) or (item.call_id is None and s.number == item.step
                                                                       and s.type == "model"):
            return s
    return None


def _final_text(view: RunView) -> str | None:
    if view.output is not None:
        return view.output
    for m in reversed(view.messages):
        if m.role == "assistant":
            return m.text if m.text else None
    return None


def _parse(arguments: str | None) -> Any:
    """Tool arguments as JSON data (the text itself if it is not JSON)."""
    if arguments is None:
        return {}
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def _parse_structured(text: str) -> Any:
    """A tool result: parsed when it is a JSON object or list, else the text (so "2.40" stays "2.40")."""
    stripped = text.strip()
    if stripped.startswith(("{", "[")):
        try:
            return json.loads(stripped)
        except ValueError:
            pass
    return text


def _plain_message(m: Message) -> dict[str, Any]:
    """A message for editing: its content as one string when it is one text part."""
    d = message_to_dict(m)
    content = d["content"]
    if not content:
        d["content"] = ""
    elif len(content) == 1 and content[0].get("type") == "text":
        d["content"] = content[0]["text"]
    return d


def _message_line(m: Message, limit: int | None) -> Text:
    line = Text.assemble((m.role, "bold"), (":", ""))
    if m.role == "tool":
        line.append(f" ({m.name})", style="magenta")
    if m.text:
        line.append(" " + one_line(m.text, limit))
    for c in m.tool_calls:
        line.append(" → ", style="dim")
        line.append_text(call_text(c.name, c.arguments, limit))
    return line


def _compact(value: Any, limit: int | None) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return one_line(text, limit)


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
