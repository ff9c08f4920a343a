"""/v1/tether/batches: create a batch (a JSON body with its cases or a JSONL text, or a multipart
upload of a JSONL file) and run it in the background; list, show, its cases page by page, cancel,
answer its pauses at once, delete. Tenant-scoped: another tenant's batch is a 404.

The operator caps what a tenant asks (`[batches]` in the operator configuration): a request above a
cap is a 400 naming the field and the cap, never lowered in silence; with a dollar cap every batch
must say its budget (no budget would be no limit). A batch's agent is configured as
an assistant is (model, instructions, server tools, response format) under the operator's grants.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import Field, ValidationError, model_validator

from tether.domain.errors import ConfigError, InvalidRequest
from tether.interfaces.server.errors import ApiError, validation_message
from tether.interfaces.server.routes.common import services, tenant
from tether.interfaces.server.schemas import (
    Body,
    ResponseFormat,
    Temperature,
    TetherTool,
    ToolParam,
    TopP,
)

if TYPE_CHECKING:
    from tether.domain.batches import BatchInfo, Case
    from tether.services.operator import BatchCaps

router = APIRouter()

Dollars = Annotated[float, Field(gt=0, allow_inf_nan=False)]
DEFAULT_CONCURRENCY = 8  # a batch's when the request says none (BatchOptions' default), within the cap


class BatchAgent(Body):
    """The agent every case runs: as an assistant is configured (function tools excepted: a batch
    has no client to run them)."""

    model: Annotated[str, Field(min_length=1, max_length=256)]
    instructions: Annotated[str, Field(max_length=256_000)] | None = None
    tools: Annotated[list[ToolParam], Field(max_length=128)] | None = None
    tether_tools: list[TetherTool] | None = None
    tether_breakpoints: list[str] | None = None
    response_format: ResponseFormat | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    max_prompt_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None


class BatchFields(Body):
    agent: BatchAgent
    name: Annotated[str, Field(max_length=256)] | None = None
    concurrency: Annotated[int, Field(ge=1)] | None = None
    max_cost_usd: Dollars | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    per_case_max_cost_usd: Dollars | None = None
    on_budget: Literal["pause", "fail"] | None = None
    task_template: Annotated[str, Field(max_length=256_000)] | None = None


class BatchCreate(BatchFields):
    cases: Annotated[list[str | dict[str, Any]], Field(min_length=1)] | None = None
    input_jsonl: Annotated[str, Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _one_input(self) -> BatchCreate:
        if (self.cases is None) == (self.input_jsonl is None):
            raise ValueError("give the cases as exactly one of `cases` (a list) or `input_jsonl` (JSONL text), "
                             "or upload a JSONL file as multipart form data (`file`, with the rest as JSON in "
                             "`batch`)")
        return self


class BatchAnswer(Body):
    action: Literal["approve", "continue", "rerun", "abort"]
    max_cost_usd: Dollars | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    reason: Annotated[str, Field(max_length=2000)] | None = None

    @model_validator(mode="after")
    def _raise_with_continue(self) -> BatchAnswer:
        if (self.max_cost_usd is not None or self.max_tokens is not None) and self.action != "continue":
            raise ValueError("max_cost_usd and max_tokens raise a budget: they go with action \"continue\"")
        return self


def _invalid(e: ValidationError, prefix: str = "") -> ApiError:
    message, param = validation_message([dict(x) for x in e.errors()])
    if prefix and param:
        message, param = message.replace(f"'{param}'", f"'{prefix}{param}'"), prefix + param
    return ApiError(400, message, param=param)


async def _body(request: Request) -> tuple[BatchCreate, str]:
    """The request's batch: a JSON body, or multipart form data (`file`: a JSONL file; `batch`: the
    other fields as JSON). Also the field the cases came in, to name it in errors."""
    kind = request.headers.get("content-type", "")
    if kind.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):  # a form: an upload
        form = await request.form()
        upload, fields = form.get("file"), form.get("batch")
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "Missing required parameter: 'file' (the JSONL file of cases).", param="file")
        if not isinstance(fields, str):
            raise ApiError(400, "Missing required parameter: 'batch' (the agent and options as JSON).",
                           param="batch")
        try:
            data = json.loads(fields)
        except ValueError:
            raise ApiError(400, "Invalid value for 'batch': it is not JSON.", param="batch") from None
        if not isinstance(data, dict):
            raise ApiError(400, "Invalid value for 'batch': it must be a JSON object.", param="batch")
        for key in ("cases", "input_jsonl"):
            if key in data:
                raise ApiError(400, f"Invalid value for 'batch.{key}': the cases are the uploaded file.",
                               param=f"batch.{key}")
        raw = await upload.read()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ApiError(400, "Invalid value for 'file': it is not UTF-8 text.", param="file") from None
        if not text.strip():
            raise ApiError(400, "Invalid value for 'file': it holds no case.", param="file")
        try:
            return BatchCreate.model_validate({**data, "input_jsonl": text}), "file"
        except ValidationError as e:
            raise _invalid(e, "batch.") from None
    try:
        data = await request.json()
    except ValueError:
        raise ApiError(400, validation_message([{"type": "json_invalid"}])[0]) from None
    if not isinstance(data, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    try:
        body = BatchCreate.model_validate(data)
    except ValidationError as e:
        raise _invalid(e) from None
    return body, "cases" if body.cases is not None else "input_jsonl"


def _cases(body: BatchCreate, field: str) -> list[Case]:
    from tether.domain.batches import cases_of, parse_jsonl

    if body.cases is not None:
        try:
            return cases_of(body.cases)
        except ValueError as e:  # "task 3: …"
            message = str(e)
            index = message.removeprefix("task ").partition(":")[0]
            param = f"cases[{index}]" if index.isdigit() else "cases"
            reason = message.partition(": ")[2] or message
            raise ApiError(400, f"Invalid value for '{param}': {reason}", param=param) from None
    cases, bad = parse_jsonl(body.input_jsonl or "")
    if bad:
        shown = "; ".join(f"line {b.line}: {b.reason}" for b in bad[:5])
        more = f" (and {len(bad) - 5} more bad lines)" if len(bad) > 5 else ""
        raise ApiError(400, f"Invalid value for '{field}': {len(bad)} bad line{'s' if len(bad) != 1 else ''}: "
                            f"{shown}{more}. Nothing was created.", param=field)
    if not cases:
        raise ApiError(400, f"Invalid value for '{field}': it holds no case.", param=field)
    return cases


def _capped(body: BatchFields | BatchAnswer, caps: BatchCaps) -> None:
    """A value above the operator's cap is refused, naming the field and the cap."""
    checks: list[tuple[str, float | None, float | None]] = [
        ("max_cost_usd", body.max_cost_usd, caps.max_cost_usd)]
    if isinstance(body, BatchFields):
        checks += [("concurrency", body.concurrency, caps.max_concurrency),
                   ("per_case_max_cost_usd", body.per_case_max_cost_usd, caps.max_cost_usd)]
    if isinstance(body, BatchFields) and body.max_cost_usd is None and caps.max_cost_usd is not None:
        raise ApiError(400, f"Missing required parameter: 'max_cost_usd' is required on this server, at most "
                            f"{caps.max_cost_usd:g} (the operator's [batches] configuration).",
                       param="max_cost_usd", code="above_cap")
    for name, value, cap in checks:
        if value is not None and cap is not None and value > cap:
            raise ApiError(400, f"Invalid value for '{name}': {value:g} is above this server's cap of {cap:g} "
                                "(the operator's [batches] configuration).", param=name, code="above_cap")


async def _owned(request: Request, batch_id: str) -> BatchInfo:
    return await services(request).batches.get(batch_id, tenant=tenant(request))  # BatchNotFound: 404


@router.post("/v1/tether/batches", tags=["batches"])
async def create_batch(request: Request) -> dict[str, Any]:
    from tether.domain.batches import BatchOptions

    services_ = services(request)
    caps = services_.operator.batches
    body, field = await _body(request)
    _capped(body, caps)
    cases = _cases(body, field)
    if caps.max_cases is not None and len(cases) > caps.max_cases:
        raise ApiError(400, f"Invalid value for '{field}': {len(cases)} cases is above this server's cap of "
                            f"{caps.max_cases} (the operator's [batches] configuration).", param=field,
                       code="above_cap")
    concurrency = body.concurrency or min(DEFAULT_CONCURRENCY, caps.max_concurrency or DEFAULT_CONCURRENCY)
    try:
        options = BatchOptions(concurrency=concurrency, max_cost_usd=body.max_cost_usd, max_tokens=body.max_tokens,
                               per_case_max_cost_usd=body.per_case_max_cost_usd, on_budget=body.on_budget or "pause",
                               name=body.name, task_template=body.task_template)
    except ValueError as e:
        raise ApiError(400, f"Invalid request: {e}.") from None
    agent_fields = body.agent.model_dump(exclude_none=True)
    try:
        agent = await services_.assistants.batch_agent(tenant(request), agent_fields)
    except InvalidRequest as e:  # its field, as the body names it
        param = f"agent.{e.param}" if e.param else "agent"
        message = str(e).replace(f"'{e.param}'", f"'{param}'") if e.param else str(e)
        raise ApiError(400, message, param=param) from None
    try:
        info = await services_.batches.create(agent, cases, options, tenant=tenant(request))
    except ConfigError as e:  # e.g. a dollar budget on a model whose price is unknown here
        budget = "max_cost_usd" if body.max_cost_usd is not None else "per_case_max_cost_usd"
        raise ApiError(400, f"Invalid value for '{budget}': {e}.", param=budget) from None
    await services_.assistants.own_batch_agent(agent, info.id)  # deleted with the batch
    services_.batches.spawn(info.id)
    return info.to_dict()


@router.get("/v1/tether/batches", tags=["batches"])
async def list_batches(request: Request, after: str | None = None,
                       limit: Annotated[int, Query(ge=1, le=100)] = 20) -> dict[str, Any]:
    batches = await services(request).batches.list(tenant=tenant(request), limit=limit + 1, after=after)
    data = [b.to_dict() for b in batches[:limit]]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": len(batches) > limit}


@router.get("/v1/tether/batches/{batch_id}", tags=["batches"])
async def get_batch(request: Request, batch_id: str) -> dict[str, Any]:
    info = await _owned(request, batch_id)
    progress = await services(request).batches.progress(info.id)
    return {**info.to_dict(), "progress": progress.to_dict()}


@router.get("/v1/tether/batches/{batch_id}/cases", tags=["batches"])
async def list_cases(request: Request, batch_id: str, status: str | None = None,
                     after: Annotated[int | None, Query(ge=-1)] = None,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    from tether.domain.batches import CaseStatus

    wanted = None
    if status is not None:
        try:
            wanted = CaseStatus(status)
        except ValueError:
            raise ApiError(400, f"Invalid value for 'status': {status!r}; use one of "
                                f"{', '.join(s.value for s in CaseStatus)}.", param="status") from None
    info = await _owned(request, batch_id)
    cases = await services(request).batches.cases(info.id, status=wanted, after=after, limit=limit + 1)
    data = [c.to_dict() for c in cases[:limit]]
    return {"object": "list", "data": data, "first_index": data[0]["index"] if data else None,
            "last_index": data[-1]["index"] if data else None, "has_more": len(cases) > limit}


@router.post("/v1/tether/batches/{batch_id}/cancel", tags=["batches"])
async def cancel_batch(request: Request, batch_id: str) -> dict[str, Any]:
    info = await _owned(request, batch_id)
    return (await services(request).batches.cancel(info.id)).to_dict()


@router.post("/v1/tether/batches/{batch_id}/answer", tags=["batches"])
async def answer_batch(request: Request, batch_id: str, body: BatchAnswer) -> dict[str, Any]:
    """Answer the pauses of every paused case at once; the batch then runs them on (in the background)."""
    _capped(body, services(request).operator.batches)
    batches = services(request).batches
    info = await _owned(request, batch_id)
    answered = await batches.answer(info.id, action=body.action, max_cost_usd=body.max_cost_usd,
                                    max_tokens=body.max_tokens, reason=body.reason)
    if answered:
        batches.spawn(info.id)
    return {**(await batches.get(info.id)).to_dict(), "answered": answered}


@router.delete("/v1/tether/batches/{batch_id}", tags=["batches"])
async def delete_batch(request: Request, batch_id: str, with_runs: bool = False) -> dict[str, Any]:
    info = await _owned(request, batch_id)
    await services(request).batches.delete(info.id, with_runs=with_runs)
    await services(request).assistants.forget_batch(info.id)
    return {"id": info.id, "object": "tether.batch.deleted", "deleted": True}
