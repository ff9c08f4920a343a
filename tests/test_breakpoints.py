import ast
import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.domain.breakpoints import (
    CONDITION_NAMES,
    MAX_CONDITION_LENGTH,
    MAX_DEPTH,
    MAX_REGEX_LENGTH,
    STOPS,
    TOOL_STOPS,
    Breakpoint,
    BreakpointError,
    Condition,
    Stop,
    compile_condition,
    parse_breakpoint,
    unknown_paths,
    uses_cost,
)
from tether.domain.errors import TetherError

CTX: dict[str, Any] = {
    "tool": "delete_file",
    "args": {"path": "/tmp/x.env", "n": 3, "tags": ["a", "b"], "nested": {"deep": 1.5}, "none": None},
    "result": "ok: 12 bytes",
    "step": 2,
    "run": {"steps": 2, "tokens": 1500, "cost_usd": 0.25, "elapsed_s": 3.5},
}
NO_COST = {**CTX, "run": {**CTX["run"], "cost_usd": None}}


def ev(text: str, ctx: dict[str, Any] | None = None) -> bool:
    return compile_condition(text).evaluate(CTX if ctx is None else ctx)


def cond_error(text: str) -> BreakpointError:
    with pytest.raises(BreakpointError) as info:
        compile_condition(text)
    return info.value


def bp_error(text: str) -> str:
    with pytest.raises(BreakpointError) as info:
        parse_breakpoint(text, id="b")
    return str(info.value)


# --- the textual form ------------------------------------------------------------------------------


def test_stops_match_the_enum() -> None:
    assert tuple(Stop) == STOPS
    assert len(STOPS) == 8
    assert set(TOOL_STOPS) == {"before_tool", "after_tool", "on_error", "on_uncertain"}
    assert issubclass(BreakpointError, TetherError)


@pytest.mark.parametrize(
    ("text", "stop", "tool", "condition"),
    [
        ("on_error", "on_error", None, None),
        ("before_tool:delete_*", "before_tool", "delete_*", None),
        ("after_model if run.cost_usd > 0.2", "after_model", None, "run.cost_usd > 0.2"),
        ("before_tool:calculator if matches(args.expression, r'\\*')", "before_tool", "calculator",
         "matches(args.expression, r'\\*')"),
        ("  before_tool : delete_*   if   args.path == 'x'  ", "before_tool", "delete_*", "args.path == 'x'"),
        ("after_tool:a?c if(step > 1)", "after_tool", "a?c", "(step > 1)"),
        ("on_uncertain:[rw]*", "on_uncertain", "[rw]*", None),
        ("before_finish\tif\toutput != ''", "before_finish", None, "output != ''"),
        ("on_budget if run.tokens >= 1000\n and step > 3", "on_budget", None, "run.tokens >= 1000\n and step > 3"),
        ("before_tool:diff", "before_tool", "diff", None),  # a glob ending in "if" is not a condition
        ("before_tool:ifconfig if iffy", "before_tool", "ifconfig", "iffy"),
    ],
)
def test_parse_forms(text: str, stop: str, tool: str | None, condition: str | None) -> None:
    bp = parse_breakpoint(text, id="b1")
    assert (bp.id, bp.stop, bp.tool, bp.condition) == ("b1", stop, tool, condition)
    assert (bp.once, bp.hits, bp.enabled) == (False, 0, True)
    again = parse_breakpoint(bp.spec(), id="b1")
    assert again == bp
    assert again.spec() == bp.spec()


def test_spec_is_canonical() -> None:
    assert parse_breakpoint("  before_tool : delete_*   if   x>1 ", id="b").spec() == "before_tool:delete_* if x>1"
    assert parse_breakpoint("on_error", id="b").spec() == "on_error"
    assert parse_breakpoint("after_model if step == 1", id="b").spec() == "after_model if step == 1"


def test_parse_once_and_classmethod() -> None:
    bp = Breakpoint.parse("before_model", id="x", once=True)
    assert bp.once and bp == parse_breakpoint("before_model", id="x", once=True)


def test_unknown_stop_lists_the_valid_ones() -> None:
    message = bp_error("befor_tool:x")
    assert "unknown stop 'befor_tool'" in message
    assert "did you mean 'before_tool'" in message
    for stop in STOPS:
        assert stop in message
    assert "unknown stop" in bp_error("nonsense")
    with pytest.raises(BreakpointError, match="unknown stop"):
        Breakpoint(id="b", stop="later")  # type: ignore[arg-type]


@pytest.mark.parametrize("stop", [s for s in STOPS if s not in TOOL_STOPS])
def test_tool_glob_only_at_tool_stops(stop: str) -> None:
    message = bp_error(f"{stop}:calculator")
    assert "only applies at before_tool, after_tool, on_error, on_uncertain" in message
    assert f"{stop} has no tool" in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "write STOP[:TOOL_GLOB] [if CONDITION]"),
        ("   ", "write STOP[:TOOL_GLOB] [if CONDITION]"),
        ("1abc", "write STOP[:TOOL_GLOB] [if CONDITION]"),
        ("on_error:", "a tool name or glob must follow ':'"),
        ("on_error: if x", "a tool name or glob must follow ':'"),
        ("on_error if", "a condition must follow 'if'"),
        ("on_error:x if   ", "a condition must follow 'if'"),
        ("on_error foo", "unexpected 'foo'"),
        ("before_tool:a b", "unexpected 'b'"),
        ("on_errorif x", "unknown stop 'on_errorif'"),
    ],
)
def test_bad_textual_forms(text: str, fragment: str) -> None:
    assert fragment in bp_error(text)


def test_bad_condition_in_breakpoint_says_where() -> None:
    message = bp_error("after_model if run.cost_usd > > 1")
    assert "bad condition 'run.cost_usd > > 1' at column 16" in message


def test_dict_round_trip() -> None:
    bp = parse_breakpoint("before_tool:delete_* if args.path == '/etc'", id="b7", once=True)
    bp.hits, bp.enabled = 3, False
    data = bp.to_dict()
    assert data == {"id": "b7", "stop": "before_tool", "tool": "delete_*", "condition": "args.path == '/etc'",
                    "once": True, "hits": 3, "enabled": False}
    assert json.loads(json.dumps(data)) == data  # plain JSON types; the compiled condition is not stored
    back = Breakpoint.from_dict(json.loads(json.dumps(data)))
    assert back == bp and back.to_dict() == data
    assert back.compiled == compile_condition("args.path == '/etc'")
    minimal = Breakpoint.from_dict({"id": "m", "stop": "on_error", "future_key": 1})
    assert minimal == Breakpoint(id="m", stop="on_error")


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"stop": "on_error"}, "missing 'id'"),
        ({"id": "b"}, "missing 'stop'"),
        ({"id": "b", "stop": "on_error", "hits": "3"}, "bad 'hits'"),
        ({"id": "b", "stop": "on_error", "hits": True}, "bad 'hits'"),
        ({"id": "b", "stop": "on_error", "once": 1}, "bad 'once'"),
        ({"id": 5, "stop": "on_error"}, "bad 'id'"),
        ({"id": "b", "stop": "on_model"}, "unknown stop"),
        ({"id": "b", "stop": "after_model", "tool": "x"}, "has no tool"),
        ({"id": "b", "stop": "after_model", "condition": "x +"}, "bad condition"),
        ({"id": "b", "stop": "before_tool", "tool": ""}, "bad tool glob"),
    ],
)
def test_from_dict_rejects_bad_data(data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(BreakpointError, match=fragment):
        Breakpoint.from_dict(data)


def test_compiled_condition_is_cached_and_follows_edits() -> None:
    bp = parse_breakpoint("after_model if step == 2", id="b")
    first = bp.compiled
    assert first is not None and bp.compiled is first
    assert bp.matches("after_model", CTX)
    bp.condition = "step == 3"
    assert not bp.matches("after_model", CTX)
    assert bp.compiled is not first
    assert "_compiled" not in repr(bp)


# --- matches() ------------------------------------------------------------------------------------------


def test_matches_stop_glob_enabled_condition() -> None:
    bp = parse_breakpoint("before_tool:delete_*", id="b")
    assert bp.matches("before_tool", {"tool": "delete_file"})
    assert bp.matches("before_tool", {"tool": "delete_"})
    assert not bp.matches("before_tool", {"tool": "Delete_file"})  # case-sensitive
    assert not bp.matches("before_tool", {"tool": "undelete_file"})
    assert not bp.matches("after_tool", {"tool": "delete_file"})
    assert not bp.matches("before_tool", {})
    assert not bp.matches("before_tool", {"tool": None})
    bp.enabled = False
    assert not bp.matches("before_tool", {"tool": "delete_file"})

    anything = parse_breakpoint("before_tool", id="b")
    assert anything.matches("before_tool", {}) and anything.matches("before_tool", {"tool": "x"})

    cond = parse_breakpoint("before_tool:calc* if args.n > 2", id="b")
    assert cond.matches("before_tool", {"tool": "calculator", "args": {"n": 3}})
    assert not cond.matches("before_tool", {"tool": "calculator", "args": {"n": 1}})
    assert not cond.matches("before_tool", {"tool": "calculator", "args": {}})
    assert not cond.matches("before_tool", {"tool": "search", "args": {"n": 3}})


def test_once_breakpoint_is_spent_after_a_hit() -> None:
    bp = parse_breakpoint("after_model", id="b", once=True)
    assert bp.matches("after_model", {})
    bp.hits += 1
    assert not bp.matches("after_model", {})
    always = parse_breakpoint("after_model", id="b")
    always.hits = 5
    assert always.matches("after_model", {})


# --- conditions: what is allowed --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        # literals
        "1", "2.5", "'x'", "True", "[1, 2]", "(1, 'a')", "[[1], [-2.5]]",
        # names, attributes (key lookup on dicts), indexing
        "tool == 'delete_file'", "args.path == '/tmp/x.env'", "args['path'] == '/tmp/x.env'",
        "args.nested.deep == 1.5", "args['nested']['deep'] == 1.5", "args.tags[0] == 'a'", "args.tags[-1] == 'b'",
        "result[0] == 'o'", "args['n'] == 3", "(1, 2)[1] == 2", "[[1], [2]][1][0] == 2",
        # comparisons
        "step == 2", "step != 3", "step < 3", "step <= 2", "step > 1", "step >= 2", "1 < step < 3",
        "1 < step <= 2 < 3", "'a' in args.tags", "'z' not in args.tags", "'ok' in result",
        "tool in ['x', 'delete_file']",
        "step in (1, 2)", "'path' in args",
        # boolean logic
        "step == 2 and tool == 'delete_file'", "step == 3 or tool == 'delete_file'", "not step == 3",
        "not not step", "step == 1 or step == 2 or step == 3",
        # arithmetic
        "step + 1 == 3", "step - 3 == -1", "step * 2 == 4", "step / 4 == 0.5", "7 % step == 1", "-step == -2",
        "+step == 2", "run.tokens / run.steps == 750", "run.cost_usd * 100 > 20",
        # matches()
        "matches(args.path, r'\\.env$')", "matches(result, '[0-9]+ bytes')", "matches(tool, '(?i)^DELETE')",
        "matches(result, 'ok')", "matches(result, \"\\\\d\")", "matches(result, '\\\\d') and step == 2",
        "run.elapsed_s > 3",
    ],
)
def test_allowed_constructs_hold(text: str) -> None:
    assert ev(text), text


@pytest.mark.parametrize(
    "text",
    [
        "0", "''", "False", "[]", "step == 3", "step != 2", "step < 2", "3 < step < 5", "1 < step < 2",
        "'z' in args.tags", "'a' not in args.tags", "step == 2 and tool == 'x'", "step == 3 or tool == 'x'",
        "not step", "matches(result, '^ok$')", "matches(args.path, r'\\.txt$')", "args.tags[5] == 'a'",
        "args.missing == 1", "args.nested.missing == 1", "args.path.deeper == 1", "nothing == 1",
    ],
)
def test_allowed_constructs_fail(text: str) -> None:
    assert not ev(text), text


def test_dynamic_regex_and_indexes() -> None:
    ctx = {"args": {"pattern": "^de", "bad": "(", "long": "a" * (MAX_REGEX_LENGTH + 1), "key": "path", "i": 1,
                    "path": "x"}, "tool": "delete"}
    assert ev("matches(tool, args.pattern)", ctx)
    assert not ev("matches(tool, args.bad)", ctx)  # invalid at run time: unknown, not an error
    assert not ev("not matches(tool, args.bad)", ctx)
    assert not ev("matches(tool, args.long)", ctx)
    assert not ev("matches(tool, args.i)", ctx)
    assert ev("args[args.key] == 'x'", ctx)
    assert ev("tool[args.i] == 'e'", ctx)
    assert not ev("args[[1]] == 1", ctx)  # an unhashable key is unknown


def test_attribute_access_on_objects_is_limited_to_fields() -> None:
    @dataclass
    class RunInfo:
        cost_usd: float | None
        steps: int

        @property
        def secret(self) -> str:
            return "s"

    class Point(NamedTuple):
        x: int

    assert ev("run.steps == 4 and run.cost_usd > 1", {"run": RunInfo(2.0, 4)})
    assert not ev("run.cost_usd > 1", {"run": RunInfo(None, 4)})
    assert not ev("run.secret == 's'", {"run": RunInfo(2.0, 4)})  # only dataclass fields, not any attribute
    assert ev("p.x == 3", {"p": Point(3)})
    assert not ev("tool.upper == 1", {"tool": "x"})  # no attributes of plain values
    assert not ev("step.real == 2", {"step": 2})


# --- conditions: unknown values ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "run.cost_usd > 1", "run.cost_usd < 1", "run.cost_usd == 0", "run.cost_usd != 0", "run.cost_usd >= 0",
        "not (run.cost_usd > 1)", "not run.cost_usd", "run.cost_usd", "-run.cost_usd < 0",
        "run.cost_usd + 1 > 0", "run.cost_usd in [None]", "None == None", "run.cost_usd > 1 and step == 2",
        "not (run.cost_usd > 1 and step == 2)", "run.cost_usd > 1 or step == 3", "matches(run.cost_usd, '.')",
        "0 < run.cost_usd < 1", "args.none == None", "args.none", "not args.none",
    ],
)
def test_unknown_is_never_true(text: str) -> None:
    assert not ev(text, NO_COST), text


@pytest.mark.parametrize(
    "text",
    [
        "run.cost_usd > 1 or step == 2", "step == 2 or run.cost_usd > 1", "not (run.cost_usd > 1 and step == 3)",
        "not (step == 3 and run.cost_usd > 1)", "run.cost_usd > 1 or run.cost_usd < 1 or True",
        "1 in [1, None]",
    ],
)
def test_kleene_logic_decides_despite_unknown(text: str) -> None:
    assert ev(text, NO_COST), text


def test_known_cost_compares_normally() -> None:
    assert ev("run.cost_usd > 0.2") and not ev("run.cost_usd > 0.3")
    assert ev("not (run.cost_usd > 1)")


@pytest.mark.parametrize(
    "text",
    [
        "'a' < 1", "result > 3", "1 in result", "args < args", "step / 0 > 0", "step % 0 == 0", "0 / 0 == 0",
        "result + 'x' == 'ok: 12 bytesx'", "'ab' * 2 == 'abab'", "-result == 1", "args.tags * 2 == 4",
        "True + 1 == 2", "(1e308 * 10) - (1e308 * 10) == 0", "(1e308 * 10) % 2 == 0", "1 < 'a'", "args.tags + [1] == 1",
    ],
)
def test_type_errors_and_division_by_zero_are_unknown(text: str) -> None:
    assert not ev(text), text
    assert not ev(f"not ({text})"), text


def test_huge_products_become_unknown() -> None:
    ctx = {"n": 10**1200}
    assert not ev("n * n * n * n > 0", ctx)
    assert ev("n * 2 > n", ctx)
    assert not ev("n / 0.5 > 0", ctx)  # float overflow: unknown


def test_evaluate_never_raises_for_odd_context_values() -> None:
    class Weird:
        def __bool__(self) -> bool:
            raise ValueError("no truth")

        def __eq__(self, other: object) -> bool:
            raise TypeError("no equality")

        __hash__ = object.__hash__

    ctx = {"w": Weird(), "deep": None}
    for text in ["w", "not w", "w == 1", "w and True", "w in [1]", "w.x", "w[0]", "matches(w, 'x')"]:
        assert compile_condition(text).evaluate(ctx) is False, text


# --- conditions: what is rejected, and where ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment", "column"),
    [
        ('__import__("os")', "calling __import__() not allowed", 1),
        ("().__class__", "names starting with '_' not allowed ('__class__')", 4),
        ("lambda: 1", "lambda not allowed", 1),
        ("[x for x in y]", "comprehensions not allowed", 1),
        ("{x for x in y}", "comprehensions not allowed", 1),
        ("{k: 1 for k in y}", "comprehensions not allowed", 1),
        ("any(x for x in y)", "calling any() not allowed", 1),
        ('open("f")', "calling open() not allowed", 1),
        ("args._private", "names starting with '_' not allowed ('_private')", 6),
        ("_secret == 1", "names starting with '_' not allowed", 1),
        ('f"{tool}" == "x"', "f-strings not allowed", 1),
        ("(x := 1)", "':=' (assignment) not allowed", 2),
        ("args[1:2]", "slices not allowed", 6),
        ("1 if step else 2", "'x if c else y' expressions not allowed", 1),
        ("{'a': 1}", "dict literals not allowed", 1),
        ("{1, 2}", "set literals not allowed", 1),
        ("step ** 2", "operator ** not allowed", 1),
        ("step // 2", "operator // not allowed", 1),
        ("step & 1", "operator & not allowed", 1),
        ("~step", "operator ~ not allowed", 1),
        ("tool is None", "'is' not allowed", 1),
        ("b'x' == 1", "bytes literals not allowed", 1),
        ("1j == 1", "complex numbers not allowed", 1),
        ("... == 1", "Ellipsis not allowed", 1),
        ("tool.upper()", "calling methods not allowed", 1),
        ("step == 1 and args.x.__dict__", "'__dict__'", 22),
        ("matches", "matches is a function", 1),
        ("matches(tool)", "exactly two arguments", 1),
        ("matches(tool, 'a', 'b')", "exactly two arguments", 1),
        ("matches(tool, regex='a')", "exactly two arguments", 1),
        ("matches(*args)", "exactly two arguments", 1),
        ("matches(tool, 1)", "the regex of matches() must be a string", 15),
        ("matches(tool, '(')", "invalid regex '('", 15),
        ("matches(tool, '[a-')", "invalid regex", 15),
        ("[step]", "list and tuple elements must be literals", 2),
        ("tool in [1, -'x']", "a sign needs a number", 13),
        ("step = 1", "invalid syntax", 6),
        ("step > > 1", "invalid syntax", 8),
        ("(step > 1", "was never closed", 1),
        ("tool matches 'delete'", "write matches(text, regex)", 6),
        ("é == 1 and _x", "names starting with '_' not allowed", 12),  # columns count characters, not bytes
        ("step == 1\n and __x", "names starting with '_' not allowed", 16),
        ("yield 1", "yield", 1),
        ("await x", "await", 1),
        ("import os", "invalid syntax", 1),
        ("x; y", "invalid syntax", 2),
    ],
)
def test_rejected_constructs_say_what_and_where(text: str, fragment: str, column: int) -> None:
    error = cond_error(text)
    assert fragment in str(error), str(error)
    assert error.column == column, str(error)
    assert f"at column {column}" in str(error)


def test_limits() -> None:
    long = " or ".join(["step == 1"] * 200)
    assert len(long) > MAX_CONDITION_LENGTH
    assert "condition too long" in str(cond_error(long))
    deep = "not " * MAX_DEPTH + "step"
    assert "nested too deeply" in str(cond_error(deep))
    ev("not " * (MAX_DEPTH - 1) + "step")  # just inside the limit
    assert "nested too deeply" in str(cond_error("-(" * 40 + "1" + ")" * 40))
    assert "nested too deeply" in str(cond_error("[" * 40 + "]" * 40))
    assert "too many nested parentheses" in str(cond_error("(" * 300 + "1" + ")" * 300))
    regex = "a" * (MAX_REGEX_LENGTH + 1)
    assert "regex too long" in str(cond_error(f"matches(tool, '{regex}')"))
    compile_condition(f"matches(tool, '{'a' * MAX_REGEX_LENGTH}')")
    assert "empty condition" in str(cond_error("   "))
    assert "must be a string" in str(cond_error(3))  # type: ignore[arg-type]
    assert "cannot contain null bytes" in str(cond_error("1\x00"))


def test_invalid_escape_does_not_warn_and_stays_as_written() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        condition = compile_condition('matches(args.expression, "\\*")')
    assert condition.evaluate({"args": {"expression": "2*3"}})
    assert not condition.evaluate({"args": {"expression": "2+3"}})


# --- names and paths ---------------------------------------------------------------------------------


def test_names_and_paths() -> None:
    c = compile_condition("run.cost_usd > 0.2 and tool == 'x' and args['path'] != args[tool].y and result[0]")
    assert isinstance(c, Condition)
    assert c.names == {"run", "tool", "args", "result"}
    assert c.paths == {"run.cost_usd", "tool", "args.path", "args", "result"}
    assert compile_condition("matches(output, 'x')").names == {"output"}
    assert compile_condition("1 == 1").names == frozenset()
    assert compile_condition("run['cost_usd'] > 1").paths == {"run.cost_usd"}


def test_condition_names_table() -> None:
    assert set(CONDITION_NAMES) == {"tool", "args", "result", "error", "output", "step", "run.steps", "run.tokens",
                                    "run.cost_usd", "run.elapsed_s"}
    for name, doc in CONDITION_NAMES.items():
        assert doc.description and doc.type, name
        assert set(doc.stops) <= set(STOPS)
    assert CONDITION_NAMES["result"].stops == ("after_tool",)
    assert set(CONDITION_NAMES["step"].stops) == set(STOPS)


def test_unknown_paths_and_uses_cost() -> None:
    assert unknown_paths("result == 'x' and args.path == 'y'", "before_tool") == ["result"]
    assert unknown_paths("result == 'x'", "after_tool") == []
    assert unknown_paths("tool == 'x' or output == ''", "after_model") == ["tool"]
    assert unknown_paths("run.cost_usd > 1 and run.nope > 1 and run['steps'] > 1 and typo", "on_budget") == [
        "run.nope", "typo"]
    assert unknown_paths(compile_condition("run[step] > 1 and error != ''"), "on_error") == []
    assert unknown_paths("error", "after_tool") == ["error"]
    with pytest.raises(BreakpointError, match="unknown stop"):
        unknown_paths("step", "sometimes")  # type: ignore[arg-type]
    assert uses_cost("run.cost_usd > 1")
    assert uses_cost(compile_condition("step > 1 or run['cost_usd'] > 0.5"))
    assert not uses_cost("run.tokens > 1")


# --- robustness and speed ----------------------------------------------------------------------------

_ATOMS = st.sampled_from([
    "tool", "args", "run", "step", "result", ".", "[", "]", "(", ")", "'", '"', "matches", ",", " ", "==", "<", "in",
    "not", "and", "or", "if", "else", "lambda", ":", "__class__", "_", "1", "0", "-", "+", "*", "/", "%", "**",
    "r'\\d+'", "'('", "1e999", "None", "True", "\\", "\n", "\x00", "é", "\ud800", "{", "}", "f'", "x", ";", ":=",
])


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=60), st.lists(_ATOMS, max_size=25).map("".join)))
def test_junk_never_crashes_the_parser(text: str) -> None:
    try:
        condition = compile_condition(text)
    except BreakpointError:
        pass
    else:
        for ctx in (CTX, NO_COST, {}, {"tool": None, "args": [1, 2], "run": "x", "step": "2"}):
            assert isinstance(condition.evaluate(ctx), bool)
    with contextlib.suppress(BreakpointError):
        parse_breakpoint(text, id="b")
    with contextlib.suppress(BreakpointError):
        parse_breakpoint("before_tool:x* if " + text, id="b")


@settings(max_examples=200, deadline=None)
@given(st.recursive(
    st.sampled_from(["step", "run.cost_usd", "args.n", "args.tags[0]", "1", "0", "'a'", "None", "result"]),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from([" == ", " < ", " + ", " / ", " % ", " and ", " or ", " in "]), inner)
        .map(lambda t: f"({t[0]}{t[1]}{t[2]})"),
        inner.map(lambda t: f"(not {t})"),
        inner.map(lambda t: f"(-{t})"),
    ),
    max_leaves=12,
))
def test_generated_valid_conditions_always_evaluate(text: str) -> None:
    try:
        condition = compile_condition(text)
    except BreakpointError as exc:
        assert "nested too deeply" in str(exc)
        return
    for ctx in (CTX, NO_COST, {}):
        assert isinstance(condition.evaluate(ctx), bool)


def test_nothing_is_evaluated_by_python() -> None:
    import tether.domain.breakpoints as module

    tree = ast.parse(Path(module.__file__).read_text())
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert not called & {"eval", "exec", "compile", "__import__"}


def test_timing_sanity() -> None:
    simple = compile_condition("run.cost_usd > 0.2")
    mixed = compile_condition("tool == 'delete_file' and matches(args.path, r'\\.env$') or step > 10")
    bp = parse_breakpoint("before_tool:delete_* if args.n > 2", id="b")
    n = 20_000
    for name, fn in [("simple", lambda: simple.evaluate(CTX)), ("mixed", lambda: mixed.evaluate(CTX)),
                     ("breakpoint.matches", lambda: bp.matches("before_tool", CTX)),
                     ("compile (cached)", lambda: compile_condition("run.cost_usd > 0.2"))]:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        print(f"{name}: {(time.perf_counter() - start) / n * 1e6:.2f} µs")
    assert simple.evaluate(CTX) and mixed.evaluate(CTX) and bp.matches("before_tool", CTX)


def test_a_condition_that_ends_too_early_is_reported_at_its_end():
    with pytest.raises(BreakpointError) as e:
        compile_condition("run.tokens >")
    assert e.value.column == 13 and "ends too early" in str(e.value)
