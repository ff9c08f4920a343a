"""What an agent is, as recorded in a run: enough to continue it anywhere."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

BudgetPolicy = Literal["pause", "finish", "fail"]
BUDGETS = ("max_steps", "max_tokens", "max_cost_usd", "max_wall_s")
HARD_LIMITS = ("max_prompt_tokens", "max_completion_tokens")  # reached: the run ends "incomplete"


@dataclass(slots=True)
class Limits:
    """Per-run budgets, each with what to do when it is reached.

    `max_steps` counts model calls; `max_wall_s` excludes time spent paused. A policy is
    `pause` (raise the limit and continue), `finish` (one last model call without tools, that
    must answer) or `fail`.

    `max_prompt_tokens` and `max_completion_tokens` are hard limits as the Assistants API defines
    them: input (prompt) or output (completion) tokens summed over all the run's model calls. They
    have no policy: a run that reaches one ends `incomplete`, with the limit's name as its error.
    """

    max_steps: int = 20
    max_tokens: int | None = None
    max_cost_usd: float | None = None
    max_wall_s: float | None = None
    on_max_steps: BudgetPolicy = "pause"
    on_max_tokens: BudgetPolicy = "pause"
    on_max_cost_usd: BudgetPolicy = "pause"
    on_max_wall_s: BudgetPolicy = "pause"
    max_parallel_tools: int = 8
    max_output_retries: int = 2  # corrections asked for when the answer fails `output_schema`
    max_prompt_tokens: int | None = None  # hard: the run ends "incomplete" once it is reached
    max_completion_tokens: int | None = None  # hard; also caps each request's max_completion_tokens

    def __post_init__(self) -> None:
        """Refuse nonsense up front: a bad limit must not reach a stored run."""
        for name, least in (("max_steps", 1), ("max_parallel_tools", 1), ("max_output_retries", 0)):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= least):
                raise ValueError(f"{name} must be a whole number of at least {least}, not {value!r}")
        for name in ("max_tokens", "max_cost_usd", "max_wall_s"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int | float) and not isinstance(value, bool)
                                          and value > 0):
                raise ValueError(f"{name} must be a positive number (or left out), not {value!r}")
        for name in HARD_LIMITS:
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
                raise ValueError(f"{name} must be a positive whole number (or left out), not {value!r}")
        for budget in BUDGETS:
            policy = getattr(self, f"on_{budget}")
            if policy not in ("pause", "finish", "fail"):
                raise ValueError(f'on_{budget} must be "pause", "finish" or "fail", not {policy!r}')


@dataclass(slots=True)
class ToolSpec:
    """A tool as the model sees it, plus how it is run and a hash of its schema."""

    name: str
    description: str
    parameters: dict[str, Any]
    schema_hash: str
    kind: Literal["function", "builtin", "client", "mcp"] = "function"


@dataclass(slots=True)
class AgentSnapshot:
    name: str
    model: str
    instructions: str = ""
    limits: Limits = field(default_factory=Limits)
    tools: list[ToolSpec] = field(default_factory=list)
    output_schema: dict[str, Any] | None = None
    agent_ref: str | None = None  # "file:PATH" or "module:attr": where the agent can be found again
    agent_hash: str | None = None  # hash of the agent file, when it came from one
    breakpoints: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # temperature, top_p, ...
