"""Fixtures shared by the test modules."""

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Where the environment sets PYTHONDONTWRITEBYTECODE (this kind of machine does), every CLI and
# server subprocess of the suite would compile SQLAlchemy, FastAPI, the openai SDK and Tether from
# source again: ~0.6 s of CPU each, minutes over the suite on a loaded machine. Let the first one
# write the bytecode cache that the others then read.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False


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
    def popen(*args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """Start the CLI without waiting for it: to interrupt or kill it."""
        return subprocess.Popen([sys.executable, "-m", "tether.interfaces.cli.app", *args], text=True,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**env, **(extra_env or {})}, cwd=tmp_path)

    def wait_for(path: Path, proc: subprocess.Popen[str], timeout_s: float = 60) -> None:
        """Wait until `path` exists (a tool of the run wrote it), while `proc` still runs."""
        deadline = time.monotonic() + timeout_s
        while not path.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                out, err = proc.communicate()
                raise AssertionError(f"{path} never appeared:\n{out}{err}")
            time.sleep(0.05)

    run.popen = popen  # type: ignore[attr-defined]
    run.wait_for = wait_for  # type: ignore[attr-defined]
    return run
