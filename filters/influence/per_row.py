"""Per-row gradients of Linear layers, recorded inside an ordinary batched backward: the update stage's features.

A Linear ``y = x W^T + b`` applied to a batch has weight gradient ``sum_b G_b^T X_b`` (``G_b`` the rows of
``dL/dy`` of batch row b over its positions, ``X_b`` its inputs) and bias gradient ``sum_b sum_t G_bt``.
Keeping the outer sum apart gives each row's own contribution, exactly: rows of a transformer batch never
mix (no batch norm), so ``G_b`` is the gradient of row b's loss terms. A forward hook keeps the layer's
input and puts a tensor hook on its output; the tensor hook fires during the backward the trainer runs
anyway. IIF (Hu et al., arXiv 2505.19281, NeurIPS 2025) takes its per-sample LoRA gradients this way;
``python -m benchmarks.influence_overhead`` times the hooks against the update.

**Two representations, picked per layer** (the "mixed ghost" rule of per-sample clipping, Bu et al. 2022):
a row's gradient ``G_b^T X_b`` has ``out x in`` numbers, its factors ``T x (in + out)``. A LoRA layer
(``r x in``, r <= 32) is materialised — ``bmm`` into a (B, out, in) tensor, then norms and dot products are
cheap reads (measured here: 2-3x faster than the factor route for r = 16); a full layer whose factors are
smaller is kept as factors, and everything selection needs is computed from them without ever forming
the B gradients: squared norms ``<G_b G_b^T, X_b X_b^T>`` (B small T x T Gram products), a weighted sum
``sum_b w_b G_b^T X_b`` (one GEMM, the size of the weight gradient), and dot products with a direction
``t``: ``sum_t G_bt . (t X_bt)`` (one GEMM). On the 130k-parameter demo model under full fine-tuning
that is the difference between writing 512 x 131k floats per step and three GEMMs.

Only forwards that build a graph are recorded: a ``no_grad`` reference or old-log-prob pass is skipped.
A layer called twice in one forward (or re-run by gradient checkpointing) adds up, as autograd does.
"""

from __future__ import annotations

import time

import torch


class LinearGradients:
    """While open (``with``), record per-row gradients of ``layers`` (a list of ``(name, nn.Linear)``).

    After the backward, per layer j: ``dense[j]`` (B, out, in) fp32, or ``factors[j]`` = (G, X) of shapes
    (B, T, out) and (B, T, in); ``bias[j]`` (B, out) where the bias is trainable. ``seconds``: time spent
    inside the hooks. The feature operations below take the layers in a given order (``js``).
    """

    def __init__(self, layers: list[tuple[str, torch.nn.Linear]]):
        self.layers = layers
        self.dense: dict[int, torch.Tensor] = {}
        self.factors: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.bias: dict[int, torch.Tensor] = {}
        self.seconds = 0.0
        self._handles: list = []

    def __enter__(self) -> LinearGradients:
        self.grad_before = [None if m.weight.grad is None else m.weight.grad.detach().clone() for _, m in self.layers]
        self._handles = [m.register_forward_hook(self._on_forward(j)) for j, (_, m) in enumerate(self.layers)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _on_forward(self, j: int):
        def hook(module, inputs, output):
            if torch.is_grad_enabled() and output.requires_grad:
                x = inputs[0].detach()
                output.register_hook(lambda g: self._record(j, x, g))
        return hook

    def _record(self, j: int, x: torch.Tensor, g: torch.Tensor) -> None:
        start = time.perf_counter()
        B = g.shape[0]
        g3, x3 = g.detach().reshape(B, -1, g.shape[-1]), x.reshape(B, -1, x.shape[-1])
        T, out, inp = g3.shape[1], g3.shape[2], x3.shape[2]
        if j in self.factors or (j not in self.dense and min(out, inp) > 32 and T * (inp + out) < out * inp):
            if j in self.factors:                                           # a second call: more positions
                G, X = self.factors[j]
                g3, x3 = torch.cat([G, g3], 1), torch.cat([X, x3], 1)
            self.factors[j] = (g3, x3)
        else:
            w = torch.bmm(g3.transpose(1, 2).float(), x3.float())            # (B, out, in)
            self.dense[j] = self.dense[j] + w if j in self.dense else w
        module = self.layers[j][1]
        if module.bias is not None and module.bias.requires_grad:
            b = g3.float().sum(1)
            self.bias[j] = self.bias[j] + b if j in self.bias else b
        self.seconds += time.perf_counter() - start

    @property
    def recorded(self) -> list[int]:
        return sorted({*self.dense, *self.factors})

    def rows(self) -> int:
        j = next(iter(self.recorded), None)
        return 0 if j is None else (self.dense[j] if j in self.dense else self.factors[j][0]).shape[0]

    def row_gradient(self, j: int) -> torch.Tensor:
        """(B, out, in) fp32 per-row weight gradients of layer j (materialised from factors if need be)."""
        if j in self.dense:
            return self.dense[j]
        G, X = self.factors[j]
        return torch.bmm(G.transpose(1, 2).float(), X.float())

    # -- what selection needs, from either representation -------------------------------------------------

    def sq_norms(self, js: list[int]) -> torch.Tensor:
        """(B,) squared norm of each row's gradient over layers ``js``."""
        total = torch.zeros(self.rows())
        grams: dict[tuple, torch.Tensor] = {}   # q/k/v (and gate/up) read the same input: one Gram for all
        for j in js:
            if j in self.dense:
                total += (torch.linalg.vector_norm(self.dense[j].flatten(1), dim=1) ** 2).cpu()
            else:
                G, X = (a.float() for a in self.factors[j])
                key = (self.factors[j][1].data_ptr(), tuple(X.shape))
                if key not in grams:
                    grams[key] = torch.bmm(X, X.transpose(1, 2))
                total += (torch.bmm(G, G.transpose(1, 2)) * grams[key]).sum((1, 2)).cpu()
        return total

    def weighted_sum(self, w: torch.Tensor, js: list[int]) -> list[torch.Tensor]:
        """``sum_b w_b grad_b`` for each layer of ``js``, as (out, in) tensors."""
        out = []
        for j in js:
            if j in self.dense:
                D = self.dense[j]
                out.append(torch.einsum("b,boi->oi", w.to(D), D))
            else:
                G, X = (a.float() for a in self.factors[j])
                Gw = (G * w.to(G)[:, None, None]).flatten(0, 1)
                out.append(Gw.T @ X.flatten(0, 1))
        return out

    def dots(self, t: list[torch.Tensor], js: list[int]) -> torch.Tensor:
        """(B,) ``<grad_b, t>`` summed over the layers of ``js`` (``t``: one (out, in) tensor per layer)."""
        total = torch.zeros(self.rows())
        for j, tj in zip(js, t):
            if j in self.dense:
                D = self.dense[j]
                total += (D.flatten(1) @ tj.to(D).flatten()).cpu()
            else:
                G, X = (a.float() for a in self.factors[j])
                tj = tj.to(X)          # <G_b^T X_b, t> = sum_t G_bt . (t X_bt): the narrower product
                total += (((X @ tj.T) * G) if G.shape[-1] <= X.shape[-1] else ((G @ tj) * X)).sum((1, 2)).cpu()
        return total

    def batch_gradient(self, js: list[int]) -> list[torch.Tensor]:
        """This backward's own weight gradient of each layer of ``js`` — ``sum_b grad_b``, free: autograd's
        ``.grad`` less what it held before (earlier micro-batches of a gradient-accumulation step)."""
        out = []
        for j in js:
            grad, before = self.layers[j][1].weight.grad, self.grad_before[j]
            out.append(grad.float() if before is None else grad.float() - before.float())
        return out

    def features(self, js: list[int]):
        """The three operations above bound to layers ``js``: what ``targets.cosines`` takes."""
        return _Bound(self, js)

    def remove_rows(self, drop: torch.Tensor) -> None:
        """Subtract the rows where ``drop`` (B,) is 1 from the layers' ``.grad``: as if they were never in
        the batch's loss (the loss's normalisation constants stay as they were)."""
        rows = drop.nonzero()[:, 0]
        if not len(rows):
            return
        for j in self.recorded:                           # the dropped rows only: cost falls with their share
            module = self.layers[j][1]
            if j in self.dense:
                removed = self.dense[j][rows.to(self.dense[j].device)].sum(0)
            else:
                G, X = (a[rows.to(a.device)].float().flatten(0, 1) for a in self.factors[j])
                removed = G.T @ X
            module.weight.grad.sub_(removed.to(module.weight.grad))
            if j in self.bias:
                module.bias.grad.sub_(self.bias[j][rows.to(self.bias[j].device)].sum(0).to(module.bias.grad))


class _Bound:
    def __init__(self, rec: LinearGradients, js: list[int]):
        self.rec, self.js = rec, js

    def sq_norms(self) -> torch.Tensor:
        return self.rec.sq_norms(self.js)

    def weighted_sum(self, w: torch.Tensor) -> list[torch.Tensor]:
        return self.rec.weighted_sum(w, self.js)

    def dots(self, t: list[torch.Tensor]) -> torch.Tensor:
        return self.rec.dots(t, self.js)
