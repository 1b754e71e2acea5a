"""Plugins the tests load by 'module:function' spec, as a user's own module would be."""

from rewards import majority_vote

SEEN_LABELS: list = []


def spy_reward(group):
    """Majority vote that records the task label the reward stage was handed."""
    SEEN_LABELS.append(group.task.label)
    return majority_vote(group)


def nan_reward(group):
    return [float("nan")] * len(group.rollouts)


def short_reward(group):
    return [1.0]
