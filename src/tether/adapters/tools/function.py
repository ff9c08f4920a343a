"""Typed Python functions as tools: schema from the signature and docstring, validated calls."""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from collections.abc import Awaitable, Callable
from typing import Any, Generic, ParamSpec, TypeVar, overload

from tether.adapters.tools.threads import tool_threads
from tether.domain.tools import ToolContext, ToolError, ToolPolicy

P = ParamSpec("P")
R = TypeVar("R")


class FunctionTool(Generic[P, R]):
    """A sync or async function the model can call.

    A parameter annotated `ToolContext` is filled in by Tether and hidden from the model. Sync
    functions run in a worker thread so they never block the event loop; a timeout cannot stop
    them there, which is why a non-idempotent sync tool that times out becomes `uncertain`.
    """

    kind = "function"

    def __init__(self, fn: Callable[P, R], *, name: str | None = None, description: str | None = None,
                 policy: ToolPolicy | None = None) -> None:
        from pydantic import ConfigDict, create_model

        self.fn = fn
        self.name = name or fn.__name__
        self.policy = policy or ToolPolicy()
        self.is_async = inspect.iscoroutinefunction(fn)
        self.cancellable = self.is_async
        doc = _parse_doc(fn)
        self.description = description or doc.get("", "")
        sig = inspect.signature(fn)
        hints = _hints(fn)
        fields: dict[str, Any] = {}
        self._ctx_param: str | None = None
        for pname, param in sig.parameters.items():
            annotation = hints.get(pname, Any)
            if annotation is ToolContext:
                self._ctx_param = pname
                continue
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(f"tool {self.name}: *args/**kwargs parameters cannot be described to a model")
            from pydantic import Field

            default = ... if param.default is param.empty else param.default
            fields[pname] = (annotation, Field(default, description=doc.get(pname)))
        self._args_model = create_model(  # type: ignore[call-overload]
            f"{self.name}_args", __config__=ConfigDict(extra="forbid"), **fields
        )
        self._fields = tuple(self._args_model.model_fields)  # read once: pydantic's class property is slow
        schema = self._args_model.model_json_schema()
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        self.parameters: dict[str, Any] = schema

    def validate(self, arguments: dict[str, Any]) -> Any:
        from pydantic import ValidationError

        try:
            return self._args_model.model_validate(arguments)
        except ValidationError as e:
            raise ToolError(_explain(self.name, e)) from None

    def call(self, validated: Any, ctx: ToolContext) -> Awaitable[Any]:
        """The function's coroutine, or its run in one of Tether's threads (which a cancelled await
        does not stop, and which can be awaited again)."""
        kwargs = {k: getattr(validated, k) for k in self._fields}
        if self._ctx_param is not None:
            kwargs[self._ctx_param] = ctx
        fn: Callable[..., Any] = self.fn  # called with validated keywords, not P's signature
        if self.is_async:
            return fn(**kwargs)
        return tool_threads().start(functools.partial(fn, **kwargs))

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function itself, as if it were not a tool (e.g. in a test)."""
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<tool {self.name}>"


@overload
def tool(fn: Callable[P, R], /) -> FunctionTool[P, R]: ...
@overload
def tool(*, name: str | None = None, description: str | None = None, policy: ToolPolicy | None = None,
         timeout_s: float | None = ..., idempotent: bool = ..., retryable: bool = ..., max_retries: int = ...,
         max_concurrency: int | None = ..., max_result_chars: int = ..., requires_approval: bool = ...,
         ) -> Callable[[Callable[P, R]], FunctionTool[P, R]]: ...


def tool(fn: Callable[P, R] | None = None, /, *, name: str | None = None,
         description: str | None = None, policy: ToolPolicy | None = None, **options: Any) -> Any:
    """Make a function a tool: `@tool` or `@tool(timeout_s=5, idempotent=True)`.

    Keyword options are `ToolPolicy` fields, as a shorthand for `policy=ToolPolicy(...)`.
    """
    if options:
        if policy is not None:
            raise TypeError("give either policy=ToolPolicy(...) or its fields as keywords, not both")
        policy = ToolPolicy(**options)

    def wrap(f: Callable[P, R]) -> FunctionTool[P, R]:
        return FunctionTool(f, name=name, description=description, policy=policy)

    return wrap(fn) if fn is not None else wrap


def schema_hash(name: str, description: str, parameters: dict[str, Any]) -> str:
    body = json.dumps([name, description, parameters], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    import typing

    try:
        return typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to raw annotations
        return dict(getattr(fn, "__annotations__", {}))


def _parse_doc(fn: Callable[..., Any]) -> dict[str, str]:
    """{"": description, param: its description} from a Google/reST/Numpy docstring."""
    raw = inspect.getdoc(fn)
    if not raw:
        return {}
    import docstring_parser

    doc = docstring_parser.parse(raw)
    text = "\n\n".join(p for p in (doc.short_description, doc.long_description) if p)
    out = {"": text}
    for p in doc.params:
        if p.description:
            out[p.arg_name] = p.description
    return out


def _explain(name: str, error: Any) -> str:
    problems = []
    for e in error.errors():
        where = ".".join(str(x) for x in e["loc"]) or "arguments"
        msg = e["msg"]
        if e["type"] == "missing":
            msg = "is required"
        elif e["type"] == "extra_forbidden":
            msg = "is not a parameter of this tool"
        else:
            msg = f"{msg} (got {json.dumps(e.get('input'), default=str)[:80]})"
        problems.append(f"'{where}' {msg}")
    return f"invalid arguments for {name}: " + "; ".join(problems)
