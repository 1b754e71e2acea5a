"""Gradient-influence rollout selection: train on the rollouts whose update helps a target direction.

Per rollout i we take the gradient of its loss on the trainable parameters, optionally precondition it
with the live Adam state (LESS, Xia et al., arXiv 2402.04333), and score it by the cosine with a *target*
direction — DTV-style alignment with the batch's own gradient (GRPO, 2026) by default, or IIF's
(NeurIPS 2025) TracIn-style influence, LESS's labeled examples, or the rollouts that agree with TTRL's
majority-vote pseudo-label — then a keep rule decides which rollouts the update learns from.

One idea per module:

* ``per_row`` — ``LinearGradients``: per-row gradients of Linear layers recorded inside the update's own
  backward (the update stage's features).
* ``sequence`` — which layers carry features (``hooked_modules``), and per-sequence gradients from a
  separate batched backward (``sequence_gradients``: the rollouts stage's features, the labeled target).
* ``features`` — Adam preconditioning, Rademacher projection, the dense feature matrix.
* ``targets`` — ``batch_mean`` | ``leave_one_out`` | ``agree`` | ``labeled``, and the cosine score.
* ``keep`` — ``drop_negative`` | ``top_fraction``, and the rollouts stage's fill to exactly k per group.
* ``update_stage`` (default) — score the trained rows inside the update's backward and subtract the
  dropped ones from ``.grad``; ``rollouts_stage`` — score all N_vote rollouts first, train on k of them.
* ``selector`` — ``InfluenceSelector``: the ``influence`` spec's options, composed into one stage.

**Cost model.** Update stage: the hooks add one small GEMM per layer to the backward (a LoRA layer's
per-row gradients are r x in); scoring adds per layer one GEMM-sized dot product with ``.grad`` and the
squared norms, and removing the dropped rows one more GEMM over those rows only. For LoRA that is small
beside the frozen base's forward and backward; under full fine-tuning each is as large as a weight-gradient
GEMM (the update does about four per layer: forward, reference forward, two in the backward), so
expect a sizeable fraction of the update there. Memory: LoRA rows materialised, B x sum(r x (in + out))
floats; full layers kept as their (G, X) factors, which the backward held anyway. ``python -m
benchmarks.influence_overhead`` times both stages against the update.
Rollouts stage: one forward over all N_vote rollouts plus a backward down to the lowest hooked layer,
plus O(N D) for the features — the price of choosing among all N_vote.
The ``labeled`` target adds one such forward and backward over the labeled examples each time rows are
scored (every micro-batch, in the update stage). Preconditioning materialises the rows (O(N D), elementwise); a Rademacher projection to d
dims (LESS uses d = 8192) costs O(N D d), off by default.
"""

from filters.influence.features import DenseFeatures, precondition, project
from filters.influence.keep import keep_mask, pick
from filters.influence.per_row import LinearGradients
from filters.influence.selector import PREFIX, InfluenceSelector
from filters.influence.sequence import hooked_modules, pad, sequence_gradients
from filters.influence.targets import TARGETS, cosines, load_labeled
from filters.influence.update_stage import POOLS

__all__ = ["DenseFeatures", "InfluenceSelector", "LinearGradients", "POOLS", "PREFIX", "TARGETS", "cosines",
           "hooked_modules", "keep_mask", "load_labeled", "pad", "pick", "precondition", "project",
           "sequence_gradients"]
