"""Answer types: how a completion's answer is extracted, normalised and compared, per kind of suite.

- ``math`` (the default): ``\\boxed{}`` / "the answer is" / ``####`` / last number; LaTeX-aware
  normalisation; numeric, closed-form and symbolic (math-verify) equivalence. MATH, AIME, AMC.
- ``number``: the same extraction, reduced to the number it contains (``18 apples`` -> ``18``);
  compared by value only, never symbolically. GSM8K, MAWPS.
- ``choice``: an option letter (GPQA: ``(B)``, ``B.``, ``answer: b``, ``\\boxed{B}``, or the option's
  own text when the question lists its options as ``A. ...`` lines), compared as letters.
- ``'module:function'``: a custom extractor ``(text) -> str | None``; its answers are normalised and
  compared like ``math`` ones (which reduces to string equality for non-mathematical strings).

An answer type is a small stateless object; it is looked up by its spec string wherever needed, so
rewards carry only the string (and pickle for Ray). Functions that take an answer type's spec
(``extract_answer``, ``answers_equivalent``, ...) are in ``rewards.answers``, one layer up.
"""

from __future__ import annotations

import functools
import re

from engine.registry import SpecError, load_target
from rewards.equivalence import as_number, equivalent_normalized, normalize_answer, numbers_equal
from rewards.extract import ANSWER_IS, NUMBER, extract_math, last_boxed, last_stated

# "A. text" / "(A) text" / "A) text" option lines of a multiple-choice question (upper-case only:
# GPQA questions also enumerate lower-case "a)" sub-items that are not the options).
_OPTION_LINE = re.compile(r"^[ \t]*\(?([A-J])[.)][ \t]+(\S[^\n]*?)[ \t]*$", re.MULTILINE)
_LETTER_ONLY = re.compile(r"\(?([A-Ja-j])\)?[.:)]?")
_LETTER_LEAD = re.compile(r"\(?([A-J])\)?(?:[.:)]|\s)|\(([a-j])\)")   # "(B) Cold...", "B. Cold..."
_PAREN_LETTER = re.compile(r"\(([A-Ja-j])\)")
_OPTION_WORD = re.compile(r"\b(?:option|choice)\s*\(?([A-J])\b", re.IGNORECASE)
_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")
_OPTION_NOISE = re.compile(r"[\s~$*]+")


def question_options(question: str | None) -> dict[str, str]:
    """The ``{letter: text}`` options a question lists (last listing wins), or {}.

    >>> question_options("Which?\\n\\nA. ~ 3.2\\nB. Cold gas.\\n")
    {'A': '~ 3.2', 'B': 'Cold gas.'}
    """
    if not question:
        return {}
    return {m.group(1): m.group(2) for m in _OPTION_LINE.finditer(question)}


def _option_key(text: str) -> str:
    return _OPTION_NOISE.sub(" ", text).strip().rstrip(".").strip().lower()


def _as_letter(candidate: str, options: dict[str, str], *, lead: bool = True) -> str | None:
    """An option letter from a candidate answer string, or None.

    ``lead``: also accept a letter that merely starts the string ("B. Cold gas"), if it is one of
    the question's options (any of A-J when the question lists none).
    """
    s = _TEXT_CMD.sub(r"\1", candidate).replace("**", "").strip().strip("$").strip()
    m = _LETTER_ONLY.fullmatch(s)
    if m:
        return m.group(1).upper()
    m = _LETTER_LEAD.match(s) if lead else None
    if m and (m.group(1) or m.group(2)).upper() in (options or "ABCDEFGHIJ"):
        return (m.group(1) or m.group(2)).upper()
    key = _option_key(s)
    for letter, text in options.items():
        if key and key == _option_key(text):
            return letter
    return None


@functools.lru_cache(maxsize=65536)
def _normalize_cached(answer: str) -> str:
    """Normalisation is pure: the rollouts of a group repeat few answer strings."""
    return normalize_answer(answer)


class MathAnswer:
    """LaTeX math answers (the default)."""

    name = "math"

    def extract(self, text: str, question: str | None = None) -> str | None:
        return extract_math(text)

    def normalize(self, answer: str) -> str:
        return _normalize_cached(answer)

    def equivalent(self, a: str, b: str) -> bool:
        """On normalized strings."""
        return equivalent_normalized(a, b)


class NumberAnswer(MathAnswer):
    """Plain numbers (GSM8K, MAWPS): the number in the extracted answer, compared by value.

    >>> NumberAnswer().extract("She pays $18.00 in all. The answer is 18 dollars."), NumberAnswer().extract("#### 1,234")
    ('18', '1234')
    >>> n = NumberAnswer(); n.equivalent(n.normalize("14.0"), n.normalize("14")), n.extract("no idea")
    (True, None)
    """

    name = "number"

    def extract(self, text: str, question: str | None = None) -> str | None:
        found = extract_math(text)
        if found is None:
            return None
        norm = normalize_answer(found)
        if as_number(norm) is not None:
            return norm
        numbers = NUMBER.findall(found)
        return normalize_answer(numbers[-1]) if numbers else None

    def equivalent(self, a: str, b: str) -> bool:
        if a == b:
            return True
        x, y = as_number(a), as_number(b)
        return x is not None and y is not None and numbers_equal(x, y)


class ChoiceAnswer(MathAnswer):
    """Multiple-choice letters (GPQA). Extraction may read the question, to map an option's text.

    >>> q = "Which?\\nA. Warm gas.\\nB. Cold gas."
    >>> c = ChoiceAnswer()
    >>> [c.extract(t, q) for t in [r"\\boxed{B}", "The answer is (b).", "Answer: a", "The answer is cold gas."]]
    ['B', 'B', 'A', 'B']
    """

    name = "choice"

    def extract(self, text: str, question: str | None = None) -> str | None:
        if not text:
            return None
        options = question_options(question)
        for candidate in (last_boxed(text), last_stated(ANSWER_IS, text)):
            letter = _as_letter(candidate, options) if candidate else None
            if letter is not None:
                return letter
        valid = set(options) or set("ABCDEFGHIJ")
        for pattern in (_OPTION_WORD, _PAREN_LETTER):  # "so option C", "... hence (c)"
            found = [x.upper() for x in pattern.findall(text) if x.upper() in valid]
            if found:
                return found[-1]
        last_line = text.strip().rsplit("\n", 1)[-1]
        return _as_letter(last_line, options, lead=False) if options else None

    def normalize(self, answer: str) -> str:
        letter = _as_letter(answer, {})
        return letter if letter is not None else normalize_answer(answer)

    def equivalent(self, a: str, b: str) -> bool:
        return a == b


class CustomAnswer(MathAnswer):
    """A user's extractor ``(text) -> str | None`` given as ``'module:function'``; math comparison."""

    def __init__(self, spec: str, extractor):
        self.name, self.extractor = spec, extractor

    def extract(self, text: str, question: str | None = None) -> str | None:
        found = self.extractor(text)
        return None if found is None or str(found).strip() == "" else str(found)


ANSWER_TYPES: dict[str, MathAnswer] = {"math": MathAnswer(), "number": NumberAnswer(), "choice": ChoiceAnswer()}
_custom: dict[str, CustomAnswer] = {}


def get_answer_type(spec: str = "math") -> MathAnswer:
    """The answer type named by ``spec``: a name in ``ANSWER_TYPES`` or a ``'module:function'`` extractor.

    >>> get_answer_type("choice").name
    'choice'
    """
    found = ANSWER_TYPES.get(spec) if isinstance(spec, str) else None
    if found is not None:
        return found
    if isinstance(spec, str) and ":" in spec:
        if spec not in _custom:
            extractor = load_target(spec, {}, "answer_type")
            if not callable(extractor):
                raise SpecError(f"answer_type {spec!r} is not callable; expected an extractor (text) -> str | None")
            _custom[spec] = CustomAnswer(spec, extractor)
        return _custom[spec]
    raise SpecError(f"unknown answer_type {spec!r}; valid: {', '.join(ANSWER_TYPES)}, or 'module:function' "
                    "(a custom extractor (text) -> str | None)")


def clear_caches() -> None:
    """Forget the memoised normalisations (a cold start, for benchmarks)."""
    _normalize_cached.cache_clear()
