"""Sequential voting: when is a group's majority vote decided before all of its ``n_votes`` are in?

TTRL (arXiv 2504.16084) samples N rollouts per prompt (64 in the paper) and takes their majority answer
as the pseudo-label; most groups are decided long before the last sample. This module is the stopping
rule, pure logic over answer counts (numpy, no torch): after ``m`` of ``N`` votes, with answer counts
``c`` (the leader first in the vote's tie order), a group is

- **unanimous** when every sampled rollout has an answer and they are all one answer: under the
  majority-vote reward every rollout then gets 1, the group has no GRPO advantage, and sampling it
  further buys nothing — DAPO's dynamic sampling (arXiv 2503.14476, §3.2) drops such groups, and
  sequential voting drops them after the first round instead of after all N;
- **certain** when the leader's lead over the runner-up exceeds the ``N - m`` votes still to come:
  no outcome of them can change (or tie) the majority;
- **probable** when the posterior-predictive probability that the majority after all ``N`` votes is a
  different answer than the current leader (a tie counts as different) is at most ``error``.

That probability is a Dirichlet-multinomial posterior predictive: the answer probabilities are
``Dirichlet(c + SEEN_PRIOR, UNSEEN_PRIOR, u + SEEN_PRIOR)`` over the seen answers, one bucket for every
answer not seen yet, and the rollouts with no answer (``u`` of them; they vote for nothing, as in
``rewards.vote``), and the remaining ``N - m`` votes are a multinomial draw from them; ``DRAWS`` Monte
Carlo draws, vectorised. Why these priors: 0.5 on each seen answer (and on "no answer") is Jeffreys'
prior for a multinomial, the standard uninformative choice that neither sharpens nor flattens what was
counted; the unseen bucket gets 1, the concentration-1 Dirichlet process (Chinese restaurant) mass of
"a new answer", so a group that has seen few votes keeps a real chance of an answer it has not met.
The unseen bucket is counted as *one* answer at the end, which overstates how well any new answer can do
(new answers split among themselves) — the rule errs towards sampling on. The draws come from a
generator seeded from the run's seed, the task id, the step and the round (``rule_rng``), so a decision
is a function of the samples alone: runs are reproducible and a resumed run decides as the original did.

Sequential tests on the consensus are OptPO's idea (arXiv 2512.02882: stop sampling a prompt once a
sequential test on its consensus answer concludes); ETTRL (arXiv 2508.11356) cuts TTRL's rollout cost by
spending samples where the vote is uncertain. ``SequentialVote`` binds the rule to a run's settings and
its answer extraction (``rewards.vote.tally``: the run's ``answer_type``, answers clustered by
equivalence, exactly as ``majority_vote`` counts them).
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.types import RolloutGroup
from rewards.vote import tally

DRAWS = 2000          # Monte Carlo draws per decision: the estimate's standard error is <= 0.011 at p = 0.5
SEEN_PRIOR = 0.5      # Jeffreys' prior on each seen answer, and on "no answer"
UNSEEN_PRIOR = 1.0    # a Dirichlet process of concentration 1: the mass of "an answer not seen yet"
VERDICTS = ("unanimous", "certain", "probable")  # why a group stopped before N; None: sample on


def rule_rng(seed: int, task_id: str, step: int, round_: int) -> np.random.Generator:
    """The generator of one decision: a function of the run's seed, the task, the step and the round only
    (never of what ran before), so reruns and resumed runs draw the same numbers."""
    return np.random.default_rng([seed % 2**32, zlib.crc32(str(task_id).encode("utf-8")), step, round_])


def class_counts(ids: Sequence[int | None]) -> tuple[list[int], int]:
    """Votes per answer class, in class-id order (ids come from ``rewards.answers``' clustering, whose order
    is the vote's tie order: the first largest count is the vote's leader), and the rollouts with no answer.

    >>> class_counts([1, 0, None, 1, 2])
    ([1, 2, 1], 1)
    """
    sizes = Counter(i for i in ids if i is not None)
    return [sizes[i] for i in sorted(sizes)], sum(i is None for i in ids)


def leader_change_probability(counts: Sequence[int], unanswered: int, remaining: int, *, rng: np.random.Generator,
                              draws: int = DRAWS) -> float:
    """P(the majority after ``remaining`` more votes is not today's leader, or is tied), Dirichlet-multinomial.

    ``counts``: votes per seen answer, the leader being the first largest; ``unanswered``: rollouts with no
    answer so far. With no votes yet there is no leader: 1.0.

    >>> round(leader_change_probability([3, 3], 0, 0, rng=np.random.default_rng(0)), 3)  # a tie is "differs"
    1.0
    >>> leader_change_probability([5, 3], 0, 0, rng=np.random.default_rng(0))
    0.0
    """
    counts = np.asarray(counts, dtype=float)
    if not counts.size or counts.max() <= 0:
        return 1.0
    leader = int(np.argmax(counts))
    if remaining <= 0:
        return float((np.delete(counts, leader) >= counts[leader]).any())
    alpha = np.concatenate([counts + SEEN_PRIOR, [UNSEEN_PRIOR, unanswered + SEEN_PRIOR]])
    future = rng.multinomial(remaining, rng.dirichlet(alpha, size=draws))   # (draws, answers + 2)
    final = counts + future[:, : counts.size]
    rivals = np.concatenate([np.delete(final, leader, axis=1), future[:, counts.size : counts.size + 1]], axis=1)
    return float((rivals.max(axis=1) >= final[:, leader]).mean())


def verdict(ids: Sequence[int | None], total: int, *, error: float, rng: np.random.Generator,
            draws: int = DRAWS) -> str | None:
    """Why the group of these answer classes (one per sampled rollout, None: no answer) may stop before
    ``total`` votes — ``unanimous``, ``certain`` or ``probable`` (module docstring) — or None: sample on.

    >>> verdict([0, 0, 0, 0], 64, error=0.05, rng=np.random.default_rng(0))
    'unanimous'
    >>> verdict([0] * 40 + [None], 64, error=0.05, rng=np.random.default_rng(0))   # lead 40 > 23 to come
    'certain'
    """
    if ids and all(i is not None for i in ids) and len(set(ids)) == 1:
        return "unanimous"
    counts, unanswered = class_counts(ids)
    remaining = total - len(ids)
    ranked = sorted(counts, reverse=True)
    if ranked and ranked[0] - (ranked[1] if len(ranked) > 1 else 0) > remaining:
        return "certain"
    if remaining > 0 and leader_change_probability(counts, unanswered, remaining, rng=rng, draws=draws) <= error:
        return "probable"
    return None


def leader(ids: Sequence[int | None]) -> int | None:
    """The class the majority vote picks (largest count, ties to the smallest id), None with no answers."""
    counts, _ = class_counts(ids)
    if not counts:
        return None
    return sorted({i for i in ids if i is not None})[int(np.argmax(counts))]


@dataclass(frozen=True)
class Replay:
    """What sequential voting would have done with a fully sampled group (``--sequential_vote monitor``)."""

    votes: int            # the votes it would have sampled
    why: str | None       # its verdict at that point (None: it would have sampled all of them)
    differs: bool         # its leader there is not the full vote's majority


@dataclass(frozen=True)
class SequentialVote:
    """The stopping rule bound to a run: ``total`` votes at most (n_votes), ``first`` in round 1
    (max(n_train, round_size), so every group can give its n_train training rows), ``round_size`` more per
    later round, ``error`` the largest accepted probability that the full vote would differ."""

    total: int
    first: int
    round_size: int
    error: float
    seed: int
    answer_type: str = "math"
    draws: int = DRAWS

    def classes(self, group: RolloutGroup) -> list[int | None]:
        """The answer class of every rollout, extracted and clustered as the majority vote does."""
        return tally(group, self.answer_type).ids

    def round_of(self, votes: int) -> int:
        """The round (1, 2, ...) in which the group's ``votes``-th vote was sampled."""
        return 1 + -(-max(0, votes - self.first) // self.round_size)

    def decide(self, ids: Sequence[int | None], *, task_id: str, step: int) -> str | None:
        """``verdict`` after the round these ``ids`` complete, drawn from that decision's own generator."""
        rng = rule_rng(self.seed, task_id, step, self.round_of(len(ids)))
        return verdict(ids, self.total, error=self.error, rng=rng, draws=self.draws)

    def replay(self, group: RolloutGroup, *, step: int) -> Replay:
        """Run the rule over the prefixes a sequential run would have seen (``first``, then every
        ``round_size`` more), on the same samples, with the same generators: where it would have stopped,
        and whether the leader it stopped on is the full vote's majority. Classes are clustered over the
        whole group once, so a prefix's counts are the full vote's counts of its rollouts."""
        ids = self.classes(group)
        votes = min(self.first, len(ids))
        while True:
            why = self.decide(ids[:votes], task_id=group.task.id, step=step)
            if why is not None or votes >= len(ids):
                return Replay(votes, why, leader(ids[:votes]) != leader(ids))
            votes = min(votes + self.round_size, len(ids))
