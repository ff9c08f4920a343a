"""What the governor deals in: what a model call asks for, what it is granted or why it is refused.

Plain values, no I/O. The governor itself (engine/governor.py) reserves a call's worst case before
it is made, against the run's own limits and every shared budget that covers the run, so that no
number of concurrent calls can spend past a budget.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Literal

from tether.domain.agents import BudgetPolicy
from tether.domain.errors import InvalidRequest
from tether.domain.messages import ImagePart, TextPart
from tether.domain.models import ModelRequest

DEFAULT_MAX_OUTPUT_TOKENS = 4096  # a call's output cap when it sets none and a budget covers it
EPSILON_USD = 1e-12  # sums of float costs: a reservation that fits exactly is not refused by rounding
WARN_AT = 0.8  # a shared budget warns once, when this share of it is spent or reserved
MESSAGE_OVERHEAD_TOKENS = 8  # a chat template's role markers and separators, per message (BPE: ~4)
REQUEST_OVERHEAD_TOKENS = 16  # the priming of the reply, and the tool-use preamble some servers add
IMAGE_TOKENS = 2000  # an image part: more than any current provider charges for one image (detail high)
MIN_FINAL_OUTPUT_TOKENS = 16  # the smallest cap a last ("finish") answer is given to fit a budget


@dataclass(frozen=True, slots=True)
class Price:
    """USD per input token and per output token (as the price lists say, per million, / 1e6)."""

    input_usd: float
    output_usd: float

    @classmethod
    def per_million(cls, input_usd: float, output_usd: float) -> Price:
        return cls(input_usd / 1e6, output_usd / 1e6)

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return input_tokens * self.input_usd + output_tokens * self.output_usd


@dataclass(frozen=True, slots=True)
class Ask:
    """What one model call may use at most: its worst case, reserved before it is made."""

    run_id: str
    step: int
    budgets: tuple[str, ...]  # the shared budgets that cover the run
    input_tokens: int  # an upper bound (`worst_case_input_tokens`)
    output_tokens: int | None  # the cap the call carries (None: no cap, no token or cost budget covers it)
    usd: float | None  # at the model's price; None when the price is unknown

    @property
    def tokens(self) -> int:
        return self.input_tokens + (self.output_tokens or 0)


@dataclass(frozen=True, slots=True)
class Grant:
    """A reservation: the call may be made, carrying `max_output_tokens` (None: as it is)."""

    id: str
    ask: Ask
    max_output_tokens: int | None
    warnings: tuple[str, ...] = ()  # shared budgets that passed WARN_AT with this reservation: sentences


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call may not be made: the budget (a run limit's name, or a shared budget's id), a
    sentence a person understands naming the figures, and the budget's policy."""

    budget: str
    detail: str
    policy: BudgetPolicy = "pause"
    shared: bool = False  # a shared budget: raise it with put_budget, then answer the pause


@dataclass(frozen=True, slots=True)
class Spend:
    """What a settled call spent, written in the same transaction as its `model_call` record: the
    real cost and tokens added to each budget's spend, the reservation `grant_id` taken back."""

    grant_id: str
    run_id: str
    budgets: tuple[str, ...]
    usd: float
    tokens: int


# What a run does when a shared budget cannot hold its next call: wait paused for a person to raise the
# budget, or fail (a batch's `--on-budget`). ("finish", a run's own policy, would need a call of its own.)
ExhaustedPolicy = Literal["pause", "fail"]
EXHAUSTED_POLICIES = ("pause", "fail")


@dataclass(slots=True)
class BudgetState:
    """A shared budget: its limits (None: none), what was spent and what is reserved now."""

    id: str
    max_usd: float | None = None
    max_tokens: int | None = None
    spent_usd: float = 0.0
    spent_tokens: int = 0
    reserved_usd: float = 0.0
    reserved_tokens: int = 0
    warned: bool = False
    created_at: float = 0.0
    on_exhausted: ExhaustedPolicy = "pause"  # what a run that cannot reserve in it does

    def used_share(self) -> float:
        """The larger of its dollar and token shares spent or reserved (0 without limits)."""
        shares = [0.0]
        if self.max_usd:
            shares.append((self.spent_usd + self.reserved_usd) / self.max_usd)
        if self.max_tokens:
            shares.append((self.spent_tokens + self.reserved_tokens) / self.max_tokens)
        return max(shares)


def fits_once_settled(budget: BudgetState, ask: Ask) -> bool:
    """Whether the call would fit in the budget were nothing else reserved in it: then it was refused
    only because other calls hold reservations, which settle (usually for less) or are given back
    soon (or did so since it was refused: `holds_reservations`), and the call waits for them instead
    of pausing."""
    if budget.max_usd is not None and (ask.usd is None or budget.spent_usd + ask.usd > budget.max_usd + EPSILON_USD):
        return False
    return budget.max_tokens is None or budget.spent_tokens + ask.tokens <= budget.max_tokens


def holds_reservations(budget: BudgetState) -> bool:
    """Whether calls in flight hold room in the budget (sums of float costs drift: below EPSILON_USD is none)."""
    return budget.reserved_usd > EPSILON_USD or budget.reserved_tokens > 0


def check_budget_limits(max_usd: float | None, max_tokens: int | None, on_exhausted: str = "pause") -> None:
    """Refuse a shared budget's nonsense limits before they are stored (None: no limit)."""
    if on_exhausted not in EXHAUSTED_POLICIES:
        raise InvalidRequest(f'on_exhausted must be "pause" or "fail", not {on_exhausted!r}', param="on_exhausted")
    if max_usd is not None and (isinstance(max_usd, bool) or not isinstance(max_usd, int | float)
                                or not 0 <= max_usd < math.inf):
        raise InvalidRequest(f"max_usd must be a number of dollars, 0 or more (or None), not {max_usd!r}",
                             param="max_usd")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 0):
        raise InvalidRequest(f"max_tokens must be a whole number, 0 or more (or None), not {max_tokens!r}",
                             param="max_tokens")


def worst_case_input_tokens(request: ModelRequest) -> int:
    """An upper bound on the input tokens of `request`, without a tokenizer.

    No tokenizer is known offline for every model, and none may be downloaded, so this counts the
    UTF-8 bytes of everything sent: the messages' text and tool calls (names and arguments), the
    tool schemas' JSON and the output schema's. Byte-level BPE tokenizers (GPT, Llama, Qwen,
    Mistral's) never make a token of less than one byte, so a text has at most as many tokens as
    bytes; what a chat template adds around each message (role markers, separators: a few tokens)
    is bounded by MESSAGE_OVERHEAD_TOKENS a message, and an image by IMAGE_TOKENS. Real counts are
    usually 3-4 times lower for English: the bound is safe, never tight.
    """
    total = REQUEST_OVERHEAD_TOKENS
    for m in request.messages:
        total += MESSAGE_OVERHEAD_TOKENS + len(m.role) + len((m.name or "").encode())
        for part in m.content:
            if isinstance(part, TextPart):
                total += len(part.text.encode())
            elif isinstance(part, ImagePart):
                total += IMAGE_TOKENS
            else:
                total += len(part.refusal.encode())
        for call in m.tool_calls:
            total += MESSAGE_OVERHEAD_TOKENS + len(call.name.encode()) + len(call.id.encode())
            total += len((call.arguments or "").encode())
        if m.tool_call_id:
            total += len(m.tool_call_id.encode())
    if request.tools:
        schemas = [[t.name, t.description, t.parameters] for t in request.tools]
        total += len(json.dumps(schemas, ensure_ascii=False).encode())
    if request.output_schema is not None:
        total += len(json.dumps(request.output_schema, ensure_ascii=False).encode())
    return total


def requested_output_cap(settings: dict[str, object]) -> int | None:
    """The output tokens the request's own settings allow at most (None: it sets no cap)."""
    caps = [v for k in ("max_completion_tokens", "max_tokens")
            if isinstance(v := settings.get(k), int) and not isinstance(v, bool)]
    return min(caps) if caps else None


def usd(value: float) -> str:
    """Dollars as a person reads them: cents for large sums, more digits for small ones."""
    return f"${value:.2f}" if value >= 1 else f"${value:.4f}".rstrip("0").rstrip(".") if value else "$0"


def shared_refusal(budget: BudgetState | None, budget_id: str, ask: Ask) -> str:
    """The sentence of a pause on a shared budget: its figures, and how to go on."""
    if budget is None:
        return (f"budget {budget_id} does not exist (it was deleted?), so no call of this run can be "
                f"reserved against it; create it again (put_budget) and continue the run")
    batch_id, _, case = budget_id.partition("/")
    if batch_id.startswith("batch_") and not case:
        flag = "--max-cost USD" if budget.max_usd is not None else "--max-tokens N"  # the limit it has
        how = f"raise it and continue: `tether batch answer {batch_id} --continue {flag}`"
    elif batch_id.startswith("batch_"):
        how = f"it is a case's own budget (--per-case-max-cost of batch {batch_id}); abort this case, or raise it " \
              f"with put_budget({budget_id!r}, ...) and continue this run"
    else:
        how = f"raise it with put_budget({budget_id!r}, ...), then continue this run"
    return f"{budget_figures(budget, ask)}; {how}"


def budget_figures(budget: BudgetState, ask: Ask) -> str:
    """A budget's figures beside what a call asks of it: "budget B: $0.98 spent + $0.01 reserved of …"."""
    parts = []
    if budget.max_usd is not None:
        need = "" if ask.usd is None else f"; this call may cost up to {usd(ask.usd)}"
        parts.append(f"{usd(budget.spent_usd)} spent + {usd(budget.reserved_usd)} reserved of "
                     f"{usd(budget.max_usd)}{need}")
    if budget.max_tokens is not None:
        parts.append(f"{budget.spent_tokens:,} tokens spent + {budget.reserved_tokens:,} reserved of "
                     f"{budget.max_tokens:,}; this call may use up to {ask.tokens:,}")
    return f"budget {budget.id}: {'; '.join(parts)}"
