"""Feature maps applied to the per-row gradients before scoring: Adam preconditioning and random projection,
and the dense (N, D) representation they produce.

**Preconditioning** is LESS's (Xia et al., arXiv 2402.04333): the feature of a gradient ``g`` is the step
Adam would take, ``m'/sqrt(v'+eps)`` with ``m' = b1 m + (1-b1) g``, ``v' = b2 v + (1-b2) g^2``, from the
live optimizer's state. **It is off by default.** ``m'`` carries 0.9 of the optimizer's momentum, shared
by every row; it dominates the rows' own 0.1 g, so every row aligns positively with the batch and
``drop_negative`` keeps all of them (measured: kept fraction 1.00 on the demo once Adam has state). LESS
ranks a global top 5%, where the shared offset cancels; a sign rule needs the plain gradients (DTV).

**Projection** (``project_dim``): a Rademacher matrix maps the concatenated features and the target to
d dims, as LESS's random projection does; off by default (its cost is in the package docstring).
"""

from __future__ import annotations

import math

import torch


class DenseFeatures:
    """Features as column blocks of an (N, D) matrix — never concatenated — with the operations
    ``cosines`` needs (``per_row.LinearGradients.features`` has the same three)."""

    def __init__(self, blocks: list[torch.Tensor]):
        self.blocks = blocks

    def sq_norms(self) -> torch.Tensor:
        return sum(torch.linalg.vector_norm(F, dim=1) ** 2 for F in self.blocks)

    def weighted_sum(self, w: torch.Tensor) -> list[torch.Tensor]:
        return [w.to(F) @ F for F in self.blocks]

    def dots(self, t: list[torch.Tensor]) -> torch.Tensor:
        return sum(F @ tj.to(F).flatten() for F, tj in zip(self.blocks, t))


def precondition(blocks: list[torch.Tensor], params: list[torch.Tensor], optimizer, *, inplace: bool):
    """LESS's Adam feature ``m'/sqrt(v'+eps)`` (``m' = b1 m + (1-b1) g``, ``v' = b2 v + (1-b2) g^2``) of each
    row of each (N, numel) block, from the live optimizer's state for ``params`` (one per block). Returns
    (blocks, True), or (blocks unchanged, False) while the optimizer has no state yet (before its first step)."""
    states = [optimizer.state.get(p, {}) for p in params] if optimizer is not None else []
    if not states or any("exp_avg" not in st or "exp_avg_sq" not in st for st in states):
        return blocks, False
    hp = next(g for g in optimizer.param_groups if any(q is params[0] for q in g["params"]))
    (b1, b2), eps = hp.get("betas", (0.9, 0.999)), hp.get("eps", 1e-8)
    out = []
    for F, st in zip(blocks, states):
        bm = b1 * st["exp_avg"].detach().float().flatten().to(F.device)
        bv = b2 * st["exp_avg_sq"].detach().float().flatten().to(F.device) + eps
        P = F if inplace else torch.empty_like(F)
        for i in range(0, len(F), 64):                                      # one small temporary at a time
            g = F[i:i + 64]
            den = torch.mul(g, g).mul_(1 - b2).add_(bv).sqrt_()
            torch.mul(g, 1 - b1, out=P[i:i + 64]).add_(bm).div_(den)
        out.append(P)
    return out, True


def project(blocks: list[torch.Tensor], t: list[torch.Tensor] | None, dim: int, seed: int):
    """Rademacher projection of the concatenated features (and target ``t``, if given) to ``dim`` dims:
    ``([F @ P], [t @ P] or None)``, ``P`` drawn from ``seed`` (the same matrix every call)."""
    gen = torch.Generator().manual_seed(seed)
    F = torch.cat(blocks, dim=1)
    P = torch.randint(0, 2, (F.shape[1], dim), generator=gen).float().mul_(2).sub_(1)
    P /= math.sqrt(dim)
    t = [torch.cat([tj.flatten() for tj in t]) @ P.to(F.device)] if t is not None else None
    return [F @ P.to(F.device)], t
