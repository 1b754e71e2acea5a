"""Stage ``update`` (the default, IIF's design, NeurIPS 2025): score the rows the update trains on, inside
its own backward, and take the dropped rows out of the gradient before the optimizer steps.

Two decisions (issue 17, part 4), each tested in tests/test_influence.py:

- **The target is the whole optimizer step's gradient**, not one micro-batch's. TRL shuffles the rows
  before cutting them into ``gradient_accumulation_steps`` micro-batches, so a micro-batch's own gradient
  is a random 1/GA of the step; the rows of every micro-batch are kept (``step.StepGradients``) and scored
  together once the step's last backward has run, against the step's summed gradient.
- **A dropped row is removed, not zeroed**: it leaves TRL's loss normaliser too. Subtracting a row's
  gradient alone leaves the kept rows divided by the whole step's count (rows for ``grpo``-style losses,
  completion tokens for ``dapo``/``bnpo``), so dropping half the rows would also halve the step — the same
  as zeroing the dropped rows' advantages and KL terms, which mixes selection with a learning-rate cut
  that varies from step to step (and Adam's second moment sees it). After the subtraction the kept
  gradient is rescaled by (normaliser of every row) / (normaliser of the kept rows): the step is then the
  one TRL would take on the kept rows alone, as the ``rollouts`` stage and PODS (arXiv 2504.13818) train
  on their selected rows only. Each row's share of the normaliser (``weights``) comes from
  ``engine.update``, the module that knows TRL's loss types. (Advantages stay as computed over the whole
  group: the group's vote is what the selection is scored against.) For ``bnpo``, whose normaliser is
  per micro-batch, the token rescale is exact when the micro-batches hold equal token counts.

The update trains on ``pool``'s n_train rollouts per group (``first_k``, TTRL's, or ``max_variance``);
``per_row.LinearGradients`` records every row's gradient inside TRL's own backward
(``GRPOPolicy.update(batch, grad_filter=...)``), the rows are scored, and the dropped rows' gradients are
subtracted from ``.grad`` — so they contribute nothing to the applied update, and the features are the
rows' true loss gradients (advantage, clipping, KL term and TRL's normalisation included). The DTV target
costs nothing: the batch's summed gradient is autograd's own ``.grad``. Rows with zero advantage
(unanimous groups) carry only the KL anchor and are always kept. Covered exactly: every trainable Linear —
all of LoRA; under full fine-tuning the norm gains and the (tied) embedding are not Linear layers and keep
the whole batch's gradient (``unfiltered_param_fraction``: 1.3% of the demo model).
"""

from __future__ import annotations

import time
from typing import Protocol

import torch

from engine.types import GradientSource
from filters.influence.features import DenseFeatures, precondition, project
from filters.influence.keep import keep_mask
from filters.influence.per_row import LinearGradients
from filters.influence.sequence import hooked_modules
from filters.influence.step import StepGradients
from filters.influence.targets import agree_target, cosines, labeled_examples, labeled_target
from filters.selectors import first_k, max_variance

POOLS = {"first_k": first_k, "max_variance": max_variance}   # the update stage's candidates


class Settings(Protocol):
    """The selector options this stage reads (``InfluenceSelector`` has them)."""

    target: str
    keep: str
    fraction: float
    precondition: bool
    project_dim: int | None
    modules: list[str] | None
    max_rows: int
    labeled_path: str | None
    labeled: list[tuple[list[int], str]] | None
    seed: int


def capture(model) -> LinearGradients:
    """Hooks recording per-row gradients of every trainable Linear (all of them: a dropped row must be
    taken out of every layer it touched, not only the deciding ones)."""
    return LinearGradients(hooked_modules(model, None))


def alignments(cap: StepGradients, adv: torch.Tensor, policy: GradientSource, s: Settings) -> tuple[torch.Tensor, bool]:
    """(B,) each recorded row's alignment with the target over the deciding layers (``s.modules``), and
    whether Adam preconditioning was applied (the optimizer has state). Reads of ``policy`` only what the
    options need: the optimizer to precondition; the model, temperature and tokenizer for a labeled target."""
    layers = cap.layers
    js = [j for j in cap.recorded if s.modules is None or any(m in layers[j][0] for m in s.modules)]
    if not js:
        raise ValueError(f"influence selector: no trainable Linear layer matches modules={s.modules!r}")
    used_adam = False
    feats = cap.features(js)
    if s.precondition or s.project_dim:      # elementwise or dense maps: materialise the rows
        blocks = [(cap.row_gradient(j).clone() if j in cap.dense else cap.row_gradient(j)).flatten(1) for j in js]
        if s.precondition:
            blocks, used_adam = precondition(blocks, [layers[j][1].weight for j in js],
                                             policy.optimizer, inplace=True)
        feats = DenseFeatures(blocks)
    t = sq = None
    if s.target == "agree":    # the loss gradients of the rows that agree with the pseudo-label
        t, sq = agree_target(feats, adv > 0)                                 # sq computed once, reused below
    elif s.target == "labeled":
        deciding = [layers[j] for j in js]
        temperature = float(policy.temperature or 1.0)
        rows = labeled_examples(s.labeled_path, s.labeled, policy.tokenizer)
        flat = labeled_target(policy.model, rows, deciding, temperature=temperature, max_rows=s.max_rows)
        t = [tj.view_as(m.weight) for tj, (_, m) in zip(flat.split([m.weight.numel() for _, m in deciding]), deciding)]
    if s.project_dim:
        blocks, t = project(feats.blocks, t, s.project_dim, s.seed)
        feats, sq = DenseFeatures(blocks), None
    if t is None and not isinstance(feats, DenseFeatures):
        t = cap.batch_gradient(js)                                           # autograd's own sum, free
    return cosines(feats, s.target, t, sq), used_adam


def filter_rows(cap: StepGradients, advantages: torch.Tensor, weights: torch.Tensor, policy: GradientSource,
                s: Settings, totals: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """After an optimizer step's last backward: score its rows against the step's gradient, take the dropped
    rows out of ``.grad`` and rescale the rest to the kept rows' normaliser (module docstring).

    ``weights`` (B,): each row's share of TRL's loss normaliser. Returns (keep (B,) bool, alignment (B,),
    metrics). Rows with zero advantage (TTRL's unanimous groups) are always kept. ``totals`` accumulates the
    update's optimizer steps (``num_iterations``); the metrics (unprefixed) cover them all.
    """
    start = time.perf_counter()
    adv = advantages.detach().float().cpu()
    if adv.dim() > 1:                                                    # per-token advantages
        adv = adv.flatten(1).mean(1)
    a, used_adam = alignments(cap, adv, policy, s)
    active = adv != 0
    passed = keep_mask(a[active], s.keep, s.fraction)
    keep = torch.ones(len(a), dtype=torch.bool)
    keep[active] = passed
    cap.remove_rows((~keep).float())
    weights = weights.detach().float().cpu()
    kept_weight = float(weights[keep].sum())
    scale = float(weights.sum()) / kept_weight if kept_weight > 0 else 1.0   # none kept: .grad is 0 already
    if scale != 1.0:
        cap.scale_gradients(scale)
    seconds = time.perf_counter() - start + cap.seconds
    for key, value in {"rows": len(a), "active": int(active.sum()), "kept": int(passed.sum()),
                       "negative": int((a[active] < 0).sum()), "alignment": float(a[active].sum()),
                       "seconds": seconds, "preconditioned": float(used_adam), "scale": scale, "steps": 1}.items():
        totals[key] = totals.get(key, 0) + value
    covered = sum(p.numel() for _, m in cap.layers for p in (m.weight, m.bias) if p is not None and p.requires_grad)
    trainable = sum(p.numel() for p in policy.model.parameters() if p.requires_grad)
    return keep, a, {
        "mean_alignment": totals["alignment"] / max(1, totals["active"]),
        "kept_fraction": totals["kept"] / max(1, totals["active"]),
        "negative_fraction": totals["negative"] / max(1, totals["active"]),
        "zero_advantage_fraction": 1 - totals["active"] / max(1, totals["rows"]),
        "preconditioned": float(used_adam),
        "normaliser_scale": totals["scale"] / totals["steps"],
        "unfiltered_param_fraction": 1 - covered / max(1, trainable),
        "time_s": totals["seconds"],
    }
