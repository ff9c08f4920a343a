"""The `tether` command: run agents, watch their steps live, and look at, answer, cancel, resume and
replay recorded runs, and debug them (`--break`, `tether debug`). Everything goes through the
services the composition root builds (services/compose.py) from the operator configuration
(`--config`, else $TETHER_CONFIG); runs live in its store (else $TETHER_DATABASE_URL, else the SQLite
file in $TETHER_HOME), so a run `tether serve` made can be answered, forked or replayed here too.

Exit codes: 0 completed (or done), 1 failed / cancelled / incomplete, 2 a usage mistake (bad file,
unknown run, no model configured, ...), 3 paused and waiting for an answer, 130 interrupted.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from tether.domain.errors import TetherError
from tether.domain.records import ACTIVE, TERMINAL, PauseReason, RunStatus
from tether.interfaces.cli.batch import batch_app, prune_cmd
from tether.interfaces.cli.calls import print_json, services_call
from tether.interfaces.cli.helpfix import localize_help, plain_flags
from tether.interfaces.cli.invocation import cmd, command, localize, version
from tether.interfaces.cli.render import (
    STATUS_STYLE,
    RunPrinter,
    diff_header,
    diff_table,
    fmt_time,
    how_to_answer,
    pending_text,
    print_runs,
    run_to_dict,
)
from tether.interfaces.cli.usage import UsageMistake

if TYPE_CHECKING:
    from tether.services.agents import Agent
    from tether.services.operator import OperatorConfig
    from tether.services.runs import RunsService, RunView

T = TypeVar("T")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PAUSED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
SOFT = not console.is_terminal  # piped output keeps each line whole (grep-able)
if SOFT and "COLUMNS" not in os.environ:
    console.width = 200  # tables in a pipe: wide enough that nothing is squeezed

app = typer.Typer(
    name="tether",
    help="Tether runs tool-using AI agents as durable runs you can stop, look inside, change and "
         "continue.\n\n"
         "Start with `tether demo` (offline, no API key), then `tether runs show RUN_ID`.\n\n"
         "Runs are stored in $TETHER_HOME/tether.db (default ~/.local/share/tether), or in "
         "$TETHER_DATABASE_URL.",
    epilog="Exit codes: 0 completed, 1 failed or cancelled, 2 a usage mistake, 3 paused (waiting for an "
           "answer).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
runs_app = typer.Typer(
    help="Look at, answer, cancel, resume, replay, fork and export recorded runs, and set their breakpoints.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(runs_app, name="runs")
plain_flags()  # `--json`, not `--json <bool>`, in --help


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"tether {version()}")
        raise typer.Exit()


@app.callback()
def _options(show_version: Annotated[bool, typer.Option(
        "--version", "-V", callback=_print_version, is_eager=True, help="Print Tether's version and exit.")] = False,
) -> None:
    pass


# -- plumbing -----------------------------------------------------------------------------------


LeaseTtl = Annotated[float, typer.Option(
    "--lease-ttl", metavar="SECONDS",
    help="Seconds this command's lease on the run lasts unrenewed: how soon another process may take the "
         "run over if this one hangs or dies elsewhere (on this machine, a dead process's runs are taken "
         "over at once).")]
_lease_ttl_s = 30.0  # set by the command that runs (one a process), from its --lease-ttl


def _use_lease_ttl(seconds: float) -> None:
    """Use a --lease-ttl for the runs service this command opens (`open_services` checks it)."""
    global _lease_ttl_s
    _lease_ttl_s = seconds


RunsConfig = Annotated[Path | None, typer.Option(
    "--config", metavar="FILE",
    help="The operator configuration (TOML, as `tether serve --config` reads it; default $TETHER_CONFIG): "
         "its [store] url is where the runs are, and its [models], [tools] and [mcp_servers] rebuild the "
         "agents of runs the server made (see docs/server.md).")]
_config_path: Path | None = None  # set by the command that runs, from its --config
_operator: OperatorConfig | None = None  # read once a process


def _use_config(path: Path | None) -> None:
    """Use a --config for the services this command opens (else $TETHER_CONFIG)."""
    global _config_path
    _config_path = path


def _operator_of_command() -> OperatorConfig:
    global _operator
    if _operator is None:
        from tether.services.compose import operator_config

        _operator = operator_config(_config_path)
    return _operator


def _service_call(fn: Callable[[RunsService], Awaitable[T]]) -> T:
    """Run `fn` with the runs service of the command's operator configuration."""
    operator = _operator_of_command()  # a bad configuration fails here, before anything is opened
    return services_call(operator, lambda services: fn(services.runs), lease_ttl_s=_lease_ttl_s)


def _load_agent(path: Path, model: str | None) -> Agent:
    from tether.services.agents import load_agent_file

    agent = load_agent_file(path)
    if model:
        agent = agent.with_model(model)
    _ = agent.model  # resolve it now: a missing key or cassette is a usage mistake, before any run starts
    return agent


def _exit_code(view: RunView) -> int:
    if view.status == RunStatus.COMPLETED:
        return EXIT_OK
    if view.status == RunStatus.PAUSED:
        return EXIT_PAUSED
    if view.status in TERMINAL:
        return EXIT_FAILED
    return EXIT_OK  # queued / running: another worker took it over and advances it


def _after(view: RunView, *, how_to_see: bool = True, listed: bool = True) -> int:
    """Say where the run stands and how to go on; return the exit code.

    `listed`: the live view already showed the pending items of a pause."""
    if view.status == RunStatus.PAUSED:
        console.print(Text.assemble(("run ", ""), (view.id, "bold"), (" is paused", "bold magenta"),
                                    (" and waits for an answer" + ("." if listed else ":"), "")),
                      soft_wrap=SOFT)
        if not listed:
            for item in view.pending:
                console.print(pending_text(item), soft_wrap=SOFT)
        console.print("answer it with:")
        for line in how_to_answer(view.id, view.pending):
            console.print(Text("  " + line, style="bold"), soft_wrap=SOFT)
        console.print(Text.assemble(("or debug it:  ", ""), (cmd(f"debug {view.id}"), "bold")), soft_wrap=SOFT)
    elif view.status in ACTIVE:
        console.print(f"run {view.id} is {view.status}: another worker is advancing it; "
                      f"follow it with `{cmd(f'runs show {view.id}')}`", soft_wrap=SOFT)
    if how_to_see and view.status != RunStatus.PAUSED:
        console.print(Text(f"see the whole run: {cmd(f'runs show {view.id}')}", style="dim"), soft_wrap=SOFT)
    return _exit_code(view)


def _live_run(start: Callable[[RunsService, Callable[[Any], None]], Awaitable[RunView]], *,
              quiet: bool = False, existing: str | None = None, show_pauses: bool = True) -> RunView:
    """Start a run, or continue the `existing` one, with a live view of its steps (none when `quiet`).

    `show_pauses=False`: a pause is not listed (the debugger that opens next shows it)."""
    printer = RunPrinter(console, live=not quiet)

    def on_event(event: Any) -> None:
        if not show_pauses and event.record is not None and event.record.kind == "paused":
            return
        if not quiet:
            printer.on_event(event)
        elif event.record is not None:
            printer.run_id = event.record.run_id

    async def go(service: RunsService) -> RunView:
        if existing is not None:
            before = await service.get(existing)
            printer.load(before.records)
            printer.note = Text.assemble(("continuing run ", "dim"), (existing, "bold"),
                                         (f" ({before.status}, {len(before.steps)} steps so far)", "dim"))
        return await start(service, on_event)

    try:
        with printer:  # the spinner, in a terminal
            return _service_call(go)
    except KeyboardInterrupt:
        if printer.run_id:
            _say_interrupted(printer.run_id)
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _say_interrupted(run_id: str) -> None:
    """After Ctrl-C: where the run stands now, and whether and how it goes on."""
    try:
        view = _service_call(lambda service: service.get(run_id))
    except (KeyboardInterrupt, TetherError):  # a second Ctrl-C, or the store is gone: say what we know
        err_console.print(f"interrupted. Run {run_id} is kept: `{cmd(f'runs show {run_id}')}` says where it "
                          "stands.", soft_wrap=True)
        return
    if view.status == RunStatus.PAUSED:
        what = "is paused and waits for an answer: " + "; ".join(how_to_answer(run_id, view.pending))
    elif view.status in TERMINAL:
        what = f"had already ended ({view.status}): there is nothing to resume"
    else:  # this process no longer advances it, and its lease is free once this process exits
        what = (f"is stopped ({view.status}: nothing advances it). Continue it with "
                f"`{cmd(f'runs resume {run_id}')}`, or cancel it with `{cmd(f'runs cancel {run_id}')}`")
    err_console.print(f"interrupted. Run {run_id} {what}.", soft_wrap=True)


# Pauses the debugger opens on by itself.
DEBUGGABLE = frozenset({PauseReason.BREAKPOINT, PauseReason.APPROVAL, PauseReason.BUDGET})


def _check_breaks(specs: list[str] | None, agent: Agent) -> list[str]:
    """Parse `--break` specs before anything runs (a bad one is `error: …`, exit 2); warn about
    conditions that can never be true (a name with no value at its stop, an unknown cost)."""
    from tether.domain.breakpoints import parse_breakpoint
    from tether.services.answers import breakpoint_warnings

    out = []
    for i, spec in enumerate(specs or []):
        bp = parse_breakpoint(spec, id=f"bp_{i + 1}")
        for warning in breakpoint_warnings(bp, agent.model):
            err_console.print(Text(f"warning: --break {spec!r}: {warning}", style="yellow"), soft_wrap=True)
        out.append(spec)
    return out


def _debug(view: RunView, agent: Agent | None = None) -> RunView:
    """The debugger REPL on a paused run, until it ends, is detached or the input ends."""
    from tether.interfaces.cli.debugger import Debugger

    async def go(service: RunsService) -> RunView:
        if agent is not None:
            service.register(agent)  # e.g. with a --model override, which the agent file does not say
        return await Debugger(service, await service.get(view.id), console=console).run()

    try:
        return _service_call(go)
    except KeyboardInterrupt:
        _say_interrupted(view.id)
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _maybe_debug(view: RunView, agent: Agent | None, no_debug: bool) -> tuple[RunView, bool]:
    """Open the debugger when the run paused on a breakpoint, an approval or a budget."""
    if no_debug or not view.paused or not any(i.reason in DEBUGGABLE for i in view.pending):
        return view, False
    console.print()
    return _debug(view, agent), True


def _after_debug(view: RunView) -> int:
    """After the debugger: the exit code of where the run stands (it said itself how it ended)."""
    if view.status in TERMINAL:
        console.print(Text(f"see the whole run: {cmd(f'runs show {view.id}')}", style="dim"), soft_wrap=SOFT)
    elif view.status != RunStatus.PAUSED:
        return _after(view)
    return _exit_code(view)


# -- tether run / demo --------------------------------------------------------------------------


@app.command("run")
def run_cmd(
    agent_file: Annotated[Path, typer.Argument(help="The agent file (TOML: name, model, instructions, tools, "
                                                    "[limits]).", show_default=False)],
    task: Annotated[str, typer.Argument(help="What to ask the agent.", show_default=False)],
    model: Annotated[str | None, typer.Option(
        "--model", "-m",
        help="Use this model instead of the file's: openai:NAME, an OpenAI-compatible name such as "
             "qwen2.5:7b (with OPENAI_BASE_URL), replay:CASSETTE or scripted:MODULE:ATTR.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the finished run as JSON instead of the live "
                                                         "view (never opens the debugger).")] = False,
    breaks: Annotated[list[str] | None, typer.Option(
        "--break", "-b", metavar="SPEC",
        help="Pause at this breakpoint: STOP[:TOOL_GLOB] [if CONDITION], e.g. 'before_tool:delete_*' or "
             "'after_model if run.cost_usd > 0.1'. Repeatable.")] = None,
    no_debug: Annotated[bool, typer.Option("--no-debug", help="When the run pauses, don't open the debugger: "
                                                              "exit 3 and leave it paused.")] = False,
    lease_ttl: LeaseTtl = 30.0,
) -> None:
    """Run an agent on a task, showing each step as it happens.

    When the run pauses on a breakpoint, an approval or a budget, the debugger opens (`help` at its
    prompt lists the commands; without a terminal it reads commands from stdin), unless --no-debug.
    Exits 0 when the run completes, 1 when it fails or is cancelled, 3 when it is left paused (the
    run id and the commands that answer it are printed).

    Example: `tether run agent.toml "What do tulips cost?" --model openai:gpt-4o-mini --break after_tool`
    """
    _use_lease_ttl(lease_ttl)
    agent = _load_agent(agent_file, model)
    specs = _check_breaks(breaks, agent)
    view = _live_run(lambda service, on_event: service.start(agent, task, breakpoints=specs, on_event=on_event),
                     quiet=as_json, show_pauses=no_debug)
    if as_json:
        print_json(run_to_dict(view))
        raise typer.Exit(_exit_code(view))
    view, debugged = _maybe_debug(view, agent, no_debug)
    raise typer.Exit(_after_debug(view) if debugged else _after(view, listed=no_debug))


@app.command("demo")
def demo_cmd(
    task: Annotated[str | None, typer.Option("--task", help="Ask the florist something else, e.g. \"What do "
                                                            "tulips cost, and what should I charge for a 20% "
                                                            "profit?\"")] = None,
    breaks: Annotated[list[str] | None, typer.Option(
        "--break", "-b", metavar="SPEC",
        help="Pause at this breakpoint and open the debugger, e.g. before_tool:calculator. Repeatable.")] = None,
    no_debug: Annotated[bool, typer.Option("--no-debug", help="When the run pauses, don't open the debugger: "
                                                              "exit 3 and leave it paused.")] = False,
    lease_ttl: LeaseTtl = 30.0,
) -> None:
    """Run the florist example offline: a price lookup tool, the calculator, and an answer.

    Try `tether demo --break before_tool:calculator`: the run stops before the calculator runs;
    `p` shows its arguments, `edit {"expression": "2.40 * 1.30"}` changes them, `c` goes on.

    The model is a deterministic offline stand-in (no API key, no network) that reads the tool
    results it gets, so every step is real Tether machinery: the run is recorded and can be shown,
    replayed and exported like any other.
    """
    _use_lease_ttl(lease_ttl)
    import tether.examples.florist as florist

    specs = _check_breaks(breaks, _load_agent(florist.AGENT_FILE, None))
    agent_file = florist.AGENT_FILE
    question = task or florist.TASK
    console.print(Text("Tether demo: the florist agent", style="bold"))
    console.print(Text.assemble(
        ("This runs an ", ""), ("offline scripted model", "bold yellow"),
        (" (tether.examples.florist.offline_model): a deterministic stand-in that reads its tool results. "
         "No API key, no network.", "")), soft_wrap=SOFT)
    console.print("To run the same agent on a real model:", soft_wrap=SOFT)
    console.print(Text(f"  {cmd('run')} {shlex.quote(str(agent_file))} {shlex.quote(question)} "
                       "--model openai:gpt-4o-mini", style="bold"), soft_wrap=SOFT)
    console.print(Text("  (needs OPENAI_API_KEY; for Ollama set OPENAI_BASE_URL=http://localhost:11434/v1 "
                       "and use --model qwen2.5:7b)", style="dim"), soft_wrap=SOFT)
    console.print()
    agent = _load_agent(agent_file, None)
    view = _live_run(lambda service, on_event: service.start(agent, question, breakpoints=specs,
                                                             on_event=on_event), show_pauses=no_debug)
    view, debugged = _maybe_debug(view, agent, no_debug)
    console.print()
    if debugged and view.status in (RunStatus.PAUSED, *TERMINAL):
        code = _exit_code(view)
    else:
        code = _after(view, how_to_see=False, listed=no_debug)
    console.print(Text.assemble(("see the whole run:  ", ""), (cmd(f"runs show {view.id}"), "bold")),
                  soft_wrap=SOFT)
    console.print(Text.assemble(("replay it:          ", ""), (cmd(f"runs replay {view.id}"), "bold")),
                  soft_wrap=SOFT)
    console.print(Text.assemble(("list your runs:     ", ""), (cmd("runs list"), "bold")), soft_wrap=SOFT)
    raise typer.Exit(code)


@app.command("debug")
def debug_cmd(run_id: Annotated[str, typer.Argument(help="The paused run (run_…).", show_default=False)],
              lease_ttl: LeaseTtl = 30.0, config: RunsConfig = None) -> None:
    """Attach the debugger to a paused run, from any process (`help` at its prompt lists the commands).

    Without a terminal, commands are read from stdin: `printf 'p\\nc\\n' | tether debug RUN_ID`.
    Exits like `tether run`: 0 when the run completes, 1 when it fails or is aborted, 3 when it is left
    paused (`detach`, or end of input). A run that already finished is only described (exit 0 or 1 by
    its status); one that is running or queued elsewhere cannot be attached to (exit 2).
    """
    _use_config(config)
    _use_lease_ttl(lease_ttl)
    view = _service_call(lambda service: service.get(run_id))
    if view.status in TERMINAL:
        console.print(Text.assemble(("run ", ""), (view.id, "bold"), (" already finished: ", ""),
                                    (view.status, STATUS_STYLE.get(view.status, "")),
                                    ("; there is nothing to debug. ", ""),
                                    (f"`{cmd(f'runs show {view.id}')}` shows it; `{cmd(f'runs fork {view.id} STEP')}` "
                                     "runs it again from a step.", "dim")), soft_wrap=SOFT)
        raise typer.Exit(_exit_code(view))
    if not view.paused:
        raise UsageMistake(f"run {run_id} is {view.status}, not paused: another process is advancing it. "
                           f"Follow it with `{cmd(f'runs show {run_id}')}`; add a breakpoint to stop it with "
                           f"`{cmd(f'runs break {run_id} SPEC')}`, or cancel it")
    raise typer.Exit(_after_debug(_debug(view)))


# -- tether runs … ------------------------------------------------------------------------------

STATUSES = tuple(s.value for s in RunStatus)


@runs_app.command("list")
def list_cmd(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many runs, newest first.")] = 20,
    status: Annotated[str | None, typer.Option("--status", "-s", help=f"Only runs with this status: "
                                                                      f"{', '.join(STATUSES)}.")] = None,
    config: RunsConfig = None,
) -> None:
    """List recent runs: id, status, agent, model, tokens, cost, created, output.

    In a pipe or a file: one line a run, those columns tab-separated and whole, no header."""
    _use_config(config)
    if status is not None and status not in STATUSES:
        raise UsageMistake(f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
    wanted = None if status is None else RunStatus(status)
    runs = _service_call(lambda service: service.list(limit=limit, status=wanted))
    if not runs:
        console.print("no runs" + (f" with status {status}" if status else "") +
                      f" yet. Try `{cmd('demo')}`.")
        return
    print_runs(console, runs)


@runs_app.command("show")
def show_cmd(
    run_id: Annotated[str, typer.Argument(help="The run's id (run_…).", show_default=False)],
    full: Annotated[bool, typer.Option("--full", help="Show long texts, arguments and results in "
                                                      "full.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run and its steps as JSON.")] = False,
    config: RunsConfig = None,
) -> None:
    """Show a run's log: every step with its model text, tool calls and arguments, results, errors,
    tokens, cost and timing; pauses and decisions; the final status and answer."""
    _use_config(config)
    view = _service_call(lambda service: service.get(run_id))
    if as_json:
        print_json(run_to_dict(view))
        return
    printer = RunPrinter(console, limit=None if full else 500, show_times=True)
    printer.all(view.records)
    if view.records:
        console.print(Text(f"created {fmt_time(view.records[0].ts)}", style="dim"))
    if view.status == RunStatus.PAUSED:
        console.print("answer it with:")
        for line in how_to_answer(view.id, view.pending):
            console.print(Text("  " + line, style="bold"), soft_wrap=SOFT)
        console.print(Text.assemble(("or debug it:  ", ""), (cmd(f"debug {view.id}"), "bold")), soft_wrap=SOFT)
    elif view.status in ACTIVE:
        console.print(Text.assemble(("status ", ""), (view.status, STATUS_STYLE.get(view.status, ""))))


@runs_app.command("cancel")
def cancel_cmd(run_id: Annotated[str, typer.Argument(help="The run to cancel.", show_default=False)],
               lease_ttl: LeaseTtl = 30.0, config: RunsConfig = None) -> None:
    """Cancel a run that is queued, running or paused (pending tool calls get a "cancelled" result).

    Needs no model backend. Exits 0 once the run is cancelled; 1 when it is not (yet): another process
    advancing it was asked to stop it at its next step, or it ended otherwise first."""
    _use_config(config)
    _use_lease_ttl(lease_ttl)
    view = _service_call(lambda service: service.cancel(run_id, by="cli"))
    console.print(Text.assemble(("run ", ""), (view.id, "bold"), (" is ", ""),
                                (view.status, STATUS_STYLE.get(view.status, ""))))
    if view.status == RunStatus.CANCELLED:
        raise typer.Exit(EXIT_OK)
    # Not cancelled (yet): never exit 0 for a cancel that did not happen.
    if view.status in ACTIVE:
        err_console.print(f"run {run_id} is not cancelled yet: another process is advancing it and was asked to "
                          f"cancel it at its next step; `{cmd(f'runs show {run_id}')}` tells when it has.",
                          soft_wrap=True)
    else:
        err_console.print(f"run {run_id} ended {view.status} before the cancel took effect.", soft_wrap=True)
    raise typer.Exit(EXIT_FAILED)


@runs_app.command("resume")
def resume_cmd(run_id: Annotated[str, typer.Argument(help="The run to resume.", show_default=False)],
               lease_ttl: LeaseTtl = 30.0, config: RunsConfig = None) -> None:
    """Resume a run whose owner is gone from its log: at once when the owner was a process of this
    machine that no longer exists (a killed `tether run`), else once its lease expires.

    Completed tool calls are never run again; a call that was started but not known to have finished
    pauses the run as **uncertain** (answer it with `tether runs answer`)."""
    _use_config(config)
    _use_lease_ttl(lease_ttl)
    async def resume(service: RunsService, on_event: Callable[[Any], None]) -> RunView:
        before = await service.get(run_id)
        if before.status in TERMINAL:
            raise UsageMistake(f"run {run_id} already finished ({before.status}); there is nothing to "
                               f"resume. `{cmd(f'runs show {run_id}')}` shows it")
        if before.status == RunStatus.PAUSED:
            raise UsageMistake(f"run {run_id} is paused, not interrupted: answer its pause instead:\n  "
                               + "\n  ".join(how_to_answer(run_id, before.pending)))
        return await service.resume(run_id, on_event=on_event)

    view = _live_run(resume, existing=run_id)
    raise typer.Exit(_after(view))


@runs_app.command("answer")
def answer_cmd(
    run_id: Annotated[str, typer.Argument(help="The paused run.", show_default=False)],
    call_id: Annotated[str, typer.Argument(help="The pending item: a tool call's id (call_…).",
                                           show_default=False)],
    rerun: Annotated[bool, typer.Option("--rerun", help="Run the uncertain call again.")] = False,
    supply: Annotated[str | None, typer.Option("--supply", metavar="TEXT",
                                               help="Don't run the call: use TEXT as its result.")] = None,
    abort: Annotated[bool, typer.Option("--abort", help="Abort the run (it ends cancelled).")] = False,
    go_on: Annotated[bool, typer.Option("--continue", help="Go on (for breakpoint, approval and budget "
                                                           "pauses).")] = False,
    lease_ttl: LeaseTtl = 30.0,
    config: RunsConfig = None,
) -> None:
    """Answer a paused run's pending item, then continue the run with a live view.

    For an **uncertain** call (started before a crash, not known to have finished): --rerun, --supply
    TEXT or --abort. For a client tool: --supply OUTPUT."""
    _use_config(config)
    _use_lease_ttl(lease_ttl)
    chosen = [name for name, on in (("rerun", rerun), ("supply", supply is not None), ("abort", abort),
                                    ("continue", go_on)) if on]
    if len(chosen) != 1:
        raise UsageMistake("give exactly one of --rerun, --supply TEXT, --abort (or --continue)"
                           + (f"; got {', '.join('--' + c for c in chosen)}" if chosen else ""))
    action = chosen[0]
    view = _live_run(lambda service, on_event: service.resolve_uncertain(
        run_id, call_id, action, supply, by="cli", on_event=on_event), existing=run_id)  # type: ignore[arg-type]
    raise typer.Exit(_after(view))


@runs_app.command("break")
def break_cmd(
    run_id: Annotated[str, typer.Argument(help="The run (running or paused).", show_default=False)],
    spec: Annotated[str | None, typer.Argument(help="STOP[:TOOL_GLOB] [if CONDITION]; without it, list the "
                                                    "run's breakpoints.", show_default=False)] = None,
    once: Annotated[bool, typer.Option("--once", help="A one-shot breakpoint.")] = False,
    config: RunsConfig = None,
) -> None:
    """Add a breakpoint to a run (or list them, with their hit counts). A run advancing in another
    process picks it up at its next stop."""
    _use_config(config)
    if spec is None:
        bps = _service_call(lambda service: service.breakpoints(run_id))
        if not bps:
            console.print(f"run {run_id} has no breakpoints")
        for bp in bps:
            console.print(Text.assemble((f"{bp.id}  ", "bold"), (bp.spec(), ""), (f"   hits {bp.hits}", "dim"),
                                        ("  once" if bp.once else "", "dim")), soft_wrap=SOFT)
        return
    bp, warnings = _service_call(lambda service: service.add_breakpoint(run_id, spec, once=once))
    console.print(Text.assemble(("breakpoint ", ""), (bp.id, "bold"), (" added to ", ""), (run_id, "bold"),
                                (": ", ""), (bp.spec(), "bold")), soft_wrap=SOFT)
    for w in warnings:
        err_console.print(Text(f"warning: {w}", style="yellow"), soft_wrap=True)


@runs_app.command("clear")
def clear_cmd(
    run_id: Annotated[str, typer.Argument(help="The run.", show_default=False)],
    breakpoint_id: Annotated[str, typer.Argument(help="The breakpoint: its id (bp_2) or number (2).",
                                                 show_default=False)],
    config: RunsConfig = None,
) -> None:
    """Remove a breakpoint from a run."""
    _use_config(config)
    bp_id = f"bp_{breakpoint_id}" if breakpoint_id.isdigit() else breakpoint_id
    _service_call(lambda service: service.remove_breakpoint(run_id, bp_id))
    console.print(Text.assemble(("breakpoint ", ""), (bp_id, "bold"), (" removed from ", ""), (run_id, "bold")),
                  soft_wrap=SOFT)


@runs_app.command("fork")
def fork_cmd(
    run_id: Annotated[str, typer.Argument(help="The run to fork.", show_default=False)],
    step: Annotated[int, typer.Argument(help="The step to fork at: steps before it are reused.",
                                        show_default=False)],
    edit: Annotated[str | None, typer.Option(
        "--edit", metavar="JSON",
        help='The edits at STEP: {"result": "…"} or {"arguments": {…}} at a tool step, {"messages": […]} at a '
             "model step.")] = None,
    no_debug: Annotated[bool, typer.Option("--no-debug", help="When the fork pauses, don't open the debugger."
                                           )] = False,
    lease_ttl: LeaseTtl = 30.0,
    config: RunsConfig = None,
) -> None:
    """A new run that reuses the steps before STEP from RUN_ID's log (no model or tool call is made for
    them), applies the edits at STEP and goes on live.

    Example: `tether runs fork run_… 4 --edit '{"result": "9.99"}'`"""
    _use_config(config)
    _use_lease_ttl(lease_ttl)
    edits = None
    if edit is not None:
        try:
            edits = json.loads(edit)
        except ValueError as e:
            raise UsageMistake(f"--edit is not valid JSON: {e}") from None
        if not isinstance(edits, dict):
            raise UsageMistake('--edit takes a JSON object: {"result": "…"}, {"arguments": {…}} or {"messages": […]}')
    view = _live_run(lambda service, on_event: service.fork(run_id, step, edits, on_event=on_event),
                     show_pauses=no_debug)
    first = view.records[0].payload if view.records else None
    warnings = getattr(first, "metadata", {}).get("fork_warnings", [])
    if warnings:
        err_console.print(Text("warning: the parent already made these calls, which the fork may make again:",
                               style="yellow"), soft_wrap=True)
        for w in warnings:
            err_console.print(Text(f"  {w}", style="yellow"), soft_wrap=True)
    view, debugged = _maybe_debug(view, None, no_debug)
    raise typer.Exit(_after_debug(view) if debugged else _after(view, listed=no_debug))


@runs_app.command("replay")
def replay_cmd(
    run_id: Annotated[str, typer.Argument(help="The run to replay.", show_default=False)],
    full: Annotated[bool, typer.Option("--full", help="Serve tool results from the log too (nothing is "
                                                      "called for real).")] = False,
    lease_ttl: LeaseTtl = 30.0,
    config: RunsConfig = None,
) -> None:
    """Run a recorded run again as a new run, from its recorded model responses (tools run live,
    unless --full). A request that differs from the recording fails with "diverged at step N"."""
    _use_config(config)
    _use_lease_ttl(lease_ttl)
    view = _service_call(lambda service: service.replay(run_id, full=full))
    console.print(Text.assemble(("replayed ", ""), (run_id, "bold"), (" as ", ""), (view.id, "bold"),
                                (" (full)" if full else " (model replay, tools live)", "dim")))
    RunPrinter(console).all(view.records)
    raise typer.Exit(_after(view))


@runs_app.command("diff")
def diff_cmd(
    run_a: Annotated[str, typer.Argument(help="The first run (A).", show_default=False)],
    run_b: Annotated[str, typer.Argument(help="The second run (B).", show_default=False)],
    full: Annotated[bool, typer.Option("--full", help="Show long texts, arguments and results in "
                                                      "full.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the diff as JSON.")] = False,
    config: RunsConfig = None,
) -> None:
    """Compare two runs step by step: the first step where they diverge, then their steps side by side.

    Model steps differ when their request (fingerprint) or their answer differs; tool steps when the
    tool, its arguments or its result differ. Steps a fork or a full replay copied from a parent run
    are marked **reused**: their cost is shown but not counted as spent by that run.

    Example: `tether runs diff run_A run_B` (then `tether runs show` either of them)."""
    _use_config(config)
    from dataclasses import asdict

    from tether.domain.diff import diff_runs

    async def both(service: RunsService) -> tuple[RunView, RunView]:
        return await service.get(run_a), await service.get(run_b)

    a, b = _service_call(both)
    diff = diff_runs(a.records, b.records)
    if as_json:
        print_json({"run_a": a.id, "run_b": b.id, **asdict(diff)})
        return
    console.print(diff_header(diff), soft_wrap=SOFT)
    console.print(diff_table(diff, a.id, b.id, limit=None if full else 200))


@runs_app.command("cassette")
def cassette_cmd(
    run_id: Annotated[str, typer.Argument(help="The run to export.", show_default=False)],
    path: Annotated[Path, typer.Argument(help="Where to write the cassette (JSON lines).",
                                         show_default=False)],
    config: RunsConfig = None,
) -> None:
    """Export a run's model responses as a cassette file, to replay with --model replay:PATH.

    A cassette holds responses only: never headers, keys or other secrets."""
    from tether.services.cassettes import export_cassette

    _use_config(config)
    try:
        written = _service_call(lambda service: export_cassette(service, run_id, path))
    except OSError as e:
        raise UsageMistake(f"cannot write {path}: {e.strerror}") from None
    view, n = written.run, written.model_calls
    console.print(f"wrote {n} model call{'s' if n != 1 else ''} of {run_id} to {path}")
    agent = view.agent
    where = agent.agent_ref[5:] if agent is not None and agent.agent_ref and \
        agent.agent_ref.startswith("file:") else "AGENT_FILE"
    console.print(Text(f'replay it with: {cmd("run")} {where} "SAME TASK" --model replay:{path}', style="dim"),
                  soft_wrap=SOFT)


ConfigFile = Annotated[Path | None, typer.Option(
    "--config", help="The operator configuration file (TOML; see docs/server.md; default $TETHER_CONFIG). "
                     "Flags override it.")]


@app.command("serve")
def serve_command(
    config: ConfigFile = None,
    host: Annotated[str | None, typer.Option(
        help="Address to listen on (default 127.0.0.1); other than loopback needs API keys.")] = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535, help="Port to listen on (default 8000).")] = None,
    concurrency: Annotated[int | None, typer.Option(
        min=1, help="Runs advanced at once (default 16); more wait queued.")] = None,
    allow_file_models: Annotated[bool | None, typer.Option(
        "--allow-file-models", help="Accept model references that read files or import code (replay:, scripted:).",
        show_default=False)] = None,
    mcp_config: Annotated[Path | None, typer.Option(
        help="An mcpServers JSON file; assistants use its servers as tether_tools {type: mcp, server: NAME}.")
    ] = None,
    lease_ttl: Annotated[float | None, typer.Option(
        help="Seconds a run's lease lasts unrenewed (default 30): how soon another server takes over a dead "
             "one's runs.")] = None,
    allowed_hosts: Annotated[list[str] | None, typer.Option(
        "--allowed-hosts", help="A Host name to answer besides localhost, 127.0.0.1 and [::1] (repeat, or "
        "comma-separate; * for any). Without keys other names are refused: a defence against DNS rebinding.")
    ] = None,
    header_timeout: Annotated[float | None, typer.Option(
        help="Seconds a client has to send a request's headers (default 10); then its connection is closed.")
    ] = None,
    body_timeout: Annotated[float | None, typer.Option(
        help="Seconds a client has to send a request's body once its headers are in (default 30).")] = None,
    max_connections: Annotated[int | None, typer.Option(
        help="Open connections at most (default 1000); more are answered 503 and closed.")] = None,
    write_timeout: Annotated[float | None, typer.Option(
        help="Seconds a client may read nothing of a response it is sent (default 30); then it is dropped.")
    ] = None,
) -> None:
    """Serve OpenAI's Assistants API (and Tether's debug API) over HTTP; see docs/server.md.

    What the operator decides (keys, database, model backend, MCP servers, tool options and caps) is
    in `--config tether.toml`; without one, API keys come from TETHER_API_KEYS (comma-separated; each
    key is a tenant) and bare model names go to the OpenAI-compatible backend at OPENAI_BASE_URL.
    """
    from tether.interfaces.server.serve import serve

    serve(_operator_config(config, mcp_config, host=host, port=port, concurrency=concurrency,
                           allow_file_models=allow_file_models, lease_ttl_s=lease_ttl,
                           allowed_hosts=allowed_hosts and tuple(h for v in allowed_hosts for h in v.split(",")),
                           header_timeout_s=header_timeout, body_timeout_s=body_timeout,
                           max_connections=max_connections, write_timeout_s=write_timeout),
          tune_gc=True)  # our own long-lived process: a cheaper garbage collector (docs/server.md)


config_app = typer.Typer(help="The operator configuration of `tether serve`.", no_args_is_help=True,
                         rich_markup_mode="markdown", context_settings={"help_option_names": ["-h", "--help"]})
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(config: ConfigFile = None) -> None:
    """Print the effective operator configuration (the file, then the environment's defaults), with
    every secret shown as ***."""
    console.print(Text(_operator_config(config, None).redacted_toml().rstrip("\n")), soft_wrap=True)


def _operator_config(path: Path | None, mcp_config: Path | None, **server: Any) -> OperatorConfig:
    from tether.services.compose import operator_config

    config = operator_config(path).with_server(**server)
    return config.with_mcp_json(mcp_config) if mcp_config is not None else config


# -- tether batch …, tether runs prune (their own module) -----------------------------------------

app.add_typer(batch_app, name="batch")
runs_app.command("prune")(prune_cmd)


# -- entry point --------------------------------------------------------------------------------


def fail(message: str) -> NoReturn:
    message = localize(message, command())  # e.g. the services' "`tether runs list` shows the runs there are"
    err_console.print(Text.assemble(("error: ", "bold red"), (message, "red")), soft_wrap=True)
    raise SystemExit(EXIT_USAGE)


def main() -> None:
    localize_help(app, command())  # "Start with `uv run tether demo`" after `uv run tether --help`
    try:
        # not standalone: a wrong argument comes back here, to be said in one line (not typer's box)
        code = app(prog_name=command(), standalone_mode=False)
    except TetherError as e:
        fail(str(e) or type(e).__name__)
    except typer.Abort:
        err_console.print("aborted")
        raise SystemExit(EXIT_INTERRUPTED) from None
    except typer.TyperException as e:  # typer's own click: a usage error, a bad value, a missing file
        if type(e).__name__ == "NoArgsIsHelpError":  # the help was printed
            raise SystemExit(EXIT_USAGE) from None
        ctx = getattr(e, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        fail(" ".join(message.split()) + where)
    raise SystemExit(code if isinstance(code, int) else EXIT_OK)


if __name__ == "__main__":
    main()
