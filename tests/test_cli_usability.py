"""What a new user tripped on: hints that name a command work as printed, `tether --version`, plain flags
in `--help`, and `runs list` in a pipe (one whole line a run)."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys
from importlib.metadata import version as dist_version
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

import tether
from tether.domain.runs import RunInfo
from tether.interfaces.cli.app import app

AGENT = str(Path(tether.__file__).parent / "examples" / "florist" / "agent.toml")
SCRIPT = Path(sys.executable).parent / "tether"  # the console script of this environment
UV_VARS = ("UV", "UV_RUN_RECURSION_DEPTH", "VIRTUAL_ENV")


def shell(line: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a printed hint as the user would: pasted into a shell, in the same environment."""
    return subprocess.run(line, shell=True, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


# -- hints -------------------------------------------------------------------------------------


def test_hints_name_the_command_as_it_was_started_and_work_as_printed(cli, tmp_path):
    demo = cli("demo")
    assert demo.returncode == 0, demo.all
    run_id = re.search(r"runs show (run_[0-9a-f]+)", demo.stdout).group(1)
    # started as `python -m tether.interfaces.cli.app`: every hint says so (the interpreter by its path)
    for rest in (f"runs show {run_id}", f"runs replay {run_id}", "runs list"):
        assert f"{cli.prefix} {rest}" in demo.stdout, demo.stdout
    assert "  tether run" not in demo.stdout and " tether runs" not in demo.stdout
    assert f"  {cli.prefix} run {shlex.quote(AGENT)} " in demo.stdout  # the same agent on a real model

    shown = shell(f"{cli.prefix} runs show {run_id}", cli.env, tmp_path)  # as printed
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "#1 model" in shown.stdout and "■ completed" in shown.stdout

    # an error from the services layer names the command too
    missing = cli("runs", "show", "run_nope")
    assert missing.returncode == 2
    assert f"`{cli.prefix} runs list`" in missing.stderr, missing.stderr
    listed = shell(f"{cli.prefix} runs list", cli.env, tmp_path)
    assert listed.returncode == 0 and run_id in listed.stdout, listed.stdout + listed.stderr

    helped = cli("--help", extra_env={"COLUMNS": "300"})  # help texts and the usage line too
    assert f"Usage: {cli.prefix}" in helped.stdout, helped.stdout
    assert f"Start with {cli.prefix} demo" in helped.stdout, helped.stdout


@pytest.mark.skipif(not SCRIPT.exists(), reason="the tether console script is not installed here")
@pytest.mark.parametrize("on_path", [True, False])
def test_the_console_script_prints_hints_that_work_in_the_users_shell(cli, tmp_path, on_path):
    env = {k: v for k, v in cli.env.items() if k not in UV_VARS}  # a plain shell, not inside `uv run`
    paths = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p) != SCRIPT.parent]
    env["PATH"] = os.pathsep.join([str(SCRIPT.parent), *paths] if on_path else paths)
    proc = subprocess.run([str(SCRIPT), "runs", "show", "run_nope"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    expected = "tether" if on_path else shlex.quote(str(SCRIPT))
    assert f"`{expected} runs list`" in proc.stderr, proc.stderr
    listed = shell(f"{expected} runs list", env, tmp_path)
    assert listed.returncode == 0 and "no runs yet" in listed.stdout, listed.stdout + listed.stderr


@pytest.mark.skipif(not SCRIPT.exists(), reason="the tether console script is not installed here")
def test_under_uv_run_the_hints_say_uv_run(cli):
    venv = SCRIPT.parent.parent
    env = {**cli.env, "UV": "uv", "UV_RUN_RECURSION_DEPTH": "1", "VIRTUAL_ENV": str(venv)}
    proc = subprocess.run([str(SCRIPT), "runs", "show", "run_nope"], capture_output=True, text=True, env=env,
                          cwd=venv.parent, timeout=120)  # in the project, as `uv run` needs
    assert "`uv run tether runs list`" in proc.stderr, proc.stderr


def test_the_rule_for_the_command_prefix(tmp_path):
    from tether.interfaces.cli.invocation import command_for

    project = tmp_path / "project"
    script = str(project / ".venv" / "bin" / "tether")
    uv = {"UV": "/usr/bin/uv", "UV_RUN_RECURSION_DEPTH": "1", "VIRTUAL_ENV": str(project / ".venv")}

    def nowhere(_: str) -> None:
        return None

    def found(path: str):
        return lambda _: path

    assert command_for(script, "/x/python", uv, str(project), nowhere) == "uv run tether"
    assert command_for(script, "/x/python", uv, str(project / "sub"), nowhere) == "uv run tether"
    # uv run from elsewhere (--directory): `uv run tether` would not find the project here
    assert command_for(script, "/x/python", uv, str(tmp_path), nowhere) == script
    # inside `uv run`, PATH is uv's: `tether` on it says nothing about the user's shell
    assert command_for(script, "/x/python", {"UV": "uv"}, str(project), found(script)) == script
    assert command_for(script, "/x/python", {}, str(tmp_path), found(script)) == "tether"
    assert command_for(script, "/x/python", {}, str(tmp_path), found("/usr/bin/tether")) == script
    assert command_for(script, "/x/python", {}, str(tmp_path), nowhere) == script
    assert command_for(".venv/bin/tether", "/x/python", {}, str(project), nowhere) == script
    assert command_for("/my dir/tether", "/x/python", {}, "/", nowhere) == "'/my dir/tether'"
    for argv0 in ("/site/tether/interfaces/cli/app.py", "-c", ""):
        assert command_for(argv0, "/x y/python", uv, str(project), nowhere) == \
            "'/x y/python' -m tether.interfaces.cli.app"


def test_localize_rewrites_command_lines_only():
    from tether.interfaces.cli.invocation import localize

    text = "Start with `tether demo`, then `tether runs show RUN_ID`; pip install 'tether[mcp]'; tether.tool"
    assert localize(text, "uv run tether") == ("Start with `uv run tether demo`, then `uv run tether runs show "
                                               "RUN_ID`; pip install 'tether[mcp]'; tether.tool")
    assert localize(text, "tether") == text
    once = localize(text, "uv run tether")
    assert localize(once, "uv run tether") == once  # a message localized twice says it once
    assert localize("`/v/bin/tether runs list`", "/v/bin/tether") == "`/v/bin/tether runs list`"


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


@pytest.mark.parametrize("args", [("runs", "list", "--limit", "abc"), ("serve", "--port", "70000"), ("nosuch",),
                                  ("runs", "show"), ("demo", "--lease-ttl", "inf"), ("runs", "resume", "x", "--nope")])
def test_a_wrong_argument_is_one_line_and_exit_2(cli, args):
    out = cli(*args)
    assert out.returncode == 2, out.all
    assert out.stderr.startswith("error: ") and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "╭" not in out.all  # not typer's box
