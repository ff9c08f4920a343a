"""The public API as type checkers and users see it: a literal `__all__`, every error class in one
module, typed results, and the documentation's Python snippets passing `mypy --strict`."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import importlib
import inspect
import json
import pkgutil
import re
import subprocess
import sys
import typing
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import tether
import tether.errors
from tether import Agent, Run, RunView
from tether.adapters.models.scripted import ScriptedModel, call_tool, reply
from tether.adapters.store.memory import MemoryStore
from tether.domain.errors import TetherError
from tether.services.runs import RunsService

ROOT = Path(__file__).parents[1]
SRC = ROOT / "src" / "tether"
HEAVY = {"openai", "httpx2", "sqlalchemy", "genai_prices", "typer", "rich", "pydantic", "jsonschema"}

# Errors only an interface raises and reports as text (a CLI line, an HTTP envelope): Python code
# calling Tether never meets them, so they stay with their interface.
INTERFACE_ONLY = {
    "tether.interfaces.cli.debugger.DebuggerError",  # a debugger command's mistake, printed at its prompt
    "tether.interfaces.cli.usage.UsageMistake",  # a command-line mistake: exit 2 with one line
}


def _literal_all(path: Path) -> list[str]:
    """The module's `__all__`, which must be a literal list of strings (type checkers read only that)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["__all__"]:
            assert isinstance(node.value, ast.List), f"{path}: __all__ must be a literal list"
            names = [e.value for e in node.value.elts if isinstance(e, ast.Constant)]
            assert len(names) == len(node.value.elts) and all(isinstance(n, str) for n in names)
            return names
    raise AssertionError(f"{path} has no __all__")


def _type_checking_imports(path: Path) -> dict[str, str]:
    """name -> module, for the `from MODULE import NAME` lines under `if ...TYPE_CHECKING:`."""
    out: dict[str, str] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.module, ast.unparse(imp)
                for alias in imp.names:
                    assert alias.asname is None, ast.unparse(imp)
                    out[alias.name] = imp.module
    return out


def _public_attributes(module: object) -> set[str]:
    """What `from module import *`-minded readers would see: non-underscore names, submodules aside."""
    return {n for n, v in vars(module).items() if not n.startswith("_") and not inspect.ismodule(v)}


def test_tether_all_is_a_sorted_literal_list_and_every_name_is_typed_and_resolves():
    names = _literal_all(SRC / "__init__.py")
    assert names == sorted(set(names)), "keep __all__ sorted, without duplicates"
    assert set(names) == set(tether._EXPORTS), "the lazy exports and __all__ disagree"
    typed = _type_checking_imports(SRC / "__init__.py")
    assert set(typed) == set(names), "every public name is imported under TYPE_CHECKING, for type checkers"
    assert {n: typed[n] for n in names} == {n: tether._EXPORTS[n] for n in names}, "imported from where it lives"
    assert tether.__all__ == names
    for name in names:
        assert not name.startswith("_")
        value = getattr(tether, name)
        assert getattr(value, "__module__", "").startswith("tether."), (name, value)
        assert not any(part.startswith("_") for part in value.__module__.split(".")), (name, value.__module__)
    assert _public_attributes(tether) <= set(names), "nothing beyond __all__ is public"
    assert set(dir(tether)) >= set(names)
    with pytest.raises(AttributeError, match="has no attribute 'Agnet'"):
        tether.Agnet  # noqa: B018


def test_tether_errors_exports_every_error_class_with_a_literal_all():
    names = _literal_all(SRC / "errors.py")
    assert names == sorted(set(names))
    assert tether.errors.__all__ == names
    for name in names:
        value = getattr(tether.errors, name)
        assert isinstance(value, type) and issubclass(value, Exception), name
        assert getattr(tether, name) is value, f"tether.{name} is the same class"
    assert _public_attributes(tether.errors) <= set(names)
    with pytest.raises(AttributeError):
        tether.errors.NoSuchError  # noqa: B018


def _every_module() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages([str(SRC)], prefix="tether."))


def _subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub, *_subclasses(sub)}
    return out


def test_every_error_class_a_user_can_meet_is_exported_from_tether_errors_and_tether():
    for name in _every_module():
        importlib.import_module(name)
    found = {f"{c.__module__}.{c.__qualname__}": c for c in _subclasses(TetherError)}
    found = {k: c for k, c in found.items() if k.startswith("tether.")}  # not the tests' own
    assert set(INTERFACE_ONLY) <= set(found), "an interface-only error moved or went: update INTERFACE_ONLY"
    missing = sorted(k for k, c in found.items()
                     if k not in INTERFACE_ONLY and getattr(tether.errors, c.__name__, None) is not c)
    assert not missing, f"export these from tether.errors (and tether): {missing}"
    assert tether.errors.ToolError is tether.ToolError  # not a TetherError: a tool raises it for the model
    assert issubclass(tether.StoreError, TetherError) and issubclass(tether.ReplayDiverged, tether.ModelError)


def test_import_tether_errors_stays_light():
    code = "import sys, json, tether.errors; print(json.dumps(sorted(sys.modules)))"
    mods = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     check=True).stdout)
    assert not HEAVY & {m.split(".")[0] for m in mods}


def test_agent_run_returns_a_typed_run_and_its_options_are_keywords():
    public = {name: getattr(tether, name) for name in tether.__all__}  # the names imported for type checkers
    hints = typing.get_type_hints(Agent.run_sync, localns=public)
    assert hints["return"] is Run and RunView is Run
    assert typing.get_type_hints(Agent.iter, localns=public)["return"] == AsyncIterator[tether.Event]
    for method in (Agent.run, Agent.run_sync, Agent.iter):
        params = inspect.signature(method).parameters
        assert not any(p.kind is p.VAR_KEYWORD for p in params.values()), method  # no **options
        assert {"service", "breakpoints", "thread_id", "metadata"} <= set(params)
    for name, method in inspect.getmembers(RunsService, inspect.iscoroutinefunction):
        if not name.startswith("_"):
            assert "return" in method.__annotations__, f"RunsService.{name} has no return type"
    with pytest.raises(TypeError, match="colour"):
        Agent("x", ScriptedModel([reply("hi")])).run_sync("hi", colour="red")  # type: ignore[call-arg]


def test_agent_run_passes_its_keywords_to_the_service():
    service = RunsService(MemoryStore())
    agent = Agent("x", ScriptedModel([call_tool("calculator", {"expression": "1+1"}), reply("2")]),
                  tools=["calculator"])
    seen: list[str] = []
    run = agent.run_sync("1+1?", service=service, breakpoints=["before_tool:calculator"],
                         metadata={"case": "a"}, on_event=lambda e: seen.append(e.type))
    assert isinstance(run, Run) and run.status == "paused" and run.pending[0].name == "calculator"
    assert "record" in seen
    listed = asyncio.run(service.list())
    assert [r.id for r in listed] == [run.id]
    assert repr(run).startswith(f"<Run {run.id} paused")


def test_a_tool_keeps_the_type_of_its_function():
    @tether.tool(timeout_s=3, idempotent=True)
    def double(n: int) -> int:
        """Double n."""
        return 2 * n

    assert isinstance(double, tether.FunctionTool) and double(4) == 8
    assert double.policy.timeout_s == 3 and double.policy.idempotent
    # `@tool(...)`'s typed keywords are exactly ToolPolicy's fields (a new field needs a keyword there)
    decorator = typing.get_overloads(tether.tool)[1]
    keywords = set(inspect.signature(decorator).parameters) - {"name", "description", "policy"}
    assert keywords == {f.name for f in dataclasses.fields(tether.ToolPolicy)}


# -- the documentation's Python snippets under `mypy --strict` ---------------------------------

NO_TYPECHECK = "<!-- no-typecheck -->"


def doc_snippets() -> dict[str, str]:
    """file-and-line name -> code, for every ```python block of README.md and docs/*.md, except those
    right after a `<!-- no-typecheck -->` line (a fragment that is not meant to stand alone)."""
    out = {}
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        for m in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
            before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            if before.strip() == NO_TYPECHECK:
                continue
            line = text.count("\n", 0, m.start()) + 1
            out[f"{path.stem.lower().replace('-', '_')}_line{line}"] = m.group(1)
    return out


def test_the_docs_have_python_snippets_to_check():
    names = doc_snippets()
    assert any(n.startswith("readme_") for n in names) and any(n.startswith("server_") for n in names)
    assert any("from tether import" in code for code in names.values())


MISUSE = """\
from tether import Agent, Run
run: Run = Agent("x", "scripted:m:a").run_sync("hi")
n: int = run.output
Agent("x", "scripted:m:a").run_sync("hi", colour="red")
import tether
tether.Agnet
"""


@pytest.fixture(scope="module")
def mypy_strict(tmp_path_factory):
    """One mypy run over every snippet (each its own module) and a misuse of the API, from outside the
    repository: mypy finds `tether` as users do, installed, typed by its py.typed marker."""
    where = tmp_path_factory.mktemp("snippets")
    files = {**doc_snippets(), "misuse": MISUSE}
    for name, code in files.items():
        (where / f"{name}.py").write_text(code)
    (where / "mypy.ini").write_text("[mypy]\n")  # a user's own project: none of ours
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--config-file", "mypy.ini",
         "--python-executable", sys.executable, *sorted(f"{n}.py" for n in files)],
        cwd=where, capture_output=True, text=True, timeout=600,
    )
    assert not out.stderr, out.stderr
    return out.stdout.splitlines()


def test_the_docs_python_snippets_pass_mypy_strict_against_the_installed_package(mypy_strict):
    others = [line for line in mypy_strict if not line.startswith(("misuse.py:", "Found "))]
    assert not others, "\n".join(mypy_strict)


def test_mypy_strict_catches_a_misuse_of_the_public_api(mypy_strict):
    """The check above is not vacuous: with `py.typed` the package's types reach the user's checker."""
    report = "\n".join(mypy_strict)
    assert 'misuse.py:3: error: Incompatible types in assignment (expression has type "str | None"' in report
    assert 'misuse.py:4: error: Unexpected keyword argument "colour"' in report
    assert 'misuse.py:6: error: Module has no attribute "Agnet"' in report
