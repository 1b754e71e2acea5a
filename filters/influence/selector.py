"""The ``influence`` selector: the spec's options, checked once, composed into one of the two stages.

It is what ``filters.SELECTORS["influence"]`` builds, and it has four of the stage capabilities of
``engine.types``: a ``BatchSelector`` (``engine.loop`` calls ``select_batch`` with the whole batch and the policy,
not one group at a time), ``ReportsMetrics`` (``last_metrics``, ``filters/influence/...``, merged into the
step's row), ``FiltersGradients`` (``grad_filter``: itself in the update stage, None in the rollouts stage)
and ``GradientFilter`` (``engine.update`` hands each optimizer step's recorded rows, all its micro-batches
together, to ``capture`` / ``filter_gradients``). Of the policy it reads only the ``GradientSource`` view.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from engine.types import GradientSource, RolloutGroup
from filters.influence.keep import FILLS, KEEP_RULES
from filters.influence.per_row import LinearGradients
from filters.influence.rollouts_stage import select
from filters.influence.targets import TARGETS
from filters.influence.step import StepGradients
from filters.influence.update_stage import POOLS, capture, filter_rows

PREFIX = "filters/influence/"


def per_row_advantage(advantages: torch.Tensor) -> torch.Tensor:
    """(B,) one advantage per row (a per-token (B, T) advantage is averaged over its positions)."""
    adv = advantages.detach().float().cpu()
    return adv.flatten(1).mean(1) if adv.dim() > 1 else adv


class InfluenceSelector:
    """Keep the rollouts whose gradient aligns with a target (see the package docstring).

    stage: ``update`` (default) — the update trains on ``pool``'s k rollouts per group (``first_k`` or
    ``max_variance``); their features come from the update's own backward and dropped rows are subtracted
    from the gradient before the optimizer steps | ``rollouts`` — a separate pass scores all N_vote
    rollouts first and the update trains on each group's k best.
    target: ``batch_mean`` | ``leave_one_out`` | ``agree`` | ``labeled`` (needs ``labeled_path``, a JSONL of
    ``{prompt, answer}``, or ``labeled``, examples in memory: (prompt token ids, reference answer) pairs, which
    ``engine.loop`` hands it from ``--anchor FILE`` when the spec names no ``labeled_path``; LESS, arXiv 2402.04333).
    keep: ``drop_negative`` | ``top_fraction`` (``fraction`` of the batch). fill (rollouts stage):
    ``remaining`` | ``repeat``. loss (rollouts stage): ``pg`` (advantage x log-prob, default) | ``nll``.
    precondition: Adam m'/sqrt(v') from the live optimizer (plain gradients while its state is empty).
    project_dim: Rademacher projection (None = off). modules: name substrings of the layers whose
    features decide (default: LoRA A/B, or every trainable Linear).
    """

    TARGETS = TARGETS

    def __init__(self, target: str = "batch_mean", keep: str = "drop_negative", fraction: float = 0.5,
                 stage: str = "update", pool: str = "first_k", fill: str = "remaining", loss: str = "pg",
                 precondition: bool = False, project_dim: int | None = None, modules: list[str] | None = None,
                 max_rows_per_backward: int = 256, labeled_path: str | None = None,
                 labeled: list[tuple[list[int], str]] | None = None, seed: int = 0):
        checks = {"target": (target, TARGETS), "keep": (keep, KEEP_RULES),
                  "stage": (stage, ("update", "rollouts")), "pool": (pool, tuple(POOLS)),
                  "fill": (fill, FILLS), "loss": (loss, ("pg", "nll"))}
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"influence selector: {name}={value!r}; allowed: {', '.join(allowed)}")
        if target == "labeled" and not labeled_path and labeled is None:
            raise ValueError("influence selector: target='labeled' needs labeled_path (JSONL of {prompt, answer}) "
                             "or labeled examples (ttrl run --anchor FILE)")
        if not 0 < fraction <= 1:
            raise ValueError(f"influence selector: fraction={fraction!r} must be in (0, 1]")
        self.target, self.keep, self.fraction, self.fill, self.loss = target, keep, fraction, fill, loss
        self.stage, self.pool = stage, pool
        self.precondition, self.project_dim, self.modules = precondition, project_dim, modules
        self.max_rows, self.labeled_path, self.labeled, self.seed = max_rows_per_backward, labeled_path, labeled, seed
        self.last_metrics: dict[str, float] = {}
        self.last_alignment: list[list[float]] = []   # per group (rollouts stage) / the last optimizer step (update)
        self.last_keep: torch.Tensor | None = None     # update stage: the last optimizer step's kept rows
        self._totals: dict[str, float] = {}

    def __call__(self, group: RolloutGroup, k: int) -> list[int]:
        raise TypeError("the influence selector needs the policy's model and optimizer: it runs through "
                        "select_batch(groups, k, policy) (engine.loop.select_rollouts), not per group")

    @property
    def grad_filter(self) -> InfluenceSelector | None:
        """What the update hands its per-row gradients to (``GRPOPolicy.update``): self in the update stage."""
        return self if self.stage == "update" else None

    def capture(self, model) -> LinearGradients:
        """Update stage: hooks recording every trainable Linear's per-row gradients (``update_stage.capture``)."""
        return capture(model)

    def filter_gradients(self, recorded: Sequence[LinearGradients], advantages: Sequence[torch.Tensor],
                         weights: Sequence[torch.Tensor], policy: GradientSource) -> None:
        """Update stage, after an optimizer step's last backward: ``recorded``, ``advantages`` and ``weights``
        (each row's share of TRL's loss normaliser) hold one entry per micro-batch of the step. Score the
        step's rows against the step's gradient, take the dropped ones out and rescale the rest
        (``update_stage.filter_rows``); the update's metrics so far go to ``last_metrics``."""
        keep, a, metrics = filter_rows(StepGradients(recorded), torch.cat([per_row_advantage(a) for a in advantages]),
                                       torch.cat([w.detach().cpu() for w in weights]), policy, self, self._totals)
        self.last_alignment, self.last_keep = [a.tolist()], keep
        self.last_metrics = {PREFIX + key: value for key, value in metrics.items()}

    def select_batch(self, groups: list[RolloutGroup], k: int, policy: GradientSource) -> list[list[int]]:
        """Exactly k indices per group: the pool's (update stage; the update then filters), or the k
        best-aligned distinct ones (or survivors repeated, under ``fill="repeat"``)."""
        start = time.perf_counter()
        for g in groups:
            if k > len(g.rollouts):
                raise ValueError(f"cannot select {k} rollouts from a group of {len(g.rollouts)} (task {g.task.id})")
        if self.stage == "update":
            self._totals, self.last_metrics, self.last_alignment, self.last_keep = {}, {}, [], None
            return [POOLS[self.pool](g, k) for g in groups]
        selections, self.last_alignment, metrics = select(groups, k, policy, self)
        self.last_metrics = {PREFIX + key: value for key, value in metrics.items()}
        self.last_metrics[PREFIX + "time_s"] = time.perf_counter() - start
        return selections
