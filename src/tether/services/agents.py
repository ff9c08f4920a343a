"""Agents: a model, instructions and tools, defined in code or in a TOML agent file."""

from __future__ import annotations

import copy
import hashlib
import tomllib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tether.adapters.config_files import read_text
from tether.adapters.importing import import_attr
from tether.domain.agents import AgentSnapshot, Limits, ToolSpec
from tether.domain.breakpoints import Breakpoint, BreakpointError, parse_breakpoint
from tether.domain.errors import ConfigError
from tether.domain.protocols import Model, Tool
from tether.domain.tools import ToolPolicy

if TYPE_CHECKING:
    from tether.domain.batches import BatchProgress, Case, CaseResult
    from tether.domain.events import Event
    from tether.domain.messages import Message
    from tether.services.batches import Batch, BatchesService
    from tether.services.runs import RunsService
    from tether.services.views import Run

AGENT_FILE_KEYS = {"name", "model", "instructions", "tools", "limits", "settings", "output_schema",
                   "breakpoints", "mcp_servers", "policies", "tool_options"}


class Agent:
    """What runs: a model, instructions, tools and limits.

    `tools` may hold tools, plain functions (wrapped with `tether.tool`), built-in names such as
    "calculator", or "module:function" paths. `ref` tells another process how to find this agent
    again ("file:PATH" or "module:attr"), so it can continue a run this process started.
    """

    def __init__(
        self,
        name: str = "agent",
        model: str | Model = "",
        *,
        instructions: str = "",
        tools: Iterable[Any] = (),
        limits: Limits | None = None,
        output_schema: Any = None,
        settings: Mapping[str, Any] | None = None,
        breakpoints: Iterable[str | Breakpoint] = (),
        policies: Mapping[str, ToolPolicy] | None = None,
        mcp_servers: Iterable[Any] = (),
        ref: str | None = None,
        file_hash: str | None = None,
        base_dir: Path | None = None,
    ) -> None:
        self.name = name
        self._model = None if isinstance(model, str) else model
        self.model_ref = model if isinstance(model, str) else model.ref
        if not self.model_ref:
            raise ConfigError(f"agent {name!r} has no model: give a model reference such as "
                              "'openai:gpt-4o-mini', 'qwen2.5:7b' or 'scripted:module:attr'")
        self.instructions = instructions
        self.limits = limits or Limits()
        self.output_schema = _schema_of(output_schema)
        self.settings = dict(settings or {})
        self.breakpoints = [b if isinstance(b, Breakpoint) else parse_breakpoint(b, id=f"bp_{i}")
                            for i, b in enumerate(breakpoints, 1)]
        self.ref, self.file_hash = ref, file_hash
        self.tools: dict[str, Tool] = {}
        self._specs: list[ToolSpec] | None = None
        for t in tools:
            resolved = _resolve_tool(t, base_dir)
            if resolved.name in self.tools:
                raise ConfigError(f"agent {name!r} has two tools named {resolved.name!r}")
            self.tools[resolved.name] = resolved
        self._base_dir = base_dir  # an agent file's folder: its module:attr paths are found there
        self.mcp_servers = list(mcp_servers)  # McpServerConfig: their tools join at run start
        self._mcp: list[Any] | None = None
        self._policies = dict(policies or {})
        for tool_name, policy in self._policies.items():
            if tool_name not in self.tools and any(tool_name.startswith(c.name) for c in self.mcp_servers):
                continue  # an MCP tool's policy applies when its server lists it
            if tool_name not in self.tools:
                raise ConfigError(f"a policy is given for {tool_name!r}, which is not one of the agent's tools "
                                  f"({', '.join(self.tools) or 'none'})")
            self.tools[tool_name] = with_policy(self.tools[tool_name], policy)

    @property
    def model(self) -> Model:
        if self._model is None:
            from tether.adapters.models.refs import resolve_model

            self._model = resolve_model(self.model_ref, base_dir=self._base_dir)
        return self._model

    def snapshot(self) -> AgentSnapshot:
        from tether.adapters.tools.function import schema_hash

        if self._specs is None:  # tools do not change after construction: hash their schemas once
            self._specs = [
                ToolSpec(t.name, t.description, t.parameters, schema_hash(t.name, t.description, t.parameters),
                         t.kind)  # type: ignore[arg-type]
                for t in self.tools.values()
            ]
        specs = list(self._specs)
        return AgentSnapshot(self.name, self.model_ref, self.instructions, replace(self.limits), specs,
                             self.output_schema, self.ref, self.file_hash,
                             [b.to_dict() for b in self.breakpoints], self.settings)

    async def open_tools(self) -> None:
        """List the MCP servers' tools (connecting, or reconnecting, as needed)."""
        if not self.mcp_servers:
            return
        from tether.adapters.tools.mcp import open_mcp_tools

        if self._mcp is None:
            tools, self._mcp = await open_mcp_tools(self.mcp_servers)
        else:
            tools = [t for server in self._mcp for t in await server.list_tools()]
        for name in [n for n, t in self.tools.items() if t.kind == "mcp"]:
            del self.tools[name]
        for t in tools:
            if t.name in self.tools:
                raise ConfigError(f"MCP tool {t.name!r} collides with another tool of agent {self.name!r}")
            policy = self._policies.get(t.name)
            self.tools[t.name] = with_policy(t, policy) if policy is not None else t
        self._specs = None

    async def close_tools(self) -> None:
        """Close MCP sessions (a paused run holds none); the next call or listing reconnects."""
        if self._mcp:
            from tether.adapters.tools.mcp import close_mcp_servers

            await close_mcp_servers(self._mcp)

    def with_model(self, model: str | Model, tools: Iterable[Any] | None = None) -> Agent:
        """The same agent on another model (and optionally other tools), e.g. for a replay."""
        return Agent(self.name, model, instructions=self.instructions,
                     tools=self.tools.values() if tools is None else tools, limits=self.limits,
                     output_schema=self.output_schema, settings=self.settings, breakpoints=self.breakpoints,
                     mcp_servers=self.mcp_servers, ref=self.ref, file_hash=self.file_hash, base_dir=self._base_dir)

    @classmethod
    def from_file(cls, path: str | Path) -> Agent:
        return load_agent_file(path)

    # -- running: shorthands for the runs service on the default store -------------------------

    async def run(self, task: str | Sequence[Message], *, service: RunsService | None = None,
                  breakpoints: Sequence[str | Breakpoint] = (), thread_id: str | None = None,
                  metadata: dict[str, Any] | None = None,
                  on_event: Callable[[Event], None] | None = None) -> Run:
        """Run the agent on `task` and return the run (answer, steps, usage, or its pending items).

        `service` defaults to the process-wide one on the default store (TETHER_DATABASE_URL, else
        the SQLite file in TETHER_HOME); `breakpoints` (e.g. "before_tool:delete_*") join the
        agent's own for this run; `on_event` sees every event as it happens.
        """
        from tether.services.runs import default_service

        chosen = service or await default_service()
        return await chosen.start(self, task, thread_id=thread_id, metadata=metadata, breakpoints=breakpoints,
                                  on_event=on_event)

    def run_sync(self, task: str | Sequence[Message], *, service: RunsService | None = None,
                 breakpoints: Sequence[str | Breakpoint] = (), thread_id: str | None = None,
                 metadata: dict[str, Any] | None = None,
                 on_event: Callable[[Event], None] | None = None) -> Run:
        """`run`, for code without an event loop (and inside one, e.g. Jupyter: it uses a thread)."""
        from tether.services.runs import run_blocking

        return run_blocking(self.run(task, service=service, breakpoints=breakpoints, thread_id=thread_id,
                                     metadata=metadata, on_event=on_event))

    def iter(self, task: str, *, service: RunsService | None = None, breakpoints: Sequence[str | Breakpoint] = (),
             thread_id: str | None = None, metadata: dict[str, Any] | None = None) -> AsyncIterator[Event]:
        """Iterate over the run's events as they happen: `async for event in agent.iter(task)`."""
        from tether.services.runs import iter_events

        return iter_events(self, task, service=service, breakpoints=breakpoints, thread_id=thread_id,
                           metadata=metadata)

    async def batch(self, tasks: Iterable[str | dict[str, Any] | Case] | Path | str, *, concurrency: int = 8,
                    budget: float | None = None, max_tokens: int | None = None,
                    per_case_budget: float | None = None, on_budget: Literal["pause", "fail"] = "pause",
                    name: str | None = None, task_template: str | None = None, input_column: str = "input",
                    on_progress: Callable[[BatchProgress], None] | None = None,
                    on_case: Callable[[CaseResult], None] | None = None, out: Path | str | None = None,
                    service: BatchesService | RunsService | None = None) -> Batch:
        """Run the agent on every task, `concurrency` at a time, as a durable batch; returns the `Batch`
        (its info and each case's result) once every case has ended or paused.

        `tasks`: strings, case objects ({"input", "id"?, "vars"?, "expected"?, "metadata"?}), or the path
        of a JSONL or CSV file (`input_column` names the task's column). `budget` caps the whole batch's
        spend in USD (`max_tokens` its tokens, `per_case_budget` each case's). The batch is stored
        first, so `service.run(batch.id)` resumes it after a crash without repeating finished cases.
        """
        from tether.domain.batches import BatchOptions, cases_of
        from tether.domain.errors import InvalidRequest
        from tether.services.batches import BatchesService, read_cases
        from tether.services.runs import RunsService, default_service

        source = None
        if isinstance(tasks, str | Path):
            source = str(Path(tasks).resolve())
            cases, bad = read_cases(tasks, input_column=input_column)
            if bad:
                lines = "; ".join(f"line {b.line}: {b.reason}" for b in bad[:5])
                raise InvalidRequest(f"{tasks}: {len(bad)} bad line(s): {lines}", param="tasks")
        else:
            try:
                cases = cases_of(tasks)
            except ValueError as e:
                raise InvalidRequest(str(e), param="tasks") from None
        try:
            options = BatchOptions(concurrency=concurrency, max_cost_usd=budget, max_tokens=max_tokens,
                                   per_case_max_cost_usd=per_case_budget, on_budget=on_budget, name=name,
                                   task_template=task_template)
        except ValueError as e:
            raise InvalidRequest(str(e)) from None
        runs = service if isinstance(service, RunsService) else None
        batches = service if isinstance(service, BatchesService) else BatchesService(runs or await default_service())
        info = await batches.create(self, cases, options, source=source)
        await batches.run(info.id, on_progress=on_progress, on_case=on_case, out=out)
        return await batches.batch(info.id)

    def batch_sync(self, tasks: Iterable[str | dict[str, Any] | Case] | Path | str, **options: Any) -> Batch:
        """`batch`, for code without an event loop (and inside one: it uses a thread)."""
        from tether.services.runs import run_blocking

        return run_blocking(self.batch(tasks, **options))

    def __repr__(self) -> str:
        return f"Agent(name={self.name!r}, model={self.model_ref!r}, tools={list(self.tools)})"


def load_agent_file(path: str | Path) -> Agent:
    p = Path(path)
    text = read_text(p, "agent file")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p} is not valid TOML: {e}") from None
    unknown = set(data) - AGENT_FILE_KEYS
    if unknown:
        raise ConfigError(f"{p}: unknown keys {sorted(unknown)}; an agent file has {sorted(AGENT_FILE_KEYS)}")
    if "model" not in data:
        raise ConfigError(f"{p}: no `model`; add e.g. model = \"openai:gpt-4o-mini\"")
    for key, kind in (("name", str), ("model", str), ("instructions", str), ("settings", dict),
                      ("policies", dict), ("tool_options", dict), ("mcp_servers", dict), ("output_schema", dict),
                      ("limits", dict), ("breakpoints", list), ("tools", list)):
        if key in data and not isinstance(data[key], kind):
            raise ConfigError(f"{p}: `{key}` must be a {_TOML_KINDS[kind]}, not {data[key]!r}")
    if "output_schema" in data:
        _check_schema(p, data["output_schema"])
    tools = data.get("tools", [])
    if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
        raise ConfigError(f"{p}: `tools` must be a list of names, e.g. [\"calculator\", \"mytools:lookup\"]")
    options = data.get("tool_options", {})
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise ConfigError(f"{p}: [tool_options.NAME] tables configure built-in tools, e.g. backend = \"monty\"")
    unknown_options = set(options) - set(tools)
    if unknown_options:
        raise ConfigError(f"{p}: [tool_options] for {sorted(unknown_options)}, which are not in `tools`")
    try:
        tools = [builtin_with(t, options[t]) if t in options else t for t in tools]
    except ConfigError as e:
        raise ConfigError(f"{p}: [tool_options]: {e}") from None
    return Agent(
        name=str(data.get("name", p.stem)),
        model=str(data["model"]),
        instructions=str(data.get("instructions", "")),
        tools=tools,
        limits=_limits(p, data.get("limits", {})),
        policies=_policies(p, data.get("policies", {})),
        mcp_servers=_mcp_servers(p, data.get("mcp_servers", {})),
        output_schema=data.get("output_schema"),
        settings=data.get("settings", {}),
        breakpoints=_breakpoints(p, data.get("breakpoints", [])),
        ref=f"file:{p.resolve()}",
        file_hash=hashlib.sha256(text.encode()).hexdigest()[:16],  # the file's bytes
        base_dir=p.resolve().parent,
    )


def _breakpoints(path: Path, entries: Any) -> list[Breakpoint]:
    """`breakpoints = ["before_tool:delete_*"]`, or `[[breakpoints]]` tables with `spec` and `once`."""
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: breakpoints must be a list of specs or [[breakpoints]] tables")
    out = []
    for i, entry in enumerate(entries, 1):
        if not isinstance(entry, str | dict):
            raise ConfigError(f"{path}: breakpoint {i} must be a spec string or a table, not {entry!r}")
        spec, once = (entry, False) if isinstance(entry, str) else (entry.get("spec"), entry.get("once", False))
        if not isinstance(spec, str) or (isinstance(entry, dict) and set(entry) - {"spec", "once"}):
            raise ConfigError(f"{path}: breakpoint {i} needs `spec = \"STOP[:TOOL_GLOB] [if CONDITION]\"` "
                              "and optionally `once = true`")
        try:
            out.append(parse_breakpoint(spec, id=f"bp_{i}", once=bool(once)))
        except BreakpointError as e:
            raise ConfigError(f"{path}: breakpoint {i}: {e}") from None
    return out


_TOML_KINDS = {str: "string", dict: "table", list: "list"}


def _check_schema(path: Path, schema: dict[str, Any]) -> None:
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise ConfigError(f"{path}: output_schema is not a valid JSON schema: {e.message}") from None


def _mcp_servers(path: Path, tables: Any) -> list[Any]:
    """`[mcp_servers.NAME]` tables: `command`/`args`/`env` (stdio) or `url` (streamable HTTP)."""
    if not tables:
        return []
    try:
        from tether.adapters.tools.mcp import configs_from_tables
    except ImportError:
        raise ConfigError(f"{path}: MCP servers need the mcp package: pip install 'tether[mcp]'") from None
    try:
        return configs_from_tables(tables)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _policies(path: Path, tables: Any) -> dict[str, ToolPolicy]:
    """`[policies.NAME]` tables: ToolPolicy fields for the tool NAME."""
    names = {f.name for f in fields(ToolPolicy)}
    out = {}
    for tool_name, table in (tables or {}).items():
        if not isinstance(table, dict) or set(table) - names:
            raise ConfigError(f"{path}: [policies.{tool_name}] takes {sorted(names)}")
        try:
            out[tool_name] = ToolPolicy(**table)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{path}: [policies.{tool_name}]: {e}") from None
    return out


def with_policy(tool: Tool, policy: ToolPolicy) -> Tool:
    """The same tool under another policy (a copy: a tool object may be shared by other agents)."""
    changed = copy.copy(tool)
    changed.policy = policy
    return changed


def _limits(path: Path, table: Any) -> Limits:
    names = {f.name for f in fields(Limits)}
    if not isinstance(table, dict) or set(table) - names:
        raise ConfigError(f"{path}: [limits] takes {sorted(names)}")
    try:
        return Limits(**table)
    except ValueError as e:
        raise ConfigError(f"{path}: [limits]: {e}") from None


def builtin_with(name: str, options: dict[str, Any]) -> Tool:
    from tether.adapters.tools.builtins import builtin

    if ":" in name:
        raise ConfigError(f"[tool_options.{name}]: options are for built-in tools; configure your own "
                          "function in code, or its policy with [policies.NAME]")
    return builtin(name, options)  # type: ignore[no-any-return]


def _resolve_tool(t: Any, base_dir: Path | None) -> Tool:
    from tether.adapters.tools.function import FunctionTool

    if isinstance(t, str):
        if ":" not in t:
            from tether.adapters.tools.builtins import builtin

            return builtin(t)  # type: ignore[no-any-return]
        t = import_attr(t, base_dir)
    if isinstance(t, Tool):
        return t
    if callable(t):
        return FunctionTool(t)
    raise ConfigError(f"{t!r} is not a tool: give a function, a tool, a built-in name or 'module:function'")


def _schema_of(output_schema: Any) -> dict[str, Any] | None:
    if output_schema is None or isinstance(output_schema, dict):
        return output_schema
    if hasattr(output_schema, "model_json_schema"):  # a Pydantic model class
        return output_schema.model_json_schema()  # type: ignore[no-any-return]
    raise ConfigError("output_schema must be a JSON schema (dict) or a Pydantic model class")
