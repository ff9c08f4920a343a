import ast
import dataclasses
import inspect
import time
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.adapters.tools import calculator as calc_module
from tether.adapters.tools.calculator import (
    FUNCTIONS,
    SIGNIFICANT_DIGITS,
    CalcResult,
    CalculatorError,
    calculator,
    evaluate,
)

ROUNDED = f"(rounded to {SIGNIFICANT_DIGITS} significant digits)"


def exact(expression: str) -> str:
    result = evaluate(expression)
    assert result.exact, (expression, result)
    assert result.fraction is not None
    assert Fraction(result.value) == result.fraction  # the text says exactly the value
    return result.value


def rounded(expression: str) -> str:
    result = evaluate(expression)
    assert not result.exact, (expression, result)
    assert str(result) == f"{result.value} {ROUNDED}"
    return result.value


def error(expression: str) -> str:
    with pytest.raises(CalculatorError) as info:
        evaluate(expression)
    return str(info.value)


# --- exactness and rendering -------------------------------------------------------------------


def test_decimal_literals_are_exact():
    result = evaluate("0.1+0.2")
    assert result == CalcResult("0.3", True, Fraction(3, 10))
    assert str(result) == "0.3"
    assert exact("0.1*3") == "0.3"
    assert exact("1.1*1.1") == "1.21"
    assert exact("1e400") == "1" + "0" * 400


def test_non_terminating_fraction_is_rounded_and_marked():
    result = evaluate("1/3")
    assert result.value == "0.333333333333333"
    assert not result.exact
    assert str(result) == f"0.333333333333333 {ROUNDED}"
    assert result.fraction == Fraction(1, 3)  # the exact value is still known
    assert rounded("2/3") == "0.666666666666667"
    assert exact("1/7*7") == "1"


def test_big_integers_are_printed_in_full():
    assert exact("2**100") == str(2**100)
    assert exact("2**10000") == str(2**10000)
    assert exact("123456789012345678901234567890") == "123456789012345678901234567890"
    assert exact("factorial(25)") == "15511210043330985984000000"


@pytest.mark.parametrize(
    ("expression", "expected"),
    [("7//2", "3"), ("-7//2", "-4"), ("7%3", "1"), ("(-7)%3", "2"), ("-7%3", "2"), ("7.5%2", "1.5")],
)
def test_floor_division_and_modulo_follow_python(expression, expected):
    assert exact(expression) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("2.875", "2.875"),
        ("23/8", "2.875"),
        ("1/1024", "0.0009765625"),
        ("0.000001", "0.000001"),
        ("10**-20", "1e-20"),
        ("1.5e-20", "1.5e-20"),
        ("-3/4", "-0.75"),
        ("2**-3", "0.125"),
        ("(1+1e-30)-1", "1e-30"),
        ("3.0*2", "6"),
    ],
)
def test_exact_rendering(expression, expected):
    assert exact(expression) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1e40/3", "3.33333333333333e+39"),
        ("1/3*1e-20", "3.33333333333333e-21"),
        ("123456789.123456789", "123456789.123457"),  # terminates, but beyond the digit budget
        ("10**20+0.5", "1.00000000000000e+20"),
        ("-1/3", "-0.333333333333333"),
    ],
)
def test_rounded_rendering(expression, expected):
    assert rounded(expression) == expected


def test_unicode_operators_and_whitespace_are_normalised():
    assert exact("2 × 3 ÷ 4") == "1.5"
    assert exact("2 − 5") == "-3"
    assert exact("  1\n+ 1\t") == "2"


# --- functions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("sqrt(16)", "4"),
        ("sqrt(9/4)", "1.5"),
        ("sqrt(0.01)", "0.1"),
        ("8**(1/3)", "2"),
        ("4**1.5", "8"),
        ("pow(2, 10)", "1024"),
        ("round(2.5)", "2"),
        ("round(3.5)", "4"),
        ("round(-2.5)", "-2"),
        ("round(2.675, 2)", "2.68"),  # exact: no binary float surprise
        ("round(0.125, 2)", "0.12"),  # half to even
        ("round(1234, -2)", "1200"),
        ("min(3, 1.5, 2)", "1.5"),
        ("max(-1, -2)", "-1"),
        ("max(7)", "7"),
        ("floor(-2.5)", "-3"),
        ("ceil(2.1)", "3"),
        ("floor(7/2)", "3"),
        ("abs(-3.5)", "3.5"),
        ("log10(1000)", "3"),
        ("log10(0.001)", "-3"),
        ("log(8, 2)", "3"),
        ("ln(1)", "0"),
        ("exp(0)", "1"),
        ("sin(0)", "0"),
        ("cos(0)", "1"),
        ("factorial(20)", "2432902008176640000"),
    ],
)
def test_functions_exact(expression, expected):
    assert exact(expression) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("sqrt(2)", "1.41421356237310"),
        ("2**0.5", "1.41421356237310"),
        ("2**(1/3)", "1.25992104989487"),
        ("pi", "3.14159265358979"),
        ("2*pi", "6.28318530717959"),
        ("e", "2.71828182845905"),
        ("exp(1)", "2.71828182845905"),
        ("ln(2)", "0.693147180559945"),
        ("log(10)", "2.30258509299405"),
        ("log10(2)", "0.301029995663981"),
        ("sin(1)", "0.841470984807897"),
        ("sin(pi/6)", "0.500000000000000"),
        ("cos(pi)", "-1.00000000000000"),
        ("sin(pi)", "0"),  # the tiny error of pi is not shown as 1e-51
        ("tan(pi/4)", "1.00000000000000"),
        ("sqrt(2)*sqrt(2)", "2.00000000000000"),
    ],
)
def test_functions_inexact(expression, expected):
    result = evaluate(expression)
    assert rounded(expression) == expected
    assert result.fraction is None


def test_every_function_is_documented_for_the_model():
    doc = inspect.getdoc(calculator) or ""
    for name in FUNCTIONS:
        assert name in doc
    assert "pi" in doc and "**" in doc


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("sqrt(-1)", "no real result"),
        ("(-8)**(1/3)", "no real result"),
        ("ln(0)", "positive argument"),
        ("log(-1)", "positive argument"),
        ("log(2, 1)", "base of log()"),
        ("factorial(-1)", ">= 0"),
        ("factorial(2.5)", "whole number"),
        ("round(1.5, 0.5)", "whole number"),
        ("tan(pi/2)", "undefined"),
        ("pow(2)", "wrong number of arguments to pow()"),
        ("min()", "wrong number of arguments to min()"),
        ("sqrt(1, 2)", "wrong number of arguments to sqrt()"),
    ],
)
def test_function_domain_errors(expression, message):
    assert message in error(expression)


# --- division by zero --------------------------------------------------------------------------


@pytest.mark.parametrize("expression", ["1/0", "5//0", "5%0", "1/(2-2)", "0**-1", "pow(0, -2)"])
def test_division_by_zero(expression):
    assert "division by zero" in error(expression)


def test_division_by_zero_says_where():
    assert "(column 5)" in error("1 + 2/0")


# --- rejected constructs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("x+1", "names are not allowed: 'x' (column 1)"),
        ("1 + x", "names are not allowed: 'x' (column 5)"),
        ("π + x", "(column 5)"),  # columns count characters, not UTF-8 bytes
        ("(1).__class__", "attribute access"),
        ("(1).__class__.__bases__[0]", "indexing"),
        ("abs.__call__(1)", "attribute access"),
        ("__import__('os')", "unknown function '__import__'"),
        ("foo(2)", "unknown function 'foo'"),
        ("lambda: 1", "lambda"),
        ("'abc'", "strings are not allowed"),
        ("b'abc'", "strings are not allowed"),
        ("f'{1}'", "strings"),
        ("[i for i in (1, 2)]", "comprehensions"),
        ("sum(i for i in (1, 2))", "unknown function 'sum'"),
        ("[1, 2]", "lists"),
        ("2^3", "use ** for powers"),
        ("2 ^ 0.5", "use ** for powers"),
        ("1,000", "thousands separators"),
        ("1_000", "digit separators"),
        ("True", "only real numbers"),
        ("None", "only real numbers"),
        ("1j", "only real numbers"),
        ("sqrt", "'sqrt' is a function"),
        ("round(2.5, ndigits=1)", "keyword arguments"),
        ("min(*[1])", "unpacking"),
        ("2(3)", "write 2*(3)"),
        ("1 < 2", "comparisons"),
        ("1 if 1 else 2", "if/else"),
        ("(x := 1)", "assignments"),
        ("~1", "operator ~"),
        ("not 1", "operator not"),
        ("1 & 2", "operator &"),
        ("1 << 2", "operator <<"),
        ("2 +* 3", "invalid syntax at column 4"),
        ("import os", "invalid syntax"),
        ("1; 2", "invalid syntax"),
        ("", "empty expression"),
        ("   ", "empty expression"),
    ],
)
def test_rejected_constructs(expression, message):
    assert message in error(expression)


def test_construct_errors_list_what_is_allowed():
    message = error("x")
    assert "allowed:" in message and "sqrt" in message and "pi" in message


def test_rejection_happens_before_any_computation():
    # The whole tree is checked first: the expensive power is never started.
    start = time.perf_counter()
    assert "names are not allowed" in error("(10**5000)**9 + x")
    assert time.perf_counter() - start < 1


def test_module_never_calls_eval_exec_or_compile():
    tree = ast.parse(inspect.getsource(calc_module))
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert not called & {"eval", "exec", "compile", "__import__"}


# --- bounds ------------------------------------------------------------------------------------


def test_length_bound():
    assert "expression too long: 1001 characters (limit 1000)" in error("1+" * 500 + "1")
    assert exact("+".join(["1"] * 200)) == "200"  # a long flat sum is fine


def test_depth_bound():
    assert "nested too deeply" in error("-" * 60 + "1")
    assert "nested too deeply" in error("abs(" * 60 + "1" + ")" * 60)
    assert exact("-" * 40 + "1") == "1"


def test_node_count_bound():
    assert "expression too big (limit 500 terms)" in error("+".join(["1"] * 300))


def test_exponent_bound():
    assert "exponent too large" in error("2**10001")
    assert "exponent too large" in error("2**-10001")
    assert "exponent too large" in error("pow(1, 20000)")
    assert exact("1**10000") == "1"


@pytest.mark.parametrize("expression", ["9**9**9**9", "(10**5000)**10", "2**9999**9999", "factorial(10**9)"])
def test_huge_results_fail_fast(expression):
    start = time.perf_counter()
    message = error(expression)
    assert time.perf_counter() - start < 1
    assert "too large" in message


def test_result_size_bound_is_checked_before_computing():
    assert "needs about 166100 bits (limit 100000)" in error("(10**5000)**10")
    assert "10000! has more than 100000 bits" in error("factorial(10000)")


def test_intermediate_size_bound():
    assert "intermediate result too large" in error("*".join(["2**9999"] * 11))


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("1e30001", "number out of range"),
        ("1e-99999999999", "number out of range"),
        ("exp(100000)", "result too large"),
        ("exp(-100000)", "result too small"),
        ("sin(1e60)", "angle too large"),
    ],
)
def test_magnitude_bounds(expression, message):
    assert message in error(expression)


# --- the tool function -------------------------------------------------------------------------


def test_calculator_returns_text():
    assert calculator("(1.5 + 2.25) * 4") == "15"
    assert calculator("1/3") == f"0.333333333333333 {ROUNDED}"


def test_calculator_raises_value_error_subclass():
    with pytest.raises(ValueError, match="use \\*\\* for powers"):
        calculator("2^8")


def test_result_is_frozen():
    result = evaluate("1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.value = "2"  # type: ignore[misc]


# --- properties --------------------------------------------------------------------------------


@given(st.integers(-(10**12), 10**12), st.integers(-(10**12), 10**12))
def test_integer_sums_are_exact(a, b):
    result = evaluate(f"{a}+{b}")
    assert result.exact
    assert result.value == str(a + b)
    assert result.fraction == a + b


@given(st.integers(-1000, 1000), st.integers(-1000, 1000).filter(bool))
def test_floor_division_and_modulo_match_python(a, b):
    assert evaluate(f"({a})//({b})").value == str(a // b)
    assert evaluate(f"({a})%({b})").value == str(a % b)


@given(st.fractions(max_denominator=10**9).filter(lambda q: abs(q) < 10**30))
def test_rendering_parses_back(q):
    result = evaluate(f"({q.numerator})/{q.denominator}")
    assert result.fraction == q
    if result.exact:
        assert Fraction(result.value) == q
    else:
        assert abs(Fraction(result.value) - q) <= abs(q) * Fraction(1, 10**14)


@given(st.integers(-(10**15) + 1, 10**15 - 1), st.integers(0, 12))
def test_short_decimals_are_exact(n, places):
    q = Fraction(n, 10**places)
    result = evaluate(f"({n})/10**{places}")
    assert result.exact
    assert Fraction(result.value) == q
