"""Batches: a durable set of cases, one agent, each case an ordinary run once it starts.

Plain types and pure functions (no I/O): parsing the input (JSONL, CSV, a Python iterable) into
cases with line-numbered bad lines, filling `{name}` placeholders, the cases' hash (a resume with a
changed input is refused by it), the options, and the shapes every face shows (a case's result,
a batch, its progress).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, Literal

from tether.domain.records import Finished, Paused, RunStatus
from tether.domain.runs import RunInfo


class CaseStatus(StrEnum):
    """Where a case stands: PENDING until its run exists, then its run's status."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INCOMPLETE = "incomplete"


ENDED: frozenset[CaseStatus] = frozenset(
    {CaseStatus.COMPLETED, CaseStatus.FAILED, CaseStatus.CANCELLED, CaseStatus.INCOMPLETE})
RETRYABLE: frozenset[CaseStatus] = frozenset({CaseStatus.FAILED, CaseStatus.CANCELLED, CaseStatus.INCOMPLETE})


class BatchState(StrEnum):
    OPEN = "open"  # cases still to run, or paused
    DONE = "done"  # every case ended
    CANCELLED = "cancelled"


@dataclass(slots=True)
class Case:
    """One line of the input, as stored when the batch is created."""

    index: int
    key: str  # the line's "id" if it has one, else str(index)
    input: str
    vars: dict[str, str] = field(default_factory=dict)
    expected: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class BadLine:
    line: int  # 1-based line of the input file (for an iterable: the item's index)
    reason: str


CASE_KEYS = {"input", "id", "vars", "expected", "metadata"}


def _case_from(obj: Any, index: int) -> Case:
    """One case from a JSON value: a bare string, or an object with CASE_KEYS. ValueError says why not."""
    if isinstance(obj, str):
        return Case(index, str(index), obj)
    if not isinstance(obj, dict):
        raise ValueError(f"a case is a string or an object with \"input\", not {type(obj).__name__}")
    unknown = set(obj) - CASE_KEYS
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}; a case has {sorted(CASE_KEYS)}")
    text = obj.get("input")
    if not isinstance(text, str):
        raise ValueError("\"input\" is missing or not a string" if text is None else "\"input\" must be a string")
    key = obj.get("id", index)
    if isinstance(key, bool) or not isinstance(key, str | int) or str(key) == "":
        raise ValueError("\"id\" must be a non-empty string or a whole number")
    variables = obj.get("vars") or {}
    if not isinstance(variables, dict):
        raise ValueError("\"vars\" must be an object of names to values")
    for name, value in variables.items():
        if not _NAME.fullmatch(name):
            raise ValueError(f"var name {name!r} is not a name (letters, digits and _)")
        if isinstance(value, dict | list):
            raise ValueError(f"var {name!r} must be a string, number or boolean")
    metadata = obj.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ValueError("\"metadata\" must be an object")
    return Case(index, str(key), text, {k: _text(v) for k, v in variables.items()}, obj.get("expected"), metadata)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _keep(cases: list[Case], bad: list[BadLine], case: Case, line: int, seen: set[str]) -> None:
    if case.key in seen:
        bad.append(BadLine(line, f"duplicate id {case.key!r}"))
        return
    seen.add(case.key)
    cases.append(case)


def parse_jsonl(text: str) -> tuple[list[Case], list[BadLine]]:
    """Cases from JSONL: per line `{"input", "id"?, "vars"?, "expected"?, "metadata"?}` or a bare JSON
    string. Blank lines are skipped; a line that is not a case (or repeats an id) is a BadLine."""
    cases: list[Case] = []
    bad: list[BadLine] = []
    seen: set[str] = set()
    for number, line in enumerate(text.removeprefix("\ufeff").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            bad.append(BadLine(number, f"not JSON: {e.msg} (column {e.colno})"))
            continue
        try:
            case = _case_from(obj, len(cases))
        except ValueError as e:
            bad.append(BadLine(number, str(e)))
            continue
        _keep(cases, bad, case, number, seen)
    return cases, bad


def parse_csv(text: str, input_column: str) -> tuple[list[Case], list[BadLine]]:
    """Cases from CSV with a header line: `input_column` is the task, an `id` column (if any) the key,
    every other column a var. A CSV without that column is a ValueError (nothing could be read)."""
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff")))  # a spreadsheet's byte order mark
    try:
        header = next(reader)
    except StopIteration:
        return [], []
    except csv.Error as e:
        raise ValueError(f"line 1 is not CSV: {e}") from None
    if input_column not in header:
        raise ValueError(f"the CSV has no column {input_column!r}; its columns are {header}")
    # Which of two same-named columns is meant would be a guess (unnamed ones, trailing commas, name nothing)
    if repeated := sorted({h for h in header if h and header.count(h) > 1}):
        raise ValueError(f"the CSV's header repeats the column {repeated[0]!r}; its columns are {header}")
    at = header.index(input_column)
    id_at = header.index("id") if "id" in header and input_column != "id" else None
    var_names = [(i, h) for i, h in enumerate(header) if i not in (at, id_at)]
    cases: list[Case] = []
    bad: list[BadLine] = []
    seen: set[str] = set()
    while True:
        line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            bad.append(BadLine(line, f"not CSV: {e}"))
            continue
        line = reader.line_num  # a quoted field may span lines: the row's last line
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            bad.append(BadLine(line, f"{len(row)} fields where the header has {len(header)}"))
            continue
        key = row[id_at] if id_at is not None and row[id_at] != "" else str(len(cases))
        _keep(cases, bad, Case(len(cases), key, row[at], {h: row[i] for i, h in var_names}), line, seen)
    return cases, bad


def cases_of(items: Iterable[str | dict[str, Any] | Case]) -> list[Case]:
    """Cases from a Python iterable of strings, case objects (dicts) or Cases; a bad item is a
    ValueError naming its index."""
    cases: list[Case] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        try:
            if isinstance(item, Case):
                case = Case(len(cases), item.key, item.input, dict(item.vars), item.expected, dict(item.metadata))
            else:
                case = _case_from(item, len(cases))
        except ValueError as e:
            raise ValueError(f"task {i}: {e}") from None
        if case.key in seen:
            raise ValueError(f"task {i}: duplicate id {case.key!r}")
        seen.add(case.key)
        cases.append(case)
    return cases


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def fill(template: str, vars: Mapping[str, str]) -> str:
    """Replace `{name}` for the names in `vars` only; every other brace stays as it is (instructions
    often hold JSON)."""
    if not vars or "{" not in template:
        return template
    return _PLACEHOLDER.sub(lambda m: str(vars[m.group(1)]) if m.group(1) in vars else m.group(0), template)


def task_of(case: Case, template: str | None) -> str:
    """The task a case's run is given: the template filled with the case's input and vars."""
    if template is None:
        return case.input
    return fill(template, {**case.vars, "input": case.input})


def cases_hash(cases: Sequence[Case]) -> str:
    """A hash of what the cases ask (key, input, vars, expected, metadata, in order)."""
    h = hashlib.sha256()
    for c in cases:
        h.update(json.dumps([c.key, c.input, c.vars, c.expected, c.metadata], sort_keys=True,
                            default=str).encode())
        h.update(b"\n")
    return h.hexdigest()[:32]


@dataclass(slots=True)
class BatchOptions:
    """How a batch runs. The budgets are the batch's (`max_cost_usd`, `max_tokens`) and each case's
    (`per_case_max_cost_usd`); `on_budget` is what a case does that cannot get a reservation."""

    concurrency: int = 8
    max_cost_usd: float | None = None
    max_tokens: int | None = None
    per_case_max_cost_usd: float | None = None
    on_budget: Literal["pause", "fail"] = "pause"
    name: str | None = None
    task_template: str | None = None  # "{input}" when None; vars fill it and the agent's instructions
    input_column: str | None = None  # a CSV input's column that holds each case's input (None: "input")

    def __post_init__(self) -> None:
        if not (isinstance(self.concurrency, int) and not isinstance(self.concurrency, bool)
                and self.concurrency >= 1):
            raise ValueError(f"concurrency must be a whole number of at least 1, not {self.concurrency!r}")
        for name in ("max_cost_usd", "per_case_max_cost_usd"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int | float) and not isinstance(value, bool)
                                          and 0 < value < float("inf")):
                raise ValueError(f"{name} must be a positive number of dollars (or left out), not {value!r}")
        if self.max_tokens is not None and not (isinstance(self.max_tokens, int)
                                                and not isinstance(self.max_tokens, bool) and self.max_tokens > 0):
            raise ValueError(f"max_tokens must be a positive whole number (or left out), not {self.max_tokens!r}")
        if self.on_budget not in ("pause", "fail"):
            raise ValueError(f'on_budget must be "pause" or "fail", not {self.on_budget!r}')
        if self.name is not None and not isinstance(self.name, str):
            raise ValueError(f"name must be a string, not {self.name!r}")
        for name in ("task_template", "input_column"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, not {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"concurrency": self.concurrency, "max_cost_usd": self.max_cost_usd, "max_tokens": self.max_tokens,
                "per_case_max_cost_usd": self.per_case_max_cost_usd, "on_budget": self.on_budget,
                "name": self.name, "task_template": self.task_template, "input_column": self.input_column}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchOptions:
        return cls(**{k: v for k, v in data.items() if k in _OPTION_NAMES})


_OPTION_NAMES = {f.name for f in fields(BatchOptions)}


def case_run_id(batch_id: str, key: str, attempt: int) -> str:
    """The run id of a case's attempt: the same for the same (batch, case key, attempt), so that a
    resume never makes a second run for one attempt. Shaped like `new_id("run")` (fixed width); its
    time part is the batch's, so a batch's runs sort together."""
    time_part = batch_id.removeprefix("batch_")[:14]
    digest = hashlib.sha256(f"{batch_id}\x00{key}\x00{attempt}".encode()).hexdigest()[:12]
    return f"run_{time_part}{digest}"


def case_budget_id(batch_id: str, key: str) -> str:
    """The id of a case's own budget (`per_case_max_cost_usd`), which all its attempts spend; the key
    is hashed so that the id fits the store's id column whatever the key's length."""
    return f"{batch_id}/{hashlib.sha256(key.encode()).hexdigest()[:20]}"


@dataclass(slots=True)
class StoredCase:
    """A case as stored with its batch: which attempt it is at and that attempt's run (None: not started)."""

    case: Case
    attempt: int = 1
    run_id: str | None = None


@dataclass(slots=True)
class CaseRow:
    """What a store reads for a case in one page: the case, its run's row (None: no run yet), how
    many steps the run took, and its `finished` record or its latest `paused` one."""

    stored: StoredCase
    run: RunInfo | None = None
    steps: int = 0
    finished: Finished | None = None
    paused: Paused | None = None


@dataclass(slots=True)
class CaseResult:
    """A case as every face shows it (read from its run's row and log, not kept beside them)."""

    index: int
    key: str
    status: CaseStatus
    attempt: int
    run_id: str | None
    output: str | None
    structured: Any
    error: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    latency_s: float | None
    steps: int
    pause_reason: str | None
    expected: Any
    metadata: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The JSONL/CSV/HTTP shape (one implementation for every face)."""
        return {"index": self.index, "key": self.key, "status": self.status.value, "attempt": self.attempt,
                "run_id": self.run_id, "output": self.output, "structured": self.structured, "error": self.error,
                "input_tokens": self.input_tokens, "output_tokens": self.output_tokens, "cost_usd": self.cost_usd,
                "latency_s": self.latency_s, "steps": self.steps, "pause_reason": self.pause_reason,
                "expected": self.expected, "metadata": self.metadata}


RESULT_FIELDS = ("index", "key", "status", "attempt", "run_id", "output", "structured", "error", "input_tokens",
                 "output_tokens", "cost_usd", "latency_s", "steps", "pause_reason", "expected", "metadata")


def case_status(run: RunInfo | None) -> CaseStatus:
    return CaseStatus.PENDING if run is None else CaseStatus(RunStatus(run.status).value)


def case_result(row: CaseRow) -> CaseResult:
    """A case's result from what the store read for it."""
    case, run = row.stored.case, row.run
    status = case_status(run)
    finished = row.finished if status in ENDED else None
    output = finished.output if finished is not None else None
    error = finished.error if finished is not None else None
    pause_reason = None
    if status == CaseStatus.PAUSED and row.paused is not None:
        reasons = sorted({str(i.reason) for i in row.paused.items})
        details = "; ".join(i.detail for i in row.paused.items if i.detail)
        pause_reason = ", ".join(reasons) + (f": {details}" if details else "")
    latency = None
    if run is not None and status in ENDED:
        latency = max(0.0, run.updated_at - run.created_at)
    return CaseResult(case.index, case.key, status, row.stored.attempt, row.stored.run_id, output,
                      finished.structured if finished is not None else None, error,
                      run.input_tokens if run else 0, run.output_tokens if run else 0,
                      finished.cost_usd if finished is not None else (run.cost_usd if run else None),
                      latency, row.steps, pause_reason, case.expected, dict(case.metadata))


@dataclass(slots=True)
class BatchTotals:
    """What a store sums over a batch's cases (each case's current run; spend over every attempt)."""

    counts: dict[CaseStatus, int] = field(default_factory=dict)
    cost_usd: float | None = None  # None: no run spent anything with a known price, or a price is unknown
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(slots=True)
class BatchRecord:
    """A batch as stored: what it was created with."""

    id: str
    tenant: str
    name: str | None
    state: BatchState
    created_at: float
    agent: dict[str, Any]  # the agent snapshot (as JSON)
    agent_ref: str | None
    options: BatchOptions
    cases_hash: str
    source: str | None
    total: int


@dataclass(slots=True)
class BatchInfo:
    id: str
    name: str | None
    tenant: str
    state: BatchState
    created_at: float
    agent_name: str
    model: str
    total: int
    counts: dict[CaseStatus, int]
    cost_usd: float | None
    input_tokens: int
    output_tokens: int
    options: BatchOptions
    cases_hash: str
    source: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "object": "tether.batch", "name": self.name, "tenant": self.tenant,
                "state": self.state.value, "created_at": self.created_at, "agent_name": self.agent_name,
                "model": self.model, "total": self.total,
                "counts": {s.value: self.counts.get(s, 0) for s in CaseStatus},
                "cost_usd": self.cost_usd, "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "options": self.options.to_dict(), "cases_hash": self.cases_hash, "source": self.source}


def batch_info(record: BatchRecord, totals: BatchTotals) -> BatchInfo:
    counts = {s: totals.counts.get(s, 0) for s in CaseStatus}
    state = record.state
    if state == BatchState.OPEN and sum(counts[s] for s in ENDED) == record.total:
        state = BatchState.DONE
    return BatchInfo(record.id, record.name, record.tenant, state, record.created_at,
                     str(record.agent.get("name", "")), str(record.agent.get("model", "")), record.total, counts,
                     totals.cost_usd, totals.input_tokens, totals.output_tokens, record.options,
                     record.cases_hash, record.source)


@dataclass(slots=True)
class BatchProgress:
    """What the live view and the events show."""

    batch_id: str
    total: int
    completed: int
    failed: int  # failed or incomplete
    paused: int
    running: int
    pending: int  # not started, or waiting to go on (queued: interrupted, or answered)
    cancelled: int
    cost_usd: float | None
    tokens: int
    max_cost_usd: float | None
    max_tokens: int | None
    elapsed_s: float
    per_s: float  # cases finished per second, this session
    eta_s: float | None
    last_errors: list[tuple[str, str]] = field(default_factory=list)  # (case key, error), newest last, ≤ 5
    budget_warning: str | None = None  # set once spend passes 80 % of a budget

    def to_dict(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "total": self.total, "completed": self.completed, "failed": self.failed,
                "paused": self.paused, "running": self.running, "pending": self.pending,
                "cancelled": self.cancelled, "cost_usd": self.cost_usd, "tokens": self.tokens,
                "max_cost_usd": self.max_cost_usd, "max_tokens": self.max_tokens, "elapsed_s": self.elapsed_s,
                "per_s": self.per_s, "eta_s": self.eta_s, "last_errors": [list(e) for e in self.last_errors],
                "budget_warning": self.budget_warning}


BUDGET_WARNING_AT = 0.8


def budget_warning(cost_usd: float | None, tokens: int, options: BatchOptions) -> str | None:
    """The warning once spend passes 80 % of a batch budget, else None."""
    cap = options.max_cost_usd
    if cap is not None and cost_usd is not None and cost_usd >= BUDGET_WARNING_AT * cap:
        return f"spent ${cost_usd:.4f} of the ${cap:g} budget ({cost_usd / cap:.0%})"
    if options.max_tokens is not None and tokens >= BUDGET_WARNING_AT * options.max_tokens:
        return f"used {tokens} of the {options.max_tokens} token budget ({tokens / options.max_tokens:.0%})"
    return None


def progress_of(batch_id: str, counts: Mapping[CaseStatus, int], *, total: int, cost_usd: float | None,
                tokens: int, options: BatchOptions, elapsed_s: float, finished_here: int,
                last_errors: Sequence[tuple[str, str]] = ()) -> BatchProgress:
    """A progress snapshot: throughput and ETA from the cases finished in this session."""
    c = {s: counts.get(s, 0) for s in CaseStatus}
    per_s = finished_here / elapsed_s if elapsed_s > 0 else 0.0
    pending = c[CaseStatus.PENDING] + c[CaseStatus.QUEUED]
    left = pending + c[CaseStatus.RUNNING]
    eta = left / per_s if per_s > 0 else (0.0 if left == 0 else None)
    return BatchProgress(batch_id, total, c[CaseStatus.COMPLETED], c[CaseStatus.FAILED] + c[CaseStatus.INCOMPLETE],
                         c[CaseStatus.PAUSED], c[CaseStatus.RUNNING], pending,
                         c[CaseStatus.CANCELLED], cost_usd, tokens, options.max_cost_usd, options.max_tokens,
                         elapsed_s, per_s, eta, list(last_errors)[-5:], budget_warning(cost_usd, tokens, options))
