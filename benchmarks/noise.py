"""A majority vote with injected label noise, for robustness benchmarks only.

DTV (Jia, Yang, Huang, Liu, "Not All Rollouts Are Worth Learning: On Trajectory Valuation for Post-Training
RL", 2026) reverses 20% of reward rankings to mimic the noise of pseudo-labels. Here a
random ``flip`` fraction of groups get inverted rewards (1 - r): the rollouts that agreed with the
majority are punished and the dissenters rewarded. The draw is keyed on the task id and a visit
counter, so it is reproducible for a seed and independent of batch composition.
"""

from __future__ import annotations

import random

from rewards import majority_vote


class NoisyMajorityVote:
    def __init__(self, flip: float = 0.2, seed: int = 0):
        self.flip, self.seed, self.visits = flip, seed, {}

    def __call__(self, group) -> list[float]:
        rewards = majority_vote(group)
        visit = self.visits[group.task.id] = self.visits.get(group.task.id, 0) + 1
        if random.Random(f"{self.seed}-{group.task.id}-{visit}").random() < self.flip:
            rewards = [1.0 - r for r in rewards]
            group.stats["noise/flipped"] = 1.0
        else:
            group.stats["noise/flipped"] = 0.0
        return rewards


def reward_spec(flip: float, seed: int) -> dict:
    """The ``reward`` option of a run whose votes are flipped: ``NoisyMajorityVote`` at ``flip`` for ``seed``."""
    return {"name": "benchmarks.noise:NoisyMajorityVote", "flip": flip, "seed": seed}
