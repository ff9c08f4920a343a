"""Fixtures shared by the test modules."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def cli(tmp_path):
    """Run the real `tether` CLI in a subprocess, with its own TETHER_HOME and no model keys.

    A traceback in its output is always a bug: user mistakes get a short `error: …`.
    """
    env = {k: v for k, v in os.environ.items()
           if k not in ("COLUMNS", "FORCE_COLOR", "TETHER_DATABASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env["TETHER_HOME"] = str(tmp_path / "home")
    env["NO_COLOR"] = "1"

    def run(*args: str, stdin: str = "", cwd: Path | None = None, extra_env: dict[str, str] | None = None):
        proc = subprocess.run([sys.executable, "-m", "tether.interfaces.cli.app", *args], input=stdin,
                              capture_output=True, text=True, env={**env, **(extra_env or {})},
                              cwd=cwd or tmp_path, timeout=120)
        proc.all = proc.stdout + proc.stderr  # type: ignore[attr-defined]
        assert "Traceback" not in proc.all, proc.all
        return proc

    run.env = env  # type: ignore[attr-defined]
    # the command prefix its hints print: the interpreter by its path, as the CLI was started with -m
    run.prefix = f"{shlex.quote(sys.executable)} -m tether.interfaces.cli.app"  # type: ignore[attr-defined]
    return run
