"""`pydantic-monty`: a Python subset interpreter written in Rust, run in a worker subprocess.

Monty is its own sandbox: the code cannot reach the host except through what the host hands in.
Here that is only the run's working folder, mounted read-write at /work (`MountDir`); there is no
network, no subprocess, no environment, and only Monty's built-in modules. Each call gets a fresh
pool and session (about 10 ms), so nothing lives on in a worker between calls.

Our limits map onto Monty's:

- `cpu_s` -> `max_feed_duration_secs` (execution time of the call; Monty raises TimeoutError)
- `wall_s` -> the pool's `request_timeout` (kills the worker), the cap on sleeping
  (`max_total_sleep_secs`, `sleep_system_max`) and a host-side deadline
- `memory_mb` -> `max_memory` (heap bytes; Monty raises MemoryError)
- `output_bytes` -> what we keep of printed output; the rest is dropped and reported
- `files_mb` -> `write_bytes_limit` of the working folder mount (bytes written per call)
- `processes` -> nothing to map: Monty code cannot start processes or threads
"""

from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path
from typing import Any

from tether.adapters.tools.sandbox.subprocess_backend import _folder_lock
from tether.adapters.tools.sandbox.tool import SandboxLimits, SandboxResult, _size
from tether.domain.errors import ConfigError

WORK = "/work"
MODULES = ("asyncio", "base64", "binascii", "bisect", "collections", "copy", "csv", "dataclasses", "datetime",
           "decimal", "functools", "hashlib", "itertools", "json", "math", "os (files only)", "pathlib", "random",
           "re", "sys", "time", "tomllib", "typing", "unicodedata")


MISSING = ("the python tool's monty backend needs pydantic-monty, which is not installed: "
           "pip install 'tether[monty]' (or use backend = \"subprocess\")")


def require_monty() -> None:
    """Refuse a monty backend when pydantic-monty is not installed (it is the `tether[monty]` extra)."""
    try:
        import pydantic_monty
    except ImportError:
        raise ConfigError(MISSING) from None
    del pydantic_monty


@functools.lru_cache(maxsize=1)
def _monty_unavailable() -> str | None:
    try:
        import pydantic_monty
        from pydantic_monty._binary import find_monty_binary

        find_monty_binary()
    except (ImportError, FileNotFoundError) as e:
        return f"pydantic-monty is not installed or its worker binary is missing ({e})"
    del pydantic_monty
    return None


class MontyBackend:
    name = "monty"

    def unavailable(self) -> str | None:
        return _monty_unavailable()

    def describe(self, limits: SandboxLimits) -> str:
        return (
            "Run code in Monty, a sandboxed interpreter for a subset of Python, and get back what it printed, "
            "the value of its last line if that is an expression (like a REPL), and any error. Supported: "
            "functions, closures, classes, dataclasses, comprehensions, generators, async/await, exceptions, "
            f"f-strings, and only these modules: {', '.join(MODULES)}. Not available: third-party packages, "
            "subprocesses, threads, sockets/network, environment variables, `dir()`, `__import__`, dunder "
            "attribute tricks. Every call starts fresh: variables do not carry over between calls, files do. "
            f"Files: only under {WORK}, the current directory, which is this run's working folder (kept for "
            "later calls of the same run; a forked run does not get a copy). Limits per call: "
            f"{limits.cpu_s:g} s of execution time, {limits.wall_s:g} s of wall time (sleeps included), "
            f"{limits.memory_mb} MB of memory, {_size(limits.output_bytes)} of printed output, "
            f"{limits.files_mb} MB written to files, recursion depth 1000."
        )

    async def run(self, code: str, workdir: Path, limits: SandboxLimits) -> SandboxResult:
        await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
        async with _folder_lock(workdir):  # one call at a time per run, as with the subprocess backend
            return await self._run(code, workdir, limits)

    async def _run(self, code: str, workdir: Path, limits: SandboxLimits) -> SandboxResult:
        from pydantic_monty import (
            AsyncMonty,
            MontyCrashedError,
            MontyError,
            MontyRuntimeError,
            MontySyntaxError,
            MountDir,
        )

        cap = limits.output_bytes
        out: list[str] = []
        err: list[str] = []
        used = [0]
        dropped = [0]

        def on_print(stream: str, text: str) -> None:
            room = cap - used[0]
            if len(text) > room:
                dropped[0] += len(text) - max(room, 0)
                text = text[:max(room, 0)]
            used[0] += len(text)
            if text:
                (out if stream == "stdout" else err).append(text)

        monty_limits: Any = {
            "max_feed_duration_secs": limits.cpu_s,
            "max_memory": limits.memory_mb * 1024 * 1024,
            "max_total_sleep_secs": limits.wall_s,
        }
        os_policy: Any = {"sleep_system_max": limits.wall_s}
        started = time.monotonic()
        result = SandboxResult()
        value: Any = None
        try:
            with MountDir(host_path=workdir, virtual_path=WORK, mode="read-write",
                          write_bytes_limit=limits.files_mb * 1024 * 1024) as mount:
                pool = AsyncMonty(min_processes=0, max_processes=1, request_timeout=limits.wall_s)
                async with pool, pool.checkout(limits=monty_limits, os_policy=os_policy) as session:
                    value = await asyncio.wait_for(
                        session.feed_run(code, print_callback=on_print, mount=mount, cwd=WORK),
                        timeout=limits.wall_s + 5)
        except TimeoutError:
            result.limit = f"the code was killed after {limits.wall_s:g} s of wall time (the limit)"
        except MontyCrashedError as e:
            result.limit = (f"the code was killed after {limits.wall_s:g} s of wall time (the limit)"
                            if e.timed_out else f"the Monty worker crashed: {e}")
        except (MontyRuntimeError, MontySyntaxError) as e:
            text = e.display()
            head = e.display(format="type-msg")
            if head.startswith("MemoryError") and "memory limit exceeded" in head:
                result.limit = f"the code ran out of memory (limit {limits.memory_mb} MB)"
            elif head.startswith("TimeoutError") and "sleep" in head:
                result.limit = f"the code slept past the {limits.wall_s:g} s wall time limit"
            elif "disk write limit" in head:
                result.limit = f"the code wrote more than {limits.files_mb} MB to files (the limit)"
            elif head.startswith("TimeoutError") and "time limit exceeded" in head:
                result.limit = f"the code ran past the {limits.cpu_s:g} s execution time limit and was stopped"
            result.error = text
        except MontyError as e:
            result.error = str(e)
        else:
            if value is not None:
                text = repr(value)
                if len(text) > cap:
                    text = text[:cap] + f"... ({len(text) - cap} more characters)"
                result.value = text
        result.stdout, result.stderr = "".join(out), "".join(err)
        result.duration_s = time.monotonic() - started
        if dropped[0]:
            message = (f"output truncated at {_size(cap)}: the code printed {dropped[0]} more characters than "
                       "that; print less, e.g. a summary or the first rows")
            if result.limit:
                result.notes.append(message)
            else:
                result.limit = message
        return result
