"""Keep rules: which scored rollouts pass, and (rollouts stage) how each group still gives exactly k.

``drop_negative`` keeps alignment >= 0 — IIF's (NeurIPS 2025) "drop negative influence", DTV's sign rule;
``top_fraction`` keeps the batch's top ``fraction``, LESS's (arXiv 2402.04333) ranking.

**The fixed k (rollouts stage).** TRL groups advantages by ``num_generations``, so every group must give
exactly k rows. Survivors beyond k are trimmed by alignment. With fewer than k survivors the default
``fill="remaining"`` tops up with the highest-aligned dropped rollouts (no duplicates): repeating
survivors changes the GRPO group statistics (k copies of the same few rollouts, often one reward value,
give std 0 and zero advantage, erasing the survivors too) and over-weights them. Consequence, reported as
``filled_fraction``: with fill="remaining" a threshold rule reduces to "top k by alignment per group",
and filled rollouts do contribute. ``fill="repeat"`` cycles the survivors (in alignment order) instead,
so dropped rollouts contribute nothing; groups with no survivor fall back to "remaining". Ties go to
the lower index. In the update stage the keep rule applies to each optimizer step's rows directly
(all its micro-batches together) and dropped rows are removed from the gradient and the loss normaliser,
so no fill is needed.
"""

from __future__ import annotations

import math

import torch

KEEP_RULES = ("drop_negative", "top_fraction")
FILLS = ("remaining", "repeat")


def keep_mask(a: torch.Tensor, keep: str, fraction: float) -> torch.Tensor:
    """Which alignments pass the keep rule: ``drop_negative`` (>= 0) or the top ``fraction`` of ``a``."""
    if keep == "drop_negative" or not len(a):
        return a >= 0
    n_keep = max(1, math.ceil(fraction * len(a)))
    return a >= torch.sort(a, descending=True).values[n_keep - 1]


def pick(alignment: list[float], passed: list[bool], k: int, fill: str) -> tuple[list[int], int]:
    """One group's k indices from its rollouts' alignments and keep-rule verdicts, and how many of them
    were filled in from the dropped ones: the k best-aligned (``remaining``), or the survivors cycled in
    alignment order (``repeat``, when there is any survivor)."""
    order = sorted(range(len(alignment)), key=lambda i: (-alignment[i], i))
    survivors = [i for i in order if passed[i]]
    if fill == "repeat" and survivors:
        return [survivors[j % len(survivors)] for j in range(k)], 0
    picked = order[:k]
    return picked, sum(not passed[i] for i in picked)
