"""Packaging: a plain install (no extras, no dev tools) keeps the CLI, the debugger and the server;
Monty is the `tether[monty]` extra, asked for by name when missing; 0.x dependencies have upper
bounds; the sdist ships the package and its docs, not the repository's tooling."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tether.adapters.tools.sandbox import python_tool
from tether.errors import ConfigError
from tether.examples import florist
from tether.services.agents import load_agent_file

ROOT = Path(__file__).parents[1]
UV = shutil.which("uv")
MONTY_AGENT = 'model = "scripted:x:y"\ntools = ["python"]\n[tool_options.python]\nbackend = "monty"\n'


def _uv(*args: str, cwd: Path = ROOT) -> None:
    if UV is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("uv is not on PATH (the README's commands install it: python3 -m pip install uv)")
        pytest.skip("uv is not on PATH")
    out = subprocess.run([UV, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


# -- Monty is an extra ------------------------------------------------------------------------------


def test_a_monty_backend_without_pydantic_monty_is_a_config_error_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydantic_monty", None)  # `import pydantic_monty` now fails
    with pytest.raises(ConfigError, match=re.escape("pip install 'tether[monty]'")):
        python_tool("monty")
    (tmp_path / "agent.toml").write_text(MONTY_AGENT)
    with pytest.raises(ConfigError) as e:
        load_agent_file(tmp_path / "agent.toml")
    assert str(tmp_path / "agent.toml") in str(e.value) and "tether[monty]" in str(e.value)
    assert python_tool("subprocess").backend.name == "subprocess"  # the default needs no extra


# -- dependencies and the lock ----------------------------------------------------------------------


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()


def test_every_0x_dependency_has_an_upper_bound_below_the_next_minor():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = {p["name"]: p["version"] for p in tomllib.loads((ROOT / "uv.lock").read_text())["package"]}
    requirements = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values()
                                                for r in extra)]
    unbounded = []
    for requirement in requirements:
        version = locked[_name(requirement)]
        if version.startswith("0."):
            minor = int(version.split(".")[1])
            if f"<0.{minor + 1}" not in requirement.replace(" ", ""):
                unbounded.append(f"{requirement} (locked {version})")
    assert not unbounded, f"give these `<0.NEXT` upper bounds: {unbounded}"
    assert "pydantic-monty" not in {_name(r) for r in project["dependencies"]}
    assert [_name(r) for r in project["optional-dependencies"]["monty"]] == ["pydantic-monty"]


def test_the_lock_file_matches_pyproject():
    _uv("lock", "--check")


# -- the sdist ------------------------------------------------------------------------------------


def test_the_sdist_holds_the_package_and_its_docs_and_no_repository_tooling(tmp_path):
    _uv("build", "--sdist", "--out-dir", str(tmp_path))
    (sdist,) = tmp_path.glob("tether-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    top = {n.split("/", 1)[0] for n in names}
    assert top <= {"src", "docs", "README.md", "CHANGELOG.md", "LICENSE", "pyproject.toml", "PKG-INFO", ".gitignore"}
    assert {"src", "docs", "README.md", "CHANGELOG.md", "pyproject.toml"} <= top
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".db"))]
    wanted = {"src/tether/py.typed", "src/tether/examples/florist/agent.toml",
              "src/tether/examples/florist/prices.csv", "src/tether/examples/florist/demo.cassette.jsonl",
              "src/tether/examples/analyst/agent.toml"}
    assert wanted <= names
    package = {str(p.relative_to(ROOT)) for p in (ROOT / "src" / "tether").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert package <= names, sorted(package - names)


# -- a plain install, as a user gets it -------------------------------------------------------------


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with `pip install .` and nothing else (the locked versions of the
    package's own dependencies, from PyPI or uv's cache): its bin folder."""
    where = tmp_path_factory.mktemp("plain-install")
    venv, pins = where / "venv", where / "requirements.txt"
    _uv("venv", "-q", "--python", sys.executable, str(venv))
    _uv("export", "--frozen", "--no-dev", "--no-emit-project", "-q", "-o", str(pins))
    _uv("pip", "install", "-q", "--python", str(venv / "bin" / "python"), "-r", str(pins), str(ROOT))
    return venv / "bin"


def _tether(bin_dir: Path, home: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TETHER_DATABASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "TETHER_API_KEYS", "VIRTUAL_ENV")}
    env.update({"TETHER_HOME": str(home), "NO_COLOR": "1", "COLUMNS": "200"})
    return subprocess.run([str(bin_dir / "tether"), *args], input=stdin, capture_output=True, text=True, env=env,
                          cwd=home, timeout=120)


def test_a_plain_install_has_the_cli_and_no_dev_or_optional_packages(plain: Path, tmp_path):
    out = _tether(plain, tmp_path, "--help")
    assert out.returncode == 0 and all(c in out.stdout for c in ("run", "debug", "serve", "runs")), out.stdout
    missing = subprocess.run([str(plain / "python"), "-c", "import pydantic_monty"], capture_output=True, text=True)
    assert "No module named 'pydantic_monty'" in missing.stderr
    for dev_only in ("pytest", "mypy", "mcp", "psycopg"):
        found = subprocess.run([str(plain / "python"), "-c", f"import {dev_only}"], capture_output=True)
        assert found.returncode != 0, f"{dev_only} is installed by a plain install"


def test_a_plain_install_runs_the_offline_example_and_debugs_it(plain: Path, tmp_path):
    agent_file = subprocess.run([str(plain / "python"), "-c", "import tether.examples.florist as f; "
                                 "print(f.AGENT_FILE)"], capture_output=True, text=True, check=True).stdout.strip()
    assert "site-packages" in agent_file  # the installed copy, not the repository's
    paused = _tether(plain, tmp_path, "run", agent_file, florist.TASK, "--break", "before_tool:calculator")
    assert paused.returncode == 3, paused.stdout + paused.stderr  # paused at the breakpoint
    run_id = _tether(plain, tmp_path, "runs", "list").stdout.split("\t", 1)[0]
    assert run_id.startswith("run_")
    debugged = _tether(plain, tmp_path, "debug", run_id, stdin="c\n")
    assert debugged.returncode == 0, debugged.stdout + debugged.stderr
    assert "completed" in debugged.stdout and "$2.76" in debugged.stdout


def test_a_plain_install_refuses_a_monty_backend_naming_the_extra(plain: Path, tmp_path):
    (tmp_path / "agent.toml").write_text(MONTY_AGENT)
    out = _tether(plain, tmp_path, "run", str(tmp_path / "agent.toml"), "hi")
    assert out.returncode == 2, out.stdout + out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "pip install 'tether[monty]'" in out.stderr, out.stderr


@pytest.fixture
def served(plain: Path, tmp_path: Path) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("TETHER_DATABASE_URL", "TETHER_API_KEYS", "VIRTUAL_ENV")}
    env.update({"TETHER_HOME": str(tmp_path), "OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_API_KEY": "x"})
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([str(plain / "tether"), "serve", "--host", "127.0.0.1", "--port", str(port)],
                                env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            assert proc.wait(timeout=20) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()


def test_a_plain_install_serves_the_api(served: str):
    deadline = time.monotonic() + 60
    while True:
        try:
            answer = httpx2.get(f"{served}/v1/assistants", timeout=5)
            break
        except httpx2.HTTPError:
            assert time.monotonic() < deadline, "tether serve did not answer within 60 s"
            time.sleep(0.1)
    assert answer.status_code == 200, answer.text
    assert answer.json()["object"] == "list" and answer.json()["data"] == []
    made = httpx2.post(f"{served}/v1/assistants", json={"model": "gpt-test", "name": "plain"}, timeout=10)
    assert made.status_code == 200 and made.json()["id"].startswith("asst_"), made.text
    assert [a["name"] for a in httpx2.get(f"{served}/v1/assistants", timeout=5).json()["data"]] == ["plain"]
