"""Answers by answer type: extract, compare, cluster and grade them under a suite's ``answer_type``.

These are the functions the votes, evaluation and tests call with an answer type's spec string
(``math``, ``number``, ``choice`` or ``'module:function'``). They sit one layer above
``rewards.answer_types``, which holds the types themselves, so the text- and math-level modules below
(``rewards.extract``, ``rewards.equivalence``) never need to know what an answer type is.
"""

from __future__ import annotations

import operator

from rewards.answer_types import get_answer_type
from rewards.equivalence import equivalent_normalized, normalize_answer
from rewards.extract import extract_math


def extract_answer(text: str, answer_type: str = "math", *, question: str | None = None) -> str | None:
    """The final answer of a completion, or None if it states none.

    ``answer_type`` (see ``rewards.answer_types``): ``math`` (``rewards.extract.extract_math``),
    ``number``, ``choice`` (which reads the option list from ``question`` to map an option's text to
    its letter), or a ``'module:function'`` extractor.

    >>> extract_answer("I pick (c).", "choice"), extract_answer("so 18 apples", "number")
    ('C', '18')
    >>> extract_answer(r"so \\boxed{12} and finally \\boxed{\\frac{1}{2}}")
    '\\\\frac{1}{2}'
    """
    if answer_type == "math":
        return extract_math(text)
    return get_answer_type(answer_type).extract(text, question)


def answers_equivalent(a: str, b: str, answer_type: str = "math") -> bool:
    """True if ``a`` and ``b`` are the same answer (normalized, numeric, or symbolic via math-verify).

    Never raises and never hangs: math-verify errors and timeouts count as "not equivalent".
    ``answer_type`` (``rewards.answer_types``) picks the normalisation and comparison.

    >>> answers_equivalent(r"\\frac12", "0.5"), answers_equivalent("(B)", "b")
    (True, True)
    >>> answers_equivalent(r"\\{1, 2\\}", r"\\{2,1\\}"), answers_equivalent("3", "4")
    (True, False)
    """
    if answer_type == "math":
        return equivalent_normalized(normalize_answer(a), normalize_answer(b))
    kind = get_answer_type(answer_type)
    return kind.equivalent(kind.normalize(a), kind.normalize(b))


def cluster_answers(answers: list[str | None], answer_type: str = "math") -> list[int | None]:
    """An equivalence-class id per answer (None stays None).

    Distinct normalized strings are visited in sorted order and each joins the first class whose
    representative (its founder, hence its smallest member) it is equivalent to, so the partition
    and the ids depend only on the *set* of answers, never on their order: class 0 holds the
    smallest string. Identical normalized strings share a class without any comparison.

    >>> cluster_answers(["0.5", "7", None, r"\\frac{1}{2}", "1/2"])
    [0, 1, None, 0, 0]
    """
    return cluster_with_representatives(answers, answer_type)[0]


def cluster_with_representatives(answers: list[str | None], answer_type: str = "math",
                                 *, exact: bool = False) -> tuple[list[int | None], list[str]]:
    """``cluster_answers`` plus each class's representative: its smallest normalized member.

    ``exact=True`` clusters by normalized string only (TTRL's original counting): no comparisons.
    Each distinct string is compared with each class once per call (the per-group cache), and every
    comparison is bounded in time (see ``rewards.equivalence``).

    >>> cluster_with_representatives(["7", "07.0", None])
    ([0, 0, None], ['7'])
    >>> cluster_with_representatives(["7", "07.0", "7.5"], exact=True)
    ([0, 0, 1], ['7', '7.5'])
    """
    kind = get_answer_type(answer_type)
    norms = [kind.normalize(a) if a is not None else None for a in answers]
    same = operator.eq if exact else kind.equivalent
    reps: list[str] = []
    cid: dict[str, int] = {}
    for n in sorted({n for n in norms if n is not None}):
        cid[n] = next((i for i, r in enumerate(reps) if same(n, r)), len(reps))
        if cid[n] == len(reps):
            reps.append(n)
    return [cid[n] if n is not None else None for n in norms], reps


def is_correct(answer: str | None, label: str | None, answer_type: str = "math") -> bool:
    """Evaluation grading: is ``answer`` equivalent to the reference ``label``? None is wrong.

    >>> is_correct("14", "14.0"), is_correct(None, "3"), is_correct("3", None), is_correct("(c)", "C", "choice")
    (True, False, False, True)
    """
    if answer is None or label is None:
        return False
    return answers_equivalent(answer, label, answer_type)
