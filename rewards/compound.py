"""Compound answers: labelled values, conjunctions, inequality chains, and lists compared as lists.

Two rollouts that state the same answer in different words must not split a vote (TTRL, arXiv
2504.16084, §3). Model answers and reference labels often wrap the value: ``f(x)=1``, ``|AB|=1``,
``x \\approx 11``, ``x = 5+5+1 = 11``; list several: ``6 \\text{ and } 8``, ``-12;-11;-10``,
``a=4,\\,-8,\\,-10``; or state an interval as a chain: ``-793 < a < 10``. The rewrites here follow
math-verify's own reading of these forms (HuggingFace Math-Verify: an assignment ``lhs = value``
stands for its value, a chain of ``=`` for its last side, a bare list for a set of solutions) and the
regression cases it ships (``tests/test_numina_cases.py``, ``tests/test_open_thoughts.py``), made
symmetric: ``answers_equivalent(a, b)`` must equal ``answers_equivalent(b, a)``.

``canonical_compound`` rewrites one answer string (inside ``normalize_answer``, so once per distinct
string); ``compare_lists`` decides a pair of list answers item by item with a caller's comparison.
"""

from __future__ import annotations

import functools
import re
from typing import Callable

from rewards.closed_form import has_variable

_MAX_ITEMS = 16   # longer lists go to math-verify whole: item matching is quadratic
_MAX_LEN = 400    # longer strings are left as they are (the regexes stay cheap; no answer is this long)
_MAYBE = re.compile(r"^{|[,;=<>]|\\(?:approx|l[et])|and|or")  # cheap pre-check: most answers are one value
_AND_OR = re.compile(r"\s*,?\s*(?<![A-Za-z\\])(?:and|or)(?![A-Za-z])\s*|(?<=[\d)])or(?=[A-Za-z(\\-])")
THOUSANDS = re.compile(r"-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?")  # 1,000 and 14,916.5; 0,111 is a list
_APPROX = re.compile(r"\\approx(?![a-zA-Z])")
_LESS = r"<=|<|\\le(?:q|qslant)?(?![a-zA-Z])|\\lt(?![a-zA-Z])"
_CHAIN = re.compile(rf"^(?P<lo>[^<>=]+?)\s*(?P<op1>{_LESS})\s*(?P<mid>[^<>]+?)\s*(?P<op2>{_LESS})\s*(?P<hi>[^<>=]+)$")
_SUBSCRIPT = re.compile(r"_\{[^{}]*\}|_\w")
_LABEL_COMMANDS = re.compile(r"\\(?:frac|angle|overline|triangle|mathbf|vec)(?![a-zA-Z])")
_LABEL_CHARS = re.compile(r"[A-Za-z(){}|:,\s']+")
_RELATION = re.compile(r"<|>|\\[lg]e(?:q|qslant)?(?![a-zA-Z])|\\[lg]t(?![a-zA-Z])|\\neq?(?![a-zA-Z])|!=")
_OPEN = {"(": ")", "[": "]", "{": "}"}


def split_top_level(s: str, sep: str = ",") -> list[str]:
    """``s`` split at each ``sep`` outside brackets and braces: ``(1,2),3`` -> ``['(1,2)', '3']``."""
    parts, depth, start = [], 0, 0
    for j, ch in enumerate(s):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(s[start:j])
            start = j + 1
    parts.append(s[start:])
    return parts


def is_label(s: str) -> bool:
    """A name for a value rather than a value: ``f(x)``, ``|AB|``, ``A:B``, ``\\frac{NO}{BO}``, ``a_{37}``.

    >>> [is_label(s) for s in ["f(x)", "|AB|", "V_{1}:V_{2}", r"\\frac{NO}{BO}", "(p,q)", "7", "2x+1", "f(-2)"]]
    [True, True, True, True, True, False, False, False]
    """
    s = _LABEL_COMMANDS.sub("", _SUBSCRIPT.sub("", s.strip()))
    return bool(s) and _LABEL_CHARS.fullmatch(s) is not None and any(c.isalpha() for c in s)


@functools.lru_cache(maxsize=65536)
def is_relation(s: str) -> bool:
    """Whether ``s`` states an inequality (``x > 5``, ``1 \\le |z|``): math-verify compares those."""
    return _RELATION.search(s) is not None


def _value_of(item: str) -> tuple[str | None, str]:
    """(label, value) of one item: ``f(x)=1`` -> ('f(x)', '1'); a chain of ``=`` -> its last side."""
    item = item.strip()
    approx = _APPROX.split(item)
    if len(approx) == 2:  # "x \approx 11" -> 11; "1/3 \approx 0.33" -> 1/3
        item = approx[1].strip() if is_label(approx[0]) else approx[0].strip()
    sides = [p.strip() for p in split_top_level(item, "=")]
    if len(sides) < 2 or any(not p for p in sides) or any(p.endswith(("<", ">", "!")) for p in sides):
        return None, item
    if len(sides) > 2:  # "x = 5+5+1 = 11", "f(-2)+f(0) = ... = \frac{14}{3}": the last side is the value
        return (sides[0] if is_label(sides[0]) else None), sides[-1]
    if is_label(sides[0]) and not has_variable(sides[1]):
        return sides[0], sides[1]
    return None, item  # an equation (2x+4y-3=0, 7 = 11a+c, y = 2x): kept whole


@functools.lru_cache(maxsize=65536)
def is_equation(s: str) -> bool:
    """An equation that is not an assignment: ``2x+z=1``, ``7 = 11a+c`` (never equal to a bare value).

    >>> is_equation("7=11a+c"), is_equation("y=2x"), is_equation("x=1,y=2")
    (True, False, False)
    """
    sides = split_top_level(s, "=")
    return len(sides) == 2 and "," not in sides[0] and not is_label(sides[0]) and not is_relation(s)


def _interval(s: str) -> str | None:
    """``-793 < a < 10`` -> ``(-793,10)``; ``-2 \\le x \\le 7`` -> ``[-2,7]``; else None."""
    m = _CHAIN.fullmatch(s)
    if not m or not is_label(m.group("mid")) or "|" in m.group("mid"):
        return None
    lo, hi = m.group("lo").strip(), m.group("hi").strip()
    if not lo or not hi or has_variable(lo) or has_variable(hi):
        return None
    left = "(" if m.group("op1") in ("<", r"\lt") else "["
    right = ")" if m.group("op2") in ("<", r"\lt") else "]"
    return f"{left}{lo},{hi}{right}"


def canonical_compound(s: str) -> str:
    """One spelling for a compound answer (input: ``$``/``\\text``/unit-free, spaces kept).

    >>> [canonical_compound(s) for s in [r"6  and  8", "-12;-11;-10", r"a=4, -8, -10", "f(x)=1", r"x \\approx 11"]]
    ['6, 8', '-12, -11, -10', '4, -8, -10', '1', '11']
    >>> [canonical_compound(s) for s in ["0<f(x)<1", "x = 5+5+1 = 7 =11", "p = -1 , p = 2", "x=1, y=2", "y = 2x"]]
    ['(0,1)', '11', '-1, 2', 'x=1, y=2', 'y = 2x']
    """
    if len(s) > _MAX_LEN or not _MAYBE.search(s):
        return s
    if s[:1] == "{" and s[-1:] == "}" and _one_group(s[1:-1]):
        s = s[1:-1].strip()  # {1,2,3}: a TeX group, not a set (that is \{1,2,3\})
    if THOUSANDS.fullmatch(s):
        return s
    interval = _interval(s)
    if interval is not None:
        return interval
    joined = _AND_OR.sub(",", s)
    if ";" in joined:
        if "=" not in joined:  # -12;-11;-10 and (0;-2;6): ";" separates items
            joined = joined.replace(";", ",")
        else:  # p=5,q=2;p=7,q=2: solutions of a system, each an ordered tuple of its values
            groups = [[_value_of(x) for x in split_top_level(g)] for g in split_top_level(joined, ";")]
            if all(len(g) > 1 and all(lab for lab, _ in g) for g in groups):
                return ", ".join("(" + ",".join(v for _, v in g) + ")" for g in groups)
    items = [p.strip() for p in split_top_level(joined)]
    if len(items) > 1 and not all(items):
        items, joined = [s], s  # "and" without two sides: not a conjunction
    if len(items) == 1:
        label, value = _value_of(s)
        return value if label is not None or value != s.strip() else s
    pairs = [_value_of(p) for p in items]
    labels = [lab for lab, _ in pairs]
    if any(lab is None for lab in labels) or len(set(labels)) < len(labels):
        # one label for the list (a=4,-8,-10) or the same one repeated (p=-1, p=15/8): the values
        return ", ".join(v for _, v in pairs)
    return ", ".join(f"{lab}={v}" for lab, v in pairs)  # a system: x=1,y=2 keeps its names


@functools.lru_cache(maxsize=65536)
def list_shape(s: str) -> tuple[str, tuple[str, ...]] | None:
    """('set' | 'tuple' | 'bare', items) for a normalized list answer, else None."""
    if s.startswith("\\{") and s.endswith("\\}"):
        inner = s[2:-2]
        return ("set", tuple(split_top_level(inner))) if _one_group(inner) else None
    if s[:1] == "(" and s[-1:] == ")" and _one_group(s[1:-1]):
        items = split_top_level(s[1:-1])
        return ("tuple", tuple(items)) if len(items) > 1 else None
    if s[:1] in "([" and s[-1:] in ")]" and _one_group(s[1:-1]):
        return None  # an interval: compared elsewhere
    items = split_top_level(s)
    return ("bare", tuple(items)) if len(items) > 1 else None


def _one_group(inner: str) -> bool:
    """Whether ``inner`` has balanced brackets (so the outer pair encloses the whole answer)."""
    depth = 0
    for ch in inner:
        depth += ch in "([{" and 1 or -(ch in ")]}")
        if depth < 0:
            return False
    return depth == 0


def _split_label(item: str) -> tuple[str | None, str]:
    sides = split_top_level(item, "=")
    if len(sides) == 2 and is_label(sides[0]):
        return _SUBSCRIPT.sub(lambda m: "_" + m.group()[1:].strip("{}"), sides[0]), sides[1]
    return None, item


def compare_lists(a: str, b: str, same: Callable[[str, str], bool]) -> bool | None:
    """Decide two normalized list answers, or None when this is not a list-vs-list question.

    A bare list (``1,2,3``: the solutions of a problem) and a set are unordered; a tuple is ordered,
    so it matches a bare list in order and never a set (``(3,1)`` is not ``\\{1,3\\}``); labelled
    items (``x=1,y=2``) match by label, or in order against unlabelled ones. Items are compared
    with ``same`` (the full equivalence).

    >>> eq = lambda x, y: x == y
    >>> compare_lists("1,2,3", r"\\{3,2,1\\}", eq), compare_lists("(3,1)", r"\\{1,3\\}", eq), compare_lists("(1,3)", "1,3", eq)
    (True, False, True)
    >>> compare_lists("k=45,n=2", "n=2,k=45", eq), compare_lists("AB=4,CD=5", "4,5", eq), compare_lists("(1,2)", "(2,1)", eq)
    (True, True, None)
    """
    if max(len(a), len(b)) > _MAX_LEN:
        return None
    sa, sb = list_shape(a), list_shape(b)
    if sa is None or sb is None or (sa[0] == "tuple" and sb[0] == "tuple"):
        return None
    (ka, xa), (kb, xb) = sa, sb
    if max(len(xa), len(xb)) > _MAX_ITEMS or any("\\pm" in x or not x for x in xa + xb):
        return None
    if {ka, kb} == {"tuple", "set"}:
        return False
    la, lb = [_split_label(x) for x in xa], [_split_label(x) for x in xb]
    if all(lab for lab, _ in la + lb):
        da, db = dict(la), dict(lb)
        if len(da) == len(la) and len(db) == len(lb):  # two systems: match by name
            return da.keys() == db.keys() and all(same(da[k], db[k]) for k in da)
    va, vb = [v if lab else x for (lab, v), x in zip(la, xa)], [v if lab else x for (lab, v), x in zip(lb, xb)]
    if "tuple" in (ka, kb) or any(lab for lab, _ in la) or any(lab for lab, _ in lb):
        return len(va) == len(vb) and all(same(x, y) for x, y in zip(va, vb))  # ordered: a tuple, names
    # unordered, as sets (a repeated solution is one solution): each item has an equal on the other side
    return all(any(same(x, y) for y in vb) for x in va) and all(any(same(y, x) for x in va) for y in vb)
