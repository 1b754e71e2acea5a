"""Pull the final answer out of a completion, and the label out of a dataset's reference field.

TTRL (arXiv 2504.16084, §3) votes over *extracted answers*, so extraction decides what a vote is
about. The order of preference follows the conventions of the math benchmarks TTRL runs on:
an explicit ``\\boxed{}`` (MATH, AIME, AMC prompts ask for it) beats a stated "the answer is X",
which beats a GSM8K-style ``#### X`` tail, which beats the last number in the text.

Everything here is linear-time: brace matching is one pass over the braces, and every regex is
anchored on a literal or uses only simple, non-nested quantifiers, so a 100k-character adversarial
completion cannot trigger catastrophic backtracking.

This module is plain text work with no notion of answer types: ``extract_math`` is the ``math``
type's extractor, the other types (``rewards.answer_types``) reuse its pieces, and
``rewards.answers.extract_answer`` picks the extractor by type.
"""

from __future__ import annotations

import re

# ``\boxed{..}``, ``\boxed 5`` and ``\fbox{..}``; the ``\b`` keeps ``\boxedx`` out.
_BOX = re.compile(r"\\(?:boxed|fbox)\b(\s*)")
_BRACE = re.compile(r"[{}]")
_BARE_TOKEN = re.compile(r"[^\s$]+")
# Prefixes only: the answer runs from the match to the end of its line. (Capturing the rest of the
# line in the pattern would hide a second "the answer is" later on the same line.)
ANSWER_IS = re.compile(r"answer\s*(?:is\b\s*:?|:)", re.IGNORECASE)
_HASHES = re.compile(r"####")
_DOLLARS = re.compile(r"\$((?:[^$\\]|\\.)+)\$")  # ``\$`` (a currency sign) may sit inside
_STATED_MAX = 1000  # chars after "answer is" worth reading; bounds the work per occurrence (linear)
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
# Thousands-separated integers first (1,234,567), then plain ints/decimals, optional /denominator.
NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def _matching_braces(text: str) -> dict[int, int]:
    """Map each ``{`` index to the index of its matching ``}`` (unmatched ones are absent)."""
    match, stack = {}, []
    for m in _BRACE.finditer(text):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            match[stack.pop()] = m.start()
    return match


def last_boxed(text: str) -> str | None:
    """The stripped content of the last complete, non-empty ``\\boxed``/``\\fbox`` in ``text``.

    A box whose braces never close (a truncated completion) is skipped in favour of an earlier one.

    >>> last_boxed(r"first \\boxed{1}, then \\boxed{\\frac{1}{\\sqrt{2}}}")
    '\\\\frac{1}{\\\\sqrt{2}}'
    >>> last_boxed(r"\\boxed 5") , last_boxed(r"\\boxed{7} and \\boxed{8")
    ('5', '7')
    """
    boxes = list(_BOX.finditer(text))
    if not boxes:
        return None
    close = _matching_braces(text)
    for m in reversed(boxes):
        j = m.end()
        if j < len(text) and text[j] == "{":
            k = close.get(j)
            inner = text[j + 1 : k].strip() if k is not None else ""
        elif m.group(1):  # ``\boxed 5``: the next whitespace-delimited token
            tok = _BARE_TOKEN.match(text, j)
            inner = tok.group().strip() if tok else ""
        else:
            inner = ""
        if inner:
            return inner
    return None


def _clean_stated(s: str) -> str:
    """Trim a stated answer (after "the answer is"): math delimiters, bold marks, the sentence end."""
    s = s.strip().replace("**", "")
    dollars = _DOLLARS.match(s)
    if dollars:
        return dollars.group(1).strip()
    end = _SENTENCE_END.search(s)
    if end:
        s = s[: end.start()]
    return s.strip().strip("$").strip()


def last_stated(pattern: re.Pattern, text: str) -> str | None:
    """The last non-empty answer stated after a match of ``pattern`` (up to its line's end), cleaned; or None."""
    for m in reversed(list(pattern.finditer(text))):
        stop = m.end() + _STATED_MAX
        eol = text.find("\n", m.end(), stop)
        s = _clean_stated(text[m.end() : eol if eol >= 0 else stop])
        if s:
            return s
    return None


def extract_math(text: str) -> str | None:
    """The final answer of a math completion, or None if it states none.

    Order: last ``\\boxed{}``/``\\fbox{}``; last "the answer is X" / "answer: X"; last ``#### X``;
    the last number (ints, decimals, negatives, ``1,234``, ``3/4``).

    >>> extract_math(r"so \\boxed{12} and finally \\boxed{\\frac{1}{2}}")
    '\\\\frac{1}{2}'
    >>> extract_math("Thus, the answer is 42.")
    '42'
    >>> extract_math("Natalia sold 48 clips...\\n#### 1,234")
    '1,234'
    >>> extract_math("we get 3 apples, then -2.5 more"), extract_math("no idea")
    ('-2.5', None)
    """
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    for pattern in (ANSWER_IS, _HASHES):
        stated = last_stated(pattern, text)
        if stated is not None:
            return stated
    numbers = NUMBER.findall(text)
    return numbers[-1] if numbers else None


def extract_reference(text: str) -> str:
    """A dataset reference field (answer or full solution) turned into a label string.

    A ``#### X`` tail (GSM8K) gives X; else the last ``\\boxed{}`` (MATH solutions); else the
    stripped text. Numbers stay as written: ``rewards.equivalence`` normalises them.

    >>> extract_reference("Natalia sold 48/2 = 24 clips.\\n#### 72")
    '72'
    >>> extract_reference(r"so the sum is $\\boxed{\\frac{14}{3}}$.")
    '\\\\frac{14}{3}'
    >>> extract_reference(" 14.0 ")
    '14.0'
    """
    text = str(text)  # some sets (AIME25) store ints
    tail = last_stated(_HASHES, text)
    if tail is not None:
        return tail
    boxed = last_boxed(text)
    return boxed if boxed is not None else text.strip()
