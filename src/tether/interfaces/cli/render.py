"""Terminal rendering of runs: the live view of `tether run`, the step log of `tether runs show`,
and the runs table. Everything is built from the run's records and `RunView.steps`."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.status import Status
from rich.table import Table
from rich.text import Text

from tether.domain.answers import answer_value
from tether.domain.decisions import actions_for, needs_answer
from tether.domain.diff import DiffRow, RunDiff, StepSummary, Totals
from tether.domain.events import Event
from tether.domain.records import (
    Decision,
    Finished,
    ModelCalled,
    Paused,
    PauseReason,
    PendingItem,
    Record,
    RunStarted,
    RunStatus,
    ToolFinished,
    ToolStarted,
)
from tether.domain.runs import RunInfo
from tether.domain.steps import DONE, Step, StepStatus, steps_of
from tether.domain.usage import Usage
from tether.interfaces.cli.invocation import cmd

STATUS_STYLE: dict[str, str] = {  # keyed by RunStatus; looked up with any text
    RunStatus.COMPLETED: "green", RunStatus.FAILED: "red", RunStatus.CANCELLED: "yellow",
    RunStatus.INCOMPLETE: "yellow", RunStatus.PAUSED: "magenta", RunStatus.RUNNING: "cyan", RunStatus.QUEUED: "blue",
}

# -- small formats ------------------------------------------------------------------------------


def fmt_cost(cost: float | None) -> str:
    """"$0.000123" (rounded to a millionth of a dollar), "$0" when free, "—" when the price is unknown."""
    if cost is None:
        return "—"
    if cost == 0:
        return "$0"
    return f"${cost:.6f}" if cost < 1 else f"${cost:,.4f}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 0.001:
        return f"{seconds * 1000:.2f} ms"
    if seconds < 0.1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def fmt_tokens(usage: Usage | None) -> str:
    if usage is None:
        return "—"
    return f"{usage.input_tokens:,} in / {usage.output_tokens:,} out tokens"


def fmt_time(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def one_line(text: str | None, limit: int | None) -> str:
    """Text on one line (newlines shown as ⏎), cut to `limit` characters with an ellipsis."""
    if text is None:
        return ""
    flat = " ⏎ ".join(part.strip() for part in text.strip().splitlines() if part.strip())
    if limit is not None and len(flat) > limit:
        return flat[: limit - 1] + "…"
    return flat


def call_text(name: str | None, arguments: str | None, limit: int | None) -> Text:
    return Text.assemble((name or "?", "bold"), ("(", ""), (one_line(arguments or "", limit), "yellow"),
                         (")", ""))


# -- the step log -------------------------------------------------------------------------------


class RunPrinter:
    """Prints a run record by record: live (from `on_event`) or afterwards (from the stored log).

    `limit` cuts long model text, arguments and results to that many characters (None: in full).
    `show_times` adds each step's offset from the start of the run.
    """

    def __init__(self, console: Console, *, limit: int | None = 300, show_times: bool = False,
                 show_answer: bool = True, live: bool = False) -> None:
        self.console = console
        self.soft = not console.is_terminal  # piped output keeps each line whole (grep-able)
        self.limit = limit
        self.show_times = show_times
        self.show_answer = show_answer
        self.records: list[Record] = []
        self._printed: set[tuple[str | None, str, int]] = set()  # (call id, status, attempts) shown
        self._paused_s = 0.0
        self._paused_at: float | None = None
        self.run_id: str | None = None
        self.started_at: float | None = None
        self.finished: Finished | None = None
        self.note: Text | None = None  # printed before the first live record
        self._streamed = ""
        self.status: Status | None = None
        if live and console.is_terminal:
            self.status = console.status("starting the run…", spinner="dots")

    # -- feeding -------------------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        if event.type == "delta" and event.delta:  # streamed model text: shown in the status line only
            self._streamed = (self._streamed + event.delta)[-200:]
            self._busy("model: " + one_line(self._streamed, None)[-60:])
        if event.type == "record" and event.record is not None:
            self._streamed = ""
            if self.note is not None:
                self._print(self.note)
                self.note = None
            self.record(event.record)

    def all(self, records: Iterable[Record]) -> None:
        for r in records:
            self.record(r)
        self.flush_open_steps()

    def load(self, records: Iterable[Record]) -> None:
        """Take in a run's earlier records without printing them (before continuing it live)."""
        for r in records:
            self.records.append(r)
            self.run_id = r.run_id
            if isinstance(r.payload, RunStarted):
                self.started_at = r.ts

    def __enter__(self) -> RunPrinter:
        if self.status is not None:
            self.status.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.status is not None:
            self.status.stop()

    def _busy(self, what: str) -> None:
        if self.status is not None:
            self.status.update(what)

    def record(self, r: Record) -> None:
        self.records.append(r)
        self.run_id = r.run_id
        p = r.payload
        if isinstance(p, RunStarted):
            self.started_at = r.ts
            self._header(r, p)
            self._busy("waiting for the model…")
        elif isinstance(p, ModelCalled):
            self._step(self._steps()[p.step], r.ts)
            if p.rejected:
                self._print(Text("   answer sent back: ", style="yellow")
                            + Text(one_line(p.rejected, self.limit)))
            if p.response.tool_calls:
                self._busy(f"running {', '.join(c.name for c in p.response.tool_calls)}…")
            else:
                self._busy("finishing…")
        elif isinstance(p, ToolStarted):
            if p.attempt > 1:
                self._print(Text(f"   {p.name} started again (attempt {p.attempt})", style="yellow"))
            self._busy(f"running {p.name}…")
        elif isinstance(p, ToolFinished):
            self._step(self._tool_step(p.call_id), r.ts)
            self._busy("waiting for the model…")
        elif isinstance(p, Paused):
            self._paused_at = r.ts
            self._paused(p)
        elif isinstance(p, Decision):
            if self._paused_at is not None:  # time waiting for an answer is not the run's time
                self._paused_s += r.ts - self._paused_at
                self._paused_at = None
            self._decision(p, r.ts)
        elif isinstance(p, Finished):
            self.finished = p
            self._finished(p, r.ts)

    def flush_open_steps(self) -> None:
        """Tool calls that never finished (in progress, pending): shown at the end of a stored log."""
        done = {r.payload.call_id for r in self.records if isinstance(r.payload, ToolFinished)}
        done |= {r.payload.call_id for r in self.records if isinstance(r.payload, Decision)
                 and r.payload.action in ("supply", "skip") and r.payload.call_id is not None}
        for s in self._steps().values():
            if s.type == "tool" and s.call_id not in done and self._new(s):
                self._step(s, None)

    def _new(self, s: Step) -> bool:
        """Whether this tool step was not shown yet in its current state."""
        return (s.call_id, s.status, s.attempts) not in self._printed

    # -- pieces ----------------------------------------------------------------------------------

    def _steps(self) -> dict[int, Step]:
        return {s.number: s for s in steps_of(self.records)}

    def _tool_step(self, call_id: str) -> Step:
        return next(s for s in self._steps().values() if s.call_id == call_id)

    def _header(self, r: Record, p: RunStarted) -> None:
        line = Text.assemble(("run ", "dim"), (r.run_id, "bold"), ("  agent ", "dim"), (p.agent.name, "bold"),
                             ("  model ", "dim"), (p.agent.model, "bold"))
        self._print(line)
        if p.fork is not None:
            self._print(Text(f"forked from {p.fork.parent_run_id} at step {p.fork.at_step}", style="dim"))
        if p.thread_id:
            self._print(Text(f"thread {p.thread_id}", style="dim"))
        if p.metadata.get("replay_of"):
            self._print(Text(f"{p.metadata.get('replay', 'model')} replay of {p.metadata['replay_of']}",
                                    style="dim"))
        users = [m for m in p.input if m.role == "user"]
        if users:
            earlier = len(p.input) - 1 if users[-1] is p.input[-1] else len(p.input)
            task = Text.assemble(("task: ", "dim"), (one_line(users[-1].text, self.limit), ""))
            if earlier:
                task.append(f"   (after {earlier} earlier message{'s' if earlier != 1 else ''})", style="dim")
            self._print(task)

    def _when(self, ts: float | None) -> Text:
        if not self.show_times or ts is None or self.started_at is None:
            return Text()
        return Text(f"  at +{fmt_duration(max(0.0, ts - self.started_at))}", style="dim")

    def _step(self, s: Step, ts: float | None) -> None:
        kind = ("model ", "cyan") if s.type == "model" else ("tool  ", "magenta")
        head = Text.assemble((f"#{s.number} ", "bold"), kind)
        if s.type == "model":
            body = Text()
            if s.tool_calls:
                body.append("→ ", style="dim")
                for i, (_, name, args) in enumerate(s.tool_calls):
                    if i:
                        body.append(", ")
                    body.append_text(call_text(name, args, self.limit))
            elif s.text is not None:
                body.append("answer: ", style="green")
                # the answer is shown in full below the step log when show_answer is on
                body.append(one_line(s.text, 100 if self.show_answer else self.limit))
            else:
                body.append("(no text and no tool calls)", style="dim")
            meta = f"   {fmt_tokens(s.usage)} · {fmt_cost(s.cost_usd)} · {fmt_duration(s.duration_s)}"
            line = head + body + Text(meta, style="dim")
            if s.reused:
                line.append("  (reused)", style="dim")
            self._print(line + self._when(ts))
            if s.tool_calls and s.text:
                self._print(Text.assemble(("   “", "dim"), one_line(s.text, self.limit), ("”", "dim")))
            return
        self._printed.add((s.call_id, s.status, s.attempts))
        line = head + call_text(s.name, s.arguments, self.limit)
        if s.status == StepStatus.FAILED:
            line.append(" → error: ", style="red")
            line.append(one_line(s.error, self.limit), style="red")
        elif s.status == StepStatus.COMPLETED:
            line.append(" → ", style="dim")
            line.append(one_line(s.result, self.limit), style="green")
            if s.supplied_by:
                line.append(f"  (supplied by {s.supplied_by})", style="yellow")
        elif s.status == StepStatus.IN_PROGRESS:
            line.append(f"  … started (attempt {s.attempts}), not finished", style="yellow")
        else:
            line.append("  … not run yet", style="yellow")
        if s.status in DONE and not s.supplied_by and s.duration_s > 0:
            line.append(f"   {fmt_duration(s.duration_s)}", style="dim")
        if s.attempts > 1 and s.status != StepStatus.IN_PROGRESS:
            line.append(f"  ({s.attempts} attempts)", style="dim")
        if s.reused:
            line.append("  (reused)", style="dim")
        self._print(line + self._when(ts))

    def _paused(self, p: Paused) -> None:
        for s in self._steps().values():  # calls cut off mid-way (the `uncertain` ones)
            if s.type == "tool" and s.status == StepStatus.IN_PROGRESS and self._new(s):
                self._step(s, None)
        n = len(p.items)
        self._print(Text.assemble(("⏸ paused", "bold magenta"), (f" ({p.pause_id})", "dim"),
                                         (f": {n} item{'s' if n != 1 else ''} pending", "")))
        for item in p.items:
            self._print(pending_text(item, self.limit))

    def _decision(self, d: Decision, ts: float) -> None:
        line = Text.assemble(("  ↳ decision ", "magenta"), (d.action, "bold"), (f" on {d.item_id}", ""),
                             (f" by {d.by}", "dim"))
        value = answer_value(d.answer, with_old=True)  # an edit shows what it replaced
        if value is not None:
            line.append(": ")
            line.append(one_line(value if isinstance(value, str) else json.dumps(value, default=str), self.limit))
        self._print(line + self._when(ts))
        if d.action in ("supply", "skip"):
            step = next((s for s in self._steps().values() if s.call_id == d.call_id), None)
            if step is not None:
                self._step(step, ts)

    def _finished(self, f: Finished, ts: float) -> None:
        style = STATUS_STYLE.get(f.status, "")
        n = len(self._steps())
        took = fmt_duration(ts - self.started_at - self._paused_s) if self.started_at is not None else "—"
        if self._paused_s:
            took += f" active, {fmt_duration(self._paused_s)} paused"
        line = Text.assemble(("■ ", style), (f.status, f"bold {style}"),
                             (f"  {n} step{'s' if n != 1 else ''} · {fmt_tokens(f.usage)} · cost "
                              f"{fmt_cost(f.cost_usd)} · {took}", "dim"))
        self._print(line)
        if f.error:
            self._print(Text.assemble(("error: ", "bold red"), (f.error, "red")))
        if f.output is not None and self.show_answer:
            if self.console.is_terminal:
                self.console.print(Panel(Text(f.output), title="answer", title_align="left",
                                         border_style=style, expand=False))
            else:
                self._print(Text("answer:", style="bold"))
                self._print(Text(f.output))

    def _print(self, text: Text) -> None:
        self.console.print(text, soft_wrap=self.soft)


def pending_text(item: PendingItem, limit: int | None = 300) -> Text:
    line = Text.assemble(("  • ", ""), (item.reason, "bold magenta"), (f"  {item.id}", ""))
    if item.name:
        line.append("  ")
        line.append_text(call_text(item.name, item.arguments, limit))
    if item.detail:
        line.append(f"  — {item.detail}", style="dim")
    return line


def how_to_answer(run_id: str, items: list[PendingItem]) -> list[str]:
    """The commands that answer each pending item (the answers that fit it: domain/decisions.py)."""
    out = []
    for item in items:
        # a client tool's output, or the result of a call that may have run
        supply = "--supply OUTPUT" if item.reason == PauseReason.CLIENT_TOOL else "--supply RESULT"
        flags = {"rerun": "--rerun", "supply": supply, "continue": "--continue", "abort": "--abort"}
        ok = [a for a in actions_for(item) if a != "continue" or not needs_answer(item)]
        given = [flag for action, flag in flags.items() if action in ok]
        line = f"{cmd(f'runs answer {run_id} {item.id}')} {' | '.join(given)}"
        in_debugger = [a for a in ok if a in ("approve", "deny", "edit", "skip")]
        if in_debugger:
            line += f"   (in the debugger, {cmd(f'debug {run_id}')}: also {', '.join(in_debugger)})"
        out.append(line)
    out.append(cmd(f"runs cancel {run_id}") + "   (abort the run)")
    return out


# -- tables and JSON ----------------------------------------------------------------------------


RUN_COLUMNS = ("id", "status", "agent", "model", "tokens", "cost", "created", "output")


def print_runs(console: Console, runs: list[RunInfo]) -> None:
    """The runs as a table in a terminal; in a pipe or a file, one line per run, nothing cut or folded
    (see `runs_lines`), so that `grep`, `cut -f1` and `head -1` work on it."""
    if console.is_terminal:
        console.print(runs_table(runs, console.width))
        return
    console.file.write("".join(line + "\n" for line in runs_lines(runs)))  # as is: rich would expand the tabs


_BLANKS = str.maketrans("\t\r\n", "   ")  # a field never splits a line or a column


def runs_lines(runs: list[RunInfo]) -> list[str]:
    """One line a run, its RUN_COLUMNS tab-separated, without a header: the id, status, agent and
    model whole, the tokens as a number, the cost, the creation time, and the output on one line."""
    def field(value: str) -> str:
        return value.translate(_BLANKS)

    return ["\t".join(field(v) for v in (
        r.id, r.status, r.agent_name, r.model, str(r.input_tokens + r.output_tokens), fmt_cost(r.cost_usd),
        fmt_time(r.created_at), one_line(r.output, None))) for r in runs]


def runs_table(runs: list[RunInfo], width: int) -> Table:
    """The runs as a table that fits `width`: ids and statuses whole, the model name folded, the output
    cut; on a narrow terminal the model, agent, created, cost and tokens columns go, in that order."""
    rows = []
    for r in runs:
        tokens = r.input_tokens + r.output_tokens
        rows.append({"id": r.id, "status": r.status, "agent": r.agent_name, "model": r.model,
                     "tokens": f"{tokens:,}" if tokens else "—", "cost": fmt_cost(r.cost_usd),
                     "created": fmt_time(r.created_at)[:16], "output": one_line(r.output, None)})
    natural = {c: max(len(c), *(len(row[c]) for row in rows)) for c in RUN_COLUMNS}
    limits = {c: natural[c] for c in RUN_COLUMNS}
    limits["agent"] = min(natural["agent"], 20)
    limits["model"] = min(natural["model"], 40)
    limits["output"] = min(natural["output"], 60)
    shown = list(RUN_COLUMNS)

    def total() -> int:
        return sum(limits[c] for c in shown) + 2 * (len(shown) - 1)

    if total() > width:
        limits["model"] = min(limits["model"], 24)  # folded onto several lines
    for drop in ("model", "agent", "created", "cost", "tokens"):
        if total() - limits["output"] + 16 <= width:
            break
        shown.remove(drop)
    limits["output"] = max(10, min(limits["output"], width - (total() - limits["output"])))

    table = Table(header_style="bold", box=None, padding=(0, 1), pad_edge=False, expand=False)
    for c in shown:
        if c in ("tokens", "cost"):
            table.add_column(c, justify="right", no_wrap=True)
        elif c in ("agent", "model"):
            table.add_column(c, overflow="fold", max_width=limits[c])
        elif c == "output":
            table.add_column(c, no_wrap=True, overflow="ellipsis", width=limits[c])
        else:
            table.add_column(c, no_wrap=True, min_width=limits[c])
    for row in rows:
        cells = []
        for c in shown:
            text = one_line(row[c], limits[c]) if c == "output" else row[c]
            cells.append(Text(text, style=STATUS_STYLE.get(text, "") if c == "status" else ""))
        table.add_row(*cells)
    return table


def run_to_dict(view: Any) -> dict[str, Any]:
    """A `RunView` as plain JSON data (for `--json`)."""
    agent = view.agent
    return {
        "id": view.id,
        "status": view.status,
        "output": view.output,
        "structured": view.structured,
        "error": view.error,
        "pause_id": view.pause_id,
        "pending": [asdict(i) for i in view.pending],
        "usage": {"input_tokens": view.usage.input_tokens, "output_tokens": view.usage.output_tokens,
                  "total_tokens": view.usage.total_tokens},
        "cost_usd": view.cost_usd,
        "thread_id": view.thread_id,
        "agent": None if agent is None else {"name": agent.name, "model": agent.model,
                                             "ref": agent.agent_ref},
        "created_at": view.records[0].ts if view.records else None,
        "steps": [_step_dict(s) for s in view.steps],
    }


def _step_dict(s: Step) -> dict[str, Any]:
    d = asdict(s)
    d["tool_calls"] = [{"id": i, "name": n, "arguments": a} for i, n, a in s.tool_calls]
    return {k: v for k, v in d.items() if v not in (None, [], "")}



# -- diff of two runs ---------------------------------------------------------------------------

DIFF_MARK = "bold red"  # the parts of a step that differ from the other run's


def diff_header(diff: RunDiff) -> Text:
    """"runs diverge at step 3: tool result differs", or "no divergence: the runs took the same steps"."""
    if diff.first_divergence is None:
        return Text.assemble(("no divergence", "bold green"), (f": {diff.reason}", ""))
    return Text.assemble(("runs diverge at step ", "bold"), (str(diff.first_divergence), "bold red"),
                         (": ", "bold"), (diff.reason, "red"))


def diff_table(diff: RunDiff, run_a: str, run_b: str, *, limit: int | None = 200) -> Table:
    """Both runs' steps side by side (step | A | B): what differs in red, each step's cost marked
    live or reused, and each side's totals with live cost apart from reused cost."""
    table = Table(header_style="bold", show_lines=True, expand=False)
    table.add_column("step", justify="right", no_wrap=True)
    for label, run_id, status in (("A", run_a, diff.status_a), ("B", run_b, diff.status_b)):
        table.add_column(Text.assemble((f"{label} ", "bold"), (run_id, "bold"),
                                       (f"  {status or 'not finished'}", STATUS_STYLE.get(status or "", "dim"))),
                         overflow="fold", ratio=1)
    for row in diff.rows:
        step = Text(str(row.step), style="" if row.same else "bold red")
        if not row.same:
            step.append(" ≠")
            if row.step == diff.first_divergence:
                step.append("\nfirst", style="red")
        table.add_row(step, _diff_cell(row.a, row, limit), _diff_cell(row.b, row, limit))
    table.add_row(Text("total", style="bold"), _totals_cell(diff.totals_a), _totals_cell(diff.totals_b))
    return table


def _diff_cell(s: StepSummary | None, row: DiffRow, limit: int | None) -> Text:
    if s is None:
        return Text("(no such step)", style=DIFF_MARK)
    marked = set(row.differs)

    def mark(part: str, style: str = "") -> str:
        return DIFF_MARK if part in marked or "type" in marked else style

    kind = ("model ", "cyan") if s.type == "model" else ("tool ", "magenta")
    cell = Text.assemble((kind[0], mark("type", kind[1])))
    if s.type == "model":
        if s.tool_calls:
            cell.append("→ ", style="dim")
            for i, (name, args) in enumerate(s.tool_calls):
                if i:
                    cell.append(", ")
                call = call_text(name, args, limit)
                if "tool_calls" in marked:
                    call.stylize(DIFF_MARK)
                cell.append_text(call)
            if s.text:
                cell.append("\n“" + one_line(s.text, limit) + "”", style=mark("text", "dim"))
        elif s.text is not None:
            cell.append("answer: ", style="green")
            cell.append(one_line(s.text, limit), style=mark("text"))
        else:
            cell.append("(no text and no tool calls)", style=mark("text", "dim"))
        if "fingerprint" in marked and s.fingerprint:
            cell.append(f"\nrequest {s.fingerprint[:12]}", style=DIFF_MARK)
        meta = f"\n{fmt_tokens(s.usage)} · {fmt_cost(s.cost_usd)} · {fmt_duration(s.duration_s)}"
    else:
        cell.append(s.name or "?", style=mark("name", "bold"))
        cell.append("(")
        cell.append(one_line(s.arguments or "", limit), style=mark("arguments", "yellow"))
        cell.append(")")
        if s.status == StepStatus.FAILED:
            cell.append(" → error: ", style=mark("result", "red"))
            cell.append(one_line(s.error, limit), style=mark("result", "red"))
        elif s.status == StepStatus.COMPLETED:
            cell.append(" → ", style="dim")
            cell.append(one_line(s.result, limit), style=mark("result", "green"))
            if s.supplied_by:
                cell.append(f"  (supplied by {s.supplied_by})", style="yellow")
        elif s.status == StepStatus.IN_PROGRESS:
            cell.append("  … started, not finished", style=mark("result", "yellow"))
        else:
            cell.append("  … not run yet", style=mark("result", "yellow"))
        meta = f"\n{fmt_duration(s.duration_s)}" if s.status in DONE else "\n"
    cell.append(meta, style="dim")
    cell.append(" · reused" if s.reused else " · live", style="dim" if s.reused else "")
    return cell


def _totals_cell(t: Totals) -> Text:
    cell = Text.assemble(("live:   ", "bold"),
                         (f"{t.live_steps} step{'s' if t.live_steps != 1 else ''} · {t.live_tokens:,} tokens"
                          f" · {fmt_cost(t.live_cost_usd)}", ""))
    if t.reused_steps:
        cell.append("\nreused: ", style="dim bold")
        cell.append(f"{t.reused_steps} step{'s' if t.reused_steps != 1 else ''} · {t.reused_tokens:,} tokens · "
                    f"{fmt_cost(t.reused_cost_usd)} (spent by the parent run, not this one)", style="dim")
    else:
        cell.append("\nreused: none", style="dim")
    return cell
