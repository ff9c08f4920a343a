"""The built-in `python` tool: model-written code run in a sandbox.

Two backends, chosen per agent (never call by call):

- `subprocess` (default): full CPython (the system interpreter, e.g. Debian's /usr/bin/python3)
  in a fresh process per call, inside `bubblewrap` namespaces (no network, a private view of the
  file system) with OS resource limits, run as an unprivileged user. See `subprocess_backend`.
- `monty`: `pydantic-monty`, a Python subset interpreter written in Rust, with its own limits.

Each call is independent and re-runnable: every call starts a fresh interpreter, so no state
hides in a worker process that a pause, a crash or a fork would lose. What does persist is the
run's **working folder**, `tether_home()/work/<run_id>`, the code's current directory: files
written there are seen by later calls of the same run. It is shared, not forked: a forked run (a
different run id) starts with an empty folder of its own, and re-running a call sees the folder as
it is now, not as it was when the call first ran.

When real isolation is not available (no bubblewrap, user namespaces disabled, no interpreter the
sandbox user can read, or `TETHER_SANDBOX_FORCE_UNAVAILABLE=1`), every call is refused with the
reason; the code is never run unsandboxed.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from tether.domain.tools import ToolContext, ToolError, ToolPolicy

MAX_CODE_CHARS = 100_000
FORCE_UNAVAILABLE_ENV = "TETHER_SANDBOX_FORCE_UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """What one call may use. Every limit stops the code with a clear error, never the host.

    - `cpu_s`: CPU seconds per process (RLIMIT_CPU; Monty: execution time of the call).
    - `wall_s`: real time for the whole call; the sandbox is killed after it.
    - `memory_mb`: address space per process (RLIMIT_AS) and resident memory of all the call's
      processes together (watched by the parent); Monty: its heap limit.
    - `processes`: processes and threads at once (RLIMIT_NPROC, for a user of its own).
    - `output_bytes`: stdout and stderr together; past it the code is stopped. The value of the
      last expression is cut to this many characters.
    - `files_mb`: the largest file (RLIMIT_FSIZE), and what the working folder, /tmp and /dev/shm
      may hold together (as root one tmpfs of this size holds all three, in host memory; otherwise
      /tmp and /dev/shm are tmpfs of this size and the folder is watched); Monty: bytes written per
      call.
    - `max_files`: entries in the working folder, /tmp and /dev/shm together (subprocess backend).
    """

    cpu_s: float = 10.0
    wall_s: float = 15.0
    memory_mb: int = 256
    processes: int = 32
    output_bytes: int = 64 * 1024
    files_mb: int = 64
    max_files: int = 10_000

    def __post_init__(self) -> None:
        for name in ("cpu_s", "wall_s", "memory_mb", "processes", "output_bytes", "files_mb", "max_files"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxLimits.{name} must be positive")
        if self.memory_mb < 32:
            raise ValueError("SandboxLimits.memory_mb must be at least 32 (the interpreter itself needs some)")
        if self.processes < 2:
            raise ValueError("SandboxLimits.processes must be at least 2")

    def summary(self) -> str:
        return (f"{_num(self.cpu_s)} s of CPU time, {_num(self.wall_s)} s of wall time, {self.memory_mb} MB of "
                f"memory, {_size(self.output_bytes)} of printed output")


@dataclass(slots=True)
class SandboxResult:
    """What one call produced. `error` is the code's own exception; `limit` a limit that stopped it."""

    stdout: str = ""
    stderr: str = ""
    value: str | None = None  # repr() of the last expression, unless it is None
    error: str | None = None  # traceback (or message) of an exception the code raised
    limit: str | None = None  # which limit stopped the code, in words the model can act on
    exit_code: int | None = None
    duration_s: float = 0.0
    user: str | None = None  # the OS user the sandbox ran as (subprocess backend)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and self.limit is None

    def render(self) -> str:
        parts: list[str] = []
        if self.limit:
            parts.append(self.limit)
        if self.error:
            raised = not self.limit and self.error.startswith(("Traceback", "  File"))
            parts.append(("the code raised an exception:\n" if raised else "") + self.error.rstrip("\n"))
        parts.extend(self.notes)
        if self.stdout:
            parts.append("stdout:\n" + self.stdout.rstrip("\n"))
        if self.stderr:
            parts.append("stderr:\n" + self.stderr.rstrip("\n"))
        if self.value is not None:
            parts.append("value:\n" + self.value)
        if not parts:
            return "(the code ran; it printed nothing and its last line has no value)"
        return "\n\n".join(parts)


class SandboxBackend(Protocol):
    name: str

    def unavailable(self) -> str | None:
        """None when the backend can run code safely here, else why not (may block; cached)."""
        ...

    def describe(self, limits: SandboxLimits) -> str:
        """What the code may use, for the tool's description."""
        ...

    async def run(self, code: str, workdir: Path, limits: SandboxLimits) -> SandboxResult: ...


@dataclass(frozen=True, slots=True)
class PythonArgs:
    code: str


_SAFE_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def run_folder_name(run_id: str) -> str:
    """A file-name-safe, collision-free folder name for a run id."""
    if _SAFE_RUN_ID.fullmatch(run_id) and ".." not in run_id:
        return run_id
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:16]
    return re.sub(r"[^A-Za-z0-9._-]", "_", run_id)[:64].strip("._") + "-" + digest


def forced_unavailable() -> str | None:
    if os.environ.get(FORCE_UNAVAILABLE_ENV, "").strip().lower() in ("1", "true", "yes"):
        return f"isolation is switched off by {FORCE_UNAVAILABLE_ENV}=1"
    return None


class PythonTool:
    """The `python` tool: runs the model's code in a sandbox and returns what it printed, the value
    of its last expression, and its errors.

    The per-run working folder (`tether_home()/work/<run_id>`, or `work_root/<run_id>`) is shared
    by all calls of a run and is not copied by forks; variables do not survive between calls.
    A run's calls are serialised on its folder, so two calls of one run never write it at once.
    """

    kind = "builtin"
    cancellable = True  # a cancelled call kills its sandbox

    def __init__(self, backend: SandboxBackend, limits: SandboxLimits | None = None, *, name: str = "python",
                 work_root: Path | str | None = None) -> None:
        self.backend = backend
        self.limits = limits or SandboxLimits()
        self.name = name
        self.work_root = Path(work_root) if work_root is not None else None
        self.description = backend.describe(self.limits)
        self.parameters: dict[str, Any] = {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "Python code to run. The value of the last "
                                    "line, if it is an expression, is returned like in a REPL."}},
            "required": ["code"],
            "additionalProperties": False,
        }
        # Above the sandbox's own wall limit, so the sandbox reports its limit itself; the extra
        # covers waiting for a free sandbox user and starting the sandbox.
        self.policy = ToolPolicy(timeout_s=self.limits.wall_s + 60, idempotent=False,
                                 max_result_chars=max(100_000, 3 * self.limits.output_bytes + 20_000))

    def workdir(self, run_id: str) -> Path:
        if self.work_root is not None:
            root = self.work_root
        else:
            from tether.adapters.store.sql import tether_home

            root = tether_home() / "work"
        return root / run_folder_name(run_id)

    def validate(self, arguments: dict[str, Any]) -> PythonArgs:
        extra = sorted(set(arguments) - {"code"})
        if extra:
            raise ToolError(f"invalid arguments for {self.name}: {', '.join(map(repr, extra))} "
                            "is not a parameter of this tool; send only 'code'")
        code = arguments.get("code")
        if not isinstance(code, str):
            raise ToolError(f"invalid arguments for {self.name}: 'code' is required and must be a string of "
                            "Python code")
        if not code.strip():
            raise ToolError(f"invalid arguments for {self.name}: 'code' is empty")
        if len(code) > MAX_CODE_CHARS:
            raise ToolError(f"invalid arguments for {self.name}: the code is {len(code)} characters long; the "
                            f"limit is {MAX_CODE_CHARS}. Write data to files in steps instead.")
        return PythonArgs(code)

    async def unavailable(self) -> str | None:
        return forced_unavailable() or await asyncio.to_thread(self.backend.unavailable)

    async def run(self, code: str, run_id: str) -> SandboxResult:
        """Run `code` for `run_id` and return the result (refusing with ToolError when not isolated)."""
        reason = await self.unavailable()
        if reason:
            raise ToolError(f"the python tool cannot run code here: {reason}. The code was not run "
                            "(it never runs without a sandbox).")
        workdir = await asyncio.to_thread(self.workdir, run_id)  # the first call imports the store module
        try:
            return await self.backend.run(code, workdir, self.limits)
        except (RuntimeError, OSError) as e:  # the sandbox itself failed, not the code
            raise ToolError(f"the python sandbox failed: {e}") from e

    async def call(self, validated: Any, ctx: ToolContext) -> str:
        code = validated.code if isinstance(validated, PythonArgs) else self.validate(validated).code
        result = await self.run(code, ctx.run_id)
        text = result.render()
        if not result.ok:
            raise ToolError(text)
        return text

    def __repr__(self) -> str:
        return f"<tool {self.name} ({self.backend.name})>"


def python_tool(backend: Literal["subprocess", "monty"] = "subprocess", *, name: str = "python",
                work_root: Path | str | None = None, **limits: Any) -> PythonTool:
    """The `python` tool with the given backend and limits (`SandboxLimits` fields as keywords)."""
    sandbox_limits = SandboxLimits(**limits)
    chosen: SandboxBackend
    if backend == "subprocess":
        from tether.adapters.tools.sandbox.subprocess_backend import SubprocessBackend

        chosen = SubprocessBackend()
    elif backend == "monty":
        from tether.adapters.tools.sandbox.monty_backend import MontyBackend, require_monty

        require_monty()  # an optional dependency: say how to install it, now rather than at the first call
        chosen = MontyBackend()
    else:
        raise ValueError(f"unknown python sandbox backend {backend!r}; use 'subprocess' or 'monty'")
    return PythonTool(chosen, sandbox_limits, name=name, work_root=work_root)


def _num(x: float) -> str:
    return f"{x:g}"


def _size(n: int) -> str:
    if n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)} MB"
    if n % 1024 == 0:
        return f"{n // 1024} KB"
    return f"{n} bytes"
