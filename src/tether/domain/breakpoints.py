"""Breakpoints: where a run stops (a stop of the loop, a tool glob, a condition), as plain data.

Textual form: ``STOP[:TOOL_GLOB] [if CONDITION]``, for example ``before_tool:delete_*``,
``after_model if run.cost_usd > 0.2`` or ``on_error``.

Conditions are a small expression language. The text is parsed with ``ast.parse(mode="eval")`` and
only an allow-listed set of nodes is accepted; nothing is ever eval'd, exec'd or compiled to code.
The validated tree is turned once into a tree of small closures, so evaluating is a cheap walk.

Missing values are UNKNOWN: an absent name, a ``None`` value, a missing key or attribute. Comparisons,
arithmetic and ``matches()`` on UNKNOWN give UNKNOWN, ``not UNKNOWN`` is UNKNOWN, ``and``/``or`` follow
three-valued (Kleene) logic, and a condition holds only when its value is truthy and not UNKNOWN. So
``run.cost_usd > 0.2`` and ``not (run.cost_usd > 0.2)`` are both false while the price is unknown.
Evaluation never raises for user data: type mismatches and division by zero are UNKNOWN too.

The language: literals (numbers, strings, True/False/None, lists and tuples of literals), names (see
``CONDITION_NAMES``), ``a.b`` (a key lookup on dicts; on dataclasses and NamedTuples, their fields only),
``a[i]``, comparisons (== != < <= > >= in, not in, chained), and/or/not, + - * / % on numbers, unary - and
+, and one function, ``matches(text, regex)`` (``re.search``; write the regex as a raw string, r"\bx\b").
Nothing starting with "_" can be named. Limits: ``MAX_CONDITION_LENGTH``, ``MAX_DEPTH``,
``MAX_REGEX_LENGTH``. The regex length is bounded but its backtracking is not: a pathological pattern
such as ``(a+)+$`` on a long text is slow, as it is anywhere ``re`` is used.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import fnmatch
import functools
import operator
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from tether.domain.errors import TetherError


class Stop(StrEnum):
    """A place in the loop where a run can pause (the figure in DESIGN.md). The value is the name
    written in breakpoints, records and the wire."""

    BEFORE_MODEL = "before_model"
    AFTER_MODEL = "after_model"
    BEFORE_TOOL = "before_tool"
    AFTER_TOOL = "after_tool"
    ON_ERROR = "on_error"
    ON_BUDGET = "on_budget"
    BEFORE_FINISH = "before_finish"
    ON_UNCERTAIN = "on_uncertain"


STOPS: tuple[Stop, ...] = tuple(Stop)
TOOL_STOPS: tuple[Stop, ...] = (Stop.BEFORE_TOOL, Stop.AFTER_TOOL, Stop.ON_ERROR, Stop.ON_UNCERTAIN)  # a tool glob fits

MAX_CONDITION_LENGTH = 1000  # characters of condition text
MAX_DEPTH = 30  # nesting of the condition's expression tree
MAX_REGEX_LENGTH = 500  # characters of a matches() pattern
_MAX_INT_BITS = 4096  # a product larger than this is UNKNOWN rather than computed further


class BreakpointError(TetherError):
    """A breakpoint or condition was rejected; the message says what is wrong (and where)."""

    def __init__(self, message: str, *, column: int | None = None) -> None:
        super().__init__(message)
        self.column = column  # 1-based column in the condition text, when the problem is in one


class ConditionName(NamedTuple):
    type: str
    stops: tuple[Stop, ...]  # the stops at which it has a value
    description: str


_ALL: tuple[Stop, ...] = STOPS
CONDITION_NAMES: dict[str, ConditionName] = {
    "tool": ConditionName("str", TOOL_STOPS, "the tool's name (at on_error only when a tool call failed)"),
    "args": ConditionName("dict", TOOL_STOPS, "the tool call's arguments, e.g. args.path or args[\"path\"]"),
    "result": ConditionName("str", (Stop.AFTER_TOOL,), "the tool's result text"),
    "error": ConditionName("str", (Stop.ON_ERROR,), "the error text of the failed model or tool call"),
    "output": ConditionName("str", (Stop.AFTER_MODEL, Stop.BEFORE_FINISH), "the model's text"),
    "step": ConditionName("int", _ALL, "the number of the step this stop belongs to"),
    "run.steps": ConditionName("int", _ALL, "steps taken so far in the run"),
    "run.tokens": ConditionName("int", _ALL, "tokens used so far in the run"),
    "run.cost_usd": ConditionName("float | None", _ALL, "cost so far in USD; unknown (None) when a price is unknown"),
    "run.elapsed_s": ConditionName("float", _ALL, "wall time of the run so far, in seconds"),
}

_HELP = (
    "conditions may use names (" + ", ".join(CONDITION_NAMES) + "), literals, .key and [index] lookups,"
    " comparisons, and/or/not, + - * / %, and matches(text, regex)"
)

# --- values -----------------------------------------------------------------------------------------


class _Unknown:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNKNOWN"


_UNKNOWN: Any = _Unknown()
_Fn = Callable[[Mapping[str, Any]], Any]


def _truth(value: Any) -> Any:
    """True, False or UNKNOWN."""
    return _UNKNOWN if value is _UNKNOWN else bool(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _attribute(value: Any, name: str) -> Any:
    if isinstance(value, Mapping):
        result = value.get(name)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        result = getattr(value, name, None) if name in {f.name for f in dataclasses.fields(value)} else None
    elif isinstance(value, tuple) and name in getattr(value, "_fields", ()):  # a NamedTuple
        result = getattr(value, name)
    else:
        return _UNKNOWN  # no attribute access on arbitrary objects
    return _UNKNOWN if result is None else result


def _index(value: Any, key: Any) -> Any:
    if value is _UNKNOWN or key is _UNKNOWN:
        return _UNKNOWN
    if isinstance(value, Mapping):
        try:
            result = value.get(key)
        except TypeError:  # an unhashable key
            return _UNKNOWN
    elif isinstance(value, list | tuple | str):
        if type(key) is not int:
            return _UNKNOWN
        try:
            result = value[key]
        except IndexError:
            return _UNKNOWN
    else:
        return _UNKNOWN
    return _UNKNOWN if result is None else result


def _add(a: Any, b: Any) -> Any:
    return a + b


def _sub(a: Any, b: Any) -> Any:
    return a - b


def _mul(a: Any, b: Any) -> Any:
    result = a * b
    if type(result) is int and result.bit_length() > _MAX_INT_BITS:
        return _UNKNOWN
    return result


def _div(a: Any, b: Any) -> Any:
    return a / b


def _mod(a: Any, b: Any) -> Any:
    return a % b


_ARITHMETIC: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: _add, ast.Sub: _sub, ast.Mult: _mul, ast.Div: _div, ast.Mod: _mod,
}
_OPERATOR_SYMBOLS: dict[type[ast.AST], str] = {
    ast.Pow: "**", ast.FloorDiv: "//", ast.MatMult: "@", ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^",
    ast.LShift: "<<", ast.RShift: ">>", ast.Invert: "~", ast.Is: "is", ast.IsNot: "is not",
}


def _compare(op: type[ast.cmpop]) -> Callable[[Any, Any], Any]:
    fn: Callable[[Any, Any], Any] = {
        ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
        ast.Gt: operator.gt, ast.GtE: operator.ge,
        ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
    }[op]

    def compare(a: Any, b: Any) -> Any:
        if a is _UNKNOWN or b is _UNKNOWN:
            return _UNKNOWN
        try:
            return bool(fn(a, b))
        except (TypeError, ValueError, RecursionError):  # "a" < 1, 1 in "abc", ...
            return _UNKNOWN

    return compare


_COMPARISONS: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    op: _compare(op) for op in (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn)
}


@functools.lru_cache(maxsize=256)
def _runtime_regex(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except (re.error, RecursionError, OverflowError, ValueError):
        return None


def _search(regex: re.Pattern[str], text: Any) -> Any:
    if not isinstance(text, str):
        return _UNKNOWN  # also for UNKNOWN itself
    return regex.search(text) is not None


# --- compiling --------------------------------------------------------------------------------------


_FORBIDDEN: dict[type[ast.AST], str] = {  # what to call a rejected construct in the error message
    ast.Lambda: "lambda",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.JoinedStr: "f-strings",
    ast.FormattedValue: "f-strings",
    ast.NamedExpr: "':=' (assignment)",
    ast.IfExp: "'x if c else y' expressions",
    ast.Dict: "dict literals",
    ast.Set: "set literals",
    ast.Starred: "'*' unpacking",
    ast.Slice: "slices",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
}
_NEWLINE = re.compile(r"\r\n|\r|\n")
_ONE_LINE = str.maketrans({"\n": " ", "\r": " "})


class _Compiler:
    def __init__(self, text: str) -> None:
        self.text = text  # the stripped text that was parsed; columns count from its start
        self.names: set[str] = set()
        self.paths: set[str] = set()

    def column(self, lineno: int, byte_offset: int) -> int:
        start = 0
        for _ in range(lineno - 1):
            if (m := _NEWLINE.search(self.text, start)) is None:
                break
            start = m.end()
        line = self.text[start:].encode("utf-8", "surrogatepass")[:byte_offset]
        return start + len(line.decode("utf-8", "ignore")) + 1

    def fail(self, node: ast.AST, why: str, *, hint: bool = False, attr: str | None = None) -> BreakpointError:
        if attr is not None and isinstance(node, ast.expr) and node.end_col_offset is not None:  # at the .name
            lineno, offset = node.end_lineno or 1, node.end_col_offset - len(attr.encode("utf-8", "replace"))
        else:
            lineno, offset = getattr(node, "lineno", 1), getattr(node, "col_offset", 0)
        column = self.column(lineno, max(offset, 0))
        return _condition_error(self.text, column, why + (f"; {_HELP}" if hint else ""))

    def build(self, node: ast.AST, depth: int, *, chained: bool = False) -> _Fn:
        """Check one node against the allow-list and return a function computing its value."""
        if depth > MAX_DEPTH:
            raise self.fail(node, f"condition nested too deeply (limit {MAX_DEPTH} levels); simplify it")
        if isinstance(node, ast.Constant | ast.List | ast.Tuple):
            value = self.literal(node, depth)
            value = _UNKNOWN if value is None else value
            return lambda _ctx: value
        if isinstance(node, ast.Name | ast.Attribute | ast.Subscript):
            if not chained:
                self.record_path(node)
            return self.lookup(node, depth)
        if isinstance(node, ast.Compare):
            return self.compare(node, depth)
        if isinstance(node, ast.BoolOp):
            return self.boolop(node, depth)
        if isinstance(node, ast.UnaryOp):
            return self.unary(node, depth)
        if isinstance(node, ast.BinOp):
            return self.binop(node, depth)
        if isinstance(node, ast.Call):
            return self.call(node, depth)
        what = _FORBIDDEN.get(type(node), type(node).__name__)
        raise self.fail(node, f"{what} not allowed", hint=True)

    def literal(self, node: ast.AST, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise self.fail(node, f"condition nested too deeply (limit {MAX_DEPTH} levels); simplify it")
        if isinstance(node, ast.Constant):
            value = node.value
            if value is None or isinstance(value, bool | int | float | str):
                return value
            what = {bytes: "bytes literals", complex: "complex numbers"}.get(type(value), repr(value))
            raise self.fail(node, f"{what} not allowed", hint=True)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            value = self.literal(node.operand, depth + 1)
            if not _is_number(value):
                raise self.fail(node, "a sign needs a number")
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.List | ast.Tuple):
            values = [self.literal(element, depth + 1) for element in node.elts]
            return values if isinstance(node, ast.List) else tuple(values)
        raise self.fail(node, "list and tuple elements must be literals (numbers, strings, True, False, None)")

    def check_name(self, node: ast.AST, name: str) -> None:
        if name.startswith("_"):
            attr = name if isinstance(node, ast.Attribute) else None
            raise self.fail(node, f"names starting with '_' not allowed ({name!r})", hint=True, attr=attr)

    def record_path(self, node: ast.expr) -> None:
        """Record the longest static dotted path of a lookup chain: run.cost_usd, args["path"] -> args.path."""
        parts: list[str | None] = []
        while isinstance(node, ast.Attribute | ast.Subscript):
            if isinstance(node, ast.Attribute):
                parts.append(node.attr)
            else:
                key = node.slice
                parts.append(key.value if isinstance(key, ast.Constant) and isinstance(key.value, str) else None)
            node = node.value
        if not isinstance(node, ast.Name):
            return
        path = [node.id]
        for part in reversed(parts):
            if part is None:
                break
            path.append(part)
        self.paths.add(".".join(path))

    def lookup(self, node: ast.expr, depth: int) -> _Fn:
        if isinstance(node, ast.Name):
            name = node.id
            self.check_name(node, name)
            if name == "matches":
                raise self.fail(node, "matches is a function: call it as matches(text, regex)")
            self.names.add(name)

            def get_name(ctx: Mapping[str, Any]) -> Any:
                value = ctx.get(name)
                return _UNKNOWN if value is None else value

            return get_name
        if isinstance(node, ast.Attribute):
            attr = node.attr
            self.check_name(node, attr)
            base = self.build(node.value, depth + 1, chained=True)

            def get_attribute(ctx: Mapping[str, Any]) -> Any:
                value = base(ctx)
                return _UNKNOWN if value is _UNKNOWN else _attribute(value, attr)

            return get_attribute
        assert isinstance(node, ast.Subscript)
        if isinstance(node.slice, ast.Slice):
            raise self.fail(node.slice, "slices not allowed", hint=True)
        base = self.build(node.value, depth + 1, chained=True)
        key = self.build(node.slice, depth + 1)
        return lambda ctx: _index(base(ctx), key(ctx))

    def compare(self, node: ast.Compare, depth: int) -> _Fn:
        for op in node.ops:
            if type(op) not in _COMPARISONS:
                symbol = _OPERATOR_SYMBOLS.get(type(op), type(op).__name__)
                raise self.fail(node, f"'{symbol}' not allowed: use == or != (a missing value is unknown, "
                                      "so any comparison with it is false)")
        left = self.build(node.left, depth + 1)
        rights = [self.build(c, depth + 1) for c in node.comparators]
        fns = [_COMPARISONS[type(op)] for op in node.ops]
        if len(fns) == 1:
            fn, right = fns[0], rights[0]
            return lambda ctx: fn(left(ctx), right(ctx))
        pairs = list(zip(fns, rights, strict=True))

        def chain(ctx: Mapping[str, Any]) -> Any:  # a < b < c is (a < b) and (b < c), in Kleene logic
            result: Any = True
            a = left(ctx)
            for fn, right in pairs:
                b = right(ctx)
                holds = fn(a, b)
                if holds is False:
                    return False
                if holds is _UNKNOWN:
                    result = _UNKNOWN
                a = b
            return result

        return chain

    def boolop(self, node: ast.BoolOp, depth: int) -> _Fn:
        operands = [self.build(v, depth + 1) for v in node.values]
        decisive = isinstance(node.op, ast.Or)  # the value that settles the whole expression

        def kleene(ctx: Mapping[str, Any]) -> Any:
            result: Any = not decisive
            for operand in operands:
                value = _truth(operand(ctx))
                if value is decisive:
                    return decisive
                if value is _UNKNOWN:
                    result = _UNKNOWN
            return result

        return kleene

    def unary(self, node: ast.UnaryOp, depth: int) -> _Fn:
        if isinstance(node.op, ast.Invert):
            raise self.fail(node, "operator ~ not allowed", hint=True)
        operand = self.build(node.operand, depth + 1)
        if isinstance(node.op, ast.Not):

            def negate(ctx: Mapping[str, Any]) -> Any:
                value = operand(ctx)
                return _UNKNOWN if value is _UNKNOWN else not value

            return negate
        sign = -1 if isinstance(node.op, ast.USub) else 1

        def signed(ctx: Mapping[str, Any]) -> Any:
            value = operand(ctx)
            return value * sign if _is_number(value) else _UNKNOWN

        return signed

    def binop(self, node: ast.BinOp, depth: int) -> _Fn:
        fn = _ARITHMETIC.get(type(node.op))
        if fn is None:
            symbol = _OPERATOR_SYMBOLS.get(type(node.op), type(node.op).__name__)
            raise self.fail(node, f"operator {symbol} not allowed", hint=True)
        left = self.build(node.left, depth + 1)
        right = self.build(node.right, depth + 1)

        def arithmetic(ctx: Mapping[str, Any]) -> Any:
            a, b = left(ctx), right(ctx)
            if not (_is_number(a) and _is_number(b)):
                return _UNKNOWN  # also for UNKNOWN, strings, lists, ...
            try:
                result = fn(a, b)
            except (ArithmeticError, ValueError):  # division by zero, float overflow
                return _UNKNOWN
            return _UNKNOWN if result != result else result  # NaN (inf - inf) is not a number either

        return arithmetic

    def call(self, node: ast.Call, depth: int) -> _Fn:
        func = node.func
        if not (isinstance(func, ast.Name) and func.id == "matches"):
            called = f"{func.id}()" if isinstance(func, ast.Name) else "methods"
            raise self.fail(node, f"calling {called} not allowed: the only function is matches(text, regex)",
                            hint=True)
        if node.keywords or len(node.args) != 2 or any(isinstance(a, ast.Starred) for a in node.args):
            raise self.fail(node, "matches() takes exactly two arguments: matches(text, regex)")
        text = self.build(node.args[0], depth + 1)
        pattern = node.args[1]
        if isinstance(pattern, ast.Constant):
            if not isinstance(pattern.value, str):
                raise self.fail(pattern, "the regex of matches() must be a string")
            regex = self.regex(pattern, pattern.value)
            return lambda ctx: _search(regex, text(ctx))
        dynamic = self.build(pattern, depth + 1)

        def search(ctx: Mapping[str, Any]) -> Any:
            source = dynamic(ctx)
            if not isinstance(source, str) or len(source) > MAX_REGEX_LENGTH:
                return _UNKNOWN
            compiled = _runtime_regex(source)
            return _UNKNOWN if compiled is None else _search(compiled, text(ctx))

        return search

    def regex(self, node: ast.AST, source: str) -> re.Pattern[str]:
        if len(source) > MAX_REGEX_LENGTH:
            raise self.fail(node, f"regex too long: {len(source)} characters (limit {MAX_REGEX_LENGTH})")
        try:
            return re.compile(source)
        except re.error as exc:
            raise self.fail(node, f"invalid regex {source!r}: {exc}") from None
        except (RecursionError, OverflowError, ValueError):
            raise self.fail(node, f"invalid regex {source!r}: too complex") from None


def _condition_error(text: str, column: int, why: str) -> BreakpointError:
    return BreakpointError(f"bad condition {text!r} at column {column}: {why}", column=column)


@dataclass(frozen=True, slots=True)
class Condition:
    """A compiled condition. Build one with ``compile_condition``."""

    source: str
    names: frozenset[str]  # top-level names used, e.g. {"run", "tool"}
    paths: frozenset[str]  # longest static dotted paths used, e.g. {"run.cost_usd", "tool"}
    _fn: _Fn = field(repr=False, compare=False)

    def evaluate(self, context: Mapping[str, Any]) -> bool:
        """True only when the condition's value is truthy and known; never raises for user data."""
        try:
            value = self._fn(context)
            return value is not _UNKNOWN and bool(value)
        except (ArithmeticError, LookupError, TypeError, ValueError, RecursionError):  # odd values in context
            return False


def compile_condition(text: str) -> Condition:
    """Parse and check a condition; raises BreakpointError saying where (column) and why."""
    if not isinstance(text, str):
        raise BreakpointError(f"a condition must be a string, not {type(text).__name__}")
    return _compile(text)


@functools.lru_cache(maxsize=512)
def _compile(text: str) -> Condition:
    if len(text) > MAX_CONDITION_LENGTH:
        raise BreakpointError(f"condition too long: {len(text)} characters (limit {MAX_CONDITION_LENGTH})")
    stripped = text.strip()
    if not stripped:
        raise BreakpointError("empty condition: write e.g. run.cost_usd > 0.5, or leave the condition out")
    # Line breaks become spaces (one character each, so columns stay right): a condition may span lines.
    compiler = _Compiler(stripped.translate(_ONE_LINE))
    try:
        with warnings.catch_warnings():  # "\d" in a string: an invalid escape warns, and stays as written
            warnings.simplefilter("ignore")
            tree = ast.parse(compiler.text, mode="eval")
    except SyntaxError as exc:
        detail = exc.msg or "invalid syntax"
        if re.search(r"\bmatches\s*[\"'rR]", stripped):
            detail += "; write matches(text, regex), e.g. matches(args.path, r\"\\.env$\")"
        if not exc.offset and detail == "invalid syntax":  # Python gives no position when the text ends too early
            raise _condition_error(stripped, len(stripped) + 1, "the condition ends too early") from None
        column = compiler.column(exc.lineno or 1, 0) + max((exc.offset or 1) - 1, 0)
        raise _condition_error(stripped, min(column, len(stripped) + 1), detail) from None
    except (ValueError, RecursionError, MemoryError, OverflowError):
        raise BreakpointError(f"bad condition {stripped[:80]!r}: it cannot be parsed") from None
    fn = compiler.build(tree.body, 1)
    return Condition(stripped, frozenset(compiler.names), frozenset(compiler.paths), fn)


def _as_condition(condition: Condition | str) -> Condition:
    return condition if isinstance(condition, Condition) else compile_condition(condition)


def _available(path: str, stop: Stop) -> bool:
    parts = path.split(".")
    for end in range(len(parts), 0, -1):
        documented = CONDITION_NAMES.get(".".join(parts[:end]))
        if documented is not None:
            return stop in documented.stops
    # a namespace such as "run": available where any name documented under it is
    return any(stop in d.stops for name, d in CONDITION_NAMES.items() if name.startswith(path + "."))


def unknown_paths(condition: Condition | str, stop: Stop | str) -> list[str]:
    """The names/paths the condition uses that never have a value at this stop (sorted), to warn about."""
    at = as_stop(stop)
    return sorted(p for p in _as_condition(condition).paths if not _available(p, at))


def uses_cost(condition: Condition | str) -> bool:
    """Whether the condition reads run.cost_usd (unknown while the model's price is unknown)."""
    return "run.cost_usd" in _as_condition(condition).paths


# --- breakpoints ------------------------------------------------------------------------------------


def as_stop(stop: object) -> Stop:
    """`stop` as a Stop (text read from a user, a request or storage); raises BreakpointError."""
    if isinstance(stop, Stop):
        return stop
    if isinstance(stop, str) and stop in _STOP_VALUES:
        return Stop(stop)
    close = difflib.get_close_matches(str(stop), _STOP_VALUES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise BreakpointError(f"unknown stop {stop!r}{hint} valid stops: {', '.join(_STOP_VALUES)}")


_STOP_VALUES = [s.value for s in Stop]


@dataclass(slots=True)
class Breakpoint:
    id: str
    stop: Stop
    tool: str | None = None  # glob on the tool name (fnmatchcase), only at TOOL_STOPS
    condition: str | None = None  # source text; compiled once and cached
    once: bool = False  # one-shot: matches no more once it has been hit
    hits: int = 0
    enabled: bool = True
    _compiled: Condition | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.stop = as_stop(self.stop)  # a Breakpoint made from text holds a member too
        if self.tool is not None:
            if not isinstance(self.tool, str) or not self.tool or any(c.isspace() for c in self.tool):
                raise BreakpointError(f"bad tool glob {self.tool!r}: write a tool name or glob such as delete_*")
            if self.stop not in TOOL_STOPS:
                raise BreakpointError(
                    f"a tool filter (:{self.tool}) only applies at {', '.join(TOOL_STOPS)}; {self.stop} has no tool"
                )
        if self.condition is not None:
            self._condition()

    def _condition(self) -> Condition:
        """The compiled condition, recompiled if the text was changed. Only called when there is one."""
        assert self.condition is not None
        compiled = self._compiled
        if compiled is None or compiled.source != self.condition.strip():
            compiled = self._compiled = compile_condition(self.condition)
        return compiled

    @property
    def compiled(self) -> Condition | None:
        return None if self.condition is None else self._condition()

    def matches(self, stop: Stop, context: Mapping[str, Any]) -> bool:
        """Whether the run should pause here: same stop, enabled (and not spent if once), tool glob, condition."""
        if stop != self.stop or not self.enabled or (self.once and self.hits > 0):
            return False
        if self.tool is not None:
            name = context.get("tool")
            if not isinstance(name, str) or not fnmatch.fnmatchcase(name, self.tool):
                return False
        return self.condition is None or self._condition().evaluate(context)

    def spec(self) -> str:
        """The textual form, which parse_breakpoint reads back."""
        text = self.stop if self.tool is None else f"{self.stop}:{self.tool}"
        return text if self.condition is None else f"{text} if {self.condition.strip()}"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "stop": self.stop.value, "tool": self.tool, "condition": self.condition,
                "once": self.once, "hits": self.hits, "enabled": self.enabled}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Breakpoint:
        """Read what to_dict wrote (unknown keys are ignored); raises BreakpointError on bad data."""
        if not isinstance(data, Mapping):
            raise BreakpointError(f"a stored breakpoint must be a JSON object, not {type(data).__name__}")
        for key, kinds, required in (("id", str, True), ("stop", str, True), ("tool", str, False),
                                     ("condition", str, False), ("once", bool, False), ("hits", int, False),
                                     ("enabled", bool, False)):
            if key not in data or data[key] is None:
                if required:
                    raise BreakpointError(f"stored breakpoint is missing {key!r}: {dict(data)!r}")
            elif not isinstance(data[key], kinds) or (kinds is int and isinstance(data[key], bool)):
                raise BreakpointError(f"stored breakpoint has a bad {key!r}: {data[key]!r}")
        return cls(id=data["id"], stop=data["stop"], tool=data.get("tool"), condition=data.get("condition"),
                   once=data.get("once", False), hits=data.get("hits", 0), enabled=data.get("enabled", True))

    @classmethod
    def parse(cls, text: str, *, id: str, once: bool = False) -> Breakpoint:
        return parse_breakpoint(text, id=id, once=once)


_FORM = "write STOP[:TOOL_GLOB] [if CONDITION], e.g. before_tool:delete_* or after_model if run.cost_usd > 0.2"


def parse_breakpoint(text: str, *, id: str, once: bool = False) -> Breakpoint:
    """Read ``STOP[:TOOL_GLOB] [if CONDITION]``; raises BreakpointError saying what is wrong."""
    if not isinstance(text, str):
        raise BreakpointError(f"a breakpoint must be text, not {type(text).__name__}; {_FORM}")
    source = text.strip()
    if (m := re.match(r"[A-Za-z_][A-Za-z0-9_]*", source)) is None:
        raise BreakpointError(f"bad breakpoint {text!r}: {_FORM}")
    stop, rest = as_stop(m.group()), source[m.end():]
    tool = None
    if rest.lstrip().startswith(":"):
        after = rest.lstrip()[1:].lstrip()
        glob = re.match(r"\S+", after)
        if glob is None or glob.group() == "if":
            raise BreakpointError(f"bad breakpoint {text!r}: a tool name or glob must follow ':'; {_FORM}")
        tool, rest = glob.group(), after[glob.end():]
    condition = None
    if rest.strip():
        found = re.match(r"\s+if(?![A-Za-z0-9_])(.*)", rest, re.DOTALL)
        if found is None:
            raise BreakpointError(f"bad breakpoint {text!r}: unexpected {rest.strip()!r}; {_FORM}")
        condition = found.group(1).strip()
        if not condition:
            raise BreakpointError(f"bad breakpoint {text!r}: a condition must follow 'if'; {_FORM}")
    return Breakpoint(id=id, stop=stop, tool=tool, condition=condition, once=once)
