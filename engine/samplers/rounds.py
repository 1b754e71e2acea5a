"""Sampling a step's prompts under ``--sequential_vote``: in rounds that stop once a prompt's vote is decided.

TTRL (arXiv 2504.16084) samples ``n_votes`` rollouts per prompt to vote on, most of which a decided vote
does not need. With ``--sequential_vote enforce`` round 1 samples ``first`` = max(n_train, vote_round)
rollouts of every prompt — the training rows first, so every group can give its n_train (TTRL trains on the
first 32 of 64) — and each later round samples ``vote_round`` more (never past n_votes) of the prompts whose
vote is not yet decided (``rewards.sequential``: OptPO's sequential test on the consensus, arXiv
2512.02882). A group unanimous after round 1 has no GRPO advantage under the majority-vote reward: it stops
and is marked (``group.stats["sampling/unanimous"]``) for ``engine.loop.collect_groups`` to drop and refill,
as DAPO's dynamic sampling (arXiv 2503.14476) would after all n_votes.
``--sequential_vote monitor`` samples all n_votes in one call, as without it, and replays the rule on the
prefixes a sequential run would have seen, so the votes it would save and the decisions it would change are
measured on identical samples.

This is a function over the ``Sampler`` protocol, not a sampler: each round is one plain
``sampler.generate(tasks, params)`` with a smaller ``n``, so the transformers sampler, in-process vLLM
(whose prefix cache makes a prompt's later rounds cheap), the Ray rollout pool and torchrun ranks (each
rank runs its own rounds on its own prompts, no collective inside) all work unchanged. What a step reports
is read back from the gathered groups (``vote_counts``), so it is the same on every rank.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Callable

from engine.types import RolloutGroup, SamplingParams, Task
from rewards.sequential import SequentialVote

UNANIMOUS = "sampling/unanimous"  # group.stats: 1.0 where round 1 was unanimous (enforce), read by collect_groups
WOULD = ("sampling/would_sample", "sampling/would_differ", "sampling/would_unanimous")  # monitor's per-group notes


def sample_groups(sampler, tasks: list[Task], params: SamplingParams, *, mode: str, rule: SequentialVote | None,
                  step: int, desc: str = "sample") -> tuple[list[RolloutGroup], float]:
    """One sampling call of a TTRL step: ``params.n`` (n_votes) rollouts per task in one call (``off``),
    in rounds that stop when decided (``enforce``), or in one call with the rule replayed (``monitor``).
    ``step`` (the row's iteration) seeds the rule's draws with the task and the round. Returns the groups and
    the seconds the rule took (answer extraction and the decisions), which the caller's sampling time
    includes: the sampler's own time is the difference."""
    if mode == "off":
        return sampler.generate(tasks, params, desc=desc), 0.0
    if mode == "enforce":
        return sample_in_rounds(sampler, tasks, params, first=rule.first, round_size=rule.round_size, desc=desc,
                                decide=lambda grp: rule.decide(rule.classes(grp), task_id=grp.task.id, step=step))
    groups = sampler.generate(tasks, params, desc=desc)
    start = time.perf_counter()
    for grp in groups:
        seen = rule.replay(grp, step=step)
        grp.stats.update(dict(zip(WOULD, (float(seen.votes), float(seen.differs), float(seen.why == "unanimous")))))
    return groups, time.perf_counter() - start


def sample_in_rounds(sampler, tasks: list[Task], params: SamplingParams, *, first: int, round_size: int,
                     decide: Callable[[RolloutGroup], str | None],
                     desc: str = "sample") -> tuple[list[RolloutGroup], float]:
    """Sample ``first`` rollouts of every task, then ``round_size`` more (at most ``params.n`` in all) of the
    tasks still undecided, until none is: ``decide(group)`` is None to go on, else why it stops
    (``rewards.sequential.VERDICTS``). Returns one group per task, in task order, its rollouts in the order
    sampled, each with a ``sampling/unanimous`` stat (1.0: it stopped unanimous after round 1); and the
    seconds ``decide`` took."""
    spent = 0.0

    def decided(grp: RolloutGroup) -> str | None:
        nonlocal spent
        start = time.perf_counter()
        why = decide(grp)
        spent += time.perf_counter() - start
        return why

    groups = sampler.generate(tasks, replace(params, n=min(first, params.n)), desc=desc)
    open_: list[RolloutGroup] = []
    for grp in groups:
        why = decided(grp)
        grp.stats[UNANIMOUS] = float(why == "unanimous")
        if why is None and len(grp.rollouts) < params.n:
            open_.append(grp)
    while open_:
        n = min(round_size, params.n - len(open_[0].rollouts))  # every open group has as many votes
        more = sampler.generate([grp.task for grp in open_], replace(params, n=n), desc=desc)
        still = []
        for grp, extra in zip(open_, more, strict=True):
            grp.rollouts.extend(extra.rollouts)
            if len(grp.rollouts) < params.n and decided(grp) is None:
                still.append(grp)
        open_ = still
    return groups, spent


def vote_counts(groups: list[RolloutGroup], rule: SequentialVote, mode: str, *, dropped: bool = True) -> dict[str, float]:
    """The step's ``sampling/*`` vote counts over every group sampled (all ranks'), for the metrics row.

    ``votes_mean`` / ``votes_std``: votes sampled per prompt; ``vote_rounds``: the most rounds a group took
    (monitor: 1, one call); enforce: ``decided_early`` (groups stopped before n_votes, unanimous ones aside)
    and ``unanimous_dropped`` (``unanimous_trained`` where ``dropped`` is False: ``--vote_unanimous train``); monitor: ``would_sample_mean``, ``would_decide_early``,
    ``would_drop_unanimous`` and ``decision_differs`` (the share of groups whose sequential decision is not
    the full vote's majority). The per-group notes the sampling left in ``group.stats`` are taken out here,
    so the vote telemetry does not average them again.
    """
    nan = float("nan")
    votes = [len(grp.rollouts) for grp in groups]
    mean = sum(votes) / len(votes) if votes else nan
    out = {"sampling/votes_mean": mean,
           "sampling/votes_std": math.sqrt(sum((v - mean) ** 2 for v in votes) / len(votes)) if votes else nan,
           "sampling/vote_rounds": max((rule.round_of(v) for v in votes), default=0) if mode == "enforce"
           else int(bool(votes))}  # monitor: one call
    if mode == "enforce":
        unanimous = [grp.stats.pop(UNANIMOUS, 0.0) for grp in groups]
        out["sampling/unanimous_dropped" if dropped else "sampling/unanimous_trained"] = sum(u > 0 for u in unanimous)
        out["sampling/decided_early"] = sum(v < rule.total and not u for v, u in zip(votes, unanimous))
    else:
        would, differs, unanimous = ([grp.stats.pop(key) for grp in groups] for key in WOULD)
        out["sampling/would_sample_mean"] = sum(would) / len(would) if would else nan
        out["sampling/would_decide_early"] = sum(w < rule.total and not u for w, u in zip(would, unanimous))
        out["sampling/would_drop_unanimous"] = sum(u > 0 for u in unanimous)
        out["sampling/decision_differs"] = sum(differs) / len(differs) if differs else nan
    return out
