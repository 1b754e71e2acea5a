"""Reward functions for test-time RL: answer extraction, answer equivalence, the majority vote.

``REWARDS`` is the explicit registry that ``engine.registry`` resolves names against; a custom
reward is any ``(group) -> list[float]`` callable (see ``engine.types.Reward``). This package never
imports vllm, trl or ray.
"""

from __future__ import annotations

from collections.abc import Callable

from rewards.equivalence import answers_equivalent, cluster_answers, is_correct, normalize_answer
from rewards.extract import extract_answer, extract_reference
from rewards.vote import majority_vote

REWARDS: dict[str, Callable] = {"majority_vote": majority_vote}


def build_reward(spec, *, answer_type: str = "math") -> Callable:
    """The group reward ``(group) -> list[float]`` a run uses, from its ``reward`` spec.

    ``answer_type`` says how answers are extracted and compared (the suite's or the config's).
    """
    from engine.registry import resolve

    return resolve(spec, REWARDS, "rewards")

__all__ = [
    "REWARDS",
    "answers_equivalent",
    "build_reward",
    "cluster_answers",
    "extract_answer",
    "extract_reference",
    "is_correct",
    "majority_vote",
    "normalize_answer",
]
