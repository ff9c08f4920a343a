"""Tuning the garbage collector is opt-in: `tether serve` does it, the library never does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

_PROBE = "import gc, json; print(json.dumps([list(gc.get_threshold()), gc.get_freeze_count()]))"


def _python(code: str, tmp_path: Path) -> list[object]:
    env = {**os.environ, "TETHER_HOME": str(tmp_path), "TETHER_CONFIG": "", "TETHER_API_KEYS": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_the_library_leaves_the_garbage_collector_as_it_found_it(tmp_path: Path) -> None:
    code = f"""
import asyncio, gc
before = [list(gc.get_threshold()), gc.get_freeze_count()]
import tether
from tether import Agent, RunsService, MemoryStore, ScriptedModel, reply
from tether.adapters.store.sql import SqlStore

async def main():
    for store in (MemoryStore(), SqlStore("sqlite:///{tmp_path}/t.db")):
        run = await RunsService(store).start(Agent("a", ScriptedModel([reply("hi")])), "go")
        assert run.output == "hi"
asyncio.run(main())
assert [list(gc.get_threshold()), gc.get_freeze_count()] == before
{_PROBE}
"""
    threshold, frozen = _python(code, tmp_path)
    assert threshold[0] < 10_000 and frozen == 0  # type: ignore[index]


def test_tune_gc_freezes_start_up_and_collects_the_young_generation_less_often(tmp_path: Path) -> None:
    code = f"""
import gc
older = gc.get_threshold()[1:]
from tether.runtime import GC_THRESHOLD0, tune_gc
tune_gc()
assert gc.get_threshold() == (GC_THRESHOLD0, *older)
{_PROBE}
"""
    threshold, frozen = _python(code, tmp_path)
    assert threshold[0] == 50_000 and frozen > 1000  # type: ignore[index,operator]


def test_tether_serve_tunes_its_own_process(tmp_path: Path) -> None:
    # The real command, in a subprocess; uvicorn.run is replaced by a probe, so nothing listens.
    code = f"""
import uvicorn

def probe(*args, **kwargs):
    {_PROBE}

uvicorn.run = probe
from tether.interfaces.cli.app import app
app(["serve", "--port", "0"], standalone_mode=False)
"""
    threshold, frozen = _python(code, tmp_path)
    assert threshold[0] == 50_000 and frozen > 1000  # type: ignore[index,operator]
