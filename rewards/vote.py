"""TTRL's reward and its variants: a vote over the group's extracted answers makes the pseudo-label.

TTRL (arXiv 2504.16084, §3, Eq. 4) samples N answers per unlabeled prompt, takes the most frequent
one as the estimated label y*, and rewards each rollout 1 if its answer equals y* else 0. Variants:

- ``majority_vote`` (the default): answers clustered by equivalence (``0.5`` = ``\\frac12``).
- ``plain_majority``: answers counted as normalized strings, TTRL's original counting.
- ``confident_vote``: SCRL's gate — label only when the top cluster holds >= 37.5% of the rollouts
  and leads the runner-up by > 12.5 points; otherwise no positive label (all rewards 0).
- ``soft_vote``: reward = the share of the rollouts in the rollout's own cluster.

Choices the papers leave open, fixed here:

- Rollouts with no extractable answer do not vote and get 0 (an empty answer is never "the majority"),
  but they count in the denominator of every share (a vote where most rollouts say nothing is weak).
- Ties go to the class whose representative (smallest normalized member) sorts first. That depends
  only on the multiset of answers, so shuffling the rollouts never changes the label or the rewards.

Every variant sets ``rollout.answer``, ``rollout.reward``, ``group.label`` and ``group.stats``:
``vote/majority_ratio`` (top cluster / all rollouts), ``vote/distinct_answers`` (clusters),
``vote/answered_ratio`` (rollouts with an answer / all) and ``vote/answer_entropy`` (Shannon entropy,
in nats, of the cluster distribution over the answered rollouts: 0 when they all agree, ln k for k
equal clusters). The task's true label is never read: the pseudo-label comes from the samples alone.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from engine.types import Rollout, RolloutGroup, Task
from rewards.answers import cluster_with_representatives, extract_answer

_EPS = 1e-12  # threshold comparisons on shares are exact fractions; keep float noise out of them


def boxed_group(answers: list[str | None], question: str = "q") -> RolloutGroup:
    """A group whose rollouts each box one of ``answers`` (None: a rollout that answers nothing).

    For examples and tests: ``boxed_group(["4", "4", "5"])``.
    """
    texts = [f"so the answer is \\boxed{{{a}}}." if a is not None else "no idea" for a in answers]
    return RolloutGroup(Task("0", question), [Rollout(t, [], None, "stop") for t in texts])


@dataclass
class Tally:
    """The clustered vote of one group: a class id per rollout, class representatives and sizes."""

    ids: list[int | None]
    reps: list[str]
    sizes: Counter
    n: int

    @property
    def ranked(self) -> list[int]:
        """Class ids, largest first; ties broken by id (= representative sort order)."""
        return sorted(self.sizes, key=lambda i: (-self.sizes[i], i))

    def share(self, rank: int) -> float:
        ranked = self.ranked
        return self.sizes[ranked[rank]] / self.n if rank < len(ranked) else 0.0


def tally(group: RolloutGroup, answer_type: str = "math", *, exact: bool = False) -> Tally:
    """Extract every rollout's answer (setting ``rollout.answer``) and cluster them."""
    question = getattr(group.task, "question", None)
    for rollout in group.rollouts:
        rollout.answer = extract_answer(rollout.text, answer_type, question=question)
    ids, reps = cluster_with_representatives([r.answer for r in group.rollouts], answer_type, exact=exact)
    return Tally(ids, reps, Counter(i for i in ids if i is not None), len(group.rollouts))


def _finish(group: RolloutGroup, t: Tally, rewards: list[float], winner: int | None) -> list[float]:
    """Write rewards, the label and the shared vote statistics onto the group."""
    for rollout, reward in zip(group.rollouts, rewards):
        rollout.reward = reward
    answered = sum(t.sizes.values())
    group.label = t.reps[winner] if winner is not None else None
    group.stats["vote/majority_ratio"] = t.share(0)
    group.stats["vote/distinct_answers"] = float(len(t.sizes))
    group.stats["vote/answered_ratio"] = answered / t.n if t.n else 0.0
    # Summed in a fixed order (sorted counts), so a shuffled group gives the identical float.
    group.stats["vote/answer_entropy"] = -sum(c / answered * math.log(c / answered) for c in sorted(t.sizes.values())) + 0.0
    return rewards


def _hard(group: RolloutGroup, t: Tally) -> list[float]:
    winner = t.ranked[0] if t.sizes else None
    return _finish(group, t, [1.0 if i is not None and i == winner else 0.0 for i in t.ids], winner)


def majority_vote(group: RolloutGroup, *, answer_type: str = "math") -> list[float]:
    """Reward 1.0 for rollouts in the largest equivalence class of answers, else 0.0 (TTRL, the default).

    >>> g = boxed_group(["4", "4.0", "5", None])
    >>> majority_vote(g), g.label, g.stats["vote/majority_ratio"], round(g.stats["vote/answer_entropy"], 4)
    ([1.0, 1.0, 0.0, 0.0], '4', 0.5, 0.6365)
    """
    return _hard(group, tally(group, answer_type))


def plain_majority(group: RolloutGroup, *, answer_type: str = "math") -> list[float]:
    """Majority over normalized answer *strings*, no equivalence: TTRL's original counting.

    ``4`` and ``4.0`` normalize alike; ``\\frac12`` and ``0.5`` do not, so they split the vote:

    >>> g = boxed_group(["0.5", r"\\frac12", "3", "3"])
    >>> plain_majority(g), g.label, g.stats["vote/distinct_answers"]
    ([0.0, 0.0, 1.0, 1.0], '3', 3.0)
    """
    return _hard(group, tally(group, answer_type, exact=True))


def confident_vote(group: RolloutGroup, *, min_share: float = 0.375, min_margin: float = 0.125,
                   answer_type: str = "math") -> list[float]:
    """Majority vote gated on confidence (SCRL): label only if the top cluster's share of all rollouts
    is >= ``min_share`` and exceeds the runner-up's by more than ``min_margin``; else every reward is
    0.0 and ``group.label`` is None. ``vote/confident`` records 1.0 or 0.0.

    >>> g = boxed_group(["7", "7", "7", "8", "8", "9", "9", None])   # 3/8 = 0.375, margin 1/8: not >
    >>> confident_vote(g), g.label, g.stats["vote/confident"]
    ([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], None, 0.0)
    >>> g = boxed_group(["7", "7", "7", "8", "9", None, None, None])  # 3/8, margin 2/8
    >>> confident_vote(g), g.label
    ([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0], '7')
    """
    if not (0.0 <= min_share <= 1.0 and 0.0 <= min_margin <= 1.0):
        raise ValueError(f"confident_vote: min_share and min_margin must be in [0, 1], got {min_share}, {min_margin}")
    t = tally(group, answer_type)
    top, second = t.share(0), t.share(1)
    confident = bool(t.sizes) and top >= min_share - _EPS and top - second > min_margin + _EPS
    if confident:
        rewards = _hard(group, t)
    else:
        rewards = _finish(group, t, [0.0] * t.n, None)
    group.stats["vote/confident"] = float(confident)
    return rewards


def soft_vote(group: RolloutGroup, *, answer_type: str = "math") -> list[float]:
    """Reward = the share of all rollouts that fall in this rollout's answer cluster (0.0: no answer).

    The label is the majority cluster, as in ``majority_vote``.

    >>> g = boxed_group(["4", "4", "5", None])
    >>> soft_vote(g), g.label
    ([0.5, 0.5, 0.25, 0.0], '4')
    """
    t = tally(group, answer_type)
    rewards = [t.sizes[i] / t.n if i is not None else 0.0 for i in t.ids]
    return _finish(group, t, rewards, t.ranked[0] if t.sizes else None)
