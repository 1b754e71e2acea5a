"""Property tests (hypothesis) for answer extraction, equivalence and the votes.

Arbitrary strings never crash them or hang them: extraction is linear-time by construction
(``rewards.extract``), and equivalence bounds math-verify with its own deadline of
``MATH_VERIFY_TIMEOUT_S`` per parse and per verify (``rewards.equivalence``; SIGALRM here in the main
thread, a helper process elsewhere), so one comparison costs at most three deadlines. The hypothesis deadlines below are that bound plus slack for a shared machine,
not performance targets; the explicit timing checks use the same bounds.

The votes must not depend on rollout order: the pseudo-label and the stats stay the same and the
per-rollout rewards permute with the rollouts. Ties follow the rule ``rewards.vote`` documents: the
class whose representative (its smallest normalized member) sorts first wins.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.types import Rollout, RolloutGroup, Task
from rewards import REWARDS, answers_equivalent, cluster_answers, extract_answer, extract_reference, normalize_answer
from rewards.answers import cluster_with_representatives
from rewards.equivalence import MATH_VERIFY_TIMEOUT_S

ANSWER_TYPES = ["math", "number", "choice"]
PER_COMPARISON_S = 3 * MATH_VERIFY_TIMEOUT_S + 2.0  # parse, parse, verify; plus slack for a loaded machine

# Pieces that exercise every branch of extraction and normalisation when strung together at random.
FRAGMENTS = [
    "\\boxed{", "\\boxed ", "\\fbox{", "{", "}", "\\frac", "\\dfrac", "\\sqrt", "\\pi", "\\infty", "\\pm",
    "\\text{", "\\mathrm{", "\\left(", "\\right)", "\\{", "\\}", "\\in", "\\circ", "\\%", "\\$", "\\\\", "\\,",
    "the answer is ", "The answer is: ", "Answer: ", "####", "$", "**", "^", "_", "=", "-", "+", "*", "/",
    ".", ",", " ", "\n", "(", ")", "[", "]", "0", "1", "2", "7", "42", "0.5", "1,234", "3/4", "1e-5", "025",
    "x", "y", "i", "e", "A", "(b)", "C.", "option D", "cm", "east", "52_8", "9^{9^{9}}",
]
MATHY = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=3)), max_size=40).map("".join)
TEXT = st.one_of(st.text(max_size=120), MATHY)
QUESTION = st.one_of(st.none(), st.just("Which?\n\nA. Warm gas.\nB. Cold gas.\nC. ~ 3.2\nD. none"), st.text(max_size=80))
# No backslash and no braces: text that cannot open or close a box of its own.
PLAIN = st.text(st.characters(blacklist_characters="\\{}", blacklist_categories=("Cs",)), max_size=40)


def group_of(texts: list[str], question: str = "q") -> RolloutGroup:
    return RolloutGroup(Task("t", question), [Rollout(t, [1], None, "stop") for t in texts])


def boxed(answers: list[str | None]) -> list[str]:
    return [f"so the answer is \\boxed{{{a}}}." if a is not None else "no idea" for a in answers]


# --- extraction ----------------------------------------------------------------------------------


@settings(max_examples=400, deadline=timedelta(seconds=2))
@given(TEXT, st.sampled_from(ANSWER_TYPES), QUESTION)
def test_extraction_never_fails_on_any_text(text, answer_type, question):
    answer = extract_answer(text, answer_type, question=question)
    assert answer is None or (isinstance(answer, str) and answer.strip())
    if answer_type == "choice" and answer is not None:
        assert answer in "ABCDEFGHIJ"
    assert isinstance(extract_reference(text), str)


@settings(max_examples=200, deadline=timedelta(seconds=2))
@given(TEXT, st.text(st.characters(blacklist_characters="\\{}", blacklist_categories=("Cs",)), min_size=1,
                     max_size=20).filter(str.strip), PLAIN)
def test_the_last_complete_box_wins(before, answer, after):
    """Whatever comes before (other boxes, stray or unclosed braces), the last closed box is the answer."""
    assert extract_answer(f"{before}\\boxed{{{answer}}}{after}") == answer.strip()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=6), st.sampled_from(ANSWER_TYPES))
def test_extraction_is_fast_on_long_adversarial_text(pieces, answer_type):
    text = "".join(pieces) * (100_000 // max(1, len("".join(pieces))))  # ~100k characters
    start = time.perf_counter()
    extract_answer(text, answer_type, question="Which?\nA. x\nB. y")
    extract_reference(text)
    assert time.perf_counter() - start < 2.0  # linear: milliseconds; quadratic would be minutes


# --- equivalence ---------------------------------------------------------------------------------


@settings(max_examples=300, deadline=timedelta(seconds=2))
@given(TEXT)
def test_normalize_never_fails(text):
    assert isinstance(normalize_answer(text), str)


@settings(max_examples=150, deadline=timedelta(seconds=2 * PER_COMPARISON_S),
          suppress_health_check=[HealthCheck.too_slow])
@given(MATHY, MATHY, st.sampled_from(ANSWER_TYPES))
def test_equivalence_is_total_reflexive_and_symmetric(a, b, answer_type):
    start = time.perf_counter()
    ab = answers_equivalent(a, b, answer_type)
    assert time.perf_counter() - start < PER_COMPARISON_S
    assert isinstance(ab, bool)
    assert answers_equivalent(b, a, answer_type) is ab
    assert answers_equivalent(a, a, answer_type) is True


@settings(max_examples=200, deadline=timedelta(seconds=2))
@given(st.integers(-10**6, 10**6), st.integers(1, 999))
def test_numbers_compare_by_value(n, q):
    assert answers_equivalent(str(n), f"{n}.0")
    assert answers_equivalent(f"\\frac{{{n * q}}}{{{q}}}", str(n))
    assert answers_equivalent(f"{n}/{q}", f"\\frac{{{n}}}{{{q}}}")
    assert not answers_equivalent(str(n), str(n + 1))
    assert answers_equivalent(str(n), f"{n}.0", "number") and not answers_equivalent(str(n), str(n + 1), "number")


# --- clustering and the votes --------------------------------------------------------------------

# Equal values spelt differently, answers that tie, a letter, a set, an expression, no answer at all.
POOL = ["1", "1.0", "01", "\\frac{2}{2}", "\\frac12", "0.5", "1/2", "2", "3", "10", "B", "(b)", "x=2",
        "\\{1,2\\}", "\\{2,1\\}", "\\sqrt{4}", None]
ANSWERS = st.lists(st.one_of(st.sampled_from(POOL), st.sampled_from(POOL), MATHY), min_size=1, max_size=10)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ANSWERS, st.randoms(use_true_random=False))
def test_clusters_permute_with_the_answers(answers, rng):
    order = list(range(len(answers)))
    rng.shuffle(order)
    ids, reps = cluster_with_representatives(answers)
    shuffled_ids, shuffled_reps = cluster_with_representatives([answers[i] for i in order])
    assert shuffled_ids == [ids[i] for i in order] and shuffled_reps == reps
    assert reps == sorted(reps)  # class ids follow the representatives' sort order
    for answer, cid in zip(answers, ids):
        assert (cid is None) is (answer is None)
        if cid is not None:  # a representative is its class's smallest normalized member
            assert reps[cid] <= normalize_answer(answer)
            assert answers_equivalent(answer, reps[cid])


@pytest.mark.parametrize("variant", [name for name in REWARDS if name not in ("random", "constant")])  # votes, not the controls
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answers=ANSWERS, junk=st.lists(TEXT, max_size=3), rng=st.randoms(use_true_random=False))
def test_votes_do_not_depend_on_rollout_order(variant, answers, junk, rng):
    texts = boxed(answers) + junk  # junk: arbitrary completions, whatever they extract to
    order = list(range(len(texts)))
    rng.shuffle(order)
    g1, g2 = group_of(texts), group_of([texts[i] for i in order])
    r1, r2 = REWARDS[variant](g1), REWARDS[variant](g2)
    assert r2 == [r1[i] for i in order]  # rewards permute with the rollouts
    assert [r.answer for r in g2.rollouts] == [g1.rollouts[i].answer for i in order]
    assert g2.label == g1.label and g2.stats == g1.stats  # bit-identical, entropy included
    assert len(r1) == len(texts) and all(0.0 <= r <= 1.0 for r in r1)
    assert all(r == 0.0 for r, ro in zip(r1, g1.rollouts) if ro.answer is None)  # no answer: no vote, no reward
    if variant in ("majority_vote", "plain_majority"):
        assert sum(r1) == round(g1.stats["vote/majority_ratio"] * len(texts))


def spellings(value: int) -> list[str]:
    """Ways to write ``value`` that the vote must count as one answer."""
    return [str(value), f"{value}.0", f"\\frac{{{2 * value}}}{{2}}"]


@given(st.data())
@settings(max_examples=60, deadline=None)
def test_ties_go_to_the_class_whose_smallest_spelling_sorts_first(data):
    """Two or more answer classes share the top count: the winner is the class whose representative
    (its smallest normalized member, among the spellings that occur) is smallest as a string. That
    depends only on which answers occur, so every order of the rollouts gives the same label."""
    values = data.draw(st.lists(st.integers(0, 500), min_size=2, max_size=5, unique=True))
    top = data.draw(st.integers(1, 4))
    tied = data.draw(st.integers(2, len(values)))
    counts = [top] * tied + [data.draw(st.integers(0, top - 1)) for _ in values[tied:]]
    answers = []
    for value, count in zip(values, counts):
        answers += [data.draw(st.sampled_from(spellings(value))) for _ in range(count)]
    answers += [None] * data.draw(st.integers(0, 2))
    answers = data.draw(st.permutations(answers))

    reps = {v: min(normalize_answer(a) for a in answers if a is not None and normalize_answer(a) in
                   {normalize_answer(s) for s in spellings(v)}) for v in values[:tied]}
    winner = min(reps, key=reps.get)
    for variant in ("majority_vote", "soft_vote"):
        group = group_of(boxed(answers))
        rewards = REWARDS[variant](group)
        assert group.label == reps[winner], variant
        assert group.stats["vote/majority_ratio"] == top / len(answers)
        if variant == "majority_vote":
            won = {normalize_answer(s) for s in spellings(winner)}
            assert rewards == [1.0 if a is not None and normalize_answer(a) in won else 0.0 for a in answers]
    # The confidence-gated vote abstains on a tie: a margin of 0 is not > min_margin.
    group = group_of(boxed(answers))
    assert REWARDS["confident_vote"](group) == [0.0] * len(answers) and group.label is None
    assert group.stats["vote/confident"] == 0.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["4", "5", "10", "4.0", "05"]), min_size=1, max_size=9))
def test_plain_majority_ties_follow_the_same_rule(answers):
    group = group_of(boxed(answers))
    REWARDS["plain_majority"](group)
    counts = {}
    for a in answers:
        counts[normalize_answer(a)] = counts.get(normalize_answer(a), 0) + 1
    best = max(counts.values())
    assert group.label == min(k for k, c in counts.items() if c == best)


def test_cluster_answers_of_nothing():
    assert cluster_answers([]) == [] and cluster_answers([None]) == [None]
