"""What a new user tripped on: `tether --version`, plain flags in `--help`, and `runs list` in a pipe (one
whole line a run)."""

from __future__ import annotations

import io
import json
import re
from importlib.metadata import version as dist_version

import typer
from rich.console import Console
from typer.testing import CliRunner

import tether
from tether.domain.runs import RunInfo
from tether.interfaces.cli.app import app

# -- --version ---------------------------------------------------------------------------------


def test_version(cli):
    for flag in ("--version", "-V"):
        proc = cli(flag)
        assert proc.returncode == 0, proc.all
        assert proc.stdout == f"tether {dist_version('tether')}\n"
    assert dist_version("tether") == tether.__version__


# -- plain flags in --help ---------------------------------------------------------------------


def _commands(group: typer.core.TyperGroup, path: tuple[str, ...] = ()):
    yield path
    for name, command in group.commands.items():
        if isinstance(command, typer.core.TyperGroup):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name)


def test_no_flag_shows_a_bool_value_in_help(cli):
    runner = CliRunner()
    paths = list(_commands(typer.main.get_command(app)))  # type: ignore[arg-type]
    assert ("run",) in paths and ("runs", "list") in paths
    for path in paths:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "100"})
        assert result.exit_code == 0, result.output
        assert "<bool>" not in result.output, (path, result.output)
        assert "--help" in result.output
    run_help = cli("run", "--help")  # the real command, in a subprocess
    assert "--no-debug" in run_help.stdout and "--json" in run_help.stdout
    assert "<bool>" not in run_help.stdout, run_help.stdout
    assert re.search(r"--model\s+-m\s+\S+\s+Use this model", run_help.stdout), run_help.stdout  # values keep a type


# -- runs list in a pipe -----------------------------------------------------------------------

LONG_AGENT = "a-florist-agent-with-a-name-much-longer-than-twenty-characters"
LONG_MODEL = "scripted:tether.examples.florist.offline_model:florist"  # 54 characters: the table folded it


def test_runs_list_in_a_pipe_prints_one_whole_line_a_run(cli, tmp_path):
    agent = tmp_path / "long.toml"
    agent.write_text(f'name = "{LONG_AGENT}"\nmodel = "{LONG_MODEL}"\ntools = ["calculator", '
                     '"tether.examples.florist.tools:price_lookup"]\n')
    task = "What do roses cost on the market now, and what should I charge for a 15% profit? " * 3
    made = cli("run", str(agent), task, "--json")
    assert made.returncode == 0, made.all
    long_run = json.loads(made.stdout)["id"]
    demo = cli("demo")
    assert demo.returncode == 0, demo.all
    newest = re.search(r"runs show (run_[0-9a-f]+)", demo.stdout).group(1)
    ids = {long_run, newest}

    for columns in (None, "60"):  # a COLUMNS left in the environment changes nothing in a pipe
        listed = cli("runs", "list", extra_env={"COLUMNS": columns} if columns else None)
        assert listed.returncode == 0, listed.all
        lines = listed.stdout.splitlines()
        assert len(lines) == 2, listed.stdout  # no header, nothing wrapped onto a second line
        for line in lines:
            fields = line.split("\t")
            assert len(fields) == 8, line
            run_id, status, agent_name, model, tokens, cost, created, output = fields
            assert run_id in ids and status == "completed"
            assert model == LONG_MODEL and agent_name in (LONG_AGENT, "florist")
            assert int(tokens) > 0 and cost == "$0" and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", created)
            assert output.startswith("[offline scripted model]") and "…" not in output
            assert line == line.rstrip()
        assert lines[0].split("\t")[0] == newest  # newest first: `| head -1 | cut -f1` is its id

    shown = cli("runs", "show", long_run, extra_env={"COLUMNS": "60"})  # its step log keeps lines whole too
    head = shown.stdout.splitlines()[0]
    assert head == f"run {long_run}  agent {LONG_AGENT}  model {LONG_MODEL}", shown.stdout


def _info(**kw) -> RunInfo:
    base = {"id": "run_0123456789abcdef0123456789", "status": "completed", "agent_name": "florist",
            "model": LONG_MODEL, "created_at": 1_800_000_000.0, "updated_at": 1_800_000_000.0}
    return RunInfo(**{**base, **kw})


def test_runs_lines_keep_each_run_on_one_line_and_a_terminal_keeps_the_table():
    from tether.interfaces.cli.render import print_runs, runs_lines

    info = _info(output="first\tline\nsecond line\r\n", input_tokens=1200, output_tokens=34, cost_usd=0.00123)
    (line,) = runs_lines([info])
    fields = line.split("\t")
    assert fields[:6] == [info.id, "completed", "florist", LONG_MODEL, "1234", "$0.001230"]
    assert fields[7] == "first line ⏎ second line"

    tty = io.StringIO()
    print_runs(Console(file=tty, force_terminal=True, width=100, color_system=None), [info])
    assert tty.getvalue().split()[:2] == ["id", "status"] and "\t" not in tty.getvalue()  # the table
    pipe = io.StringIO()
    print_runs(Console(file=pipe, force_terminal=False, width=100), [info])
    assert pipe.getvalue() == line + "\n"
