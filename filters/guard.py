"""Label-free collapse guards: rules on the vote's own signals that skip risky groups, pause, or stop a run.

Why. Label-free rewards, the majority vote included, tend to rise then fall on long runs (the TTRL
authors, arXiv 2603.08660): once the vote locks onto a wrong answer the update spreads it, and more
prompts go correct → wrong than wrong → correct. The flip rate of majority answers warns early, and
TTRL-Guard (arXiv 2605.19444) protects the model by scaling rewards by flip risk and pausing updates on
polarised problems. A guard here sees only label-free signals — a step's ``vote/*`` telemetry
(``vote/flip_rate``, ``vote/locked_in``, ``vote/majority_ratio``, ``vote/answer_entropy``), the step's
sampled groups and the per-prompt vote history (``filters.vote_history.VoteHistory``: ``flips``,
``flipped``, ``locked``) — never a ``label/*`` key or a true label: ``engine.rundir.guard`` hands it the
``vote/*`` and ``guard/*`` keys of each row and nothing else.

A guard is a plain callable ``(signals, groups, votes, history) -> Verdict``: ``signals`` this step's
label-free row, ``groups`` the step's sampled groups (pseudo-labels and ``vote/*`` stats), ``votes`` the
vote history, ``history`` the label-free rows of earlier steps (with the guard's own ``guard/*`` keys).
Registered in ``GUARDS``; ``--guard module:function`` names your own.

Down-weighting a group's rewards is not offered: TRL normalises advantages within each group
(``scale_rewards="group"``, its default), so a per-group reward scale cancels out; skipping the group
is the action that takes effect.

``SCORES``: how a weight snapshot is ranked for the end-of-run rollback, from the label-free rows its
weights produced (``engine.rundir.guard``). ``stability`` is the default; ``--guard_score`` swaps it.
``anchor_accuracy`` is the one score that reads labels: the user's own labeled examples (``--anchor``, a
small dev set held out of the test prompts), measured on each snapshot's weights when it is taken — never
the test labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from engine.types import RolloutGroup
from filters.vote_history import VoteHistory

ACTIONS = ("train", "pause", "stop")


@dataclass
class Verdict:
    """What a guard decides for one step: ``train`` (less the groups in ``skip``, by task id), ``pause``
    (no update this step) or ``stop`` (no update, and the run ends); ``reason`` says why, for the log.
    ``rollback_steps`` > 0 with ``stop``: the rows of the last that many steps (this one included) raised the
    alarm, so the run ends on the weights that sampled the first of them, or the latest snapshot before
    (``engine.rundir.guard``), whatever the snapshot score says."""

    action: str = "train"
    skip: set[str] = field(default_factory=set)
    reason: str = ""
    rollback_steps: int = 0

    def __post_init__(self):
        if self.action not in ACTIONS:
            raise ValueError(f"guard verdict action {self.action!r}; allowed: {', '.join(ACTIONS)}")


class Guard(Protocol):
    """A collapse guard (module docstring): this step's label-free signals, its sampled groups, the vote
    history and the earlier steps' label-free rows in; the step's ``Verdict`` out. A guard's own options are
    keyword-only, with defaults (the spec's keys). ``tests/test_layering.py`` checks every one in ``GUARDS``."""

    def __call__(self, signals: dict, groups: list[RolloutGroup], votes: VoteHistory,
                 history: list[dict]) -> Verdict: ...


class SnapshotScore(Protocol):
    """How a weight snapshot is ranked for the rollback: the rows its weights produced in, higher is better
    out (NaN: nothing to rank on). ``tests/test_layering.py`` checks every one in ``SCORES``."""

    def __call__(self, window: list[dict]) -> float: ...


def watch(signals: dict, groups: list[RolloutGroup], votes: VoteHistory, history: list[dict]) -> Verdict:
    """Never intervenes: with ``--guard_snapshot_every`` it keeps snapshots and rolls back at the end only."""
    return Verdict()


def skip_flipped(signals: dict, groups: list[RolloutGroup], votes: VoteHistory, history: list[dict], *,
                 min_majority: float = 0.0) -> Verdict:
    """Skip the groups of prompts whose majority answer changed since their previous visit (their
    pseudo-label is the least trustworthy: TTRL-Guard's flip risk), and, with ``min_majority`` > 0, the
    polarised groups whose majority holds fewer than that share of the votes."""
    skip = {g.task.id for g in groups if g.task.id in votes.flipped
            or g.stats.get("vote/majority_ratio", 1.0) < min_majority}
    return Verdict(skip=skip, reason=f"{len(skip)} flipped or polarised groups" if skip else "")


def pause_on_flips(signals: dict, groups: list[RolloutGroup], votes: VoteHistory, history: list[dict], *,
                   max_flip_rate: float = 0.5, max_locked_in: float = 0.2, patience: int = 3) -> Verdict:
    """Pause the update on a step whose flip rate exceeds ``max_flip_rate`` (the vote is unstable: its
    labels are noise); stop the run when ``patience`` steps in a row were paused, or when the share of
    prompts locked in on an answer other than their first majority exceeds ``max_locked_in`` (the
    model has talked itself into new certainties: the collapse the guard exists to prevent)."""
    locked = signals.get("vote/locked_in", 0.0)
    if locked > max_locked_in:
        return Verdict("stop", reason=f"locked-in share {locked:.3f} > {max_locked_in}")
    flip = signals.get("vote/flip_rate", float("nan"))
    if not math.isnan(flip) and flip > max_flip_rate:
        paused_before = 0
        for row in reversed(history):
            if not row.get("guard/paused"):
                break
            paused_before += 1
        if paused_before + 1 >= patience:
            return Verdict("stop", reason=f"flip rate above {max_flip_rate} on {patience} steps in a row")
        return Verdict("pause", reason=f"flip rate {flip:.3f} > {max_flip_rate}")
    return Verdict()


def ttrl_guard(signals: dict, groups: list[RolloutGroup], votes: VoteHistory, history: list[dict], *,
               min_majority: float = 0.0, max_flip_rate: float = 0.5, max_locked_in: float = 0.2,
               patience: int = 3) -> Verdict:
    """``pause_on_flips`` first (pause or stop the whole step), else ``skip_flipped`` (TTRL-Guard's two
    levers, arXiv 2605.19444: per-prompt flip risk and whole-run instability)."""
    verdict = pause_on_flips(signals, groups, votes, history, max_flip_rate=max_flip_rate,
                             max_locked_in=max_locked_in, patience=patience)
    if verdict.action != "train":
        return verdict
    return skip_flipped(signals, groups, votes, history, min_majority=min_majority)


def flip_alarm(signals: dict, groups: list[RolloutGroup], votes: VoteHistory, history: list[dict], *,
               max_flip_rate: float = 0.1, window: int = 4) -> Verdict:
    """Stop the run when the mean flip rate over the last ``window`` steps that revisited prompts exceeds
    ``max_flip_rate``, and end it on the weights from before those steps (``rollback_steps``).

    Why. Under TTRL the damage is done early and fast: on ``demo-systematic`` every seed peaks after the
    first episode, and in the second its majority answers flip on 10-20% of revisited prompts while
    correct → wrong transitions outnumber wrong → correct (flip rate vs correct → wrong, r = +0.80 per step;
    ``benchmarks/results/collapse.md``). A healthy run moves its labels too, mostly less: 5-14% on the clean
    demo over ten seeds.
    Flips say the vote on many prompts is a close contest that the update is about to settle one way,
    right or wrong (TTRL-Guard, arXiv 2605.19444); stopping there and keeping the weights from before the
    contest is this guard's answer to "when do I stop, and which checkpoint do I report" (TTRL issues #40,
    #48). The default threshold, 0.1, was read off this project's collapse benchmark (between seeds 0-4's
    clean runs, 0.07-0.09, and the systematic runs, 0.10-0.20, in the second episode), so it is a demo-scale
    setting: on a slow but healthy run a burst above it stops a run that would have gone on improving (one
    seed of five with 20% flipped labels, one of five held-out clean seeds). Needs ``guard_snapshot_every`` dividing ``window``
    for the rollback to land exactly before the window."""
    flips = [r["vote/flip_rate"] for r in [*history, signals] if not math.isnan(r.get("vote/flip_rate", math.nan))]
    if len(flips) < window:
        return Verdict()
    rate = sum(flips[-window:]) / window
    if rate <= max_flip_rate:
        return Verdict()
    return Verdict("stop", reason=f"mean flip rate {rate:.3f} > {max_flip_rate} over the last {window} steps",
                   rollback_steps=window)


def flip_collapse(signals: dict, groups: list[RolloutGroup], votes: VoteHistory, history: list[dict], *,
                  active: float = 0.1, fall: float = 0.35, min_locked_in: float = 0.03, window: int = 4) -> Verdict:
    """Stop the run when the flip rate has *collapsed* after an active phase while prompts lock in on new
    answers, and end it on the weights from before the active phase (``rollback_steps``).

    Why. TTRL-Guard (arXiv 2605.19444) reads the danger sign not only as a burst of flips but as what follows
    one: the votes stop moving because a consensus, right or wrong, has locked in. The active phase is a window
    of ``window`` revisiting steps whose mean flip rate reached ``active`` (the peak window: the highest so
    far); the collapse is the latest window's mean at or below ``fall`` × that peak, with the share of prompts
    unanimous on an answer other than their first majority (``vote/locked_in``) at least ``min_locked_in``.
    The rollback goes to the weights that sampled the peak window's first row. Thresholds read off
    ``demo-systematic``'s and the clean demo's plain runs in ``benchmarks/results/collapse.json`` (the burst
    level is ``flip_alarm``'s 0.1; there the lock-in condition changed when it fires, not on which runs);
    ``benchmarks/guard.py`` reports them on a failure they were not read from."""
    rows = [*history, signals]
    at = [i for i, r in enumerate(rows) if not math.isnan(r.get("vote/flip_rate", math.nan))]
    if len(at) < window + 1:
        return Verdict()
    flips = [rows[i]["vote/flip_rate"] for i in at]
    means = [sum(flips[j:j + window]) / window for j in range(len(flips) - window + 1)]
    peak_at = max(range(len(means)), key=means.__getitem__)
    peak, now, locked = means[peak_at], means[-1], signals.get("vote/locked_in", 0.0)
    if peak < active or now > fall * peak or locked < min_locked_in:
        return Verdict()
    return Verdict("stop", reason=f"mean flip rate {now:.3f} <= {fall} x its peak {peak:.3f} (>= {active}), locked-in "
                                  f"share {locked:.3f} >= {min_locked_in}", rollback_steps=len(rows) - at[peak_at])


def stability(window: list[dict]) -> float:
    """The default snapshot score, from the label-free rows sampled with the snapshot's weights
    (higher is better): mean majority ratio − mean flip rate − 2 × the locked-in share at the window's end.

    Consensus alone cannot tell a right vote from a confidently wrong one — a collapsing run's majority
    ratio keeps rising — so the score pays for agreement only where it is stable (answers that do not
    flip between visits) and charges twice for prompts that have locked in on an answer other than
    their first majority, the signature of the vote walking away (arXiv 2605.19444). NaN flip rates
    (prompts not yet revisited) count as no flips. NaN for an empty window: nothing to rank on."""
    if not window:
        return float("nan")
    ratios = [r["vote/majority_ratio"] for r in window if not math.isnan(r.get("vote/majority_ratio", math.nan))]
    flips = [r["vote/flip_rate"] for r in window if not math.isnan(r.get("vote/flip_rate", math.nan))]
    consensus = sum(ratios) / len(ratios) if ratios else 0.0
    flip = sum(flips) / len(flips) if flips else 0.0
    return consensus - flip - 2.0 * window[-1].get("vote/locked_in", 0.0)


def none(window: list[dict]) -> float:
    """No snapshot is ranked (NaN for every window): the final weights are kept unless the guard's policy
    stopped the run with a rollback (``flip_alarm``). The bounded snapshot store then keeps the latest."""
    return float("nan")


ANCHOR_KEY = "anchor/accuracy"  # the greedy accuracy on the --anchor examples, in a metrics row and a window


def anchor_accuracy(window: list[dict]) -> float:
    """The snapshot's greedy accuracy on the user's labeled anchors (``--anchor``), measured with its own
    weights when it was taken and put at the head of its window (``engine.rundir.guard``); higher is better.

    Why. A label-free score cannot tell a confidently wrong majority from a right one: a collapsing run's
    consensus keeps rising while its answers go wrong (arXiv 2603.08660). A handful of labeled examples
    can, and a user adapting at test time usually has a small dev set (LESS's setting, arXiv 2402.04333).
    With 8-32 anchors the score moves in steps of 3-12 points, so ties are common: the later snapshot wins
    them. The mean where a window holds several measurements; NaN where it holds none."""
    values = [r[ANCHOR_KEY] for r in window if not math.isnan(r.get(ANCHOR_KEY, math.nan))]
    return sum(values) / len(values) if values else float("nan")


GUARDS: dict = {"watch": watch, "skip_flipped": skip_flipped, "pause_on_flips": pause_on_flips,
                "ttrl_guard": ttrl_guard, "flip_alarm": flip_alarm, "flip_collapse": flip_collapse}
SCORES: dict = {"stability": stability, "none": none, "anchor_accuracy": anchor_accuracy}
