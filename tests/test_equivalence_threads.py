"""Equivalence off the main thread: the math-verify tier is kept, in bounded time (``rewards.deadline``).

Ray Train runs the training function, hence the vote, outside the main thread, where SIGALRM cannot
bound math-verify; there ``rewards.equivalence`` sends the pair to a helper process instead. These
tests vote in a ``threading.Thread`` and check that symbolic-only equivalents still cluster, that a
slow or hung math-verify is cut off, that the main thread still uses its signal deadline (no helper),
and that a helper that cannot start is reported, not ignored.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

import pytest

from engine.types import Rollout, RolloutGroup, Task
from rewards import answers_equivalent, majority_vote
from rewards import equivalence
from rewards.deadline import Worker, WorkerUnavailable, serve

# Pairs only math-verify's tier matches (checked by test_these_pairs_need_math_verify).
SYMBOLIC = [(r"\tan^2(y)+1", r"\sec^2(y)"), (r"\frac{x+2}{7}", r"\frac{x}{7}+\frac{2}{7}")]
# With math-verify, {tan^2+1, sec^2} (4 votes) beats "5" (3 votes); without it "5" would win.
VOTE = [r"\tan^2(y)+1", r"\sec^2(y)", r"\tan^2(y)+1", "5", r"\sec^2(y)", "5", "5", None]
HUGE = ("9^{9^{9^{9^{9}}}}", "9^{9^{9^{9^{8}}}}")  # math-verify's verify runs past its deadline


@pytest.fixture(autouse=True)
def cold():
    """Each test starts without cached verdicts (which would hide the path taken) and without a helper."""
    equivalence.clear_caches()
    yield
    equivalence.clear_caches()


def group(answers: list[str | None]) -> RolloutGroup:
    texts = [f"So \\boxed{{{a}}}." if a is not None else "I am not sure." for a in answers]
    return RolloutGroup(Task(id="t0", question="q"), [Rollout(t, [1, 2], None, "stop") for t in texts])


def in_thread(fn, timeout: float = 60.0):
    """``fn()`` run in a fresh thread (not the main one), and the seconds it took."""
    out = {}

    def work():
        start = time.perf_counter()
        out["value"] = fn()
        out["seconds"] = time.perf_counter() - start

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive() and "value" in out, "the call in the thread did not finish"
    return out["value"], out["seconds"]


def vote(answers):
    g = group(answers)
    return majority_vote(g), g.label, dict(g.stats)


def test_these_pairs_need_math_verify(monkeypatch):
    monkeypatch.setattr(equivalence, "_verify_sorted", lambda a, b: False)  # tiers 1-2 only
    assert not any(answers_equivalent(a, b) for a, b in SYMBOLIC)
    rewards, label, _ = vote(VOTE)
    assert label == "5" and rewards == [0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0]


def test_a_vote_off_the_main_thread_clusters_symbolic_answers_as_on_it():
    starts = equivalence.MATH_VERIFY_WORKER.starts
    off, _ = in_thread(lambda: vote(VOTE))
    assert equivalence.MATH_VERIFY_WORKER.starts == starts + 1  # the helper decided the symbolic pair
    assert in_thread(lambda: [answers_equivalent(a, b) for a, b in SYMBOLIC])[0] == [True, True]
    equivalence.clear_caches()
    on = vote(VOTE)
    assert off == on
    assert on[0] == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0] and on[2]["vote/majority_ratio"] == 0.5


def test_main_thread_keeps_the_signal_deadline_and_starts_no_helper():
    starts = equivalence.MATH_VERIFY_WORKER.starts
    assert [answers_equivalent(a, b) for a, b in SYMBOLIC] == [True, True]
    start = time.perf_counter()
    assert not answers_equivalent(*HUGE)
    assert time.perf_counter() - start < 3 * equivalence.MATH_VERIFY_TIMEOUT_S + 1.0
    assert equivalence.MATH_VERIFY_WORKER.starts == starts


def test_someone_elses_timer_on_the_main_thread_is_left_alone():
    fired, starts = [], equivalence.MATH_VERIFY_WORKER.starts
    old = signal.signal(signal.SIGALRM, lambda *_: fired.append(1))
    signal.setitimer(signal.ITIMER_REAL, 120.0)
    try:
        assert answers_equivalent(*SYMBOLIC[0])  # through the helper: our SIGALRM would eat their timer
        assert 0 < signal.getitimer(signal.ITIMER_REAL)[0] <= 120.0 and not fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert equivalence.MATH_VERIFY_WORKER.starts == starts + 1


def test_a_long_math_verify_is_cut_off_off_the_main_thread():
    in_thread(lambda: answers_equivalent("1", "2"))  # start the helper: its start is not the call's time
    equal, seconds = in_thread(lambda: answers_equivalent(*HUGE))
    assert not equal
    assert seconds < 3 * equivalence.MATH_VERIFY_TIMEOUT_S + equivalence.WORKER_GRACE_S
    assert all(equivalence._timeouts[equivalence.normalize_answer(s)] >= 1 for s in HUGE)  # counted here
    (rewards, label, _), seconds = in_thread(lambda: vote([HUGE[0], HUGE[1], HUGE[1], "3"]))
    assert label == HUGE[1] and rewards == [0.0, 1.0, 1.0, 0.0]
    assert seconds < 3 * equivalence.MATH_VERIFY_TIMEOUT_S + equivalence.WORKER_GRACE_S


def serve_slowly():
    """A helper stuck where no signal reaches it (as inside one long C call), except on "ping"."""
    serve(lambda request: "pong" if request == "ping" else time.sleep(3600))


def test_a_hung_helper_is_killed_and_the_vote_returns_in_bounded_time(monkeypatch, caplog):
    monkeypatch.setattr(equivalence, "MATH_VERIFY_TIMEOUT_S", 0.2)
    monkeypatch.setattr(equivalence, "WORKER_GRACE_S", 0.3)
    hung = Worker(__name__, serve_slowly.__name__)
    monkeypatch.setattr(equivalence, "MATH_VERIFY_WORKER", hung)
    try:
        assert in_thread(lambda: hung.call("ping", timeout=30))[0] == "pong"
        with caplog.at_level(logging.WARNING, logger="rewards.deadline"):
            (rewards, label, _), seconds = in_thread(lambda: vote(VOTE))
        assert seconds < 3 * 0.2 + 0.3 + 1.0  # one kill (the only symbolic pair), plus slack
        assert label == "5" and rewards == [0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0]  # as without math-verify
        assert "gave no reply within 0.9 s" in caplog.text
        assert all(equivalence._timeouts[s] == 1 for s in SYMBOLIC[0])  # blamed on both, as a verify timeout
        assert in_thread(lambda: hung.call("ping", timeout=30))[0] == "pong" and hung.starts == 2  # restarted
    finally:
        hung.close()


def test_a_helper_that_cannot_start_is_reported_once(monkeypatch, caplog):
    broken = Worker("no_such_module_for_ttrl_tests", "serve")
    monkeypatch.setattr(equivalence, "MATH_VERIFY_WORKER", broken)
    with caplog.at_level(logging.WARNING, logger="rewards.deadline"):
        assert in_thread(lambda: [answers_equivalent(a, b) for a, b in SYMBOLIC])[0] == [False, False]
        assert in_thread(lambda: answers_equivalent(r"\frac12", "0.5"))[0]  # tiers 1-2 still decide
    warnings = [r for r in caplog.records if "cannot start the helper" in r.getMessage()]
    assert len(warnings) == 1 and "no_such_module_for_ttrl_tests" in warnings[0].getMessage()
    assert broken.starts == 1  # no retry after the failure
    with pytest.raises(WorkerUnavailable):
        broken.call("ping", timeout=1)
