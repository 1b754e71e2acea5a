"""One optimizer step's rows, recorded over its gradient-accumulation micro-batches: what the update stage scores.

Why the whole step (issue 17, part 4). TRL shuffles a generation batch's rows before splitting it into
``gradient_accumulation_steps`` micro-batches, and the recipes accumulate over 8-32 of them. Scoring each
micro-batch against its *own* summed gradient made the "batch gradient" target a random 1/GA of the batch:
a row could agree with its few neighbours and disagree with the step it is part of. The update an
optimizer applies is the whole step's, so that is the direction a row must agree with. ``StepGradients``
holds every micro-batch's ``per_row.LinearGradients`` until the last one's backward; the rows are then
scored together against the step's summed gradient (autograd's ``.grad``, still free) and the dropped ones
are taken out of it before the optimizer steps. The cost is memory: the step's per-row features stay alive
until its end (LoRA: B x sum(r x (in + out)) floats for the step's B rows; full layers: their (G, X)
factors, which the backward held one micro-batch at a time before).

It offers what ``update_stage`` reads from one ``LinearGradients`` — ``layers``, ``recorded``, ``dense``,
``row_gradient``, ``features``, ``batch_gradient``, ``remove_rows``, ``seconds`` — over the step's rows in
micro-batch order.
"""

from __future__ import annotations

import torch

from filters.influence.per_row import LinearGradients


class StepGradients:
    """The rows of several ``LinearGradients`` (one per micro-batch of an optimizer step), concatenated."""

    def __init__(self, parts: list[LinearGradients]):
        if not parts:
            raise ValueError("an optimizer step records at least one micro-batch")
        self.parts = parts
        self.layers = parts[0].layers
        self.dense: dict[int, torch.Tensor] = {}   # row_gradient always returns a fresh tensor: nothing to clone
        self.seconds = sum(p.seconds for p in parts)

    @property
    def recorded(self) -> list[int]:
        return sorted({j for p in self.parts for j in p.recorded})

    @property
    def factors(self) -> dict:
        """The layers any micro-batch kept as (G, X) factors (``per_row`` picks per layer)."""
        return {j: f for p in self.parts for j, f in p.factors.items()}

    def rows(self) -> int:
        return sum(p.rows() for p in self.parts)

    def row_gradient(self, j: int) -> torch.Tensor:
        """(B, out, in) fp32 per-row weight gradients of layer j over the step's rows."""
        return torch.cat([p.row_gradient(j) for p in self.parts])

    def sq_norms(self, js: list[int]) -> torch.Tensor:
        return torch.cat([p.sq_norms(js) for p in self.parts])

    def weighted_sum(self, w: torch.Tensor, js: list[int]) -> list[torch.Tensor]:
        sums = [p.weighted_sum(wp, js) for p, wp in zip(self.parts, self._split(w))]
        return [sum(layer) for layer in zip(*sums)]

    def dots(self, t: list[torch.Tensor], js: list[int]) -> torch.Tensor:
        return torch.cat([p.dots(t, js) for p in self.parts])

    def batch_gradient(self, js: list[int]) -> list[torch.Tensor]:
        """The step's own weight gradient of each layer of ``js``: ``.grad`` less what it held before the
        step's first micro-batch (nothing, after the optimizer's ``zero_grad``)."""
        first = self.parts[0]
        out = []
        for j in js:
            grad, before = self.layers[j][1].weight.grad, first.grad_before[j]
            out.append(grad.float() if before is None else grad.float() - before.float())
        return out

    def features(self, js: list[int]):
        return _Bound(self, js)

    def remove_rows(self, drop: torch.Tensor) -> None:
        """Subtract the step's rows where ``drop`` (B,) is 1 from ``.grad`` (each micro-batch its own)."""
        for p, dp in zip(self.parts, self._split(drop)):
            p.remove_rows(dp)

    def scale_gradients(self, factor: float) -> None:
        """Multiply the recorded layers' ``.grad`` (weights and trainable biases) by ``factor``."""
        for j in self.recorded:
            module = self.layers[j][1]
            module.weight.grad.mul_(factor)
            if module.bias is not None and module.bias.requires_grad and module.bias.grad is not None:
                module.bias.grad.mul_(factor)

    def _split(self, values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return values.split([p.rows() for p in self.parts])


class _Bound:
    def __init__(self, rec: StepGradients, js: list[int]):
        self.rec, self.js = rec, js

    def sq_norms(self) -> torch.Tensor:
        return self.rec.sq_norms(self.js)

    def weighted_sum(self, w: torch.Tensor) -> list[torch.Tensor]:
        return self.rec.weighted_sum(w, self.js)

    def dots(self, t: list[torch.Tensor]) -> torch.Tensor:
        return self.rec.dots(t, self.js)
