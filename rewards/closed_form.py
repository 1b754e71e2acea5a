"""Evaluate closed-form numeric LaTeX (``3\\sqrt{13}``, ``\\frac{\\pi}{2}``, ``6-5i``) without sympy.

math-verify parses through an ANTLR grammar into sympy: about 8 ms per new string and 10 ms per
comparison on this machine — most of a vote's cost on MATH-style answers. Most answers are numbers
in closed form, and two of those are equivalent exactly when their values agree, so a tiny recursive
descent evaluator decides those pairs in microseconds, and math-verify only sees the rest (tuples,
intervals, symbolic expressions, functions it does not know).

The grammar is deliberately small and conservative: anything it is unsure of — a mixed number
``1\\frac{4}{5}``, an unknown command, a huge exponent, deep nesting — gives None ("ask math-verify"),
never a guess. Input is an already-normalized answer (``rewards.equivalence.normalize_answer``).
"""

from __future__ import annotations

import cmath
import functools
import math
import re

_TOKEN = re.compile(r"\d+(?:\.\d+)?|\.\d+|\\[a-zA-Z]+|[-+*/^(){}\[\]i]")
_TOKEN_VARS = re.compile(r"\d+(?:\.\d+)?|\.\d+|\\[a-zA-Z]+|[-+*/^(){}\[\]a-zA-Z]")
_MAX_LEN = 120
_MAX_EXPONENT = 64
_VARIABLE = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]")
_COMMAND = re.compile(r"\\[a-zA-Z]+")


class _Unsure(Exception):
    pass


class _Parser:
    def __init__(self, tokens: list[str], variables: bool = False):
        self.toks, self.i, self.variables = tokens, 0, variables

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise _Unsure
        self.i += 1
        return tok

    def expr(self) -> complex:
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            value = value + self.term() if op == "+" else value - self.term()
        return value

    def term(self) -> complex:
        value = self.unary()
        while True:
            tok = self.peek()
            if tok in ("*", r"\cdot", r"\times"):
                self.take()
                value *= self.unary()
            elif tok == "/" or tok == r"\div":
                self.take()
                value /= self.unary()
            elif tok is not None and (tok in ("(", "{", "i", r"\pi", r"\sqrt", r"\frac") or self._is_var(tok)):
                if tok == r"\frac" and self.toks[self.i - 1][0].isdigit():
                    raise _Unsure  # 1\frac{4}{5} is a mixed number to a reader, a product to a parser
                value *= self.power()  # implicit multiplication: 2\sqrt{3}, 5i, 2(3+1)
            else:
                return value

    def unary(self) -> complex:
        if self.peek() == "-":
            self.take()
            return -self.unary()
        if self.peek() == "+":
            self.take()
            return self.unary()
        return self.power()

    def power(self) -> complex:
        base = self.atom()
        if self.peek() == "^":
            self.take()
            exponent = self.unary() if self.peek() != "{" else self.group()
            if abs(exponent) > _MAX_EXPONENT or (base == 0 and exponent.real <= 0):
                raise _Unsure
            base = base ** exponent if exponent.imag or exponent.real != int(exponent.real) or base.imag \
                else complex(base.real ** int(exponent.real))
        return base

    def group(self) -> complex:
        self.take("{")
        value = self.expr()
        self.take("}")
        return value

    def _is_var(self, tok: str) -> bool:
        return self.variables and len(tok) == 1 and tok.isalpha() and tok != "i"

    def atom(self) -> complex:
        tok = self.take()
        if tok[0].isdigit() or tok[0] == ".":
            return complex(float(tok))
        if tok == "i":
            return 1j
        if self._is_var(tok):  # a fixed, arbitrary point: x -> 0.5 + ord(x) / 97
            return complex(0.5 + ord(tok) / 97)
        if tok == r"\pi":
            return complex(math.pi)
        if tok == "{":
            self.i -= 1
            return self.group()
        if tok == "(":
            value = self.expr()
            self.take(")")
            return value
        if tok == r"\frac":
            num = self.group()
            den = self.group()
            return num / den
        if tok == r"\sqrt":
            if self.peek() == "[":
                self.take("[")
                degree = self.expr()
                self.take("]")
            else:
                degree = 2
            radicand = self.group()
            if radicand.imag or degree != 2 and radicand.real < 0:
                raise _Unsure
            return cmath.sqrt(radicand) if degree == 2 else complex(radicand.real ** (1 / degree.real))
        raise _Unsure


@functools.lru_cache(maxsize=65536)
def closed_form_value(s: str) -> complex | None:
    """The value of a normalized closed-form numeric answer, or None when unsure.

    >>> [closed_form_value(s) for s in [r"3\\sqrt{4}", r"\\frac{\\pi}{2}", "6-5i", "2^{10}"]]
    [(6+0j), (1.5707963267948966+0j), (6-5j), (1024+0j)]
    >>> [closed_form_value(s) for s in [r"2\\frac{1}{\\pi}", "x+1", "(1,2)", r"\\log2"]]
    [None, None, None, None]
    >>> closed_form_value(r"1\\frac{4}{5}")  # a mixed number
    (1.8+0j)
    """
    return _evaluate(s, variables=False)


@functools.lru_cache(maxsize=65536)
def point_value(s: str) -> complex | None:
    """The value of an expression in one-letter variables at one fixed point, or None when unsure.

    Two expressions that differ there are different (``x^3+3x-6`` vs ``2k+2``); equal values prove
    nothing, so this is only ever used to *reject* a pair before math-verify.

    >>> point_value("p-q") == point_value("-q+p"), point_value("2k+2") == point_value("2k")
    (True, False)
    """
    return _evaluate(s, variables=True)


_MIXED = re.compile(r"(-?)(\d+)\\frac\{(\d+)\}\{(\d+)\}")


def _evaluate(s: str, *, variables: bool) -> complex | None:
    if not s or len(s) > _MAX_LEN or " " in s:
        return None
    mixed = _MIXED.fullmatch(s)
    if mixed and int(mixed.group(4)):  # 1\frac{4}{5}: a mixed number, 9/5, as math-verify reads it
        value = int(mixed.group(2)) + int(mixed.group(3)) / int(mixed.group(4))
        return complex(-value if mixed.group(1) else value)
    tokens = (_TOKEN_VARS if variables else _TOKEN).findall(s)
    if "".join(tokens) != s:  # something the grammar does not know (letters, commas, ...)
        return None
    parser = _Parser(tokens, variables)
    try:
        value = parser.expr()
        if parser.peek() is not None:
            return None
    except (_Unsure, ZeroDivisionError, OverflowError, ValueError, RecursionError, TypeError):
        return None
    if not (cmath.isfinite(value)):
        return None
    return value


def values_equal(x: complex, y: complex) -> bool:
    """Equal within a relative 1e-6 (the numeric tier's tolerance); near zero, within 1e-12."""
    return abs(x - y) <= max(1e-6 * max(abs(x), abs(y)), 1e-12)


def has_variable(s: str) -> bool:
    """A free letter outside any command (``x^2+1``, ``p-q``); the imaginary unit ``i`` is not one.

    >>> has_variable("p-q"), has_variable(r"6+\\sqrt{5}i"), has_variable(r"\\frac{\\pi}{2}")
    (True, False, False)
    """
    return any(m.group() != "i" for m in _VARIABLE.finditer(_COMMAND.sub("", s)))


def is_structured(s: str) -> bool:
    """Tuples, lists, intervals, sets, matrices, ``a \\pm b``: several values, never equal to one."""
    return "," in s or r"\begin" in s or r"\cup" in s or r"\infty" in s or r"\pm" in s


_OPEN = {"(": ")", "[": "]", r"\{": r"\}"}


def structured_values(s: str) -> tuple[str, list[complex]] | None:
    """A tuple, interval, set or bare list of closed-form numbers, as (delimiters, values); else None.

    >>> structured_values(r"(3,\\frac{\\pi}{2})")[0], structured_values("[1,2)")[0], structured_values("1,-2")[1] == [1, -2]
    ('()', '[)', True)
    """
    if len(s) > 4 * _MAX_LEN or "," not in s:
        return None
    opener = next((o for o in _OPEN if s.startswith(o)), "")
    closer = next((c for c in (")", "]", r"\}") if s.endswith(c)), "") if opener else ""
    if opener and not closer:
        return None
    inner = s[len(opener) : len(s) - len(closer)]
    parts, depth, start = [], 0, 0
    for j, ch in enumerate(inner):
        depth += ch in "({[" and 1 or -(ch in ")}]")
        if ch == "," and depth == 0:
            parts.append(inner[start:j])
            start = j + 1
    parts.append(inner[start:])
    values = [closed_form_value(p) for p in parts]
    if any(v is None for v in values):
        return None
    if opener == r"\{":  # a set: order does not matter
        values.sort(key=lambda v: (round(v.real, 9), round(v.imag, 9)))
    return opener + closer if opener != r"\{" else "{}", values


def structured_equal(x: tuple[str, list[complex]], y: tuple[str, list[complex]]) -> bool:
    """Same delimiters, same length, equal values in order (sets were sorted)."""
    return x[0] == y[0] and len(x[1]) == len(y[1]) and all(values_equal(u, v) for u, v in zip(x[1], y[1]))
