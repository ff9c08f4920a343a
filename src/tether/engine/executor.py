"""The loop of DESIGN.md as an explicit state machine over the run log.

    model call ──► tool calls (in parallel, bounded) ──► model call … ──► final answer

`Executor.advance` takes a run's folded state and moves it on until it pauses or finishes.
Each transition appends a record, applies it to the in-memory state and emits an event; the
state is never re-read from the store. The caller holds the run's lease.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from tether.domain.agents import Limits
from tether.domain.breakpoints import Breakpoint, Stop
from tether.domain.errors import LeaseLost, ModelError, ReplayDiverged
from tether.domain.events import Event
from tether.domain.governor import Grant, Refusal, Spend
from tether.domain.ids import new_id
from tether.domain.messages import Message, ToolCall
from tether.domain.models import ModelRequest, ModelResponse, ToolSchema
from tether.domain.protocols import Governor, Model, Store, Tool
from tether.domain.records import (
    Finished,
    ModelCalled,
    Paused,
    PauseReason,
    Payload,
    PendingItem,
    Record,
    RunStatus,
    ToolFinished,
    ToolStarted,
)
from tether.domain.state import CallState, RunState
from tether.domain.tools import ToolContext, ToolError
from tether.domain.usage import Usage
from tether.engine.deadlines import deadline
from tether.engine.governor import BudgetGovernor
from tether.engine.interrupt import Interruptible
from tether.engine.output import check_output, parse_output

log = logging.getLogger("tether.executor")

FINAL_ANSWER_NOTE = (
    "You have reached the step limit for this task. Do not call tools; answer now with what you have."
)


class Executor:
    def __init__(
        self,
        *,
        store: Store,
        model: Model,
        tools: Mapping[str, Tool],
        on_event: Callable[[Event], None] | None = None,
        log: list[Record] | None = None,
        breakpoints: Sequence[Breakpoint] = (),
        clock: Callable[[], float] = time.time,
        governor: Governor | None = None,
    ) -> None:
        self.store, self.model, self.tools = store, model, tools
        # Every model call passes it (budgets; later the cache, rate limits, tiers). By default the
        # run's own limits only: no store needed.
        self.governor: Governor = governor if governor is not None else BudgetGovernor(clock=clock)
        self.breakpoints = list(breakpoints)
        self.on_event, self.clock = on_event, clock
        self.log = log  # when given, every appended record is added to it too
        self._tool_limits = {
            name: asyncio.Semaphore(t.policy.max_concurrency)
            for name, t in tools.items()
            if t.policy.max_concurrency
        }
        self._cancelled: str | None = None
        self._lease_lost: str | None = None  # why this executor may write nothing more
        self._model_in_flight = Interruptible()

    def cancel(self, reason: str = "cancelled") -> None:
        """Ask the run to stop at its next transition; pending tool calls get synthetic results.

        A model call in flight is interrupted (nothing of it is recorded); a tool call in flight
        finishes first, so that its effect is known.
        """
        self._cancelled = reason
        self._model_in_flight.interrupt()

    def lose_lease(self, reason: str) -> None:
        """Stop at once, writing nothing more: another process took over the run's lease, which this one
        failed to renew in time. The next record raises `LeaseLost(reason)` instead of being written;
        a model call in flight is interrupted, a tool call in flight finishes unrecorded."""
        self._lease_lost = reason
        self._model_in_flight.interrupt()

    # -- the loop -------------------------------------------------------------------------------

    async def advance(self, state: RunState) -> RunState:
        agent = state.agent
        assert agent is not None, "advance() needs a started run"
        # What every request of the run sends alike, built once.
        self._schemas = [ToolSchema(t.name, t.description, t.parameters) for t in self.tools.values()]
        self._system = [Message.system(agent.instructions)] if agent.instructions else []
        self._static = _static_fingerprint(agent.instructions, self._schemas, agent.settings, agent.output_schema)
        task = asyncio.current_task()  # where model calls and a lone tool call are awaited: looked up once
        self._model_in_flight.owner = task
        try:
            while state.status == RunStatus.RUNNING:
                if self._cancelled is not None or state.aborted is not None:
                    self._finish(state, RunStatus.CANCELLED, error=self._cancelled or state.aborted)
                elif state.batch:
                    await self._tool_calls(state, task)
                elif _needs_model(state):
                    await self._model_call(state)
                elif item := self._stop(state, Stop.BEFORE_FINISH, state.last_step, output=state.final_text()):
                    await self._pause(state, [item])
                else:
                    self._finish(state, RunStatus.COMPLETED)
        except ModelError as e:
            self._finish(state, RunStatus.FAILED, error=str(e))
        await self.store.sync()
        return state

    # -- model calls ----------------------------------------------------------------------------

    async def _model_call(self, state: RunState) -> None:
        step = state.next_step
        if (reason := _token_limit(state.limits, state.usage)) is not None:
            self._finish(state, RunStatus.INCOMPLETE, error=reason)  # a hard limit: no call, no pause
            return
        if item := self._stop(state, Stop.BEFORE_MODEL, step):
            await self._pause(state, [item])
            return
        final = False
        request = self._request(state, final)
        got = await self._reserve(state, request)
        if got is None:
            return  # cancel() came while it waited for budget room: the loop ends the run
        if isinstance(got, Refusal):
            if got.policy == "pause" or self._stop(state, Stop.ON_BUDGET, step, budget=got.budget):
                await self._budget_pause(state, step, got)
                return
            if got.policy == "fail":
                self._finish(state, RunStatus.FAILED, error=got.detail)
                return
            final = True  # "finish": one last call without tools, that must answer, and fit the budget too
            request = self._request(state, final)
            got = await self._reserve(state, request, final=True)
            if got is None:
                return
            if isinstance(got, Refusal):
                await self._budget_pause(state, step, got)
                return
        grant = got
        for warning in grant.warnings:
            if self.on_event is not None:
                self._emit(Event(state.run_id, "budget_warning", detail=warning))
        if grant.max_output_tokens is not None:  # the bound reserved must hold: the request carries it
            # (the fingerprint stays: a replay of the run matches whatever cap the budget gave)
            request = dataclasses.replace(request, settings=_cap_completion(request.settings,
                                                                            grant.max_output_tokens))
        settled = False
        try:
            settled = await self._call_model(state, step, request, grant, final)
        finally:
            if not settled:  # never made, failed or interrupted: nothing was spent that a record shows
                await self._release(grant)

    async def _reserve(self, state: RunState, request: ModelRequest, *, final: bool = False) -> Grant | Refusal | None:
        """The governor's answer for this call; None when cancel() interrupted it (a reservation may
        wait for calls in flight to settle)."""
        on_wait = None
        if self.on_event is not None:
            def on_wait(detail: str) -> None:
                self._emit(Event(state.run_id, "budget_wait", detail=detail))
        async with self._model_in_flight:
            return await self.governor.reserve(state, request, self.model, final=final, on_wait=on_wait)
        if self._lease_lost is not None:
            raise LeaseLost(self._lease_lost)
        return None

    async def _budget_pause(self, state: RunState, step: int, refusal: Refusal) -> None:
        await self._pause(state, [PendingItem(f"on_budget:{step}", PauseReason.BUDGET, detail=refusal.detail,
                                              stop=Stop.ON_BUDGET, step=step)])

    async def _release(self, grant: Grant) -> None:
        try:
            await self.governor.release(grant)
        except Exception:  # the reservation is reaped once the run's lease is gone or taken over
            log.warning("run %s: a reservation could not be given back", grant.ask.run_id, exc_info=True)

    async def _call_model(self, state: RunState, step: int, request: ModelRequest, grant: Grant,
                          final: bool) -> bool:
        """Make the granted call and record it; True once its record (with its spend) is written."""
        agent, limits = state.agent, state.limits
        assert agent is not None
        started = time.perf_counter()
        on_delta = self._delta_sink(state.run_id) if self.on_event is not None else None
        try:
            async with self._model_in_flight:  # cancel() interrupts the call; a shutdown's cancel goes on
                response = await self.model.complete(request, on_delta)
        except ModelError as e:
            if isinstance(e, ReplayDiverged) or not (item := self._stop(state, Stop.ON_ERROR, step, error=str(e))):
                raise
            item.detail = f"the model call failed: {e}; continue to try it again"
            await self._release(grant)  # before the pause: a paused run holds nothing
            await self._pause(state, [item])
            return True
        if self._lease_lost is not None:
            raise LeaseLost(self._lease_lost)  # another process advances the run now: write nothing
        if self._cancelled is not None:
            return False  # cancel() came during the call: nothing of it is recorded, the loop ends the run
        duration = time.perf_counter() - started

        calls = [] if final else [
            ToolCall(new_id("call"), c.name, c.arguments, c.provider_id or c.id) for c in response.tool_calls
        ]
        response = ModelResponse(response.text, calls, response.finish_reason, response.usage,
                                 response.refusal, response.model_name)
        cost = self.governor.cost_usd(self.model, response)
        spend = self.governor.settle(grant, cost, response.usage)

        def called(rejected: str | None = None) -> ModelCalled:
            return ModelCalled(step, request.fingerprint, response, cost, duration, rejected=rejected, final=final)

        if (reason := _incomplete_after(state, response)) is not None:
            self._record(state, called(), spend)
            self._finish(state, RunStatus.INCOMPLETE, error=reason)
            return True
        if not calls and (reason := _no_answer(response)) is not None:
            self._record(state, called(), spend)
            self._finish(state, RunStatus.FAILED, error=reason)
            return True
        rejected = None
        if not calls and agent.output_schema is not None:
            problem = check_output(response.text, agent.output_schema)
            if problem is not None:
                if state.output_rejections >= limits.max_output_retries:
                    self._record(state, called(), spend)
                    self._finish(state, RunStatus.FAILED,
                                 error=f"the answer did not match the output schema: {problem}")
                    return True
                rejected = (f"Your answer does not match the required JSON schema: {problem}. "
                            "Reply again with only a JSON value that matches the schema.")
        self._record(state, called(rejected), spend)
        if self._cancelled is None and (item := self._stop(state, Stop.AFTER_MODEL, step, output=response.text)):
            await self._pause(state, [item])
        return True

    def _request(self, state: RunState, final: bool) -> ModelRequest:
        agent = state.agent
        assert agent is not None
        messages = [*self._system, *state.messages]
        if final:
            messages.append(Message.user(FINAL_ANSWER_NOTE))
        h = state.conversation_hash()
        h.update(self._static)
        h.update(b"final" if final else b"")
        settings = agent.settings
        if state.limits.max_completion_tokens is not None:
            settings = _cap_completion(settings, state.limits.max_completion_tokens - state.usage.output_tokens)
            h.update(json.dumps(settings, sort_keys=True, default=str).encode())  # only runs with the limit
        return ModelRequest(
            messages=messages,
            tools=[] if final else self._schemas,
            settings=settings,
            output_schema=agent.output_schema,
            fingerprint=h.hexdigest()[:32],
        )

    def _delta_sink(self, run_id: str) -> Callable[[str], None]:
        return lambda text: self._emit(Event(run_id, "delta", delta=text))

    # -- tool calls -----------------------------------------------------------------------------

    async def _tool_calls(self, state: RunState, task: asyncio.Task[Any] | None) -> None:
        """Run every open call of the batch in parallel; pause if any needs an answer from outside.
        `task`: the one this runs in (a lone call is awaited in it; parallel calls get their own)."""
        todo = [c for c in state.batch if not c.done]
        pending: list[PendingItem] = []
        if len(todo) == 1:
            item = await self._tool_call(state, todo[0], task)
            if item is not None:
                pending.append(item)
        else:
            gate = asyncio.Semaphore(state.limits.max_parallel_tools)

            async def bounded(c: CallState) -> PendingItem | None:
                async with gate:
                    return await self._tool_call(state, c, asyncio.current_task())

            pending = [i for i in await asyncio.gather(*(bounded(c) for c in todo)) if i is not None]
        if self._cancelled is not None:
            return  # the loop ends the run: the calls not run get a result then, no pause is made
        if pending:
            await self._pause(state, pending)
        else:
            state.close_batch()

    async def _tool_call(self, state: RunState, c: CallState, task: asyncio.Task[Any] | None) -> PendingItem | None:
        call = c.call
        tool = self.tools.get(call.name)
        if tool is None:
            known = ", ".join(sorted(self.tools)) or "none"
            return self._tool_done(state, c, error=f"unknown tool {call.name!r}; available tools: {known}")
        try:
            args = json.loads(call.arguments or "{}")
            if not isinstance(args, dict):
                raise ValueError("expected a JSON object")
        except ValueError as e:
            return self._tool_done(state, c, error=f"the arguments are not a valid JSON object ({e}); "
                                   "send the arguments again as a JSON object")
        try:
            validated = tool.validate(args)
        except ToolError as e:
            return self._tool_done(state, c, error=str(e))
        if tool.kind == "client":
            return PendingItem(call.id, PauseReason.CLIENT_TOOL, call.id, call.name, call.arguments,
                               "the client runs this tool and submits its output", step=c.step)
        policy = tool.policy
        if policy.requires_approval and call.id not in state.approved and not c.started:
            return PendingItem(call.id, PauseReason.APPROVAL, call.id, call.name, call.arguments,
                               "this tool needs a person's approval: approve, deny, or approve with other arguments",
                               stop=Stop.BEFORE_TOOL, step=c.step)
        if not c.started and (item := self._stop(state, Stop.BEFORE_TOOL, c.step, call, args=args)):
            return item
        if c.started and not policy.idempotent:
            # Started before a crash and never finished: it may or may not have taken effect.
            return PendingItem(call.id, PauseReason.UNCERTAIN, call.id, call.name, call.arguments,
                               "started before an interruption and not known to have finished; "
                               "rerun it, supply its result, or abort", stop=Stop.ON_UNCERTAIN, step=c.step)
        attempt = c.attempts + 1
        limit = self._tool_limits.get(call.name)
        while True:
            self._record(state, ToolStarted(c.step, call.id, call.name, call.arguments, attempt))
            if not policy.idempotent:
                await self.store.sync()  # the contract: tool_started commits before the tool runs
            started = time.perf_counter()
            ctx = ToolContext(state.run_id, call.id, c.step, attempt)
            try:
                if limit is None:
                    value = await self._call_tool(state, c, tool, validated, ctx, started, task)
                else:
                    async with limit:
                        value = await self._call_tool(state, c, tool, validated, ctx, started, task)
            except _TimedOut:
                if not tool.cancellable and not policy.idempotent:
                    # The call goes on in a thread we cannot stop: whether it takes effect is unknown.
                    return PendingItem(call.id, PauseReason.UNCERTAIN, call.id, call.name, call.arguments,
                                       f"timed out after {policy.timeout_s:g}s and may still be running; "
                                       "rerun it, supply its result, or abort", stop=Stop.ON_UNCERTAIN, step=c.step)
                error = f"the tool timed out after {policy.timeout_s:g}s"
            except ToolError as e:
                error = str(e) or type(e).__name__
            except ReplayDiverged:
                raise  # a replay that no longer matches its recording must stop, not improvise
            except Exception as e:  # a tool's bug is the model's information, not the run's crash
                error = f"{type(e).__name__}: {e}"
            else:
                result = _render(value, policy.max_result_chars)
                self._tool_done(state, c, result=result, duration=time.perf_counter() - started)
                return self._stop(state, Stop.AFTER_TOOL, c.step, call, args=args, result=result)
            if policy.retryable and attempt <= policy.max_retries:
                await asyncio.sleep(min(0.1 * 2 ** (attempt - 1), 2.0))
                attempt += 1
                continue
            self._tool_done(state, c, error=error, duration=time.perf_counter() - started)
            return self._stop(state, Stop.ON_ERROR, c.step, call, args=args, error=error)

    async def _call_tool(self, state: RunState, c: CallState, tool: Tool, validated: Any, ctx: ToolContext,
                         started: float, task: asyncio.Task[Any] | None) -> Any:
        """Call the tool (within its timeout). If this task is cancelled meanwhile (Ctrl-C, a shutdown)
        while a tool that cannot be stopped runs (a sync function in a thread), the process waits for
        that thread anyway: its result is then recorded before the cancellation goes on, so that a
        resume does not ask whether a call that finished ran."""
        timeout_s = tool.policy.timeout_s
        call = tool.call(validated, ctx)
        try:
            return await _with_timeout(call, timeout_s, task)  # awaited in this task: no task of its own
        except asyncio.CancelledError:
            if tool.cancellable:
                raise
            # A call that cannot be stopped goes on when its await is cancelled: wait for it again.
            left = None if timeout_s is None else max(0.0, started + timeout_s - time.perf_counter())
            try:
                value = await _with_timeout(call, left, task)  # within the call's own deadline
            except BaseException:  # it failed, timed out or was stopped after all: nothing to keep
                raise asyncio.CancelledError() from None
            self._tool_done(state, c, result=_render(value, tool.policy.max_result_chars),
                            duration=time.perf_counter() - started)
            await self.store.sync()
            raise

    def _tool_done(self, state: RunState, c: CallState, *, result: str | None = None,
                   error: str | None = None, duration: float = 0.0) -> PendingItem | None:
        """Record the call's outcome; nothing is left pending."""
        self._record(state, ToolFinished(c.step, c.call.id, c.call.name, result, error, duration))
        return None

    # -- stops ----------------------------------------------------------------------------------

    def _stop(self, state: RunState, stop: Stop, step: int, call: ToolCall | None = None,
              **values: Any) -> PendingItem | None:
        """A pending item if the run must pause at this stop (a breakpoint hit, or stepping)."""
        if not self.breakpoints and not state.stepping:
            return None  # the common case costs one test
        item_id = call.id if call is not None else f"{stop}:{step}"
        if f"{stop}:{item_id}" in state.passed:
            return None  # answered already: continuing goes past it
        hit = None
        context: dict[str, Any] | None = None
        for bp in self.breakpoints:
            if bp.stop != stop or (bp.once and state.breakpoint_hits.get(bp.id)):
                continue
            if context is None:
                context = self._context(state, step, call, values)
            if bp.matches(stop, context):
                hit = bp
                break
        if hit is None and not state.stepping:
            return None
        detail = f"breakpoint {hit.spec()}" if hit is not None else "stepped here"
        return PendingItem(item_id, PauseReason.BREAKPOINT, call.id if call else None, call.name if call else None,
                           call.arguments if call else None, detail, stop, step, hit.id if hit else None)

    def _context(self, state: RunState, step: int, call: ToolCall | None, values: dict[str, Any]) -> dict[str, Any]:
        """The names a breakpoint condition can use at this stop (see CONDITION_NAMES)."""
        ctx: dict[str, Any] = {
            "step": step,
            "run": {"steps": state.last_step, "tokens": state.usage.total_tokens, "cost_usd": state.cost_usd,
                    "elapsed_s": state.elapsed_s(self.clock())},
            **values,
        }
        if call is not None:
            ctx["tool"] = call.name
        return ctx

    async def _pause(self, state: RunState, items: list[PendingItem]) -> None:
        self._record(state, Paused(new_id("pause"), items))
        await self.store.sync()

    # -- the end --------------------------------------------------------------------------------

    def _finish(self, state: RunState, status: RunStatus, *, error: str | None = None) -> None:
        # A valid history: every tool call gets a result, even when the run stops mid-batch.
        for c in state.batch:
            if not c.done:
                self._record(state, ToolFinished(c.step, c.call.id, c.call.name, None, f"not run: run {status}"))
        output, structured = None, None
        if status == RunStatus.COMPLETED:
            output = state.final_text()
            if state.agent is not None and state.agent.output_schema is not None and output is not None:
                structured = parse_output(output)
        self._record(state, Finished(status, output, structured, error, state.usage.copy(), state.cost_usd))

    def _record(self, state: RunState, payload: Payload, spend: Spend | None = None) -> Record:
        if self._lease_lost is not None:
            raise LeaseLost(self._lease_lost)  # another process advances the run now: write nothing
        record = Record(state.run_id, state.last_seq + 1, self.clock(), payload)
        state.apply(record)
        if spend is None:
            self.store.append((record,))
        else:  # a settled call's spend commits with the record that reports it, or neither does
            self.store.append((record,), spend)
        if self.log is not None:
            self.log.append(record)
        if self.on_event is not None:
            self._emit(Event(state.run_id, "record", record))
        return record

    def _emit(self, event: Event) -> None:
        """Tell listeners; a listener's failure is logged, never the run's."""
        assert self.on_event is not None
        try:
            self.on_event(event)
        except Exception:
            log.exception("an event listener failed on %s of run %s", event.type, event.run_id)


def _token_limit(limits: Limits, usage: Usage, *, over: bool = False) -> str | None:
    """The hard token limit `usage` has reached (with `over`: gone past), by name."""
    for name, used in (("max_prompt_tokens", usage.input_tokens), ("max_completion_tokens", usage.output_tokens)):
        cap = getattr(limits, name)
        if cap is not None and (used > cap if over else used >= cap):
            return name
    return None


def _incomplete_after(state: RunState, response: ModelResponse) -> str | None:
    """Why the run must end "incomplete" after this response, if it must.

    Past a limit, or cut short by the completion limit ("length"). A response asking for tools
    needs another model call, which a limit merely reached already forbids: its tools do not run.
    """
    usage = state.usage.copy()
    usage.add(response.usage)
    if (reason := _token_limit(state.limits, usage, over=not response.tool_calls)) is not None:
        return reason
    if response.finish_reason == "length" and state.limits.max_completion_tokens is not None:
        return "max_completion_tokens"
    return None


def _no_answer(response: ModelResponse) -> str | None:
    """Why a final response without any text ends the run "failed" (None: it has text).

    A run never ends "completed" with nothing to show. Model adapters already ask again when an
    answer is merely empty; what reaches here has a reason that asking again would not change.
    """
    if (response.text or "").strip():
        return None
    if response.refusal:
        refusal = " ".join(response.refusal.split())
        return f"the model refused to answer: {refusal[:200]}{'…' if len(refusal) > 200 else ''}"
    if response.finish_reason == "length":
        return ("the model reached its output token limit before answering (finish_reason 'length'): "
                "raise max_tokens or max_completion_tokens")
    if response.finish_reason == "content_filter":
        return "the server's content filter withheld the answer (finish_reason 'content_filter')"
    return f"the model returned an empty answer (finish_reason {response.finish_reason!r})"


def _cap_completion(settings: dict[str, Any], remaining: int) -> dict[str, Any]:
    """The request settings with the completion tokens capped at what the run has left.

    The cap goes in `max_completion_tokens`, or in `max_tokens` when the agent sets only that one:
    OpenAI refuses a request that has both.
    """
    only_max_tokens = settings.get("max_tokens") is not None and settings.get("max_completion_tokens") is None
    key = "max_tokens" if only_max_tokens else "max_completion_tokens"
    current = settings.get(key)
    return {**settings, key: remaining if current is None else min(remaining, current)}


def _needs_model(state: RunState) -> bool:
    """A run answers at least once, even when its input ends with an assistant message."""
    last = state.last_message
    return state.model_calls == 0 or last is None or last.role != "assistant" or bool(last.tool_calls)


class _TimedOut(Exception):
    """The call's own timeout passed: not a TimeoutError the tool raised itself (a socket's, say),
    which is the tool's error like any other and says nothing of whether the call is still running."""


async def _with_timeout(awaitable: Awaitable[Any], timeout_s: float | None, task: asyncio.Task[Any] | None) -> Any:
    if timeout_s is None:
        return await awaitable
    limit = deadline(timeout_s, task)
    try:
        async with limit:
            return await awaitable
    except TimeoutError:
        if limit.expired:
            raise _TimedOut from None
        raise


_RESULT_JSON = json.JSONEncoder(default=str, ensure_ascii=False)  # json.dumps with options builds one per call


def _render(value: Any, max_chars: int) -> str:
    text = value if isinstance(value, str) else _RESULT_JSON.encode(value)
    if len(text) > max_chars:
        cut = len(text) - max_chars
        text = f"{text[:max_chars]}\n[truncated: {cut} more characters not shown]"
    return text


def _static_fingerprint(instructions: str, tools: list[ToolSchema], settings: dict[str, Any],
                        output_schema: dict[str, Any] | None) -> bytes:
    """The part of every request's fingerprint that does not change during a run."""
    body = [instructions, [[t.name, t.description, t.parameters] for t in tools], settings, output_schema]
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).digest()
