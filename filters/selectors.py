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
