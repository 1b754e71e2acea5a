"""Stage ``rollouts``: a separate forward and backward scores all N_vote rollouts before the update, so the
selector chooses *which* k of N each group trains on; TRL then trains on them unchanged.

**Loss form.** The candidate gradient is that of the policy-gradient term the update will apply,
``-A_i * mean_t log pi(y_t)`` (``A_i`` = the group-normalised reward over the group's N_vote rollouts,
TRL's ``scale_rewards`` respected), not LESS's (arXiv 2402.04333) NLL. Influence (TracIn, IIF) is "the
target loss change caused by this sample's step": a negative-advantage rollout is pushed *down* by the
update, so its NLL gradient has the wrong sign. ``loss="nll"`` gives LESS's form. Both come from one
quantity, ``u_i = grad mean_t log pi(y_t)`` (``sequence.sequence_gradients``); zero-advantage rollouts
change nothing in the update: alignment 0.
"""

from __future__ import annotations

from typing import Protocol

import torch

from engine.types import GradientSource
from filters.influence.features import DenseFeatures, precondition, project
from filters.influence.keep import keep_mask, pick
from filters.influence.sequence import hooked_modules, sequence_gradients
from filters.influence.targets import agree_target_logprob, cosines, labeled_examples, labeled_target


class Settings(Protocol):
    """The selector options this stage reads (``InfluenceSelector`` has them)."""

    target: str
    keep: str
    fraction: float
    fill: str
    loss: str
    precondition: bool
    project_dim: int | None
    modules: list[str] | None
    max_rows: int
    labeled_path: str | None
    labeled: list[tuple[list[int], str]] | None
    seed: int


def advantages(rewards: list[torch.Tensor], scale: bool) -> torch.Tensor:
    """Each group's rewards less their mean, over their std + 1e-4 when ``scale`` (GRPO's, as TRL's
    ``scale_rewards``); flattened in group order."""
    return torch.cat([(r - r.mean()) / ((r.std() if len(r) > 1 else 0) + 1e-4 if scale else 1.0) for r in rewards])


def scores(groups, policy: GradientSource, s: Settings) -> tuple[torch.Tensor, bool]:
    """(N,) alignment of every rollout of ``groups`` (flattened in group order) with the target, and
    whether Adam preconditioning was applied (the optimizer has state)."""
    model = policy.model
    temperature = float(policy.temperature or 1.0)
    layers = hooked_modules(model, s.modules)
    rows = [(list(g.task.prompt_ids), list(r.token_ids)) for g in groups for r in g.rollouts]
    U = sequence_gradients(model, rows, layers, temperature=temperature, max_rows=s.max_rows)  # grad log-prob
    rewards = [torch.tensor(g.rewards, dtype=torch.float32) for g in groups]
    if s.loss == "pg":
        adv = advantages(rewards, policy.scale_rewards not in ("none", False))
    else:
        adv = torch.ones(len(rows))
    t = None
    if s.target == "agree":   # the rollouts with reward 1
        t = agree_target_logprob(U, torch.cat(rewards) > 0.5)
    elif s.target == "labeled":
        rows = labeled_examples(s.labeled_path, s.labeled, policy.tokenizer)
        t = [labeled_target(model, rows, layers, temperature=temperature, max_rows=s.max_rows)]
    F = U.mul_(-adv[:, None])                                            # (N, D) loss gradients g_i
    used_adam = False
    if s.precondition:
        sizes = [m.weight.numel() for _, m in layers]
        _, used_adam = precondition(list(F.split(sizes, dim=1)), [m.weight for _, m in layers],
                                    policy.optimizer, inplace=True)   # F's views
        if used_adam:
            F[adv == 0] = 0                                              # no update term, no influence
    blocks = [F]
    if s.project_dim:
        blocks, t = project(blocks, t, s.project_dim, s.seed)
    return cosines(DenseFeatures(blocks), s.target, t), used_adam


def select(groups, k: int, policy: GradientSource,
           s: Settings) -> tuple[list[list[int]], list[list[float]], dict[str, float]]:
    """Exactly k indices per group (``keep.pick``), each group's alignments, and the metrics (unprefixed;
    ``time_s`` is the caller's)."""
    a, used_adam = scores(groups, policy, s)
    passed = keep_mask(a, s.keep, s.fraction)
    selections, alignment, filled, offset = [], [], 0, 0
    for g in groups:
        n = len(g.rollouts)
        ga = a[offset:offset + n].tolist()
        picked, n_filled = pick(ga, passed[offset:offset + n].tolist(), k, s.fill)
        selections.append(picked)
        alignment.append(ga)
        filled += n_filled
        offset += n
    total = max(1, len(a))
    return selections, alignment, {
        "mean_alignment": float(a.mean()) if len(a) else 0.0,
        "kept_fraction": float(passed.sum()) / total,
        "negative_fraction": float((a < 0).sum()) / total,
        "filled_fraction": filled / max(1, k * len(groups)),
        "preconditioned": float(used_adam),
    }
