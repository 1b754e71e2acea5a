"""Answer extraction, answer equivalence and TTRL's majority-vote reward, on hand-written cases."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.types import Rollout, RolloutGroup, Task
from rewards import (
    REWARDS,
    answers_equivalent,
    cluster_answers,
    extract_answer,
    extract_reference,
    is_correct,
    majority_vote,
    normalize_answer,
)


def make_group(answers: list[str | None], label: str | None = None) -> RolloutGroup:
    """One rollout per answer, each boxing it; None is a rollout that states no answer at all."""
    texts = [f"Let me think. So \\boxed{{{a}}}." if a is not None else "I am not sure." for a in answers]
    task = Task(id="t0", question="q", label=label)
    return RolloutGroup(task=task, rollouts=[Rollout(t, [1, 2], None, "stop") for t in texts])


# --- extraction ---------------------------------------------------------------------------------

EXTRACT_CASES = [
    (r"so $\boxed{\frac{1}{\sqrt{2}}}$", r"\frac{1}{\sqrt{2}}"),          # nested braces balanced
    (r"first \boxed{3}, on reflection \boxed{4}", "4"),                   # two boxes: the last one
    (r"\boxed{7} then a truncated \boxed{\frac{1}{", "7"),               # unclosed last box skipped
    (r"hence \boxed 5 is it", "5"),                                       # \boxed without braces
    (r"\fbox{12}", "12"),                                                 # \fbox counts as a box
    (r"the answer is 9 but \boxed{8}", "8"),                              # a box beats a statement
    ("The answer is 42.", "42"),                                          # stated, period dropped
    ("answer: (B)\nthanks", "(B)"),                                       # "answer:" form, own line
    ("The answer is 3. Wait, no. The final answer is $-7$.", "-7"),       # last statement wins
    ("The ANSWER IS **12**", "12"),                                       # case-insensitive, bold
    ("Total is 1,000 + 234\n#### 1,234", "1,234"),                        # GSM8K tail
    ("48/2 = 24 clips in May, 48+24 = 72", "72"),                         # last number fallback
    ("it is -3.25 degrees", "-3.25"),                                     # negative decimal
    ("about 3/4 of them", "3/4"),                                         # simple fraction
    ("we owe 12,345,678 dollars", "12,345,678"),                          # thousands separators
    ("no numbers here at all", None),                                     # nothing to extract
    ("", None),                                                           # empty completion
    (r"\boxed{}", None),                                                  # empty box, no fallback
]


@pytest.mark.parametrize("text,expected", EXTRACT_CASES)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


ADVERSARIAL = [
    r"\boxed{" * 30_000,          # 30k unclosed boxes
    "{" * 100_000,                # unbalanced braces
    "1," * 50_000,                # almost-thousands separators
    "1" * 100_000 + "x",          # one huge digit run
    "answer is " * 10_000,        # many empty statements
    "$" + "a" * 100_000,          # an unclosed math span
    "^" + " " * 100_000 + "{",    # would blow up a nested \s*\{?\s* pattern
    "#### " * 20_000,             # many empty GSM8K tails
    "answer is. " * 10_000,       # many statements that each clean to nothing
    "####. " * 20_000,            # same for GSM8K tails
    r"\frac{" * 30_000,           # deep unclosed fractions
]


@pytest.mark.parametrize("text", ADVERSARIAL, ids=lambda t: repr(t[:10]))
def test_adversarial_strings_are_fast(text):
    answers_equivalent("x+1", "x+2")  # import math-verify outside the clock (symbolic: reaches it)
    times = []
    for _ in range(3):  # best of 3: the machine is shared; catastrophic backtracking would fail all three
        start = time.perf_counter()
        extract_answer(text)
        normalize_answer(text)
        answers_equivalent(text, text[:-1] + "7")
        times.append(time.perf_counter() - start)
    assert min(times) < 0.5


REFERENCE_CASES = [
    ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),                     # GSM8K tail
    (r"so $x = \boxed{\frac{14}{3}}$.", r"\frac{14}{3}"),                 # MATH solution: last box
    (" 14.0 ", "14.0"),                                                   # plain answer, stripped only
    ("025", "025"),                                                       # numbers stay as given
]


@pytest.mark.parametrize("text,expected", REFERENCE_CASES)
def test_extract_reference(text, expected):
    assert extract_reference(text) == expected


# --- normalisation and equivalence --------------------------------------------------------------

NORMALIZE_CASES = [
    ("$14.0$", "14"),                                                     # dollars, trailing .0
    ("025", "25"),                                                        # leading zeros (AIME)
    ("0.50", "0.5"),                                                      # trailing zeros
    (".35625", "0.35625"),                                                # bare decimal point
    ("-0.0", "0"),                                                        # no negative zero
    ("6.72e-05", "0.0000672"),                                            # Python's str(float)
    (r"\dfrac{1}{2}", r"\frac{1}{2}"),                                    # dfrac -> frac
    (r"\frac 59", r"\frac{5}{9}"),                                        # braces restored
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),           # \left/\right, spaces
    (r"10,\!080", "10080"),                                               # thin space + thousands
    (r"\$32,\!348", "32348"),                                             # currency sign
    (r"90^\circ", "90"),                                                  # degrees
    (r"90^{\circ}", "90"),                                                # degrees in braces
    (r"50\%", "50"),                                                      # percent
    (r"864 \mbox{ inches}^2", "864"),                                     # trailing unit with power
    (r"5.4 \text{ cents}", "5.4"),                                        # trailing unit
    (r"\text{Evelyn}", "Evelyn"),                                         # whole-text answer kept
    (r"\text{(C)}", "C"),                                                 # option inside \text
    ("(b)", "B"),                                                         # option letter
    ("B.", "B"),                                                          # option with period
    ("x = 5", "5"),                                                       # assignment dropped
    (r"x \in [-2,7]", "[-2,7]"),                                          # membership dropped
    ("x=1, y=2", "x=1,y=2"),                                              # a system keeps names
    (r"2\pi r", r"2\pi r"),                                               # command+letter spacing
    (r"\begin{pmatrix} -2 \\ 3 \end{pmatrix}", r"\begin{pmatrix}-2\\3\end{pmatrix}"),  # \\ kept
]


@pytest.mark.parametrize("raw,expected", NORMALIZE_CASES)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected
    assert normalize_answer(expected) == expected  # idempotent


EQUIVALENT = [
    (r"\frac12", "0.5"),                                                  # fraction vs decimal
    (r"\dfrac{1}{2}", r"\frac{1}{2}"),                                    # dfrac spelling
    ("1/2", r"\frac{1}{2}"),                                              # slash fraction
    ("14.0", "14"),                                                       # AMC float labels
    ("025", "25"),                                                        # AIME zero padding
    ("(B)", "b"),                                                         # option letters
    ("x = 5", "5"),                                                       # assignment
    (r"90^\circ", "90"),                                                  # degrees
    (r"50\%", "50"),                                                      # percent
    ("1,000", "1000"),                                                    # thousands separator
    ("4210_{5}", "4210_5"),                                               # base subscript braces
    ("[1,2)", "[1, 2)"),                                                  # interval spacing
    (r"\{1, 2\}", r"\{2,1\}"),                                            # sets are unordered
    ("(1,2)", "(1, 2)"),                                                  # tuple spacing
    (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt2}"),                         # symbolic (math-verify)
    ("p - q", "-q+p"),                                                    # reordered sum
    (r"1\frac{4}{5}", r"\frac95"),                                        # mixed number
    ("0.3333333", r"\frac13"),                                            # within 1e-6 rel
]

NOT_EQUIVALENT = [
    ("3", "4"),                                                           # different integers
    ("0.5", r"\frac13"),                                                  # different values
    ("(B)", "C"),                                                         # different options
    ("(1,2)", "(2,1)"),                                                   # tuples are ordered
    ("[1,2)", "[1,2]"),                                                   # open vs closed end
    ("east", "seat"),                                                     # anagrams are words
    (r"\sqrt{2}", "2"),                                                   # root vs radicand
    ("50", "0.5"),                                                        # % is stripped, not /100
    ("52_8", "52"),                                                       # math-verify drops bases
]


@pytest.mark.parametrize("a,b", EQUIVALENT)
def test_equivalent(a, b):
    assert answers_equivalent(a, b) and answers_equivalent(b, a)


@pytest.mark.parametrize("a,b", NOT_EQUIVALENT)
def test_not_equivalent(a, b):
    assert not answers_equivalent(a, b) and not answers_equivalent(b, a)


def test_is_correct():
    assert is_correct("14", "14.0")
    assert not is_correct(None, "14")
    assert not is_correct("14", None)
    assert not is_correct("15", "14")


def test_pathological_expression_is_bounded_and_false():
    start = time.perf_counter()
    assert not answers_equivalent("9^{9^{9^{9^{9}}}}", "9^{9^{9^{9^{8}}}}")
    assert time.perf_counter() - start < 3.0  # two math-verify deadlines of 1 s at most


# --- clustering ---------------------------------------------------------------------------------

def test_cluster_answers():
    assert cluster_answers(["0.5", "7", None, r"\frac{1}{2}", "1/2", "07"]) == [0, 1, None, 0, 0, 1]
    assert cluster_answers([]) == []
    assert cluster_answers([None, None]) == [None, None]


def test_cluster_64_integers_is_fast():
    answers = [str(i % 9) for i in range(64)]
    cluster_answers(answers)  # warm caches
    times = []
    for _ in range(5):  # best of 5: the machine is shared, one slow run is noise
        start = time.perf_counter()
        ids = cluster_answers(answers)
        times.append(time.perf_counter() - start)
    assert min(times) < 0.005
    assert ids == [i % 9 for i in range(64)]  # "0" < "1" < ... < "8": ids follow sort order


POOL = ["1", "1.0", r"\frac12", "0.5", "2", "B", "(b)", None, "x=2"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(POOL), min_size=1, max_size=8), st.randoms())
def test_vote_is_independent_of_rollout_order(answers, rng):
    shuffled = answers[:]
    rng.shuffle(shuffled)
    g1, g2 = make_group(answers), make_group(shuffled)
    majority_vote(g1)
    majority_vote(g2)
    assert g1.label == g2.label and g1.stats == g2.stats
    by_answer = {r.answer: r.reward for r in g1.rollouts}
    assert all(by_answer[r.answer] == r.reward for r in g2.rollouts)


# --- voting -------------------------------------------------------------------------------------

def test_clear_majority():
    group = make_group(["4", "4", "5", "4.0"])
    assert majority_vote(group) == [1.0, 1.0, 0.0, 1.0]
    assert group.label == "4"
    assert [r.answer for r in group.rollouts] == ["4", "4", "5", "4.0"]
    assert [r.reward for r in group.rollouts] == [1.0, 1.0, 0.0, 1.0]
    # 3 of 4 in the winning class; 2 classes {4, 5}; everyone answered; H = -(3/4 ln 3/4 + 1/4 ln 1/4)
    assert group.stats == {"vote/majority_ratio": 0.75, "vote/distinct_answers": 2.0, "vote/answered_ratio": 1.0,
                           "vote/answer_entropy": pytest.approx(0.5623351446188083)}


def test_tie_is_broken_the_same_way_in_every_order():
    answers = ["5", "4", "5", "4", "10"]
    for perm in itertools.permutations(answers):
        group = make_group(list(perm))
        rewards = majority_vote(group)
        # "4" and "5" tie at 2; "10" has 1. Sorting the representatives: "4" < "5".
        assert group.label == "4"
        assert rewards == [1.0 if a == "4" else 0.0 for a in perm]


def test_no_answer_rollouts_do_not_vote_and_get_zero():
    group = make_group([None, None, None, "7", "8", "8"])
    assert majority_vote(group) == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    assert group.label == "8"
    # winner 2 of 6 rollouts (not of the 3 that answered); {7, 8}; 3 of 6 answered;
    # entropy over the answered: -(2/3 ln 2/3 + 1/3 ln 1/3)
    assert group.stats == {"vote/majority_ratio": 2 / 6, "vote/distinct_answers": 2.0, "vote/answered_ratio": 0.5,
                           "vote/answer_entropy": pytest.approx(0.6365141682948128)}


def test_equivalent_spellings_form_one_cluster():
    group = make_group(["0.5", r"\frac{1}{2}", "1/2", "3", "3"])
    assert majority_vote(group) == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert group.label == "0.5"  # smallest normalized member: "0.5" < "1/2" < "\frac{1}{2}"
    assert group.stats["vote/distinct_answers"] == 2.0
    assert group.stats["vote/majority_ratio"] == 3 / 5


def test_all_none():
    group = make_group([None, None])
    assert majority_vote(group) == [0.0, 0.0]
    assert group.label is None
    assert [r.reward for r in group.rollouts] == [0.0, 0.0]
    assert group.stats == {"vote/majority_ratio": 0.0, "vote/distinct_answers": 0.0, "vote/answered_ratio": 0.0,
                           "vote/answer_entropy": 0.0}


def test_vote_ignores_the_true_label():
    answers = ["4", "4", "5"]
    honest, misled = make_group(answers, label=None), make_group(answers, label="5")
    assert majority_vote(honest) == majority_vote(misled) == [1.0, 1.0, 0.0]
    assert honest.label == misled.label == "4"
    assert honest.stats == misled.stats


class _TrapTask:
    """A task whose label explodes when read: the vote must never touch it."""

    id, question, prompt, prompt_ids = "t", "q", "q", ()

    @property
    def label(self):
        raise AssertionError("majority_vote read task.label")


def test_vote_never_reads_task_label():
    group = make_group(["1", "2", "2"])
    group.task = _TrapTask()
    assert majority_vote(group) == [0.0, 1.0, 1.0]


def test_registry():
    assert REWARDS["majority_vote"] is majority_vote


def test_rewards_never_import_engines():
    import subprocess
    import sys

    code = "import sys, rewards; bad = {'vllm', 'trl', 'ray'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
