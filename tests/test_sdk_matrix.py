"""The Assistants SDK suite (tests/sdk) under older `openai` SDKs than the one this project pins.

`uv run pytest` runs tests/sdk with the project's own SDK (3.x). Here each older version gets an
isolated throwaway environment with only `openai==VER` and pytest; the server under test still runs
in this environment (TETHER_PYTHON), so only the client side changes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pg import postgres, postgres_url  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parent.parent
OLD_SDKS = ["1.109.1", "2.54.0"]
TIMEOUT_S = 600


@pytest.mark.parametrize("version", OLD_SDKS)
def test_sdk_suite_passes_with_older_openai(version: str) -> None:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("`uv` is not on PATH: cannot make an isolated environment with an older openai SDK")
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "UV_PROJECT_ENVIRONMENT", "PYTEST_ADDOPTS",
                        "PYTEST_PLUGINS", "TETHER_DATABASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env["TETHER_PYTHON"] = sys.executable
    env["TETHER_SDK_EXPECT_OPENAI"] = version  # tests/sdk checks it really got this version
    cmd = [uv, "run", "--no-project", "--isolated", "--python", f"{sys.version_info[0]}.{sys.version_info[1]}",
           "--with", f"openai=={version}", "--with", "pytest",
           "pytest", "-q", "-p", "no:cacheprovider", "--confcutdir", "tests/sdk", "tests/sdk"]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or "") if isinstance(exc.stdout, str) else (exc.stdout or b"").decode(errors="replace")
        pytest.fail(f"openai=={version}: the suite did not finish within {TIMEOUT_S}s\n{out[-6000:]}")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"openai=={version}: `{' '.join(cmd)}` exited {proc.returncode}\n{output[-12000:]}"
    assert " passed" in proc.stdout, output[-4000:]


@pytest.mark.postgres
def test_sdk_suite_passes_on_postgres(request: pytest.FixtureRequest) -> None:
    """The same suite with the server's store on Postgres (objects, runs and leases there)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "TETHER_DATABASE_URL")}
    env["TETHER_SDK_DATABASE_URL"] = str(request.getfixturevalue("postgres_url"))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--confcutdir", "tests/sdk", "tests/sdk"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
                          stdin=subprocess.DEVNULL)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"tests/sdk on Postgres exited {proc.returncode}\n{output[-12000:]}"
    assert " passed" in proc.stdout, output[-4000:]
