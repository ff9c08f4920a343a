"""Tool options and the context a tool receives."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ToolPolicy:
    """Every option a tool has, in one place.

    `retryable` applies only to idempotent tools: a call with side effects is never repeated
    behind the user's back. A non-idempotent call that times out in a thread that cannot be
    killed is `uncertain` (see the run contract).
    """

    timeout_s: float | None = 60.0
    idempotent: bool = False
    retryable: bool = False
    max_retries: int = 2
    max_concurrency: int | None = None
    max_result_chars: int = 100_000
    requires_approval: bool = False

    def __post_init__(self) -> None:
        for flag in ("idempotent", "retryable", "requires_approval"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be true or false, not {getattr(self, flag)!r}")
        if self.timeout_s is not None and not (_is_number(self.timeout_s) and self.timeout_s > 0):
            raise ValueError(f"timeout_s must be a positive number of seconds (or None), not {self.timeout_s!r}")
        for name, least in (("max_retries", 0), ("max_result_chars", 1)):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= least):
                raise ValueError(f"{name} must be a whole number of at least {least}, not {value!r}")
        if self.max_concurrency is not None and not (
            isinstance(self.max_concurrency, int) and not isinstance(self.max_concurrency, bool)
            and self.max_concurrency >= 1
        ):
            raise ValueError(f"max_concurrency must be a whole number of at least 1, not {self.max_concurrency!r}")
        if self.retryable and not self.idempotent:
            raise ValueError("a tool can be retryable only if it is idempotent (idempotent=True)")


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool is told about the call it serves.

    `idempotency_key` (`run_id:call_id`) is the same on every attempt of the same call, so a
    tool with side effects can deduplicate on its side. For a tool not marked idempotent that holds
    across crashes too: its call is recorded before it runs, so a resume (or a `rerun` of a call
    left uncertain) repeats it under the same id. An idempotent tool may run before its call is
    recorded: after a crash the model is asked again, and a call it makes then has a new id.
    """

    run_id: str
    call_id: str
    step: int
    attempt: int = 1

    @property
    def idempotency_key(self) -> str:
        return f"{self.run_id}:{self.call_id}"


class ToolError(Exception):
    """Raised by a tool (or the tool layer) for an error the model should see as the result."""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
