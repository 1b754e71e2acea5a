"""Gradient-influence rollout selection: train on the rollouts whose update helps a target direction.

Per rollout i we take the gradient of its loss on the trainable parameters, optionally precondition it
with the live Adam state, and score it by the cosine (L2-normalised, so length does not decide) with a
*target* direction:

* DTV-style alignment for GRPO (2026): ``g_i . mean(g)`` over the mini-batch, or leave-one-out, keep
  those >= 0 -> ``batch_mean`` (the default), ``leave_one_out``; label-free, robust to ~20% reversed
  rankings.
* IIF (NeurIPS 2025): TracIn-style influence at the current step, per-sample LoRA gradients from hooks
  on the PEFT layers inside the training backward, drop negative influence -> ``keep="drop_negative"``.
* LESS (Xia et al., arXiv 2402.04333): per-example gradients on the LoRA parameters, Adam-preconditioned
  (``m' = b1 m + (1-b1) g``, ``v' = b2 v + (1-b2) g^2``, feature ``m'/sqrt(v'+eps)``), target = the plain
  gradient of a few labeled examples the user supplies -> ``labeled`` (``labeled_path``).
* ``agree``: the label-free analogue of LESS in TTRL: the target is the loss gradient of the rollouts that
  agree with the majority-vote pseudo-label (reward 1, positive advantage) across the batch.

**Two stages.** ``stage="update"`` (default, IIF's design): the update trains on ``pool``'s n_train
rollouts per group (``first_k``, TTRL's, or ``max_variance``); ``filters.per_sample.LinearGradients``
records every row's gradient inside TRL's own backward (``GRPOPolicy.update(batch, grad_filter=...)``),
the rows are scored, and the dropped rows' gradients are subtracted from ``.grad`` before the optimizer
steps — so they contribute nothing to the applied update, and the features are the rows' true loss
gradients (advantage, clipping, KL term and TRL's normalisation included). The DTV target costs nothing:
the batch's summed gradient is autograd's own ``.grad``. Rows with zero advantage (unanimous groups) carry
only the KL anchor and are always kept. Covered exactly: every trainable Linear — all of LoRA; under full
fine-tuning the norm gains and the (tied) embedding are not Linear layers and keep the whole batch's
gradient (``filters/influence/unfiltered_param_fraction``: 1.3% of the demo model). ``stage="rollouts"``:
a separate forward and backward over all N_vote rollouts before the update (``sequence_gradients``), so
the selector can choose *which* k of N to train on; TRL then trains on them unchanged.

**Loss form (rollouts stage).** The candidate gradient is that of the policy-gradient term the update
will apply, ``-A_i * mean_t log pi(y_t)`` (``A_i`` = the group-normalised reward over the group's N_vote
rollouts, TRL's ``scale_rewards`` respected), not LESS's NLL. Influence (TracIn, IIF) is "the target
loss change caused by this sample's step": a negative-advantage rollout is pushed *down* by the update,
so its NLL gradient has the wrong sign. ``loss="nll"`` gives LESS's form. Both come from one quantity,
``u_i = grad mean_t log pi(y_t)``; zero-advantage rollouts change nothing in the update: alignment 0.

**Per-sample gradients from one batched backward (rollouts stage).** Forward hooks keep each hooked
layer's input ``x`` and output ``y``; one ``torch.autograd.grad(sum_i L_i, [y ...])`` per chunk of rows
gives every ``g = dL/dy`` (rows are independent, so row b's ``g`` is exactly dL_b/dy_b); ``bmm`` forms
``sum_t g_t x_t^T``. Parameter ``.grad`` is never touched, and backward stops at the lowest hooked layer.
Pads: prompts left-padded, completions right-padded, explicit position ids, ``g`` masked at pad
positions. Logits are divided by the sampling temperature, as TRL does. Dropout is off while scoring.

**Preconditioning is off by default.** LESS's ``m'`` carries 0.9 of the optimizer's momentum, shared by
every row; it dominates the rows' own 0.1 g, so every row aligns positively with the batch and
``drop_negative`` keeps all of them (measured: kept fraction 1.00 on the demo once Adam has state). LESS
ranks a global top 5%, where the shared offset cancels; a sign rule needs the plain gradients (DTV).

**Cost model.** Update stage: the hooks add one small GEMM per layer to the backward (a LoRA layer's
per-row gradients are r x in); scoring adds per layer one GEMM-sized dot product with ``.grad`` and the
squared norms, and removing the dropped rows one more GEMM over those rows only. For LoRA that is small
beside the frozen base's forward and backward; under full fine-tuning each is as large as a weight-gradient
GEMM (the update does about four per layer: forward, reference forward, two in the backward), so
expect ~25-35% there (measured +33% on the demo model; SmolLM2-135M with LoRA r=16: the selector's clock
2% of the update). Memory: LoRA rows materialised, B x sum(r x (in + out)) floats; full layers kept as
their (G, X) factors, which the backward held anyway. Measured: benchmarks/results/influence_overhead.md.
Rollouts stage: one forward over all N_vote rollouts plus a backward down to the lowest hooked layer,
plus O(N D) for the features: 2.0-3.2x the update on the demo — the price of choosing among all N_vote.
A Rademacher projection to d dims costs O(N D d) (7-8x the update at d=8192 in ANCHORS), off by default.

**Keep rule and the fixed k (rollouts stage).** TRL groups advantages by ``num_generations``, so every
group must give exactly k rows. ``drop_negative`` keeps alignment >= 0, ``top_fraction`` keeps the
batch's top ``fraction``; survivors beyond k are trimmed by alignment. With fewer than k survivors the
default ``fill="remaining"`` tops up with the highest-aligned dropped rollouts (no duplicates): repeating
survivors changes the GRPO group statistics (k copies of the same few rollouts, often one reward value,
give std 0 and zero advantage, erasing the survivors too) and over-weights them. Consequence, reported as
``filled_fraction``: with fill="remaining" a threshold rule reduces to "top k by alignment per group",
and filled rollouts do contribute. ``fill="repeat"`` cycles the survivors (in alignment order) instead,
so dropped rollouts contribute nothing; groups with no survivor fall back to "remaining". Ties go to
the lower index. In the update stage the keep rule applies to each micro-batch's rows directly and
dropped rows are removed from the gradient, so no fill is needed. Metrics: ``selector.last_metrics``
(``filters/influence/...``), merged into the step's row.
"""

from __future__ import annotations

import json
import math
import time

import torch

from filters.per_sample import LinearGradients
from filters.selectors import first_k, max_variance

PREFIX = "filters/influence/"
POOLS = {"first_k": first_k, "max_variance": max_variance}   # the update stage's candidates


def hooked_modules(model, modules: list[str] | None = None) -> list[tuple[str, torch.nn.Linear]]:
    """Trainable Linear layers to take features on: the ``lora_A``/``lora_B`` layers under PEFT, else every
    trainable Linear but ``lm_head`` (tied to the embeddings, whose gradient a hook on it would miss, and
    vocab x hidden per rollout). ``modules``: keep only names containing one of these substrings."""
    named = [(n, m) for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and m.weight.requires_grad]
    if any(".lora_" in n for n, _ in named):
        named = [(n, m) for n, m in named if ".lora_A." in n or ".lora_B." in n]
    elif modules is None:
        named = [(n, m) for n, m in named if not n.endswith("lm_head")]
    if modules is not None:
        named = [(n, m) for n, m in named if any(s in n for s in modules)]
    if not named:
        raise ValueError(f"no trainable Linear layer matches modules={modules!r}")
    return named


def _pad(rows: list[tuple[list[int], list[int]]], pad_id: int):
    """Left-pad prompts to P, right-pad completions to C (TRL's layout), with explicit position ids."""
    P, C = max(len(p) for p, _ in rows), max(max(len(c) for _, c in rows), 1)
    ids = torch.full((len(rows), P + C), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for b, (p, c) in enumerate(rows):
        ids[b, P - len(p):P] = torch.tensor(p, dtype=torch.long)
        ids[b, P:P + len(c)] = torch.tensor(c, dtype=torch.long)
        attn[b, P - len(p):P + len(c)] = 1
    pos = (attn.cumsum(1) - 1).clamp(min=0)
    return ids, attn, pos, C


def sequence_gradients(model, rows, layers, *, temperature: float = 1.0, pad_id: int = 0,
                       max_rows: int = 256) -> torch.Tensor:
    """(N, D) fp32: row i = grad of rollout i's mean completion-token log-prob w.r.t. the weights of
    ``layers`` (flattened out x in, concatenated in order), from one batched backward per chunk."""
    device = next(model.parameters()).device
    sizes = [m.weight.numel() for _, m in layers]
    feats = torch.zeros(len(rows), sum(sizes))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(rows), max_rows):
            chunk = rows[start:start + max_rows]
            ids, attn, pos, C = (t.to(device) if torch.is_tensor(t) else t for t in _pad(chunk, pad_id))
            seen: dict[int, tuple] = {}
            def keep(j):   # a forward hook that returns None leaves the output alone
                return lambda mod, inp, out: seen.__setitem__(j, (inp[0], out)) if j not in seen else None
            hooks = [m.register_forward_hook(keep(j)) for j, (_, m) in enumerate(layers)]
            try:
                with torch.enable_grad():
                    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos,
                                   logits_to_keep=C + 1).logits[:, :-1]          # (B, C, V)
                    target = ids[:, -C:]
                    mask = attn[:, -C:].to(logits.dtype)                          # (B, C)
                    logp = torch.log_softmax(logits.float() / temperature, -1).gather(-1, target[..., None])[..., 0]
                    seq = (logp * mask).sum(1) / mask.sum(1).clamp(min=1)         # (B,)
                    outs = [seen[j][1] for j in range(len(layers))]
                    grads = torch.autograd.grad(seq.sum(), outs, allow_unused=True)
            finally:
                for h in hooks:
                    h.remove()
            offset = 0
            for j, g in enumerate(grads):
                x = seen[j][0].detach()
                if g is not None:
                    m = attn[:, -g.shape[1]:, None].to(g.dtype)                   # (B, T, 1)
                    per = torch.einsum("bto,bti->boi", (g.detach() * m).float(), x.float())  # (B, out, in)
                    feats[start:start + len(chunk), offset:offset + sizes[j]] = per.flatten(1).cpu()
                offset += sizes[j]
    finally:
        model.train(was_training)
    return feats


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


class DenseFeatures:
    """Features as column blocks of an (N, D) matrix — never concatenated — with the operations
    ``cosines`` needs (``filters.per_sample.LinearGradients.features`` has the same three)."""

    def __init__(self, blocks: list[torch.Tensor]):
        self.blocks = blocks

    def sq_norms(self) -> torch.Tensor:
        return sum(torch.linalg.vector_norm(F, dim=1) ** 2 for F in self.blocks)

    def weighted_sum(self, w: torch.Tensor) -> list[torch.Tensor]:
        return [w.to(F) @ F for F in self.blocks]

    def dots(self, t: list[torch.Tensor]) -> torch.Tensor:
        return sum(F @ tj.to(F).flatten() for F, tj in zip(self.blocks, t))


def cosines(feats, target: str, t: list[torch.Tensor] | None = None, sq: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) cosine of each row's feature ``f_i`` with the target: ``batch_mean`` — the batch's summed
    gradient ``g = sum_j f_j`` (DTV's ``g_i . mean(g)``; ``t`` may hand it in when it is known already, as
    autograd's ``.grad`` in the update stage), ``leave_one_out`` — ``g - f_i``, or a given direction ``t``
    (one tensor per block); ``sq``: the rows' squared norms where the caller has them already. Rows of norm
    0 score 0. Norms and dot products only: no normalised copy."""
    sq = feats.sq_norms().cpu() if sq is None else sq
    if t is None:
        t = feats.weighted_sum(torch.ones(len(sq)))                          # sum of the rows
    norms = sq.sqrt()
    inv = (norms > 0).float() / norms.clamp(min=1e-12)
    t_sq = sum((tj.float() ** 2).sum() for tj in t).cpu()
    dots = feats.dots(t).cpu()                                               # f_i . t
    if target == "leave_one_out":
        rest = (t_sq - 2 * dots + sq).clamp(min=0).sqrt()                    # |t - f_i|
        return (dots - sq) * inv / rest.clamp(min=1e-12)
    return dots * inv / t_sq.sqrt().clamp(min=1e-12)


def keep_mask(a: torch.Tensor, keep: str, fraction: float) -> torch.Tensor:
    """Which alignments pass the keep rule: ``drop_negative`` (>= 0) or the top ``fraction`` of ``a``."""
    if keep == "drop_negative" or not len(a):
        return a >= 0
    n_keep = max(1, math.ceil(fraction * len(a)))
    return a >= torch.sort(a, descending=True).values[n_keep - 1]


def load_labeled(path: str, tokenizer) -> list[tuple[list[int], list[int]]]:
    """A JSONL of ``{"prompt", "answer"}`` -> (prompt ids, answer ids + EOS) rows."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                ex = json.loads(line)
                answer = list(tokenizer(ex["answer"], add_special_tokens=False)["input_ids"])
                if tokenizer.eos_token_id is not None:
                    answer.append(tokenizer.eos_token_id)
                rows.append((list(tokenizer(ex["prompt"])["input_ids"]), answer))
    if not rows:
        raise ValueError(f"no labeled target examples in {path}")
    return rows


class InfluenceSelector:
    """Keep the rollouts whose gradient aligns with a target (see the module docstring).

    stage: ``update`` (default) — the update trains on ``pool``'s k rollouts per group (``first_k`` or
    ``max_variance``); their features come from the update's own backward and dropped rows are subtracted
    from the gradient before the optimizer steps | ``rollouts`` — a separate pass scores all N_vote
    rollouts first and the update trains on each group's k best.
    target: ``batch_mean`` | ``leave_one_out`` | ``agree`` | ``labeled`` (needs ``labeled_path``).
    keep: ``drop_negative`` | ``top_fraction`` (``fraction`` of the batch). fill (rollouts stage):
    ``remaining`` | ``repeat``. loss (rollouts stage): ``pg`` (advantage x log-prob, default) | ``nll``.
    precondition: Adam m'/sqrt(v') from the live optimizer (plain gradients while its state is empty).
    project_dim: Rademacher projection (None = off). modules: name substrings of the layers whose
    features decide (default: LoRA A/B, or every trainable Linear).
    """

    TARGETS = ("batch_mean", "leave_one_out", "agree", "labeled")

    def __init__(self, target: str = "batch_mean", keep: str = "drop_negative", fraction: float = 0.5,
                 stage: str = "update", pool: str = "first_k", fill: str = "remaining", loss: str = "pg",
                 precondition: bool = False, project_dim: int | None = None, modules: list[str] | None = None,
                 max_rows_per_backward: int = 256, labeled_path: str | None = None, seed: int = 0):
        checks = {"target": (target, self.TARGETS), "keep": (keep, ("drop_negative", "top_fraction")),
                  "stage": (stage, ("update", "rollouts")), "pool": (pool, tuple(POOLS)),
                  "fill": (fill, ("remaining", "repeat")), "loss": (loss, ("pg", "nll"))}
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"influence selector: {name}={value!r}; allowed: {', '.join(allowed)}")
        if target == "labeled" and not labeled_path:
            raise ValueError("influence selector: target='labeled' needs labeled_path (JSONL of {prompt, answer})")
        if not 0 < fraction <= 1:
            raise ValueError(f"influence selector: fraction={fraction!r} must be in (0, 1]")
        self.target, self.keep, self.fraction, self.fill, self.loss = target, keep, fraction, fill, loss
        self.stage, self.pool = stage, pool
        self.precondition, self.project_dim, self.modules = precondition, project_dim, modules
        self.max_rows, self.labeled_path, self.seed = max_rows_per_backward, labeled_path, seed
        self.last_metrics: dict[str, float] = {}
        self.last_alignment: list[list[float]] = []   # per group (rollouts stage) / per micro-batch (update)
        self.last_keep: torch.Tensor | None = None     # update stage: the last micro-batch's kept rows
        self._totals: dict[str, float] = {}

    def __call__(self, group, k: int) -> list[int]:
        raise TypeError("the influence selector needs the policy's model and optimizer: it runs through "
                        "select_batch(groups, k, policy) (engine.loop.select_rollouts), not per group")

    @property
    def grad_filter(self):
        """What the update hands its per-row gradients to (``GRPOPolicy.update``): self in the update stage."""
        return self if self.stage == "update" else None

    # -- stage "update": features from the update's own backward --------------------------------------

    def capture(self, model) -> LinearGradients:
        """Hooks recording per-row gradients of every trainable Linear (all of them: a dropped row must be
        taken out of every layer it touched, not only the deciding ones)."""
        return LinearGradients(hooked_modules(model, None))

    def filter_gradients(self, cap: LinearGradients, advantages: torch.Tensor, policy) -> None:
        """After one micro-batch's backward: score its rows, subtract the dropped rows' gradients.

        Rows with zero advantage (TTRL's unanimous groups) carry only the KL anchor's pull: always kept.
        """
        start = time.perf_counter()
        adv = advantages.detach().float().cpu()
        if adv.dim() > 1:                                                    # per-token advantages
            adv = adv.flatten(1).mean(1)
        layers = cap.layers
        js = [j for j in cap.recorded if self.modules is None or any(m in layers[j][0] for m in self.modules)]
        if not js:
            raise ValueError(f"influence selector: no trainable Linear layer matches modules={self.modules!r}")
        trainer = getattr(policy, "trainer", None)
        used_adam = False
        feats = cap.features(js)
        if self.precondition or self.project_dim:      # elementwise or dense maps: materialise the rows
            blocks = [(cap.row_gradient(j).clone() if j in cap.dense else cap.row_gradient(j)).flatten(1) for j in js]
            if self.precondition:
                blocks, used_adam = precondition(blocks, [layers[j][1].weight for j in js],
                                                 getattr(trainer, "optimizer", None), inplace=True)
            feats = DenseFeatures(blocks)
        t = sq = None
        if self.target == "agree":    # the loss gradients of the rows that agree with the pseudo-label
            sq = feats.sq_norms().cpu()                                      # computed once, reused below
            t = feats.weighted_sum((adv > 0).float() / sq.sqrt().clamp(min=1e-12))
        elif self.target == "labeled":
            t = self._labeled_target([layers[j] for j in js], policy)
        if self.project_dim:
            blocks, t = self._project(feats.blocks, t)
            feats, sq = DenseFeatures(blocks), None
        if t is None and not isinstance(feats, DenseFeatures):
            t = cap.batch_gradient(js)                                       # autograd's own sum, free
        a = cosines(feats, self.target, t, sq)
        active = adv != 0
        passed = keep_mask(a[active], self.keep, self.fraction)
        keep = torch.ones(len(a), dtype=torch.bool)
        keep[active] = passed
        cap.remove_rows((~keep).float())
        self.last_alignment, self.last_keep = [a.tolist()], keep
        seconds = time.perf_counter() - start + cap.seconds
        tot = self._totals
        for key, value in {"rows": len(a), "active": int(active.sum()), "kept": int(passed.sum()),
                           "negative": int((a[active] < 0).sum()), "alignment": float(a[active].sum()),
                           "seconds": seconds, "preconditioned": float(used_adam)}.items():
            tot[key] = tot.get(key, 0) + value
        covered = sum(p.numel() for _, m in layers for p in (m.weight, m.bias) if p is not None and p.requires_grad)
        trainable = sum(p.numel() for p in policy.model.parameters() if p.requires_grad)
        self.last_metrics = {
            PREFIX + "mean_alignment": tot["alignment"] / max(1, tot["active"]),
            PREFIX + "kept_fraction": tot["kept"] / max(1, tot["active"]),
            PREFIX + "negative_fraction": tot["negative"] / max(1, tot["active"]),
            PREFIX + "zero_advantage_fraction": 1 - tot["active"] / max(1, tot["rows"]),
            PREFIX + "preconditioned": float(used_adam),
            PREFIX + "unfiltered_param_fraction": 1 - covered / max(1, trainable),
            PREFIX + "time_s": tot["seconds"],
        }

    def _labeled_target(self, layers, policy) -> list[torch.Tensor]:
        tokenizer = getattr(getattr(policy, "trainer", None), "processing_class", None)
        temperature = float(getattr(getattr(policy, "args", None), "temperature", 1.0) or 1.0)
        T = sequence_gradients(policy.model, load_labeled(self.labeled_path, tokenizer), layers,
                               temperature=temperature, max_rows=self.max_rows)
        t = -(1 / T.norm(dim=1).clamp(min=1e-12)) @ T                        # loss gradient = -grad log-prob
        return [tj.view_as(m.weight) for tj, (_, m) in zip(t.split([m.weight.numel() for _, m in layers]), layers)]

    def _project(self, blocks, t):
        """Rademacher projection of the concatenated features (and target) to ``project_dim`` dims."""
        gen = torch.Generator().manual_seed(self.seed)
        F = torch.cat(blocks, dim=1)
        P = torch.randint(0, 2, (F.shape[1], self.project_dim), generator=gen).float().mul_(2).sub_(1)
        P /= math.sqrt(self.project_dim)
        t = [torch.cat([tj.flatten() for tj in t]) @ P.to(F.device)] if t is not None else None
        return [F @ P.to(F.device)], t

    # -- stage "rollouts": a separate pass over all N_vote rollouts -----------------------------------

    def scores(self, groups, policy) -> torch.Tensor:
        """(N,) alignment of every rollout of ``groups`` (flattened in group order) with the target."""
        model, trainer = policy.model, getattr(policy, "trainer", None)
        args = getattr(policy, "args", None)
        temperature = float(getattr(args, "temperature", 1.0) or 1.0)
        tokenizer = getattr(trainer, "processing_class", None) or getattr(policy, "tokenizer", None)
        layers = hooked_modules(model, self.modules)
        rows = [(list(g.task.prompt_ids), list(r.token_ids)) for g in groups for r in g.rollouts]
        kw = dict(temperature=temperature, max_rows=self.max_rows)
        U = sequence_gradients(model, rows, layers, **kw)                    # (N, D) grad mean log-prob
        rewards = [torch.tensor(g.rewards, dtype=torch.float32) for g in groups]
        scale = getattr(args, "scale_rewards", "group") not in ("none", False)
        if self.loss == "pg":
            adv = torch.cat([(r - r.mean()) / ((r.std() if len(r) > 1 else 0) + 1e-4 if scale else 1.0)
                             for r in rewards])
        else:
            adv = torch.ones(len(rows))
        t = None
        if self.target == "agree":   # t = -sum of unit NLL gradients of the rollouts with reward 1
            w = (torch.cat(rewards) > 0.5).float() / U.norm(dim=1).clamp(min=1e-12)
            t = [-(w @ U)]
        elif self.target == "labeled":
            T = sequence_gradients(model, load_labeled(self.labeled_path, tokenizer), layers, **kw)
            t = [-(1 / T.norm(dim=1).clamp(min=1e-12)) @ T]
        F = U.mul_(-adv[:, None])                                            # (N, D) loss gradients g_i
        self._used_adam = False
        if self.precondition:
            sizes = [m.weight.numel() for _, m in layers]
            _, self._used_adam = precondition(list(F.split(sizes, dim=1)), [m.weight for _, m in layers],
                                              getattr(trainer, "optimizer", None), inplace=True)   # F's views
            if self._used_adam:
                F[adv == 0] = 0                                              # no update term, no influence
        blocks = [F]
        if self.project_dim:
            blocks, t = self._project(blocks, t)
        return cosines(DenseFeatures(blocks), self.target, t)

    def select_batch(self, groups, k: int, policy) -> list[list[int]]:
        """Exactly k indices per group: the pool's (update stage; the update then filters), or the k
        best-aligned distinct ones (or survivors repeated, under ``fill="repeat"``)."""
        start = time.perf_counter()
        for g in groups:
            if k > len(g.rollouts):
                raise ValueError(f"cannot select {k} rollouts from a group of {len(g.rollouts)} (task {g.task.id})")
        if self.stage == "update":
            self._totals, self.last_metrics, self.last_alignment, self.last_keep = {}, {}, [], None
            return [POOLS[self.pool](g, k) for g in groups]
        a = self.scores(groups, policy)
        passed = keep_mask(a, self.keep, self.fraction)
        selections, filled, offset = [], 0, 0
        self.last_alignment = []
        for g in groups:
            n = len(g.rollouts)
            ga, gp = a[offset:offset + n].tolist(), passed[offset:offset + n].tolist()
            order = sorted(range(n), key=lambda i: (-ga[i], i))
            survivors = [i for i in order if gp[i]]
            if self.fill == "repeat" and survivors:
                picked = [survivors[j % len(survivors)] for j in range(k)]
            else:
                picked = order[:k]
                filled += sum(not gp[i] for i in picked)
            selections.append(picked)
            self.last_alignment.append(ga)
            offset += n
        total = max(1, len(a))
        self.last_metrics = {
            PREFIX + "mean_alignment": float(a.mean()) if len(a) else 0.0,
            PREFIX + "kept_fraction": float(passed.sum()) / total,
            PREFIX + "negative_fraction": float((a < 0).sum()) / total,
            PREFIX + "filled_fraction": filled / max(1, k * len(groups)),
            PREFIX + "preconditioned": float(self._used_adam),
            PREFIX + "time_s": time.perf_counter() - start,
        }
        return selections
