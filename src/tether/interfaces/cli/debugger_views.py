"""What the terminal debugger prints: where a run is paused, what a pending item holds, its steps.

Printing only: which answers fit an item, and what an edit of it would replace, come from the
domain and the runs service (domain/decisions.py, services/answers.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.text import Text

from tether.domain.answers import Answer, answer_value
from tether.domain.decisions import needs_answer
from tether.domain.events import Event
from tether.domain.messages import Message
from tether.domain.records import TERMINAL, Paused, PendingItem
from tether.domain.steps import Step
from tether.interfaces.cli.render import (
    STATUS_STYLE,
    RunPrinter,
    call_text,
    fmt_cost,
    fmt_duration,
    fmt_tokens,
    one_line,
)
from tether.services.answers import final_text, limits_now, parse_json, parse_result

if TYPE_CHECKING:
    from tether.services.runs import RunView

COMPACT = 100  # characters of text, arguments and results in the one-line views

# How to answer an item that waits for an explicit answer, in the debugger's commands.
HINTS = {
    "approval": "approve [JSON] or deny [MESSAGE] (or skip RESULT)",
    "client_tool": "skip OUTPUT (the client tool's output)",
    "uncertain": "rerun, or skip RESULT (supply its result)",
}


@dataclass(frozen=True)
class Staged:
    """An answer staged for an item (sent by `c`/`s`), and the value as the user gave it."""

    answer: Answer
    value: Any = None


def hint(item: PendingItem) -> str:
    return HINTS.get(item.reason, "c")


class Screen:
    """The debugger's output: one console, lines never read as rich markup."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.soft = not console.is_terminal

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

    def location(self, view: RunView, current: int, staged: dict[str, Staged]) -> None:
        items = view.pending
        if len(items) == 1:
            item = items[0]
            self.out(Text.assemble(("⏸ paused at ", "bold magenta"), (where(item), "bold"),
                                   (f"  ({why(item)})", "dim")))
            self.describe(view, item, staged, full=False)
        else:
            self.out(Text.assemble(("⏸ paused: ", "bold magenta"), (f"{len(items)} items pending", "bold"),
                                   ("  (a parallel batch; `item N` chooses the one edit/skip/approve/deny "
                                    "apply to)", "dim")))
            for i, item in enumerate(items):
                mark = "▶" if i == current else " "
                self.out(Text.assemble((f"{mark} [{i + 1}] ", "bold"), (where(item), "bold"),
                                       (f"  ({why(item)})", "dim")))
                self.describe(view, item, staged, full=False, indent="      ")
        self.out(Text(f"run {view.id} · {len(steps_of(view))} steps so far · {fmt_tokens(view.usage)} · cost "
                      f"{fmt_cost(view.cost_usd)}", style="dim"))
        self.out(Text("c continue · s step · edit [JSON] · skip RESULT · p print · w where · "
                      "b breakpoints · q abort · detach · help", style="dim"))

    def describe(self, view: RunView, item: PendingItem, staged: dict[str, Staged], *, full: bool,
                 indent: str = "  ") -> None:
        """What the item holds: the call and its arguments, the result, the model's text, ..."""
        limit = None if full else COMPACT
        step = step_for(view, item)

        def show(label: str, value: Any, short: Text) -> None:
            if full:
                self.block(label, value, indent)
            else:
                self.out(Text(indent) + short)

        if item.call_id is not None:  # a tool call: before_tool, after_tool, on_error, approval, ...
            show("tool", item.name or "?", call_text(item.name, item.arguments, limit))
            if full:
                self.block("arguments", parse_json(item.arguments), indent)
            if item.stop in ("after_tool", "on_error") and step is not None:
                if step.status == "failed":
                    show("error", step.error or "", Text.assemble(("→ error: ", "red"),
                                                                  (one_line(step.error, limit), "red")))
                elif step.status == "completed":
                    show("result", parse_result(step.result or ""),
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
                show("tool calls", [{"name": n, "arguments": parse_json(a)} for _, n, a in step.tool_calls], calls)
            else:
                self.out(Text(f"{indent}no tool calls: this is the answer", style="dim"))
        elif item.stop == "before_model":
            self.out(Text(f"{indent}about to call the model with {len(view.messages)} messages", style="bold"))
            if full:
                self.messages(view, indent)
            elif view.messages:
                self.out(Text.assemble((f"{indent}last: ", "dim"), message_line(view.messages[-1], limit)))
        elif item.stop == "before_finish":
            output = final_text(view)
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
            self.block("limits", limits_now(view), indent)
            if not full:
                self.out(Text(f"{indent}raise one with edit, e.g. edit {{\"max_steps\": 10}}; c goes on",
                              style="dim"))
        if needs_answer(item) and item.id not in staged:
            self.out(Text(f"{indent}needs an answer: {hint(item)}", style="yellow"))
        if item.id in staged:
            s = staged[item.id]
            value = s.value if s.value is not None else answer_value(s.answer)
            self.out(Text.assemble((f"{indent}staged: ", "bold yellow"), (s.answer.action, "bold"),
                                   ("" if value is None else " " + compact(value, limit), "yellow")))

    def messages(self, view: RunView, indent: str = "  ") -> None:
        for i, m in enumerate(view.messages):
            self.out(Text(f"{indent}[{i}] ") + message_line(m, None))

    def items(self, view: RunView, current: int) -> None:
        for i, item in enumerate(view.pending):
            mark = "▶" if i == current else " "
            self.out(Text.assemble((f"{mark} [{i + 1}] ", "bold"), (where(item), "bold"),
                                   (f"  ({why(item)})", "dim")))

    def pending(self, view: RunView, current: int, staged: dict[str, Staged]) -> None:
        several = len(view.pending) > 1
        for i, item in enumerate(view.pending):
            if several:
                mark = "▶" if i == current else " "
                self.out(Text.assemble((f"{mark} [{i + 1}] ", "bold"), (where(item), "bold")))
            else:
                self.out(Text(where(item), style="bold"))
            self.describe(view, item, staged, full=True, indent="      " if several else "  ")

    def staged(self, view: RunView, staged: dict[str, Staged]) -> None:
        if not staged:
            self.out(Text("nothing staged: c sends continue for every item", style="dim"))
        for item in view.pending:
            if item.id in staged:
                st = staged[item.id]
                self.block(f"{where(item)}: {st.answer.action}",
                           st.value if st.value is not None else answer_value(st.answer))

    # -- steps -----------------------------------------------------------------------------------

    def where(self, view: RunView) -> None:
        marks: dict[int, list[str]] = {}
        for item in view.pending:
            if item.step is not None:
                marks.setdefault(item.step, []).append(item.stop or item.reason)
        steps = steps_of(view)
        shown = {s.number for s in steps}
        for s in steps:
            self.step_line(s, marks.get(s.number))
        for number in sorted(set(marks) - shown):  # a stop before its step exists: before_model, on_budget
            self.out(Text.assemble(("▶ ", "bold magenta"), (f"#{number} ", "bold"), ("(not started)", "dim"),
                                   (f"   ◀ paused here: {', '.join(marks[number])}", "bold magenta")))
        if not steps and not marks:
            self.out(Text("no steps yet", style="dim"))

    def step_line(self, s: Step, mark: list[str] | None) -> None:
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
                    line.append(f"  ({supplied(s)})", style="yellow")
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

    def step(self, view: RunView, number: int) -> bool:
        """Step `number` in full; False if there is no such step."""
        s = next((s for s in steps_of(view) if s.number == number), None)
        if s is None:
            return False
        self.out(Text.assemble((f"step {s.number}: ", "bold"), (s.type, "cyan" if s.type == "model" else "magenta"),
                               (f"  {s.status}" + ("  (reused)" if s.reused else ""), "dim")))
        if s.type == "model":
            self.block("text", s.text if s.text is not None else "(none)")
            if s.tool_calls:
                self.block("tool calls", [{"id": i, "name": n, "arguments": parse_json(a)}
                                          for i, n, a in s.tool_calls])
            self.out(Text(f"  {fmt_tokens(s.usage)} · {fmt_cost(s.cost_usd)} · {fmt_duration(s.duration_s)}",
                          style="dim"))
        else:
            self.out(Text.assemble(("  tool: ", "bold"), (s.name or "?", "bold"), (f"  ({s.call_id})", "dim")))
            self.block("arguments", parse_json(s.arguments))
            if s.status == "failed":
                self.block("error", s.error or "")
            elif s.status == "completed":
                self.block("result", parse_result(s.result or ""))
                if s.supplied_by:
                    self.out(Text(f"  ({supplied(s)})", style="yellow"))
            if s.attempts > 1:
                self.out(Text(f"  {s.attempts} attempts", style="dim"))
            if s.status in ("completed", "failed") and not s.supplied_by:
                self.out(Text(f"  {fmt_duration(s.duration_s)}", style="dim"))
        return True


class LiveView:
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


def where(item: PendingItem) -> str:
    """"before_tool of step 4: calculator", "approval of step 2: delete_file", "on_budget at step 5"."""
    what = item.stop or item.reason
    if item.reason in ("approval", "client_tool", "uncertain"):
        what = item.reason.replace("_", " ")
    step = f" of step {item.step}" if item.step is not None else ""
    return f"{what}{step}" + (f": {item.name}" if item.name else "")


def why(item: PendingItem) -> str:
    if item.breakpoint_id is not None:
        return f"{item.breakpoint_id}: {item.detail.removeprefix('breakpoint ')}"
    return item.detail or item.reason


def steps_of(view: RunView) -> list[Step]:
    """The run's steps, as answers changed them (arguments, results)."""
    try:
        return view.steps
    except Exception:  # a log the step view cannot read: show none rather than fail the session
        return []


def supplied(s: Step) -> str:
    return f"edited by {s.supplied_by}" if s.edited else f"supplied by {s.supplied_by}, not called"


def step_for(view: RunView, item: PendingItem) -> Step | None:
    for s in steps_of(view):
        if (item.call_id is not None and s.call_id == item.call_id) or (item.call_id is None and s.number == item.step
                                                                       and s.type == "model"):
            return s
    return None


def message_line(m: Message, limit: int | None) -> Text:
    line = Text.assemble((m.role, "bold"), (":", ""))
    if m.role == "tool":
        line.append(f" ({m.name})", style="magenta")
    if m.text:
        line.append(" " + one_line(m.text, limit))
    for c in m.tool_calls:
        line.append(" → ", style="dim")
        line.append_text(call_text(c.name, c.arguments, limit))
    return line


def compact(value: Any, limit: int | None) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return one_line(text, limit)
