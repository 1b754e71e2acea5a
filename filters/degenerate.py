"""Group filters that drop groups which teach nothing, or teach the wrong thing.

A GRPO advantage is a reward minus its group mean, so a group whose rewards are all equal contributes
no policy gradient at all — only backward compute. Under TTRL (arXiv 2504.16084) that is the unanimous
group: every rollout agrees with the majority, every reward is 1. DAPO's dynamic sampling (arXiv
2503.14476, §3.2) drops such groups and refills the batch; GRESO (arXiv 2506.02177) drops them after
sampling too. A *low*-consensus group is the opposite failure: the pseudo-label is a coin toss, and
SCRL only trusts a vote whose top answer holds >= 37.5% of the votes. Each filter is a plain
``(group) -> bool`` (True keeps), with its thresholds as keyword arguments from the config.
"""

from __future__ import annotations

import math

from engine.types import RolloutGroup


def zero_variance(group: RolloutGroup, tol: float = 1e-6) -> bool:
    """Keep a group only if its rewards vary (std > ``tol``; floats, so not exactly 0) — DAPO.

    >>> from engine.types import Rollout, RolloutGroup, Task
    >>> def g(rs): return RolloutGroup(Task("0", "q"), [Rollout("", [], None, "stop", reward=r) for r in rs])
    >>> zero_variance(g([1.0, 1.0, 1.0])), zero_variance(g([1.0, 0.0, 1.0]))
    (False, True)
    """
    rewards = group.rewards
    mean = sum(rewards) / len(rewards)
    return math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards)) > tol


def consensus(group: RolloutGroup, low: float = 0.375, high: float = 1.0) -> bool:
    """Keep a group whose majority ratio lies in ``[low, high]``.

    Below ``low`` the pseudo-label is unreliable (SCRL's 37.5% share); ``high`` < 1 also drops
    near-unanimous groups, which carry almost no signal. Reads ``vote/majority_ratio`` from the vote.

    >>> from engine.types import Rollout, RolloutGroup, Task
    >>> g = RolloutGroup(Task("0", "q"), [], stats={"vote/majority_ratio": 0.25})
    >>> consensus(g), consensus(g, low=0.2)
    (False, True)
    """
    ratio = group.stats.get("vote/majority_ratio")
    if ratio is None:
        raise ValueError(f"consensus needs the vote's 'vote/majority_ratio' on task {group.task.id!r}; "
                         "use it with a majority-vote reward")
    return low <= ratio <= high


def truncation(group: RolloutGroup, max_fraction: float = 0.5) -> bool:
    """Keep a group unless more than ``max_fraction`` of its rollouts hit the token budget.

    Truncated rollouts rarely contain a final answer, so they do not vote; a group dominated by them
    has a pseudo-label resting on a few votes, and trains the model toward rambling.

    >>> from engine.types import Rollout, RolloutGroup, Task
    >>> g = RolloutGroup(Task("0", "q"), [Rollout("", [], None, f) for f in ("length", "length", "stop")])
    >>> truncation(g), truncation(g, max_fraction=0.7)
    (False, True)
    """
    cut = sum(r.finish_reason == "length" for r in group.rollouts)
    return cut / len(group.rollouts) <= max_fraction
