"""The Assistants API's behaviour as a service: the agent an API run runs.

An API run stores its settings (the assistant's, narrowed by the run's request) with it, as the
`run` document; its agent reference is `api:RUN_ID`. `ApiAgents` builds the agent from those
settings (model reference, client tools, the operator's server tools, breakpoints, limits), and
`api_agent_resolver` rebuilds it from a run's snapshot so that any process (the server, the CLI)
can continue, fork or replay a run the server made. Settings are typed (`RunSettings`); bad ones
are `InvalidRequest`s naming the field, so every interface reports them its own way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, cast

from tether.adapters.models.refs import ModelBackend, resolve_model, uses_backend
from tether.adapters.tools.client import ClientTool
from tether.domain.agents import AgentSnapshot, Limits
from tether.domain.breakpoints import BreakpointError, parse_breakpoint
from tether.domain.errors import ConfigError, InvalidRequest
from tether.domain.protocols import ObjectStore, Store
from tether.services.agents import Agent
from tether.services.assistants.documents import RunSettings
from tether.services.server_tools import ServerTools

MAX_STEPS = 50  # model calls an API run may make before it fails (a plain client cannot answer a budget pause)
CODE_INTERPRETER = "code_interpreter"  # the python tool's name when a client asked for code_interpreter
AGENT_REF_PREFIX = "api"  # an API run's agent reference is `api:RUN_ID`
BATCH_AGENT: Final = "batch_agent"  # the settings of a batch made over HTTP: its agent reference is `api:bagent_…`


@dataclass(frozen=True, slots=True)
class ApiAgents:
    """Builds the agent of an API run from its settings, under the operator's grants."""

    tools: ServerTools
    models: ModelBackend | None = None  # where bare model names go (None: OPENAI_BASE_URL / OPENAI_API_KEY)
    allow_file_models: bool = False

    def check(self, settings: RunSettings) -> None:
        """Fail now, not when a run starts: the model reference, the tools, the breakpoints."""
        self.build("check", settings)

    def build(self, run_id: str, s: RunSettings) -> Agent:
        """The agent an API run runs: its model, instructions, client and server tools, limits."""
        if self.models is not None and uses_backend(s.model):
            self.models.resolved()  # an unset ${VAR} of the operator's [models]: its error, not the request's
        try:
            model = resolve_model(s.model, allow_files=self.allow_file_models, backend=self.models)
        except ConfigError as e:
            raise InvalidRequest(f"Invalid value for 'model': {e}", "model") from None
        tools: list[Any] = []
        mcp = []
        for i, t in enumerate(s.tools):
            if t.type == "function" and t.function is not None:
                f = t.function
                tools.append(ClientTool(f.name, f.description or "", f.parameters))
            elif t.type == "code_interpreter":
                tools.append(self._code_interpreter(f"tools[{i}]"))
        for i, st in enumerate(s.tether_tools):
            param = f"tether_tools[{i}]"
            if st.type == "mcp":
                mcp.append(self.tools.mcp(st.server, st.options, param))
                continue
            if st.server is not None:
                raise InvalidRequest(f"Invalid value for '{param}.server': only an mcp tool names a server.",
                                     f"{param}.server")
            tools.append(self.tools.builtin(st.type, st.options, param))
        names = [t.name for t in tools]
        if len(set(names)) != len(names):
            raise InvalidRequest(f"Two tools have the same name: {sorted(n for n in names if names.count(n) > 1)}",
                                 "tools")
        for spec in s.tether_breakpoints:
            try:
                parse_breakpoint(spec, id="bp_check")
            except BreakpointError as e:
                raise InvalidRequest(f"Invalid value for 'tether_breakpoints': {e}", "tether_breakpoints") from None
        try:
            return Agent(s.assistant_id or "assistant", model, instructions=s.instructions or "",
                         tools=tools, limits=_limits(s), output_schema=_output_schema(s),
                         settings=_model_settings(s), mcp_servers=mcp, ref=f"{AGENT_REF_PREFIX}:{run_id}")
        except ConfigError as e:
            raise InvalidRequest(str(e)) from None

    def build_batch(self, agent_id: str, s: RunSettings) -> Agent:
        """The agent of a batch made over HTTP: as `build`, and its breakpoints are the agent's own (a
        thread run gets them from its request; a batch's every case, wherever it is started)."""
        agent = self.build(agent_id, s)
        agent.breakpoints = [parse_breakpoint(spec, id=f"bp_{i}") for i, spec in enumerate(s.tether_breakpoints, 1)]
        return agent

    def _code_interpreter(self, param: str) -> Any:
        """`code_interpreter` runs in the sandboxed python tool, as the operator configured it."""
        try:
            return self.tools.builtin("python", None, param, name=CODE_INTERPRETER)
        except ConfigError as e:
            raise InvalidRequest(f"code_interpreter is not available on this server: {e}", param) from None


def _model_settings(s: RunSettings) -> dict[str, Any]:
    """What the model is sent besides the messages: sampling, tool choice, JSON mode."""
    settings: dict[str, Any] = {k: v for k, v in (("temperature", s.temperature), ("top_p", s.top_p))
                                if v is not None}
    if s.tools or s.tether_tools:
        settings["parallel_tool_calls"] = s.parallel_tool_calls
        choice = s.tool_choice or "auto"
        if isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name") or CODE_INTERPRETER
            choice = {"type": "function", "function": {"name": name}}
        settings["tool_choice"] = choice
    fmt = s.response_format
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        settings["response_format"] = {"type": "json_object"}
    return settings


def _output_schema(s: RunSettings) -> dict[str, Any] | None:
    fmt = s.response_format
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return cast("dict[str, Any]", fmt["json_schema"].get("schema") or {})
    return None


def _limits(s: RunSettings) -> Limits:
    return Limits(max_steps=MAX_STEPS, on_max_steps="fail", max_prompt_tokens=s.max_prompt_tokens,
                  max_completion_tokens=s.max_completion_tokens)


def api_agent_resolver(store: ObjectStore | Store, agents: ApiAgents) -> Callable[[AgentSnapshot], Awaitable[Agent]]:
    """The resolver of `api:RUN_ID` agent references (register it as `service.resolvers["api"]`):
    rebuilds the agent of a run the server made from the settings stored with it (or, for `api:bagent_…`,
    those of the batch it is a case of).

    `store` is the run store, which keeps the documents too (SqlStore and MemoryStore are both)."""
    objects = cast(ObjectStore, store)

    async def agent_of_snapshot(snapshot: AgentSnapshot) -> Agent:
        run_id = (snapshot.agent_ref or "").partition(":")[2]
        row = await objects.get_object(run_id)
        if row is None or row.kind not in ("run", BATCH_AGENT):
            raise ConfigError(f"run {run_id} has no stored settings; it cannot be continued here")
        settings = RunSettings.model_validate(row.data)
        return agents.build_batch(run_id, settings) if row.kind == BATCH_AGENT else agents.build(run_id, settings)

    return agent_of_snapshot
