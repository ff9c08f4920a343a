"""Built-in calculator tool: exact rational arithmetic on expressions sent by a model.

Safety: the text is parsed with ``ast.parse(mode="eval")`` and only an allow-listed set of nodes is
walked; nothing is ever eval'd, exec'd or compiled to code. Every size that could make the process
hang (input length, tree size and depth, exponent, number size) is bounded and checked *before* the
expensive step. Numbers are ``Fraction``s; irrational steps (sqrt(2), exp, sin, ...) are computed
with ``decimal`` at ``PRECISION`` digits and the value is flagged inexact from then on.
"""

from __future__ import annotations

import ast
import decimal
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import NamedTuple

SIGNIFICANT_DIGITS = 15
MAX_LENGTH = 1000  # characters of input
MAX_DEPTH = 50  # nesting of calls, unary signs and right operands (a long sum a+b+c+... is flat)
MAX_NODES = 500  # numbers, operators, names and calls
MAX_EXPONENT = 10_000  # |y| in x ** y, also ndigits of round() and n of factorial()
MAX_BITS = 100_000  # size of the numerator / denominator of any intermediate result
PRECISION = 50  # decimal digits used for inexact functions
_MAX_DECIMAL_EXP = 30_000  # 10**30000 is just under MAX_BITS, so inexact values always fit

FUNCTIONS: dict[str, str] = {
    "sqrt": "sqrt(x): square root; exact for perfect squares such as sqrt(9/4)",
    "abs": "abs(x): absolute value",
    "round": "round(x[, ndigits]): round half to even, like Python's round",
    "floor": "floor(x): largest integer <= x",
    "ceil": "ceil(x): smallest integer >= x",
    "min": "min(a, b, ...): smallest argument",
    "max": "max(a, b, ...): largest argument",
    "pow": "pow(x, y): same as x ** y",
    "exp": "exp(x): e ** x",
    "ln": "ln(x): natural logarithm",
    "log": "log(x[, base]): natural logarithm, or logarithm to the given base",
    "log10": "log10(x): base-10 logarithm",
    "sin": "sin(x): sine, x in radians",
    "cos": "cos(x): cosine, x in radians",
    "tan": "tan(x): tangent, x in radians",
    "factorial": "factorial(n): n! for a whole number n >= 0",
}
_ALLOWED = f"allowed: numbers, + - * / // % **, parentheses, pi, e, functions {', '.join(FUNCTIONS)}"
# Characters models like to produce (and line breaks); one character each, so columns stay right.
_NORMALISE = str.maketrans({"×": "*", "÷": "/", "−": "-", "\n": " ", "\r": " ", "\t": " "})


class CalculatorError(ValueError):
    """The expression was rejected; the message says what is wrong and what to write instead."""


@dataclass(frozen=True, slots=True)
class CalcResult:
    value: str  # rendered text, e.g. "2.875" or "1.41421356237310"
    exact: bool  # False when ``value`` is rounded
    fraction: Fraction | None  # the exact value whenever it is known (also for 1/3), else None

    def __str__(self) -> str:
        if self.exact:
            return self.value
        return f"{self.value} (rounded to {SIGNIFICANT_DIGITS} significant digits)"


class _Num(NamedTuple):
    q: Fraction
    exact: bool  # False once any step was rounded (sqrt(2), pi, exp, ...)


def _bits(q: Fraction) -> int:
    return max(abs(q.numerator).bit_length(), q.denominator.bit_length())


def _num(q: Fraction, exact: bool) -> _Num:
    if not exact:  # keep inexact values at PRECISION digits: more would be false precision
        q = Fraction(_dec(q))
    if _bits(q) > MAX_BITS:
        raise CalculatorError(f"intermediate result too large: over {MAX_BITS} bits; use smaller numbers")
    return _Num(q, exact)


def _dec(q: Fraction) -> Decimal:
    """q rounded to the precision of the current decimal context."""
    return Decimal(q.numerator) / Decimal(q.denominator)


def _inexact(d: Decimal) -> _Num:
    return _num(Fraction(d), False)


def _compute_pi(digits: int) -> Decimal:
    # Series from the ``decimal`` documentation recipes.
    with decimal.localcontext() as ctx:
        ctx.prec = digits + 2
        lasts, t, s, n, na, d, da = Decimal(0), Decimal(3), Decimal(3), 1, 0, 0, 24
        while s != lasts:
            lasts = s
            n, na = n + na, na + 8
            d, da = d + da, da + 32
            t = (t * n) / d
            s += t
    return s


_WIDE = PRECISION + 60  # extra digits for trigonometric argument reduction
_PI_WIDE = _compute_pi(_WIDE)
with decimal.localcontext() as _ctx:
    _ctx.prec = PRECISION
    _CONSTANTS = {"pi": _Num(Fraction(+_PI_WIDE), False), "e": _Num(Fraction(Decimal(1).exp()), False)}
_CONSTANTS["π"] = _CONSTANTS["pi"]


def _context() -> decimal.Context:
    return decimal.Context(
        prec=PRECISION,
        Emax=_MAX_DECIMAL_EXP,
        Emin=-_MAX_DECIMAL_EXP,
        traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow, decimal.Underflow],
    )


# --- functions ---------------------------------------------------------------------------------


def _int_arg(a: _Num, what: str) -> int:
    if a.q.denominator != 1:
        raise CalculatorError(f"{what} must be a whole number")
    if abs(a.q) > MAX_EXPONENT:
        raise CalculatorError(f"{what} too large: the limit is {MAX_EXPONENT}")
    return int(a.q)


def _iroot(n: int, k: int) -> int:
    """floor(n ** (1/k)) for n >= 0, by integer Newton iteration."""
    if n < 2:
        return n
    x = 1 << -(-n.bit_length() // k)  # an overestimate, as Newton needs
    while True:
        y = ((k - 1) * x + n // x ** (k - 1)) // k
        if y >= x:
            return x
        x = y


def _exact_root(q: Fraction, k: int) -> Fraction | None:
    """q ** (1/k) when it is rational (q >= 0), else None."""
    num, den = _iroot(q.numerator, k), _iroot(q.denominator, k)
    return Fraction(num, den) if num**k == q.numerator and den**k == q.denominator else None


def _power(base: _Num, exponent: _Num) -> _Num:
    x, y = base.q, exponent.q
    if abs(y) > MAX_EXPONENT:
        raise CalculatorError(f"exponent too large: |exponent| must be <= {MAX_EXPONENT}")
    if x == 0 and y < 0:
        raise CalculatorError("division by zero: 0 raised to a negative power")
    if x < 0 and y.denominator != 1:
        raise CalculatorError("a negative number to a fractional power has no real result")
    if base.exact and exponent.exact:
        if y.denominator == 1:
            size = _bits(x) * abs(y.numerator)  # estimated before computing: 9**9**9**9 fails fast
            if size > MAX_BITS:
                raise CalculatorError(
                    f"result too large: the exact value needs about {size} bits (limit {MAX_BITS});"
                    " use a smaller base or exponent"
                )
            return _num(x**y.numerator, True)
        if y.denominator <= 64 and (root := _exact_root(x, y.denominator)) is not None:
            return _power(_Num(root, True), _Num(Fraction(y.numerator), True))
    return _inexact(_dec(x) ** _dec(y))


def _sqrt(x: _Num) -> _Num:
    if x.q < 0:
        raise CalculatorError("sqrt of a negative number has no real result")
    if x.exact and (root := _exact_root(x.q, 2)) is not None:
        return _Num(root, True)
    return _inexact(_dec(x.q).sqrt())


def _round(x: _Num, ndigits: _Num | None = None) -> _Num:
    if ndigits is None:
        return _num(Fraction(round(x.q)), x.exact)
    return _num(round(x.q, _int_arg(ndigits, "ndigits of round()")), x.exact and ndigits.exact)


def _factorial(n: _Num) -> _Num:
    k = _int_arg(n, "the argument of factorial()")
    if k < 0:
        raise CalculatorError("factorial() needs a whole number >= 0")
    if math.lgamma(k + 1) / math.log(2) > MAX_BITS:  # size checked before computing
        raise CalculatorError(f"result too large: {k}! has more than {MAX_BITS} bits")
    return _Num(Fraction(math.factorial(k)), n.exact)


def _exact_log(x: _Num, base: Fraction, approx: Decimal) -> int | None:
    """The integer k with base ** k == x, if the approximate logarithm points at one."""
    k = int(approx.to_integral_value())
    if not x.exact or abs(approx - k) > Decimal("1e-30") or abs(k) > MAX_EXPONENT:
        return None
    return k if _bits(base) * abs(k) <= MAX_BITS and base**k == x.q else None


def _log(x: _Num, base: _Num | None = None) -> _Num:
    if x.q <= 0:
        raise CalculatorError("logarithms need a positive argument")
    if base is None:
        return _Num(Fraction(0), True) if x.exact and x.q == 1 else _inexact(_dec(x.q).ln())
    if base.q <= 0 or base.q == 1:
        raise CalculatorError("the base of log() must be positive and not 1")
    approx = _dec(x.q).ln() / _dec(base.q).ln()
    k = _exact_log(x, base.q, approx) if base.exact else None
    return _Num(Fraction(k), True) if k is not None else _inexact(approx)


def _sin_cos(x: _Num) -> tuple[Decimal, Decimal]:
    if abs(x.q) >= 10**PRECISION:
        raise CalculatorError(f"angle too large for sin/cos/tan: |x| must be below 1e{PRECISION}")
    with decimal.localcontext() as ctx:
        ctx.prec = _WIDE
        r = _dec(x.q)
        r -= 2 * _PI_WIDE * (r / (2 * _PI_WIDE)).to_integral_value()  # now |r| <= pi
        sin, cos, term, n = Decimal(0), Decimal(0), Decimal(1), 0
        while abs(term) > Decimal(10) ** -(_WIDE + 2):  # Taylor series, sin and cos together
            if n % 2:
                sin += term if n % 4 == 1 else -term
            else:
                cos += term if n % 4 == 0 else -term
            n += 1
            term = term * r / n
    # An inexact x (e.g. pi) carries an error of about |x| * 10**-PRECISION; a result below that
    # is noise, and sin(pi) should read 0 rather than 1e-51.
    noise = abs(_dec(x.q)) * Decimal(10) ** (5 - PRECISION) if not x.exact else Decimal(0)
    return (sin if abs(sin) > noise else Decimal(0)), (cos if abs(cos) > noise else Decimal(0))


def _trig(which: str) -> Callable[[_Num], _Num]:
    def f(x: _Num) -> _Num:
        if x.exact and x.q == 0:
            return _Num(Fraction(1 if which == "cos" else 0), True)
        sin, cos = _sin_cos(x)
        if which == "tan" and cos == 0:
            raise CalculatorError("tan(x) is undefined where cos(x) = 0")
        return _inexact(+(sin if which == "sin" else cos if which == "cos" else sin / cos))

    return f


def _log10(x: _Num) -> _Num:
    return _log(x, _Num(Fraction(10), True))


def _exp(x: _Num) -> _Num:
    return _Num(Fraction(1), True) if x.exact and x.q == 0 else _inexact(_dec(x.q).exp())


def _pick(choose: Callable[..., _Num]) -> Callable[..., _Num]:
    return lambda *args: _Num(choose(args, key=lambda a: a.q).q, all(a.exact for a in args))


# name -> (min args, max args or None for any number, implementation)
_IMPLS: dict[str, tuple[int, int | None, Callable[..., _Num]]] = {
    "sqrt": (1, 1, _sqrt),
    "abs": (1, 1, lambda x: _Num(abs(x.q), x.exact)),
    "round": (1, 2, _round),
    "floor": (1, 1, lambda x: _Num(Fraction(math.floor(x.q)), x.exact)),
    "ceil": (1, 1, lambda x: _Num(Fraction(math.ceil(x.q)), x.exact)),
    "min": (1, None, _pick(min)),
    "max": (1, None, _pick(max)),
    "pow": (2, 2, _power),
    "exp": (1, 1, _exp),
    "ln": (1, 1, _log),
    "log": (1, 2, _log),
    "log10": (1, 1, _log10),
    "sin": (1, 1, _trig("sin")),
    "cos": (1, 1, _trig("cos")),
    "tan": (1, 1, _trig("tan")),
    "factorial": (1, 1, _factorial),
}
assert _IMPLS.keys() == FUNCTIONS.keys()

# --- parsing and evaluation --------------------------------------------------------------------

_BINOPS: dict[type[ast.operator], Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: lambda a, b: Fraction(a // b),
    ast.Mod: operator.mod,
}
_SYMBOLS = {ast.BitAnd: "&", ast.BitOr: "|", ast.LShift: "<<", ast.RShift: ">>", ast.MatMult: "@"}
_UNARY = {ast.Invert: "~", ast.Not: "not"}
_FORBIDDEN = {  # what to call a rejected construct in the error message
    ast.Attribute: "attribute access",
    ast.Subscript: "indexing",
    ast.Lambda: "lambda",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.Tuple: "commas (no thousands separators: write 1000000, not 1,000,000)",
    ast.List: "lists",
    ast.Set: "sets",
    ast.Dict: "dicts",
    ast.Compare: "comparisons",
    ast.BoolOp: "and/or",
    ast.IfExp: "if/else",
    ast.NamedExpr: "assignments",
    ast.JoinedStr: "strings",
    ast.Starred: "* unpacking",
}


class _Evaluator:
    def __init__(self, text: str) -> None:
        self.text = text

    def fail(self, node: ast.expr, message: str, *, allowed: bool = False) -> CalculatorError:
        column = len(self.text.encode()[: node.col_offset].decode(errors="ignore")) + 1  # offsets are bytes
        return CalculatorError(f"{message} (column {column})" + (f"; {_ALLOWED}" if allowed else ""))

    def check(self, root: ast.expr) -> None:
        """Reject anything outside the allow-list and enforce the size limits before computing."""
        stack, count = [(root, 1)], 0
        while stack:
            node, depth = stack.pop()
            count += 1
            if depth > MAX_DEPTH:
                raise self.fail(node, f"expression nested too deeply (limit {MAX_DEPTH} levels); split it up")
            if count > MAX_NODES:
                raise self.fail(node, f"expression too big (limit {MAX_NODES} terms); split it up")
            if (message := self.problem(node)) is not None:
                raise self.fail(node, message, allowed=True)
            children: list[tuple[ast.expr, int]] = []
            if isinstance(node, ast.BinOp):  # a left operand does not nest: 1+2+3 is depth 2
                children = [(node.left, depth), (node.right, depth + 1)]
            elif isinstance(node, ast.UnaryOp):
                children = [(node.operand, depth + 1)]
            elif isinstance(node, ast.Call):
                children = [(arg, depth + 1) for arg in node.args]
            stack.extend(reversed(children))  # leftmost problem is reported first

    def problem(self, node: ast.expr) -> str | None:
        """What is not allowed about this node itself (its children are checked separately)."""
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, str | bytes):
                return "strings are not allowed"
            if type(value) not in (int, float):
                return f"{value!r} is not allowed (only real numbers)"
            if "_" in (ast.get_source_segment(self.text, node) or ""):
                return "digit separators are not accepted: write 1000000, not 1_000_000"
        elif isinstance(node, ast.Name):
            if node.id in FUNCTIONS:
                return f"'{node.id}' is a function: call it, e.g. {node.id}(2)"
            if node.id not in _CONSTANTS:
                return f"names are not allowed: '{node.id}'"
        elif isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.BitXor):
                return "^ is not allowed: use ** for powers, e.g. 2**10"
            if type(node.op) in _SYMBOLS:
                return f"operator {_SYMBOLS[type(node.op)]} is not allowed"
        elif isinstance(node, ast.UnaryOp):
            if type(node.op) in _UNARY:
                return f"operator {_UNARY[type(node.op)]} is not allowed"
        elif isinstance(node, ast.Call):
            if isinstance(node.func, ast.Attribute):
                return "attribute access is not allowed"
            if not isinstance(node.func, ast.Name):
                return "only the listed functions can be called; write 2*(3), not 2(3)"
            if node.func.id not in FUNCTIONS:
                return f"unknown function '{node.func.id}'"
            if node.keywords:
                return "keyword arguments are not allowed: pass them by position, e.g. round(x, 2)"
        else:
            return f"not allowed here: {_FORBIDDEN.get(type(node), type(node).__name__)}"
        return None

    def eval(self, node: ast.expr) -> _Num:
        if isinstance(node, ast.BinOp):
            spine = []  # walk left operands in a loop so a long sum does not recurse deeply
            while isinstance(node, ast.BinOp):
                spine.append(node)
                node = node.left
            result = self.eval(node)
            for binop in reversed(spine):
                result = self.binop(binop, result, self.eval(binop.right))
            return result
        if isinstance(node, ast.Constant):
            return _Num(self.literal(node), True)
        if isinstance(node, ast.Name):
            return _CONSTANTS[node.id]
        if isinstance(node, ast.UnaryOp):
            x = self.eval(node.operand)
            return _Num(-x.q, x.exact) if isinstance(node.op, ast.USub) else x
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)  # guaranteed by check()
        name = node.func.id
        low, high, impl = _IMPLS[name]
        if len(node.args) < low or (high is not None and len(node.args) > high):
            raise self.fail(node, f"wrong number of arguments to {name}(): {FUNCTIONS[name]}")
        return impl(*(self.eval(arg) for arg in node.args))

    def binop(self, node: ast.BinOp, a: _Num, b: _Num) -> _Num:
        if isinstance(node.op, ast.Pow):
            return _power(a, b)
        try:
            return _num(_BINOPS[type(node.op)](a.q, b.q), a.exact and b.exact)
        except ZeroDivisionError:
            raise self.fail(node, "division by zero") from None

    def literal(self, node: ast.Constant) -> Fraction:
        if isinstance(node.value, int):
            return Fraction(node.value)
        # Use the decimal text, so 0.1 is exactly 1/10 and not the binary float nearest to it.
        text = ast.get_source_segment(self.text, node) or repr(node.value)
        if (m := re.search(r"[eE]([+-]?\d+)", text)) and abs(int(m.group(1))) > _MAX_DECIMAL_EXP:
            raise self.fail(node, f"number out of range: exponents up to e{_MAX_DECIMAL_EXP} are allowed")
        return Fraction(text)


# --- rendering ---------------------------------------------------------------------------------


def _format(negative: bool, digits: str, exponent: int) -> str:
    # Decimal's to-string picks plain notation unless the number is very large or small.
    return str(Decimal(f"{'-' if negative else ''}{digits}E{exponent}")).replace("E", "e")


def _terminating(q: Fraction) -> str | None:
    """q as an exact decimal of at most SIGNIFICANT_DIGITS digits, or None."""
    den = q.denominator
    twos = (den & -den).bit_length() - 1
    rest, fives = den >> twos, 0
    if rest != 1:  # must be a power of 5; guess which from its size rather than dividing 30000 times
        guess = round((rest.bit_length() - 1) / math.log2(5))
        fives = next((k for k in (guess - 1, guess, guess + 1) if k > 0 and 5**k == rest), 0)
        if not fives:
            return None
    places = max(twos, fives)
    scaled = abs(q.numerator) * 10**places // den
    if scaled.bit_length() > 4 * SIGNIFICANT_DIGITS or len(str(scaled)) > SIGNIFICANT_DIGITS:
        return None
    return _format(q < 0, str(scaled), -places)


def _rounded(q: Fraction) -> str:
    if q == 0:
        return "0"
    a = abs(q)
    adjusted = math.floor((a.numerator.bit_length() - a.denominator.bit_length()) * math.log10(2))
    while a >= Fraction(10) ** (adjusted + 1):
        adjusted += 1
    while a < Fraction(10) ** adjusted:
        adjusted -= 1
    exponent = adjusted - SIGNIFICANT_DIGITS + 1
    mantissa = round(a / Fraction(10) ** exponent)  # half to even, exactly
    if mantissa == 10**SIGNIFICANT_DIGITS:  # 9.99...95 rounded up to 10.0...0
        mantissa, exponent = mantissa // 10, exponent + 1
    return _format(q < 0, str(mantissa), exponent)


def _render(x: _Num) -> tuple[str, bool]:
    if x.exact and x.q.denominator == 1:
        return str(Decimal(x.q.numerator)), True  # via Decimal: str(int) refuses > 4300 digits
    if x.exact and (text := _terminating(x.q)) is not None:
        return text, True
    return _rounded(x.q), False


def evaluate(expression: str) -> CalcResult:
    """Evaluate an arithmetic expression; raises CalculatorError on anything not allowed."""
    if not isinstance(expression, str):
        raise CalculatorError("the expression must be a string, e.g. '2*(3+4)'")
    if len(expression) > MAX_LENGTH:
        raise CalculatorError(f"expression too long: {len(expression)} characters (limit {MAX_LENGTH})")
    text = expression.translate(_NORMALISE).strip()
    if not text:
        raise CalculatorError("empty expression: send something like 2*(3+4)")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        detail = "" if exc.msg == "invalid syntax" else f": {exc.msg}"
        raise CalculatorError(f"invalid syntax at column {exc.offset or 1}{detail}; {_ALLOWED}") from None
    except (ValueError, RecursionError, MemoryError):
        raise CalculatorError("invalid expression: it cannot be parsed") from None
    evaluator = _Evaluator(text)
    evaluator.check(tree.body)
    try:
        with decimal.localcontext(_context()):
            result = evaluator.eval(tree.body)
            value, exact = _render(result)
    except decimal.Overflow:
        raise CalculatorError(f"result too large (beyond 1e{_MAX_DECIMAL_EXP})") from None
    except decimal.Underflow:
        raise CalculatorError(f"result too small (below 1e-{_MAX_DECIMAL_EXP})") from None
    except (decimal.InvalidOperation, decimal.DivisionByZero) as exc:
        raise CalculatorError(f"invalid operation: {type(exc).__name__}") from None
    return CalcResult(value, exact, result.q if result.exact else None)


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly (rational arithmetic, no floating-point error).

    Operators: + - * / // % ** and parentheses; use ** for powers (^ is rejected). Numbers:
    integers and decimals like 0.1 or 2.5e3, without thousands separators. Constants: pi, e.
    Functions: sqrt, abs, round(x[, ndigits]) (half to even), floor, ceil, min, max, pow,
    exp, ln, log(x[, base]), log10, sin, cos, tan (radians), factorial.
    Exact results are printed in full (0.1+0.2 gives 0.3); others are rounded to 15
    significant digits and say so. Limits: 1000 characters, |exponent| <= 10000.

    Args:
        expression: The expression, e.g. "(1.5 + 2.25) * 4" or "sqrt(2) / 3".
    """
    return str(evaluate(expression))
