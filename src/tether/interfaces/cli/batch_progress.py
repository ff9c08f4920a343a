"""The live progress of `tether batch run` / `resume`, fed by the batch's `BatchProgress` snapshots.

In a terminal it redraws in place (rich's Live): the cases completed / failed / paused / running /
pending, throughput and ETA, tokens and dollars so far against the budget, a budget warning, and the
last errors. When stdout is not a terminal (CI logs, a pipe) it prints one plain line every few
seconds, and one at the end: a log keeps every line, so a redraw would only repeat itself.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import TYPE_CHECKING

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from tether.domain.batches import BatchProgress

PLAIN_EVERY_S = 5.0  # a plain line at most this often (and always one at the end)
ERROR_WIDTH = 100  # an error is cut to this many characters in the view


def fmt_money(usd: float | None) -> str:
    """Dollars as spend is shown: an unknown price is "unknown", never $0."""
    if usd is None:
        return "unknown"
    return f"${usd:,.4f}" if usd < 100 else f"${usd:,.2f}"


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _finished(p: BatchProgress) -> int:
    return p.completed + p.failed + p.cancelled


def spend_text(p: BatchProgress) -> str:
    """"tokens 1,234 of 10,000 · $0.4200 of $1.0000 (42%)": what was spent against the budgets."""
    tokens = f"tokens {p.tokens:,}" + (f" of {p.max_tokens:,}" if p.max_tokens is not None else "")
    cost = fmt_money(p.cost_usd) if p.cost_usd is not None else "cost unknown"
    if p.max_cost_usd is not None:
        cost += f" of {fmt_money(p.max_cost_usd)}"
        if p.cost_usd is not None and p.max_cost_usd > 0:
            cost += f" ({100 * p.cost_usd / p.max_cost_usd:.0f}%)"
    return f"{tokens} · {cost}"


def plain_line(p: BatchProgress) -> str:
    """One whole line for a log: everything the live view shows but the errors' texts."""
    counts = [f"{p.completed} completed", f"{p.failed} failed", f"{p.paused} paused", f"{p.running} running",
              f"{p.pending} pending"]
    if p.cancelled:
        counts.append(f"{p.cancelled} cancelled")
    line = (f"batch {p.batch_id}: {_finished(p)}/{p.total} done ({', '.join(counts)}); "
            f"{p.per_s:.2f} cases/s, ETA {fmt_seconds(p.eta_s)}, elapsed {fmt_seconds(p.elapsed_s)}; "
            f"{spend_text(p)}")
    if p.budget_warning:
        line += f"; warning: {p.budget_warning}"
    if p.last_errors:
        key, _ = p.last_errors[-1]
        line += f"; last error in case {key}"
    return line


def view(p: BatchProgress) -> RenderableType:
    """The view a terminal redraws in place."""
    head = Table.grid(padding=(0, 1))
    head.add_row(Text("batch", style="dim"), Text(p.batch_id, style="bold"),
                 ProgressBar(total=max(p.total, 1), completed=_finished(p), width=40),
                 Text(f"{_finished(p)}/{p.total}", style="bold"))
    counts = Text.assemble(
        (f"{p.completed} completed", "green"), "  ", (f"{p.failed} failed", "red" if p.failed else "dim"), "  ",
        (f"{p.paused} paused", "magenta" if p.paused else "dim"), "  ", (f"{p.running} running", "cyan"), "  ",
        (f"{p.pending} pending", "dim"),
        *((("  ", ""), (f"{p.cancelled} cancelled", "yellow")) if p.cancelled else ()))
    rate = Text(f"{p.per_s:.2f} cases/s · ETA {fmt_seconds(p.eta_s)} · elapsed {fmt_seconds(p.elapsed_s)}",
                style="dim")
    parts: list[RenderableType] = [head, counts, rate, Text(spend_text(p))]
    if p.budget_warning:
        parts.append(Text(f"⚠ {p.budget_warning}", style="bold yellow"))
    if p.last_errors:
        parts.append(Text("last errors:", style="dim"))
        for key, error in p.last_errors[-5:]:
            one_line = " ".join(error.split())
            cut = one_line if len(one_line) <= ERROR_WIDTH else one_line[:ERROR_WIDTH - 1] + "…"
            parts.append(Text.assemble(("  case ", "dim"), (key, "bold"), (": ", "dim"), (cut, "red")))
    return Group(*parts)


class BatchProgressView:
    """Shows a batch's progress as it goes: `update(progress)` from the batch's `on_progress`.

    A context manager: on exit the last snapshot stays on screen (a terminal) or is printed as the
    last plain line (a pipe)."""

    def __init__(self, console: Console, *, every_s: float = PLAIN_EVERY_S) -> None:
        self.console = console
        self.live_view = console.is_terminal
        self.every_s = every_s
        self.last: BatchProgress | None = None
        self._printed_at: float | None = None
        self._printed: BatchProgress | None = None
        self._live: Live | None = None

    def __enter__(self) -> BatchProgressView:
        if self.live_view:
            self._live = Live(Text(""), console=self.console, refresh_per_second=4, transient=False,
                              redirect_stdout=False, redirect_stderr=False)
            self._live.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._live is not None:
            if self.last is not None:
                self._live.update(view(self.last), refresh=True)
            self._live.__exit__(kind, error, tb)
            self._live = None
        elif self.last is not None and self.last is not self._printed:
            self._print(self.last)

    def update(self, progress: BatchProgress) -> None:
        self.last = progress
        if self._live is not None:
            self._live.update(view(progress))
            return
        now = time.monotonic()
        if self._printed_at is None or now - self._printed_at >= self.every_s:
            self._print(progress)

    def _print(self, progress: BatchProgress) -> None:
        self._printed_at, self._printed = time.monotonic(), progress
        self.console.print(Text(plain_line(progress)), soft_wrap=True)
