"""Gradient-influence rollout selection: train on the rollouts whose update helps a target direction.

Per rollout i we take the gradient of its loss on the trainable parameters, optionally precondition it
with the live Adam state, L2-normalise it, and score it by the cosine with a *target* direction:

* LESS (Xia et al., arXiv 2402.04333): per-example gradients on the LoRA parameters, Adam-preconditioned
  (``m' = b1 m + (1-b1) g``, ``v' = b2 v + (1-b2) g^2``, feature ``m'/sqrt(v'+eps)``), target = the plain
  gradient of a few labeled examples, cosine (normalised: unnormalised, short sequences win) -> ``labeled``.
* DTV-style alignment for GRPO (2026): ``g_i . mean(g)`` over the mini-batch, or leave-one-out, keep
  those >= 0 -> ``batch_mean``, ``leave_one_out``; label-free, robust to ~20% reversed rankings.
* IIF (NeurIPS 2025): TracIn-style influence at the current step, per-sample LoRA gradients from hooks
  on the PEFT layers, drop negative influence -> ``keep="drop_negative"``.
* ``agree``: the label-free analogue of LESS in TTRL: the target is the NLL gradient of the rollouts that
  agree with the majority-vote pseudo-label (reward 1) across the batch.

**Loss form.** The candidate gradient is that of the policy-gradient term the GRPO update actually
applies for the rollout, ``-A_i * mean_t log pi(y_t)`` (``A_i`` = the group-normalised reward over the
group's N_vote rollouts, TRL's ``scale_rewards`` respected), not LESS's NLL. Influence (TracIn, IIF) is
"the target loss change caused by this sample's step": a negative-advantage rollout is pushed *down*
by the update, so its NLL gradient (which would score it as helpful whenever it shares the format of
the target) has the wrong sign. ``loss="nll"`` gives LESS's form. Targets are plain NLL gradients of
target sequences (LESS). Both forms come from one quantity, ``u_i = grad mean_t log pi(y_t)``, the
PG feature is ``-A_i u_i``, so one batched pass serves both. Zero-advantage rollouts (unanimous groups)
change nothing in the update: their alignment is 0.

**Per-sample gradients from one batched backward.** A Linear ``y = x W^T`` has per-sample gradient
``sum_t g_t x_t^T`` (out x in), ``g_t = dL/dy_t``. Forward hooks keep each hooked layer's input ``x``
and output ``y``; one ``torch.autograd.grad(sum_i L_i, [y ...])`` per chunk of rows gives every ``g``
(rows are independent, so row b's ``g`` is exactly dL_b/dy_b); ``einsum('bto,bti->boi')`` forms the
features. Parameter ``.grad`` is never touched, and backward stops at the lowest hooked layer. Pads:
prompts left-padded, completions right-padded, explicit position ids, ``g`` masked at pad positions.
Logits are divided by the sampling temperature, as TRL does. Dropout is off while scoring.

**Cost model.** Memory: N rollouts x D floats, D = sum over hooked layers of in x out (LoRA r=8 on
SmolLM2-135M all-linear: ~4.9M -> 20 MB per rollout; the 130k-param demo under full FT: 131k -> 0.5 MB),
plus per chunk the (rows x out x in) einsum output (bound it with ``max_rows_per_backward``). Time: one
forward over all N_vote rollouts plus a backward down to the lowest hooked layer (no weight-gradient
GEMMs), plus O(N D) for features and targets. Relative to the update it rides on — forward + backward
(+ reference forward when beta > 0) over n_train rows — that is about (N_vote / n_train) x 0.5-0.7 of the
update when scoring every layer: the forward over the rollouts the update does not train on dominates,
not the per-sample features (ANCHORS: hooks alone cost ~+8% inside a backward). Restricting ``modules``
to the top layers shortens the backward, not the forward. A Rademacher projection to d dims costs
O(N D d) (7-8x the update at d=8192 in ANCHORS) and is off by default. Measured on the demo
(benchmarks/results/influence_overhead.md, 2 loaded CPU cores, 1024 rows scored / 512 trained): the
selector costs 1.3-2.4x the update, and 1.0-2.1x even on the update's own 512 rows — far over the 15%
target: on a 130k-param model the (N, D) feature traffic is as large as the update itself. Meeting
the target needs the features taken inside the update's own backward (a mask seam in engine/update.py).

**Keep rule and the fixed k.** TRL groups advantages by ``num_generations``, so every group must give
exactly k rows. ``drop_negative`` keeps alignment >= 0, ``top_fraction`` keeps the batch's top
``fraction``; survivors beyond k are trimmed by alignment. With fewer than k survivors the default
``fill="remaining"`` tops up with the highest-aligned dropped rollouts (no duplicates): repeating
survivors changes the GRPO group statistics (k copies of the same few rollouts, often one reward value,
give std 0 and zero advantage, erasing the survivors too) and over-weights them. Consequence, reported as
``filled_fraction``: with fill="remaining" a threshold rule reduces to "top k by alignment per group",
and filled rollouts do contribute. ``fill="repeat"`` cycles the survivors (in alignment order) instead,
so dropped rollouts contribute nothing; groups with no survivor fall back to "remaining". Ties go to
the lower index. Metrics of the last call: ``selector.last_metrics`` (``filters/influence/...``).
"""

from __future__ import annotations

import json
import math
import time

import torch

PREFIX = "filters/influence/"


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


def adam_state(optimizer, layers):
    """(m, v, beta1, beta2, eps) flattened in ``layers`` order, or None when the state is empty."""
    if optimizer is None:
        return None
    ms, vs, hp = [], [], None
    for _, mod in layers:
        st = optimizer.state.get(mod.weight, {})
        if "exp_avg" not in st or "exp_avg_sq" not in st:
            return None
        ms.append(st["exp_avg"].detach().float().flatten().cpu())
        vs.append(st["exp_avg_sq"].detach().float().flatten().cpu())
        hp = hp or next(g for g in optimizer.param_groups if any(p is mod.weight for p in g["params"]))
    b1, b2 = hp.get("betas", (0.9, 0.999))
    return torch.cat(ms), torch.cat(vs), b1, b2, hp.get("eps", 1e-8)



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
    """Select each group's k rollouts by gradient alignment with a target (see the module docstring).

    target: ``batch_mean`` | ``leave_one_out`` | ``agree`` | ``labeled`` (needs ``labeled_path``).
    keep: ``drop_negative`` | ``top_fraction`` (``fraction`` of the batch). fill: ``remaining`` | ``repeat``.
    loss: ``pg`` (advantage x log-prob, default) | ``nll``. precondition: Adam m'/sqrt(v') from the live
    optimizer (plain gradients while its state is empty). project_dim: Rademacher projection (None = off).
    modules: name substrings of the layers to hook (default: LoRA A/B, or every trainable Linear).
    """

    TARGETS = ("batch_mean", "leave_one_out", "agree", "labeled")

    def __init__(self, target: str = "batch_mean", keep: str = "drop_negative", fraction: float = 0.5,
                 fill: str = "remaining", loss: str = "pg", precondition: bool = True,
                 project_dim: int | None = None, modules: list[str] | None = None,
                 max_rows_per_backward: int = 256, labeled_path: str | None = None, seed: int = 0):
        checks = {"target": (target, self.TARGETS), "keep": (keep, ("drop_negative", "top_fraction")),
                  "fill": (fill, ("remaining", "repeat")), "loss": (loss, ("pg", "nll"))}
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"influence selector: {name}={value!r}; allowed: {', '.join(allowed)}")
        if target == "labeled" and not labeled_path:
            raise ValueError("influence selector: target='labeled' needs labeled_path (JSONL of {prompt, answer})")
        if not 0 < fraction <= 1:
            raise ValueError(f"influence selector: fraction={fraction!r} must be in (0, 1]")
        self.target, self.keep, self.fraction, self.fill, self.loss = target, keep, fraction, fill, loss
        self.precondition, self.project_dim, self.modules = precondition, project_dim, modules
        self.max_rows, self.labeled_path, self.seed = max_rows_per_backward, labeled_path, seed
        self.last_metrics: dict[str, float] = {}
        self.last_alignment: list[list[float]] = []

    def __call__(self, group, k: int) -> list[int]:
        raise TypeError("the influence selector needs the policy's model and optimizer: it runs through "
                        "select_batch(groups, k, policy) (engine.loop.select_rollouts), not per group")

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
        if self.target == "agree":   # t = -sum of unit NLL gradients of the rollouts with reward 1
            w = (torch.cat(rewards) > 0.5).float() / U.norm(dim=1).clamp(min=1e-12)
            t = -(w @ U)
        elif self.target == "labeled":
            T = sequence_gradients(model, load_labeled(self.labeled_path, tokenizer), layers, **kw)
            t = -(1 / T.norm(dim=1).clamp(min=1e-12)) @ T
        F = U.mul_(-adv[:, None])                                            # (N, D) loss gradients g_i
        state = adam_state(getattr(trainer, "optimizer", None), layers) if self.precondition else None
        self._used_adam = state is not None
        if state is not None:
            m, v, b1, b2, eps = state
            bm, bv = b1 * m, b2 * v + eps
            for i in range(0, len(F), 64):                                  # in place, one small temporary
                g = F[i:i + 64]
                den = torch.mul(g, g).mul_(1 - b2).add_(bv).sqrt_()
                g.mul_(1 - b1).add_(bm).div_(den)
            F[adv == 0] = 0                                                  # no update term, no influence
        if self.project_dim:
            gen = torch.Generator().manual_seed(self.seed)
            P = torch.randint(0, 2, (F.shape[1], self.project_dim), generator=gen).float().mul_(2).sub_(1)
            F = F @ P / math.sqrt(self.project_dim)                          # (N, d)
            t = t @ P / math.sqrt(self.project_dim) if self.target in ("agree", "labeled") else None
        # Cosines by mat-vec products: no normalised copy of the (N, D) matrix is ever made.
        norms = F.norm(dim=1)
        live = (norms > 0).float()
        inv = live / norms.clamp(min=1e-12)
        if self.target in ("batch_mean", "leave_one_out"):
            t = inv @ F                                                      # (D,) sum of unit features
            dots = (F @ t) * inv                                             # unit f_i . t
            if self.target == "batch_mean":
                return dots / t.norm().clamp(min=1e-12)
            rest = (t.norm() ** 2 - 2 * dots + live).clamp(min=0).sqrt()    # |t - unit f_i|
            return (dots - live) / rest.clamp(min=1e-12)
        return (F @ t) * inv / t.norm().clamp(min=1e-12)

    def select_batch(self, groups, k: int, policy) -> list[list[int]]:
        """Exactly k distinct indices per group (or survivors repeated, under ``fill="repeat"``)."""
        start = time.perf_counter()
        for g in groups:
            if k > len(g.rollouts):
                raise ValueError(f"cannot select {k} rollouts from a group of {len(g.rollouts)} (task {g.task.id})")
        a = self.scores(groups, policy)
        if self.keep == "drop_negative":
            passed = a >= 0
        else:
            n_keep = max(1, math.ceil(self.fraction * len(a)))
            passed = a >= torch.sort(a, descending=True).values[n_keep - 1]
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
