"""Spurious-reward controls: rewards that carry no information about correctness, run beside TTRL.

Random rewards alone lift Qwen2.5-Math-7B by +21 points on MATH-500 (Shao et al., "Spurious Rewards",
arXiv 2506.10947): a gain from test-time RL means little until it is set beside what a meaningless
reward gives on the same model, data and budget. Two controls:

- ``random``: each rollout gets 1 with probability ``p`` (default 0.5), else 0, independently of its
  answer. The draw is a hash of (``seed``, task id, rollout index, rollout text), not a stream, so it is
  reproducible, needs no state in a checkpoint, and a resumed run draws the same rewards.
- ``constant``: every rollout gets ``value`` (default 1.0). Under GRPO's group-normalised advantage a
  constant reward has zero advantage: only the KL anchor acts, the "no update" control.

Both still run the majority vote first and keep its pseudo-label and statistics on the group (its
rewards are discarded), so the run's telemetry — ``vote/majority_ratio``, ``label_accuracy`` against the
test labels — stays comparable with a TTRL run's.
"""

from __future__ import annotations

import hashlib

from engine.types import RolloutGroup
from rewards.vote import majority_vote


def uniform(*parts) -> float:
    """A number in [0, 1) fixed by ``parts``: the first 8 bytes of their SHA-256, as a fraction."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def random_reward(group: RolloutGroup, *, p: float = 0.5, seed: int = 0, answer_type: str = "math") -> list[float]:
    """1.0 with probability ``p`` per rollout, whatever its answer (the spurious-reward control).

    >>> from rewards.vote import boxed_group
    >>> g = boxed_group(["4", "4", "5", "4", "6", "4", "4", "5"])
    >>> rewards = random_reward(g, seed=1)
    >>> rewards == random_reward(g, seed=1), set(rewards) <= {0.0, 1.0}, g.label
    (True, True, '4')
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"random reward: p must be in [0, 1], got {p!r}")
    majority_vote(group, answer_type=answer_type)  # telemetry only: label and vote statistics
    return [1.0 if uniform(seed, group.task.id, i, r.text) < p else 0.0 for i, r in enumerate(group.rollouts)]


def constant_reward(group: RolloutGroup, *, value: float = 1.0, answer_type: str = "math") -> list[float]:
    """``value`` for every rollout: zero GRPO advantage, so only the KL anchor moves the model.

    >>> from rewards.vote import boxed_group
    >>> constant_reward(boxed_group(["4", "5"]), value=0.5)
    [0.5, 0.5]
    """
    majority_vote(group, answer_type=answer_type)  # telemetry only
    return [float(value)] * len(group.rollouts)
