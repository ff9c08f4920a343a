"""How the user runs the `tether` command here, so that every hint the CLI prints (`tether runs show …`)
works when pasted into the same shell; and the version `tether --version` prints.

The rule (`command_for`), from what this process can see:

- Started as the `tether` console script:
  - by `uv run` (uv puts `UV` / `UV_RUN_RECURSION_DEPTH` in the environment), with the script in the
    project's environment (`VIRTUAL_ENV`) and the current folder inside that project: `uv run tether`.
    `uv run` prepends the environment to PATH, so PATH says nothing about the user's own shell;
  - otherwise, when `tether` on PATH is this very script: `tether`;
  - otherwise the script by its absolute path (e.g. `/srv/app/.venv/bin/tether`).
- Anything else (`python -m tether.interfaces.cli.app`, a program that embeds the app): this
  interpreter by its absolute path, `-m tether.interfaces.cli.app`.

Every branch prints something that runs this same installation; the absolute paths also work from
any folder.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

MODULE = "tether.interfaces.cli.app"
SCRIPT_NAMES = ("tether", "tether.exe")


def command_for(argv0: str, executable: str, environ: Mapping[str, str], cwd: str,
                which: Callable[[str], str | None] = shutil.which) -> str:
    """The command prefix that runs this Tether from the user's shell (see the module's docstring)."""
    script = Path(argv0)
    if script.name in SCRIPT_NAMES:
        script = Path(cwd, script).absolute()  # as the process was started: symlinks kept
        venv = environ.get("VIRTUAL_ENV")
        if "UV" in environ or "UV_RUN_RECURSION_DEPTH" in environ:
            if venv and _inside(script, Path(venv)) and _inside(Path(cwd), Path(venv).parent):
                return "uv run tether"
        else:
            found = which("tether")
            if found is not None and _same(Path(found), script):
                return "tether"
        return shlex.quote(str(script))
    return f"{shlex.quote(executable or 'python3')} -m {MODULE}"


@functools.cache
def command() -> str:
    """The command prefix for this process (`uv run tether`, `tether`, …), worked out once."""
    return command_for(sys.argv[0] if sys.argv else "", sys.executable, os.environ, os.getcwd())


def cmd(rest: str) -> str:
    """A command line to print as a hint: `cmd(f"runs show {run_id}")` → `uv run tether runs show run_…`."""
    return f"{command()} {rest}"


# `tether run`, `tether runs show`, … where a text gives a command line (not `tether.x`, `tether[mcp]`)
_COMMAND = re.compile(r"(?<![\w./-])tether(?= (?:run|runs|demo|debug|serve|config)\b)")


def localize(text: str, prefix: str) -> str:
    """`text` with each `tether <command>` in it starting with `prefix` instead; a command that
    already does (a message localized before) is left as it is."""
    if prefix == "tether":
        return text
    lead = prefix.removesuffix("tether") if prefix.endswith(" tether") else ""

    def sub(m: re.Match[str]) -> str:
        done = lead and text[max(0, m.start() - len(lead)):m.start()] == lead
        return m.group(0) if done else prefix

    return _COMMAND.sub(sub, text)


def version() -> str:
    """The installed distribution's version (its metadata), else the package's `__version__`."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("tether")
    except PackageNotFoundError:
        from tether import __version__

        return __version__


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.absolute().relative_to(folder.absolute())
    except ValueError:
        return False
    return True


def _same(a: Path, b: Path) -> bool:
    try:
        return a.absolute() == b.absolute() or os.path.samefile(a, b)
    except OSError:
        return False
