"""Decide when two math answer strings mean the same thing: normalisation, then value and symbolic tiers.

A majority vote (TTRL, arXiv 2504.16084, §3) is only as good as its notion of "the same answer":
``0.5``, ``\\frac{1}{2}`` and ``1/2`` must count as one vote. Four tiers, cheapest first:

1. ``normalize_answer``: a canonical string (MATH's ``strip_string`` conventions: no ``$``, no
   ``\\left``, ``\\dfrac`` -> ``\\frac``, no degrees/percent/trailing units, ``14.0`` -> ``14``, ...).
2. Exact numbers: ints, decimals and simple fractions compared as values (``numbers_equal``: exact,
   but a rounded decimal matches a fraction without a finite expansion, ``0.333333`` = ``1/3``).
   Closed forms (``3\\sqrt{13}``, ``\\frac{\\pi}{2}``, ``6-5i``) likewise, by ``rewards.closed_form``; a
   number is never equal to a tuple/interval or to an expression with a free variable.
   Lists (``1, 2``, ``\\{2,1\\}``, ``x=1,y=2``) item by item, by ``rewards.compound``, which also
   reads labelled values, ``and``/``;`` lists and inequality chains in ``normalize_answer``.
3. math-verify (HuggingFace, ``parse`` + ``verify``, symbolic via sympy) for everything else; an
   equation that is not an assignment (``7 = 11a+c``) never equals a bare value.

``tests/test_equivalence_cases.py`` holds this to public grader cases: never worse than math-verify
alone, except the divergences listed there with their reasons.

math-verify can hang on pathological input (huge powers, deep nesting), so tier 3 runs under a time
bound in any thread (``rewards.deadline``): ``MATH_VERIFY_TIMEOUT_S`` per parse and per verify, a
timeout counting as "not equivalent". In the main thread with no other timer pending that is our own
SIGALRM ``setitimer`` deadline, a few microseconds per call. Anywhere else (Ray Train runs the training
function off the main thread; a thread pool; someone else's timer pending) signals cannot be used, so
the pair goes to one persistent helper process (``MATH_VERIFY_WORKER``, started on first need, about
a second): it receives the two normalized strings, runs the very same ``_parse`` + verify under the
same SIGALRM deadlines in its own main thread, and returns the verdict and the timeouts it saw, which
this process counts as the signal path does. Sending strings, not parsed sympy objects, keeps the
protocol to a JSON line and the parse cache in the helper; the verdict cache (``_verify_sorted``) and
the timeout counts stay here. If the helper hangs where a signal cannot reach (inside one C call), it
is killed after ``3 * MATH_VERIFY_TIMEOUT_S + WORKER_GRACE_S`` and both strings count one timeout. If
it cannot start at all, ``rewards.deadline`` logs one warning naming the cause and tiers 1-2 decide
off the main thread from then on; a helper error is logged and counts as "not equivalent".

This module knows only math answers (the ``math`` type, whose pieces the other types reuse); picking
the comparison by answer type, and clustering a vote's answers, is ``rewards.answers``.
"""

from __future__ import annotations

import functools
import logging
import math
import operator
import re
from collections import Counter
from decimal import Decimal
from fractions import Fraction

from rewards.compound import THOUSANDS, canonical_compound, compare_lists, is_equation, is_relation
from rewards.closed_form import (closed_form_value, has_variable, is_structured, point_value, structured_equal,
                                 structured_values, values_equal)
from rewards.deadline import (Deadline, Worker, WorkerError, WorkerTimeout, WorkerUnavailable, deadline, serve,
                              signals_usable)

MATH_VERIFY_TIMEOUT_S = 1.0   # per parse and per verify; a timeout counts as "not equivalent"
MATH_VERIFY_MAX_LEN = 300     # longer normalized answers are compared as strings only
WORKER_GRACE_S = 1.0          # off the main thread: kill the helper this long after its own deadlines
# A string that has timed out this often is pathological: later pairs with it skip math-verify, so
# a group of N such answers costs O(N) timeouts, not O(N^2). (Two, not one, so that an innocent
# partner of a single pathological answer is not blacklisted.)
_TIMEOUTS_TO_SKIP = 2
_timeouts: Counter[str] = Counter()
_log = logging.getLogger(__name__)

_SUBS = [  # (pattern, replacement), applied in order
    (re.compile(r"(?<=\d)(?:\s*\{\s*,\s*\}\s*|,\\!\s*)(?=\d)"), ","),  # 14{,}916, 32,\!348: thousands
    (re.compile(r"\\(?:left|right)(?![a-zA-Z])"), ""),
    (re.compile(r"(\\\\)|\\[!,;: ]|\\q?quad"), lambda m: m.group(1) or " "),
    (re.compile(r"\\[dt]frac(?![a-zA-Z])"), r"\\frac"),
    (re.compile(r"\^\s*(?:\{\s*)?\\circ(?:\s*\})?|°|\\degree(?![a-zA-Z])"), ""),
    (re.compile(r"\\?%|(?<=[\d\s}])(?:percent(?:age)?|pct)\s*$"), ""),  # 28\%, 28 percent, 28 pct
    (re.compile(r"\\\$|\$"), ""),
]
_TEXT = r"\\(?:text|textbf|textrm|mbox|mathrm)\s*\{([^{}]*)\}"
_UNIT_TAIL = re.compile(_TEXT + r"(?:\s*\^\s*\{?\d\}?)?\s*$")  # anchored on "\\": linear
_TEXT_WRAP = re.compile(_TEXT)
_MATH_DELIMS = re.compile(r"^\\[(\[](.*)\\[)\]]$", re.DOTALL)
_MEMBER = re.compile(r"^[a-zA-Z]\s*\\in(?![a-zA-Z])\s*(?=\S)")  # x \in [-2,7]
# Drop spaces, but keep one after a command followed by a letter (``\pi r`` is not ``\pir``).
_SPACE = re.compile(r"(\\[a-zA-Z]+)\s+(?=[a-zA-Z])|\s+")
_FRAC_DIGITS = [
    (re.compile(r"\\frac(\d)(\d)"), r"\\frac{\1}{\2}"),
    (re.compile(r"\\frac(\d)\{"), r"\\frac{\1}{"),
    (re.compile(r"\\frac\{([^{}]*)\}(\d)"), r"\\frac{\1}{\2}"),
    (re.compile(r"\\sqrt(\d)"), r"\\sqrt{\1}"),
]
_DECIMAL = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")  # no nested \d* after \d+: linear
_SCIENTIFIC = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)[eE][-+]?\d{1,2}")  # 6.72e-05 (Python's str)
_FRACTION = re.compile(r"(-?)(?:\\frac\{(-?\d+)\}\{(-?\d+)\}|(-?\d+)/(-?\d+))")
_BASE = re.compile(r"([0-9A-Za-z]+)_\{?(\d+)\}?")  # 52_8: a numeral in base 8
_CHOICE = re.compile(r"\(?([A-Ja-j])[).:]?")
_WORD = re.compile(r"[A-Za-z]{2,}")


def canonical_number(s: str) -> str | None:
    """The canonical spelling of a decimal: ``14.0`` -> ``14``, ``025`` -> ``25``, ``.50`` -> ``0.5``; None if ``s`` is not a decimal."""
    if _SCIENTIFIC.fullmatch(s):
        s = format(Decimal(s), "f")
    if not _DECIMAL.fullmatch(s):
        return None
    neg = s.startswith("-")
    s = s.lstrip("+-")
    whole, _, frac = s.partition(".")
    whole, frac = whole.lstrip("0") or "0", frac.rstrip("0")
    out = whole + ("." + frac if frac else "")
    return "-" + out if neg and out != "0" else out


def normalize_answer(ans: str) -> str:
    """A canonical spelling of an answer, so equal answers usually compare equal as strings.

    >>> [normalize_answer(a) for a in [r"$\\dfrac{1}{2}$", "14.0", "025", r"90^\\circ", r"50\\%", "6.7e-05"]]
    ['\\\\frac{1}{2}', '14', '25', '90', '50', '0.000067']
    >>> [normalize_answer(a) for a in ["x = 5", "1,000", r"5 \\text{ cm}", "(b)", r"\\left( 3, \\pi \\right)"]]
    ['5', '1000', '5', 'B', '(3,\\\\pi)']
    >>> [normalize_answer(a) for a in [r"14{,}916", "28 percent", r"6 \\text{ and } 8", "f(x)=1", "-1 < a < 10"]]
    ['14916', '28', '6,8', '1', '(-1,10)']
    """
    s = str(ans).strip()
    m = _MATH_DELIMS.match(s)
    if m:
        s = m.group(1)
    for pattern, repl in _SUBS:
        s = pattern.sub(repl, s)
    s = s.strip()
    unit = _UNIT_TAIL.search(s)
    if unit and s[: unit.start()].strip():  # a trailing unit, not a whole-text answer like \text{east}
        s = s[: unit.start()]
    s = _TEXT_WRAP.sub(r"\1", s).strip().rstrip(".").strip()
    s = canonical_compound(s)  # labels, "and"/"or"/";" lists, chains, intervals (rewards.compound)
    member = _MEMBER.match(s)
    if member:
        s = s[member.end() :]
    if THOUSANDS.fullmatch(s):  # before spaces go: "32, 349" is a list, "32,349" a number
        s = s.replace(",", "")
    s = _SPACE.sub(lambda m: m.group(1) + " " if m.group(1) else "", s)
    for pattern, repl in _FRAC_DIGITS:
        s = pattern.sub(repl, s)
    number = canonical_number(s)
    if number is not None:
        return number
    base = _BASE.fullmatch(s)
    if base:
        return f"{base.group(1)}_{base.group(2)}"
    choice = _CHOICE.fullmatch(s)
    if choice:
        return choice.group(1).upper()
    return s


@functools.lru_cache(maxsize=65536)
def as_number(s: str) -> Fraction | float | None:
    """The value of a normalized plain number or simple fraction, else None."""
    if len(s) > 64:  # int() refuses >4300 digits; no real answer is that long a number
        return None
    if _DECIMAL.fullmatch(s):
        return Fraction(s)
    m = _FRACTION.fullmatch(s)
    if m:
        num, den = (m.group(2), m.group(3)) if m.group(2) is not None else (m.group(4), m.group(5))
        if int(den) != 0:
            return Fraction(int(num), int(den)) * (-1 if m.group(1) else 1)
    return None


def numbers_equal(x: Fraction, y: Fraction) -> bool:
    """Two exact values (from ``as_number``): equal, or one has no finite decimal expansion (``1/3``) and
    the other rounds it (``0.333333``, within a relative 1e-6). Two numbers that decimals write exactly
    are compared exactly, so ``999999`` is not ``1000000`` and ``1.000001`` is not ``1.000002``.

    >>> numbers_equal(Fraction("0.333333"), Fraction(1, 3)), numbers_equal(Fraction(999999), Fraction(10**6))
    (True, False)
    """
    if x == y:
        return True
    if _terminates(x) and _terminates(y):
        return False
    return math.isclose(float(x), float(y), rel_tol=1e-6)


def _terminates(x: Fraction) -> bool:
    """Whether ``x`` has a finite decimal expansion: its denominator has no prime factor but 2 and 5."""
    d = x.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


class _DropTimeoutWarning(logging.Filter):
    """math-verify warns once that its own timeout is off; ours (``rewards.deadline.deadline``) replaces it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


@functools.lru_cache(maxsize=1)
def _math_verify():
    from math_verify import grader, parse, parser, verify

    for module in (grader, parser):
        logging.getLogger(module.__name__).addFilter(_DropTimeoutWarning())
    return parse, verify


@functools.lru_cache(maxsize=16384)
def _parse(s: str):
    """math-verify's parse of a normalized answer, or None if it failed or ran out of time."""
    parse, _ = _math_verify()
    try:
        with deadline(MATH_VERIFY_TIMEOUT_S):
            return parse("$" + s + "$", parsing_timeout=None) or None
    except Deadline:
        _timeouts[s] += _TIMEOUTS_TO_SKIP
        return None
    except Exception:
        return None


def _verify_here(a: str, b: str) -> bool:
    """Tier 3 in this thread, which must be able to use signals (``signals_usable``)."""
    pa, pb = _parse(a), _parse(b)
    if pa is None or pb is None:
        return False
    _, verify = _math_verify()
    try:
        with deadline(MATH_VERIFY_TIMEOUT_S):
            # verify is asymmetric (gold, target); an answer pair is equivalent if either way holds.
            return bool(verify(pa, pb, timeout_seconds=None) or verify(pb, pa, timeout_seconds=None))
    except Deadline:
        _timeouts.update((a, b))
        return False
    except Exception:
        return False


def _answer_in_worker(pair: list[str]) -> dict:
    """The helper's handler: ``_verify_here`` on its main thread, with the timeouts it added to each string."""
    a, b = pair
    before = {s: _timeouts[s] for s in (a, b)}
    equal = _verify_here(a, b)
    return {"equal": equal, "timeouts": {s: _timeouts[s] - n for s, n in before.items() if _timeouts[s] > n}}


def serve_math_verify() -> None:
    """The helper process's entry point (``MATH_VERIFY_WORKER``): import math-verify, then serve pairs."""
    _math_verify()
    serve(_answer_in_worker)


MATH_VERIFY_WORKER = Worker(__name__, serve_math_verify.__name__)


def _verify_in_worker(a: str, b: str) -> bool:
    """Tier 3 in the helper process, for threads that cannot use signals."""
    try:
        reply = MATH_VERIFY_WORKER.call([a, b], timeout=3 * MATH_VERIFY_TIMEOUT_S + WORKER_GRACE_S)
    except WorkerTimeout:  # logged by the worker; blamed on both, as a verify timeout is
        _timeouts.update((a, b))
        return False
    except WorkerUnavailable:  # logged once, when the start failed: tiers 1-2 decide
        return False
    except WorkerError as e:
        _log.warning("math-verify helper failed on %.200r; counted as not equivalent:\n%s", (a, b), e)
        return False
    _timeouts.update(reply["timeouts"])
    return reply["equal"]


@functools.lru_cache(maxsize=65536)
def _verify_sorted(a: str, b: str) -> bool:
    return _verify_here(a, b) if signals_usable() else _verify_in_worker(a, b)


def equivalent_normalized(a: str, b: str) -> bool:
    """Whether two already-normalized math answers are equivalent (tiers 2-3); never raises."""
    try:
        return _tiers(a, b)
    except Exception:  # a grader must not take the run down; math-verify failures are caught deeper
        return False


def _tiers(a: str, b: str) -> bool:
    if a == b:
        return True
    x, y = as_number(a), as_number(b)
    if x is not None and y is not None:
        return numbers_equal(x, y)
    lists = compare_lists(a, b, equivalent_normalized)  # 1,2 vs \{2,1\}; (3,1) vs \{1,3\}; x=1,y=2
    if lists is not None:
        return lists
    relation = is_relation(a) or is_relation(b)  # 0<x<1 vs (0,1): math-verify reads both as sets
    if not relation and is_structured(a) != is_structured(b):  # one value against several
        return False
    if ("=" in a) != ("=" in b) and (is_equation(a) or is_equation(b)):  # 7=11a+c is not 11a+c
        return False
    u, v = closed_form_value(a), closed_form_value(b)
    if u is not None and v is not None:
        return values_equal(u, v)
    if (u is not None and has_variable(b)) or (v is not None and has_variable(a)):
        return False
    sa, sb = structured_values(a), structured_values(b)
    if sa is not None and sb is not None and sa[0] == sb[0]:  # (1,2) vs (1,2): decided by values
        return structured_equal(sa, sb)
    # Strings only: anagram words (``east``/``seat``) parse to equal symbol products in math-verify,
    # and it drops a base subscript (``52_8`` == ``52``, though 52_8 is 42).
    if any(_WORD.fullmatch(s) or _BASE.fullmatch(s) for s in (a, b)) or max(len(a), len(b)) > MATH_VERIFY_MAX_LEN:
        return False
    p, q = point_value(a), point_value(b)
    if p is not None and q is not None and not values_equal(p, q):  # differ at a point: differ
        return False
    if max(_timeouts[a], _timeouts[b]) >= _TIMEOUTS_TO_SKIP:
        return False
    return _verify_sorted(*sorted((a, b)))


def clear_caches() -> None:
    """Forget every memoised value, parse, verdict and timeout count here, and stop the math-verify
    helper with its own caches (a cold start, for benchmarks)."""
    for fn in (as_number, _parse, _verify_sorted):
        fn.cache_clear()
    _timeouts.clear()
    MATH_VERIFY_WORKER.close()
