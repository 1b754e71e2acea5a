"""Rollout selectors: which ``k`` of a group's N_vote rollouts the update trains on.

TTRL (arXiv 2504.16084, §4 setup) votes with 64 samples and trains on 32 of them — the first ones.
Because the sampler draws every rollout independently, "the first k" is a uniform random subset, the
trivial selector other selectors (PODS's max-variance, gradient influence) are measured against.
"""

from __future__ import annotations

from engine.types import RolloutGroup


def first_k(group: RolloutGroup, k: int) -> list[int]:
    """The first ``k`` rollouts (TTRL's default).

    >>> from engine.types import Rollout, RolloutGroup, Task
    >>> group = RolloutGroup(Task("0", "1+1"), [Rollout(t, [], None, "stop") for t in "122"])
    >>> first_k(group, 2)
    [0, 1]
    """
    if k > len(group.rollouts):
        raise ValueError(f"cannot select {k} rollouts from a group of {len(group.rollouts)} (task {group.task.id})")
    return list(range(k))


def max_variance(group: RolloutGroup, k: int) -> list[int]:
    """The ``k`` rollouts whose rewards have the largest variance (PODS, max-variance down-sampling).

    PODS shows the maximum-variance subset of size k is always some ``i`` lowest rewards plus the
    ``k - i`` highest, so trying every ``i`` is exact in O(n log n + k^2). For binary rewards (TTRL's
    agree/disagree with the pseudo-label) that is the most balanced mix of 1s and 0s. Within equal
    rewards the lower index wins, and among equally good subsets the lexicographically smallest;
    indices come back ascending.

    >>> from engine.types import Rollout, RolloutGroup, Task
    >>> rollouts = [Rollout("", [], None, "stop", reward=r) for r in (1.0, 1.0, 0.0, 0.0, 1.0)]
    >>> max_variance(RolloutGroup(Task("0", "1+1"), rollouts), 2)
    [0, 2]
    """
    rewards = group.rewards
    n = len(rewards)
    if k > n:
        raise ValueError(f"cannot select {k} rollouts from a group of {n} (task {group.task.id})")
    ascending = sorted(range(n), key=lambda i: (rewards[i], i))
    descending = sorted(range(n), key=lambda i: (-rewards[i], i))
    best, best_var = None, -1.0
    for low in range(k + 1):
        lows = ascending[:low]
        taken = set(lows)
        picked = sorted(lows + [i for i in descending if i not in taken][: k - low])
        values = [rewards[i] for i in picked]
        mean = sum(values) / max(1, k)
        var = sum((v - mean) ** 2 for v in values) / max(1, k)
        if var > best_var + 1e-12 or (abs(var - best_var) <= 1e-12 and picked < best):
            best, best_var = picked, var
    return best
