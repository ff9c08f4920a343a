"""The loop of DESIGN.md as an explicit state machine over the run log.

    model call ──► tool calls (in parallel, bounded) ──► model call … ──► final answer

`Executor.advance` takes a run's folded state and moves it on until it pauses or finishes.
Each transition appends a record, applies it to the in-memory state and emits an event; the
state is never re-read from the store. The caller holds the run's lease.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from tether.domain.errors import ModelError, ReplayDiverged
from tether.domain.events import Event
from tether.domain.ids import new_id
from tether.domain.messages import Message, ToolCall
from tether.domain.models import ModelRequest, ModelResponse, ToolSchema
from tether.domain.protocols import Model, Store, Tool
from tether.domain.records import (
    Finished,
    ModelCalled,
    Paused,
    Payload,
    PendingItem,
    Record,
    RunStatus,
    ToolFinished,
    ToolStarted,
)
from tether.domain.state import CallState, RunState
from tether.domain.tools import ToolContext, ToolError
from tether.engine.output import check_output, parse_output

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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.model, self.tools = store, model, tools
        self.on_event, self.clock = on_event, clock
        self.log = log  # when given, every appended record is added to it too
        self._tool_limits = {
            name: asyncio.Semaphore(t.policy.max_concurrency)
            for name, t in tools.items()
            if t.policy.max_concurrency
        }
        self._cancelled: str | None = None

    def cancel(self, reason: str = "cancelled") -> None:
        """Ask the run to stop at its next transition; pending tool calls get synthetic results."""
        self._cancelled = reason

    # -- the loop -------------------------------------------------------------------------------

    async def advance(self, state: RunState) -> RunState:
        agent = state.agent
        assert agent is not None, "advance() needs a started run"
        self._static = _static_fingerprint(agent.instructions, self._schemas(), agent.settings,
                                           agent.output_schema)
        try:
            while state.status == "running":
                if self._cancelled is not None:
                    self._finish(state, "cancelled", error=self._cancelled)
                elif state.batch:
                    await self._tool_calls(state)
                elif _needs_model(state):
                    await self._model_call(state)
                else:
                    self._finish(state, "completed")
        except ModelError as e:
            self._finish(state, "failed", error=str(e))
        await self.store.sync()
        return state

    # -- model calls ----------------------------------------------------------------------------

    async def _model_call(self, state: RunState) -> None:
        agent = state.agent
        assert agent is not None
        limits = agent.limits
        final = False
        if state.model_calls >= limits.max_steps:
            already_final = state.model_calls > limits.max_steps
            if limits.on_max_steps == "fail" or already_final:
                self._finish(state, "failed", error=f"the run reached max_steps ({limits.max_steps})")
                return
            final = True

        request = self._request(state, final)
        started = time.perf_counter()
        on_delta = self._delta_sink(state.run_id) if self.on_event is not None else None
        response = await self.model.complete(request, on_delta)
        duration = time.perf_counter() - started

        calls = [] if final else [
            ToolCall(new_id("call"), c.name, c.arguments, c.provider_id or c.id) for c in response.tool_calls
        ]
        response = ModelResponse(response.text, calls, response.finish_reason, response.usage,
                                 response.refusal, response.model_name)
        rejected = None
        if not calls and agent.output_schema is not None:
            problem = check_output(response.text, agent.output_schema)
            if problem is not None:
                if state.output_rejections >= limits.max_output_retries:
                    self._record(state, ModelCalled(state.next_step, request.fingerprint, response,
                                                    self.model.cost_usd(response), duration, final=final))
                    self._finish(state, "failed", error=f"the answer did not match the output schema: {problem}")
                    return
                rejected = (f"Your answer does not match the required JSON schema: {problem}. "
                            "Reply again with only a JSON value that matches the schema.")
        self._record(state, ModelCalled(state.next_step, request.fingerprint, response,
                                        self.model.cost_usd(response), duration, rejected=rejected,
                                        final=final))

    def _request(self, state: RunState, final: bool) -> ModelRequest:
        agent = state.agent
        assert agent is not None
        messages = [Message.system(agent.instructions)] if agent.instructions else []
        messages.extend(state.messages)
        if final:
            messages.append(Message.user(FINAL_ANSWER_NOTE))
        h = state.conversation_hash()
        h.update(self._static)
        h.update(b"final" if final else b"")
        return ModelRequest(
            messages=messages,
            tools=[] if final else self._schemas(),
            settings=agent.settings,
            output_schema=agent.output_schema,
            fingerprint=h.hexdigest()[:32],
        )

    def _schemas(self) -> list[ToolSchema]:
        return [ToolSchema(t.name, t.description, t.parameters) for t in self.tools.values()]

    def _delta_sink(self, run_id: str) -> Callable[[str], None]:
        emit = self.on_event
        assert emit is not None
        return lambda text: emit(Event(run_id, "delta", delta=text))

    # -- tool calls -----------------------------------------------------------------------------

    async def _tool_calls(self, state: RunState) -> None:
        """Run every open call of the batch in parallel; pause if any needs an answer from outside."""
        agent = state.agent
        assert agent is not None
        todo = [c for c in state.batch if not c.done]
        pending: list[PendingItem] = []
        if len(todo) == 1:
            item = await self._tool_call(state, todo[0])
            if item is not None:
                pending.append(item)
        else:
            gate = asyncio.Semaphore(agent.limits.max_parallel_tools)

            async def bounded(c: CallState) -> PendingItem | None:
                async with gate:
                    return await self._tool_call(state, c)

            pending = [i for i in await asyncio.gather(*(bounded(c) for c in todo)) if i is not None]
        if pending:
            self._record(state, Paused(new_id("pause"), pending))
            await self.store.sync()

    async def _tool_call(self, state: RunState, c: CallState) -> PendingItem | None:
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
            return PendingItem(call.id, "client_tool", call.id, call.name, call.arguments,
                               "the client runs this tool and submits its output")
        policy = tool.policy
        if c.started and not policy.idempotent:
            # Started before a crash and never finished: it may or may not have taken effect.
            return PendingItem(call.id, "uncertain", call.id, call.name, call.arguments,
                               "started before an interruption and not known to have finished; "
                               "rerun it, supply its result, or abort")
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
                    value = await _with_timeout(tool.call(validated, ctx), policy.timeout_s)
                else:
                    async with limit:
                        value = await _with_timeout(tool.call(validated, ctx), policy.timeout_s)
            except TimeoutError:
                if not tool.cancellable and not policy.idempotent:
                    # The call goes on in a thread we cannot stop: whether it takes effect is unknown.
                    return PendingItem(call.id, "uncertain", call.id, call.name, call.arguments,
                                       f"timed out after {policy.timeout_s:g}s and may still be running; "
                                       "rerun it, supply its result, or abort")
                error = f"the tool timed out after {policy.timeout_s:g}s"
            except ToolError as e:
                error = str(e) or type(e).__name__
            except ReplayDiverged:
                raise  # a replay that no longer matches its recording must stop, not improvise
            except Exception as e:  # a tool's bug is the model's information, not the run's crash
                error = f"{type(e).__name__}: {e}"
            else:
                return self._tool_done(state, c, result=_render(value, policy.max_result_chars),
                                       duration=time.perf_counter() - started)
            if policy.retryable and attempt <= policy.max_retries:
                await asyncio.sleep(min(0.1 * 2 ** (attempt - 1), 2.0))
                attempt += 1
                continue
            return self._tool_done(state, c, error=error, duration=time.perf_counter() - started)

    def _tool_done(self, state: RunState, c: CallState, *, result: str | None = None,
                   error: str | None = None, duration: float = 0.0) -> PendingItem | None:
        """Record the call's outcome; nothing is left pending."""
        self._record(state, ToolFinished(c.step, c.call.id, c.call.name, result, error, duration))
        return None

    # -- the end --------------------------------------------------------------------------------

    def _finish(self, state: RunState, status: RunStatus, *, error: str | None = None) -> None:
        # A valid history: every tool call gets a result, even when the run stops mid-batch.
        for c in state.batch:
            if not c.done:
                self._record(state, ToolFinished(c.step, c.call.id, c.call.name, None, f"not run: run {status}"))
        output, structured = None, None
        if status == "completed":
            output = state.final_text()
            if state.agent is not None and state.agent.output_schema is not None and output is not None:
                structured = parse_output(output)
        self._record(state, Finished(status, output, structured, error, state.usage.copy(), state.cost_usd))

    def _record(self, state: RunState, payload: Payload) -> Record:
        record = Record(state.run_id, state.last_seq + 1, self.clock(), payload)
        state.apply(record)
        self.store.append((record,))
        if self.log is not None:
            self.log.append(record)
        if self.on_event is not None:
            self.on_event(Event(state.run_id, "record", record))
        return record


def _needs_model(state: RunState) -> bool:
    last = state.last_message
    return last is None or last.role != "assistant" or bool(last.tool_calls)


async def _with_timeout(awaitable: Any, timeout_s: float | None) -> Any:
    if timeout_s is None:
        return await awaitable
    async with asyncio.timeout(timeout_s):
        return await awaitable


def _render(value: Any, max_chars: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    if len(text) > max_chars:
        cut = len(text) - max_chars
        text = f"{text[:max_chars]}\n[truncated: {cut} more characters not shown]"
    return text


def _static_fingerprint(instructions: str, tools: list[ToolSchema], settings: dict[str, Any],
                        output_schema: dict[str, Any] | None) -> bytes:
    """The part of every request's fingerprint that does not change during a run."""
    body = [instructions, [[t.name, t.description, t.parameters] for t in tools], settings, output_schema]
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).digest()
