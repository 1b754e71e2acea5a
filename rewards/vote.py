"""TTRL's reward: a majority vote over the group's extracted answers is the pseudo-label.

TTRL (arXiv 2504.16084, §3, Eq. 4) samples N answers per unlabeled prompt, takes the most frequent
one as the estimated label y*, and rewards each rollout 1 if its answer equals y* else 0. Two choices
the paper leaves open are fixed here:

- Rollouts with no extractable answer do not vote and get 0 (an empty answer is never "the majority").
- Ties go to the class whose representative (smallest normalized member) sorts first. That depends
  only on the multiset of answers, so shuffling the rollouts never changes the label or the rewards.

The task's true label is never read: the pseudo-label must come from the samples alone.
"""

from __future__ import annotations

from collections import Counter

from engine.types import RolloutGroup
from rewards.equivalence import cluster_with_representatives
from rewards.extract import extract_answer


def majority_vote(group: RolloutGroup) -> list[float]:
    """Reward 1.0 for rollouts in the largest answer class, else 0.0; sets answers, label and stats.

    Side effects: ``rollout.answer`` and ``rollout.reward`` for every rollout, ``group.label`` (the
    winning class's normalized representative, None if no rollout answered) and ``group.stats``
    ``vote/majority_ratio`` (winners / all rollouts), ``vote/distinct_answers`` (number of classes)
    and ``vote/answered_ratio`` (rollouts with an answer / all rollouts).

    >>> from engine.types import Rollout, RolloutGroup, Task
    >>> texts = [r"\\boxed{4}", "the answer is 4.0", r"\\boxed{5}", "no idea"]
    >>> group = RolloutGroup(Task("0", "2+2"), [Rollout(t, [], None, "stop") for t in texts])
    >>> majority_vote(group), group.label, group.stats["vote/majority_ratio"]
    ([1.0, 1.0, 0.0, 0.0], '4', 0.5)
    """
    for rollout in group.rollouts:
        rollout.answer = extract_answer(rollout.text)
    ids, reps = cluster_with_representatives([r.answer for r in group.rollouts])
    sizes = Counter(i for i in ids if i is not None)
    # Class ids follow their representatives' sort order, so min id among the largest = the tie-break.
    winner = min(sizes, key=lambda i: (-sizes[i], i)) if sizes else None
    rewards = [1.0 if i is not None and i == winner else 0.0 for i in ids]
    for rollout, reward in zip(group.rollouts, rewards):
        rollout.reward = reward
    n = len(group.rollouts)
    group.label = reps[winner] if winner is not None else None
    group.stats["vote/majority_ratio"] = sizes[winner] / n if winner is not None else 0.0
    group.stats["vote/distinct_answers"] = float(len(sizes))
    group.stats["vote/answered_ratio"] = sum(i is not None for i in ids) / n if n else 0.0
    return rewards
