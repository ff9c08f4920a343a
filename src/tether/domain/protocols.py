"""The ports the engine depends on. Adapters implement them; the engine never names an adapter."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from tether.domain.batches import BatchOptions, BatchRecord, BatchState, BatchTotals, Case, CaseRow, CaseStatus
from tether.domain.governor import BudgetState, ExhaustedPolicy, Grant, Price, Refusal, Spend
from tether.domain.leases import LeaseState
from tether.domain.models import ModelRequest, ModelResponse
from tether.domain.objects import StoredObject
from tether.domain.records import Record, RunStatus
from tether.domain.runs import RunInfo
from tether.domain.tools import ToolContext, ToolPolicy
from tether.domain.usage import Usage

if TYPE_CHECKING:
    from tether.domain.state import RunState


@runtime_checkable
class Model(Protocol):
    ref: str  # the model reference it was made from, e.g. "openai:gpt-4o-mini"

    async def complete(
        self, request: ModelRequest, on_delta: Callable[[str], None] | None = None
    ) -> ModelResponse:
        """One model call. `on_delta`, when given, receives text fragments as they stream."""
        ...

    def cost_usd(self, response: ModelResponse) -> float | None:
        """The price of one response, or None when this endpoint's prices are unknown."""
        ...

    # A model may also say its `price() -> Price | None` (USD per token, before a call: what a budget
    # reserves at). One without that method is a model whose price is unknown (see `price_of`).


def price_of(model: Model) -> Price | None:
    """The model's price per token, or None when unknown (also for a model that cannot say it)."""
    price = getattr(model, "price", None)
    return price() if callable(price) else None


class Governor(Protocol):
    """The one place every model call passes (DESIGN.md, Automation): reserve before the call, settle
    after it with the real usage, release if it is never made. See engine/governor.py."""

    async def reserve(self, state: RunState, request: ModelRequest, model: Model, *,
                      final: bool = False, on_wait: Callable[[str], None] | None = None) -> Grant | Refusal:
        """Reserve the call's worst case against every budget covering the run, or say why not.
        `final`: the last call of a "finish" policy (its cap may shrink to fit what is left);
        `on_wait`: told (a sentence) when the call starts waiting for others' reservations to settle."""
        ...

    def settle(self, grant: Grant, cost_usd: float | None, usage: Usage) -> Spend | None:
        """The call was made and its `model_call` record is being written: what it really spent, to be
        written with that record (`Store.append(records, spend=...)`); None when no shared budget
        covers it."""
        ...

    async def release(self, grant: Grant) -> None:
        """The call was not made, or failed, or was interrupted: give the reservation back."""
        ...

    def cost_usd(self, model: Model, response: ModelResponse) -> float | None:
        """The price of a response, at the price its reservation used (an operator's price wins)."""
        ...


@runtime_checkable
class Tool(Protocol):
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object
    policy: ToolPolicy
    kind: str  # "function", "builtin", "client", "mcp"
    cancellable: bool  # False when a timeout cannot really stop the call (a sync function in a thread)

    def validate(self, arguments: dict[str, Any]) -> Any:
        """Check arguments before the call; raise ToolError with a message the model can act on."""
        ...

    def call(self, validated: Any, ctx: ToolContext) -> Awaitable[Any]:
        """The call, to await: a coroutine; for a call that cannot be stopped (`cancellable` False),
        an awaitable that goes on when an await of it is cancelled and can be awaited again."""
        ...


class Store(Protocol):
    """The run log and the run index. Appends are ordered per run; `sync` waits for commit."""

    async def create_run(self, record: Record, *, owner: str | None, lease_ttl_s: float = 30.0) -> None:
        """Insert the run (from its `run_started` record) and that record, optionally leased."""
        ...

    def append(self, records: Sequence[Record], spend: Spend | None = None) -> None:
        """Queue records for commit; they commit in order, possibly grouped with other runs'. A
        `spend` commits in the same transaction as these records (a settled model call's cost)."""
        ...

    async def sync(self) -> None:
        """Return once everything appended so far has committed (or raise its error)."""
        ...

    async def load(self, run_id: str, after: int = 0) -> list[Record]:
        """The run's records with `seq > after`, in seq order, appended ones included (committed first).

        A full load (`after` 0) also starts the store's view of the run afresh (a run whose write failed
        can be appended to again); reading only newer records (`after` > 0) leaves it as it was."""
        ...

    async def get_run(self, run_id: str) -> RunInfo | None: ...

    async def list_runs(
        self, *, limit: int = 50, status: RunStatus | None = None, thread_id: str | None = None
    ) -> list[RunInfo]: ...

    async def acquire_lease(self, run_id: str, owner: str, ttl_s: float) -> bool: ...

    async def renew_lease(self, run_id: str, owner: str, ttl_s: float) -> bool: ...

    async def renew_leases(self, owner: str, run_ids: Collection[str], ttl_s: float) -> list[LeaseState]:
        """Renew, in one statement whatever their number, the leases `owner` holds on these runs (the
        runs it advances); the renewed ones come back, each with the cancel asked for and the
        breakpoints set on it from outside. A run left out is no longer leased to `owner`: it paused
        or ended (which gives the lease back), or another owner took it over once it had expired."""
        ...

    async def controls(self, run_ids: Collection[str]) -> list[LeaseState]:
        """The runs among these that have a cancel asked for or breakpoints set from outside, in one
        read whatever their number (the owner's heartbeat polls it between renewals)."""
        ...

    async def take_over_lease(self, run_id: str, old_owner: str, owner: str, ttl_s: float) -> bool:
        """Take the lease from `old_owner`, known to be gone, before it expires: only if it still
        holds it (compare-and-set), so that of two processes racing to take over, one wins."""
        ...

    async def release_lease(self, run_id: str, owner: str) -> None: ...

    async def decide(self, run_id: str, pause_id: str, decisions: Sequence[Record]) -> bool:
        """Append decision records only if the run is still paused at `pause_id` (compare-and-set).

        Returns False, writing nothing, when another actor answered that pause first."""
        ...

    async def set_breakpoints(self, run_id: str, breakpoints: list[dict[str, Any]] | None) -> None:
        """Replace the breakpoints set on a run since it started (None: back to the agent's)."""
        ...

    async def get_breakpoints(self, run_id: str) -> list[dict[str, Any]] | None: ...

    async def request_cancel(self, run_id: str, reason: str) -> None:
        """Ask whoever advances the run to cancel it (its owner's heartbeat looks every 0.5 s)."""
        ...

    async def cancel_requested(self, run_id: str) -> str | None: ...

    async def expired_runs(self) -> list[str]:
        """Active runs (queued/running) whose lease has expired or was never taken."""
        ...

    # -- shared budgets (the governor's) --------------------------------------------------------

    async def put_budget(self, budget_id: str, *, max_usd: float | None, max_tokens: int | None,
                         on_exhausted: ExhaustedPolicy = "pause") -> None:
        """Create the budget, or change its limits (what was spent and reserved stays; it may warn
        again, at 80 % of its new limits). `on_exhausted`: what a run that cannot reserve in it does."""
        ...

    async def get_budget(self, budget_id: str) -> BudgetState | None: ...

    async def delete_budget(self, budget_id: str) -> None:
        """Delete the budget and its reservations (a run it covered can no longer reserve)."""
        ...

    async def reserve(self, run_id: str, grant_id: str, budget_ids: Sequence[str], usd: float | None,
                      tokens: int) -> str | None:
        """Reserve `usd` and `tokens` in every budget, all or nothing: None when granted, else the id of
        the (first) budget that refused. `usd` None (price unknown) is refused by a dollar budget.
        A refusal first reaps the budgets' stale reservations (of runs whose lease expired or was
        given back) and tries once more, in the same transaction."""
        ...

    async def release(self, grant_id: str) -> None:
        """Give a reservation back (the call was not made)."""
        ...

    async def warn_budgets(self, budget_ids: Sequence[str], share: float) -> list[BudgetState]:
        """The budgets among these that reached `share` of a limit (spent + reserved) and had not
        warned yet: each is marked warned, so it is returned once."""
        ...


class ObjectStore(Protocol):
    """The HTTP interface's documents (assistants, threads, messages, run settings), beside the runs."""

    async def put_object(self, obj: StoredObject) -> None:
        """Insert the object, or replace the one with its id."""
        ...

    async def insert_object(self, obj: StoredObject) -> bool:
        """Insert the object only if no row has its id (whatever its kind); False if one has."""
        ...

    async def replace_object(self, obj: StoredObject, old: StoredObject) -> bool:
        """Replace `old` by `obj` (same id) only if the row at that id still has `old`'s kind and
        data; False if it is gone or was changed since it was read."""
        ...

    async def get_object(self, object_id: str) -> StoredObject | None: ...

    async def list_objects(
        self,
        kind: str,
        tenant: str,
        parent_id: str | None = None,
        *,
        after: str | None = None,
        before: str | None = None,
        limit: int | None = None,
        order: Literal["asc", "desc"] = "asc",
    ) -> list[StoredObject]:
        """The objects of a kind (of one parent, if given), by id (ids sort by creation time).

        A page of them, as OpenAI's lists page: in `order`, only those after `after` and before
        `before` in that order (both exclusive; a cursor need not exist any more), at most `limit`.
        When `before` is given, the page is the `limit` objects nearest to it, still in `order`.
        With no keywords: every object, oldest first."""
        ...

    async def delete_object(self, object_id: str) -> bool: ...

    async def delete_children(self, parent_id: str, kinds: Sequence[str]) -> int:
        """Delete the objects of these kinds under `parent_id` (e.g. a deleted thread's messages);
        how many were deleted."""
        ...


class BatchStore(Protocol):
    """Batches and their cases, beside the runs (a case's run is an ordinary run of the `Store`).

    Case pages are read with their runs' rows (status, tokens, cost, output) and the runs' ends
    (`finished`, or the latest `paused`), so showing a page never loads whole logs."""

    async def create_batch(self, batch: BatchRecord, cases: Sequence[Case]) -> None:
        """Insert the batch and every case in one transaction (never a half-made batch)."""
        ...

    async def get_batch(self, batch_id: str) -> BatchRecord | None: ...

    async def list_batches(self, *, tenant: str | None = None, limit: int = 50,
                           after: str | None = None) -> list[BatchRecord]:
        """Newest first; `after`: the page after that batch id (in that order)."""
        ...

    async def batch_totals(self, batch_id: str) -> BatchTotals:
        """The cases counted by status (their current attempt's run), and what every attempt spent."""
        ...

    async def batch_cases(self, batch_id: str, *, status: CaseStatus | None = None, after: int | None = None,
                          limit: int = 100) -> list[CaseRow]:
        """A page of cases by index (those after index `after`), of one status if given."""
        ...

    async def cases_to_run(self, batch_id: str, *, after: int = -1, limit: int = 500,
                           retry_failed: bool = False) -> list[CaseRow]:
        """The next cases by index after `after` that a run of the batch advances: those without a run
        (or whose run was never created), those whose run is queued or running, and with
        `retry_failed` those whose run failed, was cancelled or ended incomplete. One query a page;
        the rows carry no `finished`/`paused` records."""
        ...

    async def start_cases(self, batch_id: str, starts: Sequence[tuple[int, int, str]]) -> None:
        """Record, for each (case index, attempt, run id), that the case is at that attempt, whose run is
        about to be created (before it is): one transaction for them all."""
        ...

    async def background_batches(self) -> list[BatchRecord]:
        """The open batches a server runs in the background (`update_batch(background=True)`)."""
        ...

    async def update_batch(self, batch_id: str, *, state: BatchState | None = None,
                           options: BatchOptions | None = None, background: bool | None = None) -> None: ...

    async def batch_run_ids(self, batch_id: str) -> list[str]:
        """The runs of every attempt of every case."""
        ...

    async def delete_batch(self, batch_id: str) -> None:
        """The batch and its cases (not their runs)."""
        ...

    async def delete_runs(self, run_ids: Sequence[str]) -> int:
        """Delete these runs (rows and records); how many existed."""
        ...

    async def finished_runs_before(self, cutoff: float, *, limit: int = 1000,
                                   with_batch_runs: bool = False) -> list[str]:
        """Finished runs last changed before `cutoff` (unix time), oldest first; without
        `with_batch_runs`, none that belongs to a batch."""
        ...
