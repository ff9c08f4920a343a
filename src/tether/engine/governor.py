"""The governor: the one place every model call passes, whatever started the run.

The executor calls it around each model call: `reserve` before (after the breakpoint checks),
`settle` when the call's `model_call` record is written, `release` when the call is never made or
fails or is interrupted. What a call passes, in this fixed order:

1. the response cache (a later issue: a hit would be granted here, at no cost);
2. the budgets: the run's own limits (max_steps, max_wall_s: checks; max_tokens, max_cost_usd:
   the call's worst case against the run's spend, which only the lease holder makes, so it is
   held in memory, in the run's state), then every shared budget that covers the run (rows in the
   store, reserved all or nothing, tied to the run's lease);
3. the rate limits of the call's endpoint and model (a later issue: a wait, not a refusal);
4. the price tier (a later issue: standard, flex, or a provider's batch API).

A call's worst case is an upper bound of its input tokens (`worst_case_input_tokens`) plus its
output cap: the request's own max_tokens / max_completion_tokens, else (only when a token or cost
budget covers it) `default_max_output_tokens`, which the request then carries so that the bound
holds. At the model's price: a model whose price is unknown cannot run under a dollar budget.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from tether.domain.governor import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    MIN_FINAL_OUTPUT_TOKENS,
    WARN_AT,
    Ask,
    BudgetState,
    Grant,
    Price,
    Refusal,
    Spend,
    budget_figures,
    fits_once_settled,
    holds_reservations,
    requested_output_cap,
    shared_refusal,
    usd,
    worst_case_input_tokens,
)
from tether.domain.ids import new_id
from tether.domain.models import ModelRequest, ModelResponse
from tether.domain.protocols import Model, Store, price_of
from tether.domain.state import RunState
from tether.domain.usage import Usage

# How often a call that fits a shared budget once the calls in flight settle asks again (backing off).
_FIRST_WAIT_S, _LAST_WAIT_S = 0.02, 0.5
_RETRIES_AFTER_SETTLE = 3  # a refused call finds the room free when it looks: it tries again this often
# The grant of a call no token or cost budget covers: nothing reserved, nothing to settle or release.
_FREE = Grant("grant_free", Ask("", 0, (), 0, None, None), None)


class BudgetGovernor:
    """Budgets for every run: its own limits, and the shared budgets (`store`) its start names.

    Without a store only the run's own limits apply (an in-memory run, a test). `prices` (model
    ref -> Price) are the operator's: they win over what a model says, for reservations and for
    the cost recorded of each response, so that the two agree."""

    def __init__(self, store: Store | None = None, *, prices: Mapping[str, Price] | None = None,
                 default_max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.prices = dict(prices or {})
        self.default_max_output_tokens = default_max_output_tokens
        self.clock = clock

    # -- prices ---------------------------------------------------------------------------------

    def price(self, model: Model) -> Price | None:
        """The price a call of `model` is reserved at: the operator's for its ref, else its own."""
        return self.prices.get(model.ref) or price_of(model)

    def knows_price(self, model: Model) -> bool:
        """Whether calls of `model` can be reserved and their cost recorded: a dollar budget needs both."""
        return self.price(model) is not None and self.cost_usd(model, ModelResponse()) is not None

    def cost_usd(self, model: Model, response: ModelResponse) -> float | None:
        configured = self.prices.get(model.ref)
        if configured is not None:
            u = response.usage
            return configured.cost(u.input_tokens, u.output_tokens)
        return model.cost_usd(response)

    # -- the three verbs ------------------------------------------------------------------------

    async def reserve(self, state: RunState, request: ModelRequest, model: Model, *,
                      final: bool = False, on_wait: Callable[[str], None] | None = None) -> Grant | Refusal:
        lim = state.limits
        step = state.next_step
        overridden = f"on_budget:on_budget:{step}" in state.passed  # a person continued past it
        if not overridden and not final:
            if state.model_calls >= lim.max_steps:
                return Refusal("max_steps", f"the run reached max_steps ({lim.max_steps} model calls)",
                               lim.on_max_steps)
            if lim.max_wall_s is not None and (spent := state.elapsed_s(self.clock())) >= lim.max_wall_s:
                return Refusal("max_wall_s", f"the run has been active {spent:.1f} s (max_wall_s {lim.max_wall_s})",
                               lim.on_max_wall_s)
        shared = tuple(state.budgets)
        run_tokens = lim.max_tokens is not None and not overridden
        run_usd = lim.max_cost_usd is not None and not overridden
        covered = run_tokens or run_usd or bool(shared)
        if not covered and not final:  # nothing to reserve: no count (a step's cost stays flat)
            return _FREE
        input_tokens = worst_case_input_tokens(request)
        requested = requested_output_cap(request.settings)
        cap = requested if requested is not None or not covered else self.default_max_output_tokens
        price = self.price(model)
        if final and cap is not None:  # the last answer: what is left of the run's own budgets, at most
            room = self._run_room(state, input_tokens, price, run_tokens, run_usd)
            if room is not None and room < cap:
                if room < MIN_FINAL_OUTPUT_TOKENS:
                    return self._run_refusal(state, "max_tokens" if run_tokens else "max_cost_usd",
                                             input_tokens, MIN_FINAL_OUTPUT_TOKENS, price)
                cap = room
        ask = Ask(state.run_id, step, shared, input_tokens, cap,
                  None if price is None else price.cost(input_tokens, cap or 0))
        if run_tokens and state.usage.total_tokens + ask.tokens > (lim.max_tokens or 0):
            return self._run_refusal(state, "max_tokens", input_tokens, cap, price)
        if run_usd and (ask.usd is None or state.cost_usd is None
                        or state.cost_usd + ask.usd > (lim.max_cost_usd or 0)):
            return self._run_refusal(state, "max_cost_usd", input_tokens, cap, price)
        grant_id = new_id("grant")
        warnings: tuple[str, ...] = ()
        if shared:
            if self.store is None:
                raise RuntimeError("a run with shared budgets needs a governor with a store")
            wait_s, retries = _FIRST_WAIT_S, 0
            while (refused := await self.store.reserve(state.run_id, grant_id, shared, ask.usd, ask.tokens)):
                budget = await self.store.get_budget(refused)
                if budget is not None and fits_once_settled(budget, ask):
                    if not holds_reservations(budget):
                        # The calls that held the room settled after the refusal, before this look: it
                        # fits now, so try again at once (a few times: others may keep taking it first).
                        retries += 1
                        if retries <= _RETRIES_AFTER_SETTLE:
                            continue
                    else:
                        # Only others' calls in flight are in the way: wait for them to settle (the executor
                        # interrupts the wait on cancel), rather than pause a run the budget can still pay for.
                        if wait_s == _FIRST_WAIT_S and on_wait is not None:
                            on_wait(f"waiting for the calls in flight to settle: {budget_figures(budget, ask)}")
                        await asyncio.sleep(wait_s)
                        wait_s = min(wait_s * 1.5, _LAST_WAIT_S)
                        continue
                policy = budget.on_exhausted if budget is not None else "pause"
                return Refusal(refused, shared_refusal(budget, refused, ask), policy, shared=True)
            warnings = tuple(_warning(b) for b in await self.store.warn_budgets(shared, WARN_AT))
        return Grant(grant_id, ask, cap if cap != requested else None, warnings)

    def settle(self, grant: Grant, cost_usd: float | None, usage: Usage) -> Spend | None:
        ask = grant.ask
        if not ask.budgets:
            return None  # the run's own spend is its state's, folded from the record itself
        # An unknown cost (a dollar budget refuses such a model up front) counts at its reservation.
        spent = cost_usd if cost_usd is not None else (ask.usd or 0.0)
        return Spend(grant.id, ask.run_id, ask.budgets, spent, usage.input_tokens + usage.output_tokens)

    async def release(self, grant: Grant) -> None:
        if grant.ask.budgets and self.store is not None:
            await self.store.release(grant.id)

    # -- the run's own limits -------------------------------------------------------------------

    def _run_room(self, state: RunState, input_tokens: int, price: Price | None, tokens: bool,
                  dollars: bool) -> int | None:
        """The output tokens the run's own token and cost limits leave a call of this input."""
        lim, rooms = state.limits, []
        if tokens and lim.max_tokens is not None:
            rooms.append(lim.max_tokens - state.usage.total_tokens - input_tokens)
        if dollars and lim.max_cost_usd is not None and price is not None and state.cost_usd is not None:
            left = lim.max_cost_usd - state.cost_usd - price.cost(input_tokens, 0)
            rooms.append(int(left / price.output_usd) if price.output_usd > 0 else 1 << 40)
        return min(rooms) if rooms else None

    def _run_refusal(self, state: RunState, name: str, input_tokens: int, cap: int | None,
                     price: Price | None) -> Refusal:
        lim = state.limits
        if name == "max_tokens":
            detail = (f"the run used {state.usage.total_tokens:,} tokens and its next call may use up to "
                      f"{input_tokens + (cap or 0):,} more ({input_tokens:,} in, {cap or 0:,} out), past max_tokens "
                      f"{lim.max_tokens:,}")
            return Refusal(name, detail, lim.on_max_tokens)
        if price is None or state.cost_usd is None:
            detail = (f"the price of this run's model is unknown, so its next call could pass max_cost_usd "
                      f"{lim.max_cost_usd}; set a price for it in the operator configuration ([prices])")
        else:
            detail = (f"the run cost {usd(state.cost_usd)} and its next call may cost up to "
                      f"{usd(price.cost(input_tokens, cap or 0))} more, past max_cost_usd {lim.max_cost_usd}")
        return Refusal(name, detail, lim.on_max_cost_usd)


def _warning(b: BudgetState) -> str:
    figures = []
    if b.max_usd is not None:
        figures.append(f"{usd(b.spent_usd)} spent + {usd(b.reserved_usd)} reserved of {usd(b.max_usd)}")
    if b.max_tokens is not None:
        figures.append(f"{b.spent_tokens:,} + {b.reserved_tokens:,} reserved of {b.max_tokens:,} tokens")
    return f"budget {b.id} is {b.used_share():.0%} used: {'; '.join(figures)}"
