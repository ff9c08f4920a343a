"""`tether batch …`: run an agent over a dataset as a durable batch, resume it, look at it, answer the
pauses of many cases at once, cancel and delete it; and `tether runs prune`.

Everything goes through the batches service (services/batches.py); this module only reads the
arguments, shows progress (batch_progress.py) and says how to go on. Exit codes of `batch run` and
`batch resume`: 0 every case completed, 1 some failed (or were cancelled), 2 a usage mistake, 3 the
batch ended with paused cases (the command that answers them is printed), 130 interrupted (Ctrl-C:
no new case starts, cases in flight stay resumable).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tether.domain.records import PauseReason
from tether.interfaces.cli.batch_progress import BatchProgressView, fmt_money
from tether.interfaces.cli.calls import print_json, services_call
from tether.interfaces.cli.invocation import cmd
from tether.interfaces.cli.render import STATUS_STYLE, fmt_duration, fmt_time
from tether.interfaces.cli.usage import UsageMistake

if TYPE_CHECKING:
    from tether.domain.batches import BatchInfo, BatchOptions, Case, CaseResult
    from tether.services.compose import Services

T = TypeVar("T")

EXIT_OK, EXIT_FAILED, EXIT_PAUSED, EXIT_INTERRUPTED = 0, 1, 3, 130

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
SOFT = not console.is_terminal  # piped output keeps each line whole (grep-able)
if SOFT and "COLUMNS" not in os.environ:
    console.width = 200

batch_app = typer.Typer(
    help="Run an agent over a dataset (JSONL or CSV) as a durable batch: resumable after Ctrl-C or a crash, "
         "never repeating a finished case, under concurrency and budget limits (see docs/batches.md).",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)


class OnBudget(StrEnum):
    PAUSE = "pause"
    FAIL = "fail"


class OnBadLine(StrEnum):
    REFUSE = "refuse"
    SKIP = "skip"


TASK_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
OUT_SUFFIXES = (".jsonl", ".csv")

Config = Annotated[Path | None, typer.Option(
    "--config", metavar="FILE",
    help="The operator configuration (TOML, as `tether serve --config` reads it; default $TETHER_CONFIG): its "
         "[store] url is where the batches and runs are.")]
LeaseTtl = Annotated[float, typer.Option(
    "--lease-ttl", metavar="SECONDS",
    help="Seconds this command's lease on a case's run lasts unrenewed (another process may take over a "
         "case only after it).")]
Concurrency = Annotated[int | None, typer.Option(
    "--concurrency", "-c", min=1, metavar="N", help="Cases run at once (default 8 for a new batch; a resume "
                                                   "keeps the batch's unless given).")]
Out = Annotated[Path | None, typer.Option(
    "--out", "-o", metavar="FILE",
    help="Write each case's result to FILE as it ends: JSON lines (.jsonl) or CSV (.csv). After a resume it "
         "holds each case once.")]
BatchId = Annotated[str, typer.Argument(help="The batch (batch_…).", show_default=False)]


def _services_call(config: Path | None, fn: Callable[[Services], Awaitable[T]], *,
                   lease_ttl_s: float | None = None) -> T:
    """Run `fn` with the services of the operator configuration `--config` names (else $TETHER_CONFIG)."""
    from tether.services.compose import operator_config

    operator = operator_config(config)  # a bad configuration fails here, before anything is opened
    return services_call(operator, fn, lease_ttl_s=lease_ttl_s)


# -- reading the arguments ------------------------------------------------------------------------

# BatchOptions names a wrong field; the command line names it by its flag
OPTION_FLAGS = {"concurrency": "--concurrency", "max_cost_usd": "--max-cost", "max_tokens": "--max-tokens",
                "per_case_max_cost_usd": "--per-case-max-cost", "on_budget": "--on-budget", "name": "--name",
                "task_template": "--task-template"}


def batch_options(**given: Any) -> BatchOptions:
    """The batch's options; a wrong one is a UsageMistake naming its flag."""
    from tether.domain.batches import BatchOptions

    try:
        return BatchOptions(**{k: v for k, v in given.items() if v is not None})
    except ValueError as e:
        raise UsageMistake(flag_message(str(e))) from None


def flag_message(message: str) -> str:
    """A BatchOptions error with its field named as the flag that sets it."""
    for field_name, flag in sorted(OPTION_FLAGS.items(), key=lambda kv: -len(kv[0])):
        message = re.sub(rf"(?<![\w-]){field_name}(?!\w)", flag, message)
    return message


def read_cases(tasks: Path, input_column: str | None, on_bad_line: OnBadLine) -> list[Case]:
    """The cases of a JSONL or CSV file. Bad lines are listed with their line numbers: refused (a
    UsageMistake: nothing is created) or skipped (said how many)."""
    from tether.domain.batches import parse_csv, parse_jsonl

    kind = TASK_SUFFIXES.get(tasks.suffix.lower())
    if kind is None:
        raise UsageMistake(f"TASKS must be a .jsonl or .csv file, not {tasks.name!r}")
    if kind == "jsonl" and input_column is not None:
        raise UsageMistake("--input-column is for a CSV file; a JSONL line says its input as {\"input\": …}")
    try:
        text = tasks.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UsageMistake(f"TASKS file {tasks} does not exist") from None
    except IsADirectoryError:
        raise UsageMistake(f"TASKS {tasks} is a folder, not a file") from None
    except UnicodeDecodeError as e:
        raise UsageMistake(f"TASKS file {tasks} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise UsageMistake(f"cannot read TASKS file {tasks}: {e.strerror}") from None
    try:
        cases, bad = parse_jsonl(text) if kind == "jsonl" else parse_csv(text, input_column or "input")
    except ValueError as e:  # e.g. a CSV without the input column
        raise UsageMistake(f"{tasks}: {e}") from None
    if bad:
        for b in bad[:20]:
            err_console.print(Text(f"{tasks}:{b.line}: {b.reason}", style="yellow"), soft_wrap=True)
        if len(bad) > 20:
            err_console.print(Text(f"… and {len(bad) - 20} more bad lines", style="yellow"), soft_wrap=True)
        lines = "line" if len(bad) == 1 else "lines"
        if on_bad_line == OnBadLine.REFUSE:
            raise UsageMistake(f"{tasks} has {len(bad)} bad {lines} (listed above); nothing was created. Fix "
                               f"{'it' if len(bad) == 1 else 'them'}, or run only the good lines with "
                               "--on-bad-line skip")
        err_console.print(Text(f"skipped {len(bad)} bad {lines} of {tasks}", style="yellow"), soft_wrap=True)
    if not cases:
        raise UsageMistake(f"{tasks} holds no case: one a line, {{\"input\": \"…\"}} or a JSON string")
    return cases


def check_out(out: Path | None) -> None:
    if out is None:
        return
    if out.suffix.lower() not in OUT_SUFFIXES:
        raise UsageMistake(f"--out must name a .jsonl or .csv file, not {out.name!r}")
    if out.is_dir():
        raise UsageMistake(f"--out {out} is a folder; name a file in it")
    if not out.parent.is_dir():
        raise UsageMistake(f"--out {out}: the folder {out.parent} does not exist")


def check_budget(flag: str, value: float | None) -> None:
    if value is not None and not (0 < value < math.inf):
        raise UsageMistake(f"{flag} must be a positive number of dollars, not {value}")


def parse_age(text: str) -> float:
    """'30d', '12h', '45m', '90s', '2w' (or a bare number of seconds) as seconds; a UsageMistake else."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if m is None or float(m.group(1)) <= 0:
        raise UsageMistake(f"--older-than takes an age such as 30d, 12h, 45m or 90s (w, d, h, m, s), not {text!r}")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}[m.group(2)]
    return float(m.group(1)) * unit


# -- running ------------------------------------------------------------------------------------


class Interrupted(Exception):
    """The batch was stopped by Ctrl-C (its `stop` event set)."""

    def __init__(self, info: BatchInfo) -> None:
        super().__init__(info.id)
        self.info = info


def drive(services: Services, batch_id: str, *, concurrency: int | None, retry_failed: bool,
          out: Path | None, cases_hash: str | None) -> Awaitable[BatchInfo]:
    """Run (or resume) the batch with its live progress; Ctrl-C sets its stop event (a second one
    exits at once: the runs stay resumable anyway). Raises Interrupted when stopped."""

    import asyncio

    async def go() -> BatchInfo:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_sigint() -> None:
            if stop.is_set():
                err_console.print(f"interrupted again: exiting now. Resume with `{cmd(f'batch resume {batch_id}')}`",
                                  soft_wrap=True)
                os._exit(EXIT_INTERRUPTED)
            stop.set()
            err_console.print("stopping: no new case starts; the cases in flight are left resumable "
                              "(Ctrl-C again to exit at once)", soft_wrap=True)

        loop.add_signal_handler(signal.SIGINT, on_sigint)
        try:
            with BatchProgressView(console) as view:
                # --out: rewritten from the store first (each case once), then a line a case as it ends
                info = await services.batches.run(batch_id, concurrency=concurrency, retry_failed=retry_failed,
                                                  on_progress=view.update, stop=stop, cases_hash=cases_hash,
                                                  out=out)
        finally:
            loop.remove_signal_handler(signal.SIGINT)
        if stop.is_set():
            raise Interrupted(info)
        return info

    return go()


def after_batch(info: BatchInfo, paused: list[CaseResult], out: Path | None) -> int:
    """Say how the batch ended and how to go on; return the exit code."""
    from tether.domain.batches import CaseStatus

    counts = {s: info.counts.get(s, 0) for s in CaseStatus}
    failed = counts[CaseStatus.FAILED] + counts[CaseStatus.CANCELLED] + counts[CaseStatus.INCOMPLETE]
    console.print(Text.assemble(
        ("batch ", ""), (info.id, "bold"), (f": {counts[CaseStatus.COMPLETED]}/{info.total} completed", "green"),
        (f", {failed} failed" if failed else "", "red"),
        (f", {counts[CaseStatus.PAUSED]} paused" if counts[CaseStatus.PAUSED] else "", "magenta"),
        (f"; {info.input_tokens + info.output_tokens:,} tokens, {fmt_money(info.cost_usd)}", "dim")), soft_wrap=SOFT)
    if out is not None:
        console.print(Text(f"results: {out}", style="dim"), soft_wrap=SOFT)
    if counts[CaseStatus.PAUSED]:
        n = counts[CaseStatus.PAUSED]
        console.print(f"{n} case{' is' if n == 1 else 's are'} paused and wait{'s' if n == 1 else ''} for an answer:",
                      soft_wrap=SOFT)
        for line in how_to_answer(info, paused):
            console.print(Text("  " + line, style="bold"), soft_wrap=SOFT)
        return EXIT_PAUSED
    if failed:
        console.print(Text.assemble(("see the failed cases: ", "dim"),
                                    (cmd(f"batch show {info.id} --status failed"), "bold"),
                                    ("; run them again: ", "dim"),
                                    (cmd(f"batch resume {info.id} --retry-failed"), "bold")), soft_wrap=SOFT)
        return EXIT_FAILED
    return EXIT_OK


def pause_reasons(result: CaseResult) -> set[str]:
    """Why a case is paused ("budget", "approval", ...), from its `pause_reason` ("a, b: details")."""
    head = (result.pause_reason or "").partition(":")[0]
    return {r.strip() for r in head.split(",") if r.strip()}


def how_to_answer(info: BatchInfo, paused: list[CaseResult]) -> list[str]:
    """The exact commands that answer the paused cases, by why they paused, then continue the batch."""
    by_reason: dict[str, int] = {}
    for r in paused:
        for reason in pause_reasons(r) or {"a pause"}:
            by_reason[reason] = by_reason.get(reason, 0) + 1
    lines = [f"# {n} paused on {reason}" for reason, n in sorted(by_reason.items())]
    if PauseReason.APPROVAL in by_reason:
        lines.append(cmd(f"batch answer {info.id} --approve-all"))
    if PauseReason.BUDGET in by_reason:
        if info.options.max_cost_usd is not None:
            raised = f" --max-cost {_raised(info.options.max_cost_usd)}"
        elif info.options.max_tokens is not None:
            raised = f" --max-tokens {info.options.max_tokens * 2}"
        else:
            raised = ""
        lines.append(cmd(f"batch answer {info.id} --continue{raised}"))
    elif PauseReason.BREAKPOINT in by_reason:
        lines.append(cmd(f"batch answer {info.id} --continue"))
    if PauseReason.UNCERTAIN in by_reason:
        lines.append(f"# an uncertain call may have taken effect: check, then run them again (safe when the tool "
                     f"deduplicates by its idempotency key) or answer a run at a time ({cmd('runs answer RUN_ID …')})")
        lines.append(cmd(f"batch answer {info.id} --rerun-uncertain"))
    if PauseReason.CLIENT_TOOL in by_reason:
        lines.append(f"# client tools are answered a run at a time: "
                     f"{cmd(f'batch show {info.id} --status paused')}, then {cmd('runs answer RUN_ID CALL_ID …')}")
    lines.append(cmd(f"batch answer {info.id} --abort") + "   # or end them all")
    lines.append(f"then: {cmd(f'batch resume {info.id}')}")
    return lines


def _raised(usd: float) -> str:
    return f"{usd * 2:.2f}".rstrip("0").rstrip(".")


def finish(config: Path | None, lease_ttl_s: float, run: Callable[[Services], Awaitable[BatchInfo]],
           out: Path | None) -> None:
    """Run the batch, then say how it ended (or was interrupted) and exit with its code."""

    async def go(services: Services) -> tuple[BatchInfo, list[CaseResult], bool]:
        from tether.domain.batches import CaseStatus

        try:
            info = await run(services)
            stopped = False
        except Interrupted as e:
            info, stopped = e.info, True
        paused = await services.batches.cases(info.id, status=CaseStatus.PAUSED, limit=1000)
        return info, paused, stopped

    info, paused, stopped = _services_call(config, go, lease_ttl_s=lease_ttl_s)
    if stopped:
        from tether.domain.batches import CaseStatus

        ended = sum(info.counts.get(s, 0) for s in (CaseStatus.COMPLETED, CaseStatus.FAILED, CaseStatus.CANCELLED,
                                                     CaseStatus.INCOMPLETE))
        left = info.total - ended
        err_console.print(f"interrupted: no new case started; {left} case{'s' if left != 1 else ''} left "
                          f"resumable: {cmd(f'batch resume {info.id}')}", soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    raise typer.Exit(after_batch(info, paused, out))


def _tune_gc() -> None:
    from tether.runtime import tune_gc

    tune_gc()  # a batch is thousands of runs in one process of our own: a cheaper garbage collector


@batch_app.command("run")
def run_cmd(
    agent_file: Annotated[Path, typer.Argument(help="The agent file (TOML: name, model, instructions, tools, "
                                                    "[limits]).", show_default=False)],
    tasks: Annotated[Path, typer.Argument(
        help="The cases: a .jsonl file ({\"input\": \"…\", \"id\"?, \"vars\"?, \"expected\"?, \"metadata\"?} or "
             "a JSON string a line) or a .csv file (--input-column; other columns become vars).",
        show_default=False)],
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, metavar="N",
                                             help="Cases run at once.")] = 8,
    max_cost: Annotated[float | None, typer.Option(
        "--max-cost", metavar="USD", help="The batch's budget in dollars: concurrent cases together can never "
                                          "spend past it (a case that would pauses, see --on-budget).")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", min=1, metavar="N",
                                                   help="The batch's budget in tokens (input + output).")] = None,
    per_case_max_cost: Annotated[float | None, typer.Option(
        "--per-case-max-cost", metavar="USD", help="Each case's own budget in dollars.")] = None,
    on_budget: Annotated[OnBudget, typer.Option(
        "--on-budget", help="What a case does when a budget has no room for its next model call: pause (answer "
                            "it later with `batch answer --continue`) or fail.")] = OnBudget.PAUSE,
    out: Out = None,
    name: Annotated[str | None, typer.Option("--name", help="A name for the batch (shown by `batch list`).")] = None,
    input_column: Annotated[str | None, typer.Option(
        "--input-column", metavar="COL", help="The CSV column holding each case's input (default: input).")] = None,
    on_bad_line: Annotated[OnBadLine, typer.Option(
        "--on-bad-line", help="A bad line in TASKS: refuse the file (nothing is created) or skip it.")
    ] = OnBadLine.REFUSE,
    task_template: Annotated[str | None, typer.Option(
        "--task-template", metavar="TEXT",
        help="The task each case sends, with {input} and the case's vars filled in (default: {input}).")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Use this model instead of the agent "
                                                                    "file's.")] = None,
    lease_ttl: LeaseTtl = 30.0,
    config: Config = None,
) -> None:
    """Run an agent over every case of TASKS, showing progress live.

    The batch and its cases are stored first, so it can be resumed (`tether batch resume`) after Ctrl-C,
    a crash or a kill: a finished case is never run again. Exits 0 when every case completed, 1 when
    some failed, 3 when some are paused (the command that answers them is printed), 130 on Ctrl-C.

    Example: `tether batch run agent.toml questions.jsonl --concurrency 16 --max-cost 2 --out results.jsonl`
    """
    from tether.services.agents import load_agent_file

    check_budget("--max-cost", max_cost)
    check_budget("--per-case-max-cost", per_case_max_cost)
    check_out(out)
    cases = read_cases(tasks, input_column, on_bad_line)
    options = batch_options(concurrency=concurrency, max_cost_usd=max_cost, max_tokens=max_tokens,
                            per_case_max_cost_usd=per_case_max_cost, on_budget=on_budget.value, name=name,
                            task_template=task_template, input_column=input_column)
    agent = load_agent_file(agent_file)
    if model:
        agent = agent.with_model(model)
    _ = agent.model  # resolved now: a missing key or cassette is a usage mistake, before the batch is made
    _tune_gc()

    async def run(services: Services) -> BatchInfo:
        info = await services.batches.create(agent, cases, options, source=str(tasks.absolute()))
        console.print(Text.assemble(("batch ", ""), (info.id, "bold"), (f": {info.total} cases of ", ""),
                                    (str(tasks), "bold"), (f" with {info.agent_name} on {info.model}", "dim")),
                      soft_wrap=SOFT)
        return await drive(services, info.id, concurrency=None, retry_failed=False, out=out, cases_hash=None)

    finish(config, lease_ttl, run, out)


@batch_app.command("resume")
def resume_cmd(
    batch_id: BatchId,
    retry_failed: Annotated[bool, typer.Option(
        "--retry-failed", help="Run the failed, cancelled and incomplete cases again (each as a new run, its "
                               "next attempt); the completed ones are kept.")] = False,
    concurrency: Concurrency = None,
    out: Out = None,
    lease_ttl: LeaseTtl = 30.0,
    config: Config = None,
) -> None:
    """Go on with a stopped or crashed batch: cases not yet run start, cases whose run was interrupted
    continue where their log ends, finished cases are skipped. A batch made from a file is refused if
    the file changed since (its cases would not be the ones stored).

    Exits like `tether batch run`."""
    check_out(out)
    _tune_gc()

    async def run(services: Services) -> BatchInfo:
        info = await services.batches.get(batch_id)
        expected = source_hash(info)
        return await drive(services, info.id, concurrency=concurrency, retry_failed=retry_failed, out=out,
                           cases_hash=expected)

    finish(config, lease_ttl, run, out)


def source_hash(info: BatchInfo) -> str | None:
    """The hash of the cases the batch's input file holds now (None: no file, or it is gone), for the
    service to refuse a resume whose file changed."""
    from tether.domain.batches import cases_hash, parse_csv, parse_jsonl

    if info.source is None:
        return None
    path = Path(info.source)
    kind = TASK_SUFFIXES.get(path.suffix.lower())
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return None  # the cases are stored: the batch goes on without its file
    if kind == "jsonl":
        cases, _ = parse_jsonl(text)
    elif kind == "csv":
        try:
            cases, _ = parse_csv(text, info.options.input_column or "input")
        except ValueError:
            cases = []  # the input column is gone: the file changed (and holds none of the cases)
    else:
        return None
    return cases_hash(cases)


# -- looking at batches -------------------------------------------------------------------------


@batch_app.command("list")
def list_cmd(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=1000, help="How many batches, newest "
                                                                             "first.")] = 20,
    after: Annotated[str | None, typer.Option("--after", metavar="BATCH", help="The page after this batch.")
                     ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the batches as JSON.")] = False,
    config: Config = None,
) -> None:
    """List batches: id, name, state, cases completed / failed / paused of all, tokens, cost, created."""
    from tether.domain.batches import CaseStatus

    batches = _services_call(config, lambda s: s.batches.list(limit=limit, after=after))
    if as_json:
        print_json([b.to_dict() for b in batches])
        return
    if not batches:
        console.print(f"no batches yet. Start one with `{cmd('batch run AGENT_FILE TASKS.jsonl')}`.")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("id", "name", "state", "cases", "completed", "failed", "paused", "tokens", "cost", "created"):
        table.add_column(column, no_wrap=column in ("id", "created"))
    for b in batches:
        c = b.counts
        failed = c.get(CaseStatus.FAILED, 0) + c.get(CaseStatus.CANCELLED, 0) + c.get(CaseStatus.INCOMPLETE, 0)
        table.add_row(b.id, b.name or "", Text(b.state, style=_state_style(b.state)), str(b.total),
                      str(c.get(CaseStatus.COMPLETED, 0)), str(failed), str(c.get(CaseStatus.PAUSED, 0)),
                      f"{b.input_tokens + b.output_tokens:,}", fmt_money(b.cost_usd), fmt_time(b.created_at))
    console.print(table)
    if len(batches) == limit:
        console.print(Text(f"more: {cmd(f'batch list --after {batches[-1].id}')}", style="dim"), soft_wrap=SOFT)


def _state_style(state: str) -> str:
    return {"open": "cyan", "done": "green", "cancelled": "yellow"}.get(str(state), "")


def _cut(text: str | None, width: int) -> str:
    one = " ".join((text or "").split())
    return one if len(one) <= width else one[:width - 1] + "…"


@batch_app.command("show")
def show_cmd(
    batch_id: BatchId,
    status: Annotated[str | None, typer.Option("--status", "-s", help="Only cases with this status: pending, "
                                               "queued, running, paused, completed, failed, cancelled, "
                                               "incomplete.")] = None,
    after: Annotated[int | None, typer.Option("--after", min=-1, metavar="INDEX",
                                              help="The page of cases after this index.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=1000, help="Cases a page.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print the batch and the page of cases as JSON.")
                       ] = False,
    config: Config = None,
) -> None:
    """Show a batch and a page of its cases: status, attempt, cost, tokens, latency, steps, and the
    error or output cut short (`tether runs show RUN_ID` shows a case's run whole)."""
    from tether.domain.batches import CaseStatus

    wanted = None
    if status is not None:
        try:
            wanted = CaseStatus(status)
        except ValueError:
            raise UsageMistake(f"unknown status {status!r}; use one of "
                               f"{', '.join(s.value for s in CaseStatus)}") from None

    async def get(services: Services) -> tuple[BatchInfo, list[CaseResult]]:
        info = await services.batches.get(batch_id)
        return info, await services.batches.cases(batch_id, status=wanted, after=after, limit=limit)

    info, cases = _services_call(config, get)
    if as_json:
        print_json({"batch": info.to_dict(), "cases": [c.to_dict() for c in cases]})
        return
    counts = ", ".join(f"{n} {s}" for s, n in info.counts.items() if n)
    console.print(Text.assemble(("batch ", ""), (info.id, "bold"), (f" {info.name}" if info.name else "", ""),
                                ("  ", ""), (str(info.state), _state_style(info.state))), soft_wrap=SOFT)
    console.print(Text(f"{info.agent_name} on {info.model} · {info.total} cases ({counts or 'none run'}) · "
                       f"{info.input_tokens + info.output_tokens:,} tokens · {fmt_money(info.cost_usd)}"
                       + (f" of {fmt_money(info.options.max_cost_usd)}" if info.options.max_cost_usd else "")
                       + f" · created {fmt_time(info.created_at)}"
                       + (f" · from {info.source}" if info.source else ""), style="dim"), soft_wrap=SOFT)
    if not cases:
        console.print("no cases" + (f" with status {status}" if status else "") + (" after that" if after else ""))
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("#", "case", "status", "try", "cost", "tokens", "latency", "steps", "run", "output / error"):
        table.add_column(column, no_wrap=column != "output / error",
                         justify="right" if column in ("#", "try", "tokens", "steps") else "left")
    for c in cases:
        said = (c.error and Text(_cut(c.error, 80), style="red")) or Text(_cut(
            c.output if c.output is not None else (json.dumps(c.structured) if c.structured is not None else ""),
            80))
        if c.status == CaseStatus.PAUSED and c.pause_reason:
            said = Text(f"paused: {c.pause_reason}", style="magenta")
        table.add_row(str(c.index), _cut(c.key, 24), Text(c.status, style=STATUS_STYLE.get(c.status, "")),
                      str(c.attempt), fmt_money(c.cost_usd) if c.run_id else "",
                      f"{c.input_tokens + c.output_tokens:,}",
                      fmt_duration(c.latency_s), str(c.steps), c.run_id or "", said)
    console.print(table)
    if len(cases) == limit:
        more = f"batch show {batch_id} --after {cases[-1].index}" + (f" --status {status}" if status else "")
        console.print(Text(f"more: {cmd(more)}", style="dim"), soft_wrap=SOFT)


# -- acting on batches --------------------------------------------------------------------------


@batch_app.command("cancel")
def cancel_cmd(batch_id: BatchId, config: Config = None) -> None:
    """Cancel a batch: no new case starts, running and paused cases are cancelled; finished cases and
    their results are kept."""
    info = _services_call(config, lambda s: s.batches.cancel(batch_id))
    console.print(Text.assemble(("batch ", ""), (info.id, "bold"), (" is ", ""),
                                (str(info.state), _state_style(info.state))), soft_wrap=SOFT)


@batch_app.command("answer")
def answer_cmd(
    batch_id: BatchId,
    approve_all: Annotated[bool, typer.Option("--approve-all", help="Approve every pending approval and "
                                                                     "breakpoint.")] = False,
    go_on: Annotated[bool, typer.Option("--continue", help="Continue the cases paused on a budget (raise it "
                                                           "first with --max-cost / --max-tokens).")] = False,
    rerun: Annotated[bool, typer.Option("--rerun-uncertain", help="Run again the calls left uncertain by an "
                                        "interruption (safe for a tool that deduplicates by its idempotency key)."
                                        )] = False,
    abort: Annotated[bool, typer.Option("--abort", help="Abort every paused case (they end cancelled).")] = False,
    max_cost: Annotated[float | None, typer.Option("--max-cost", metavar="USD",
                                                   help="With --continue: the batch's new budget in dollars.")
                        ] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", min=1, metavar="N",
                                                   help="With --continue: the batch's new budget in tokens.")
                          ] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (kept in each run's log).")] = None,
    config: Config = None,
) -> None:
    """Answer the pauses of every paused case at once; then `tether batch resume BATCH` runs them on.

    Example: `tether batch answer batch_… --continue --max-cost 5`"""
    chosen = [n for n, on in (("approve-all", approve_all), ("continue", go_on), ("rerun-uncertain", rerun),
                              ("abort", abort)) if on]
    if len(chosen) != 1:
        raise UsageMistake("give exactly one of --approve-all, --continue, --rerun-uncertain, --abort"
                           + (f"; got {', '.join('--' + c for c in chosen)}" if chosen else ""))
    if (max_cost is not None or max_tokens is not None) and not go_on:
        raise UsageMistake("--max-cost and --max-tokens raise a budget: use them with --continue")
    check_budget("--max-cost", max_cost)
    action = {"approve-all": "approve", "continue": "continue", "rerun-uncertain": "rerun", "abort": "abort"}[chosen[0]]
    n = _services_call(config, lambda s: s.batches.answer(batch_id, action=action,  # type: ignore[arg-type]
                                                          max_cost_usd=max_cost, max_tokens=max_tokens,
                                                          reason=reason))
    if n == 0:
        console.print(f"batch {batch_id} has no paused case to {action}", soft_wrap=SOFT)
        return
    console.print(f"answered {n} paused case{'s' if n != 1 else ''} ({action})", soft_wrap=SOFT)
    console.print(Text.assemble(("run them on: ", ""), (cmd(f"batch resume {batch_id}"), "bold")), soft_wrap=SOFT)


@batch_app.command("delete")
def delete_cmd(
    batch_id: BatchId,
    with_runs: Annotated[bool, typer.Option("--with-runs", help="Delete the cases' runs too (and their work "
                                                                "folders); else they stay as plain runs.")
                         ] = False,
    config: Config = None,
) -> None:
    """Delete a batch that is not running: its cases and results (and, with --with-runs, its runs)."""
    async def delete(services: Services) -> None:
        await services.batches.delete(batch_id, with_runs=with_runs)
        await services.assistants.forget_batch(batch_id)  # the agent of a batch made over HTTP

    _services_call(config, delete)
    console.print(f"deleted batch {batch_id}" + (" and its runs" if with_runs else ""), soft_wrap=SOFT)


def prune_cmd(
    older_than: Annotated[str, typer.Option("--older-than", metavar="AGE",
                                            help="Delete finished runs that ended longer ago than AGE: 30d, 12h, "
                                                 "45m, 90s.", show_default=False)],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say how many runs would be deleted.")] = False,
    config: Config = None,
) -> None:
    """Delete finished runs (completed, failed, cancelled, incomplete) older than AGE, with their work
    folders. Paused and active runs are never pruned.

    Example: `tether runs prune --older-than 30d --dry-run`"""
    seconds = parse_age(older_than)

    async def prune(services: Services) -> int:
        python = services.operator.tools.get("python")  # the operator's work folders go too
        roots = [Path(python.options["work_root"])] if python is not None and "work_root" in python.options else []
        return await services.runs.prune(older_than_s=seconds, dry_run=dry_run, work_roots=roots)

    n = _services_call(config, prune)
    runs = "run" if n == 1 else "runs"
    console.print(f"would delete {n} finished {runs} older than {older_than}" if dry_run
                  else f"deleted {n} finished {runs} older than {older_than}", soft_wrap=SOFT)
