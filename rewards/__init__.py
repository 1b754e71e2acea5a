"""Reward functions for test-time RL: answer extraction, answer equivalence, the majority vote.

``REWARDS`` (defined in ``rewards.registry``) is the explicit registry that ``build_reward`` (through
``engine.registry``) resolves names against; its first entry is the default. A custom reward is any
``(group) -> list[float]`` callable (see ``engine.types.Reward``) or a TRL-style
``(prompts, completions, **kw)`` function (see ``rewards.build``). This package never imports vllm,
trl or ray.
"""

from __future__ import annotations

from rewards.answer_types import ANSWER_TYPES, get_answer_type
from rewards.answers import answers_equivalent, cluster_answers, extract_answer, is_correct
from rewards.build import PerCompletion, WeightedSum, build_reward
from rewards.equivalence import normalize_answer
from rewards.extract import extract_reference
from rewards.registry import REWARDS
from rewards.vote import confident_vote, majority_vote, plain_majority, soft_vote

__all__ = [
    "ANSWER_TYPES",
    "PerCompletion",
    "REWARDS",
    "WeightedSum",
    "answers_equivalent",
    "build_reward",
    "cluster_answers",
    "confident_vote",
    "extract_answer",
    "extract_reference",
    "get_answer_type",
    "is_correct",
    "majority_vote",
    "normalize_answer",
    "plain_majority",
    "soft_vote",
]
