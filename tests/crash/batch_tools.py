"""The agent of the batch kill test (tests/test_batch_crash.py): one side-effecting tool call a case.

`effect` is not idempotent (its policy is the default), so its call is recorded before it runs, and
a call interrupted by a kill is left `uncertain`, never repeated behind anyone's back. It writes the
case's effect once per idempotency key (run and call id, which a rerun of that call keeps), so
rerunning an uncertain call does nothing twice — while a second RUN for a case (what a batch must
never make) would mint a new key and show up as a second effect in the ledger
(TETHER_LEDGER_DIR/ledger). A case whose input starts with "fail"
makes the model give an empty answer (the run fails) while the file TETHER_LEDGER_DIR/failing exists.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from tether.adapters.models.scripted import call_tool, reply
from tether.domain.models import ModelRequest
from tether.domain.tools import ToolContext


def _dir() -> Path:
    return Path(os.environ["TETHER_LEDGER_DIR"])


async def effect(case: str, ctx: ToolContext) -> str:
    """Do the case's side effect (once per call id)."""
    marker = _dir() / "calls" / ctx.idempotency_key
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return f"done {case}"  # this call took effect before an interruption: do not do it again
    os.close(fd)
    line = os.open(_dir() / "ledger", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(line, f"{case} {ctx.run_id} {ctx.call_id}\n".encode())  # one write: a whole line or none
    finally:
        os.close(line)
    await asyncio.sleep(0.01)  # a kill often lands here, between the effect and its record
    return f"done {case}"


async def script(request: ModelRequest):  # type: ignore[no-untyped-def]
    await asyncio.sleep(0.005)
    task = next(m.text for m in request.messages if m.role == "user") or ""
    if any(m.role == "tool" for m in request.messages):
        return reply(f"finished {task}")
    if task.startswith("fail") and (_dir() / "failing").exists():
        return reply("")  # no answer: the run fails
    return call_tool("effect", {"case": task})
