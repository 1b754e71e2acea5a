"""Which layers carry the features, and per-sequence gradients from a separate batched backward.

The rollouts stage (and the ``labeled`` target in either stage) needs each sequence's gradient before, or
apart from, the update. **Per-sample gradients from one batched backward:** forward hooks keep each hooked
layer's input ``x`` and output ``y``; one ``torch.autograd.grad(sum_i L_i, [y ...])`` per chunk of rows
gives every ``g = dL/dy`` (rows are independent, so row b's ``g`` is exactly dL_b/dy_b); ``bmm`` forms
``sum_t g_t x_t^T``. Parameter ``.grad`` is never touched, and backward stops at the lowest hooked layer.
Pads: prompts left-padded, completions right-padded, explicit position ids, ``g`` masked at pad
positions. Logits are divided by the sampling temperature, as TRL does. Dropout is off while scoring.
The per-sample LoRA gradients are LESS's (Xia et al., arXiv 2402.04333) and IIF's (NeurIPS 2025) features.
"""

from __future__ import annotations

import torch


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


def pad(rows: list[tuple[list[int], list[int]]], pad_id: int):
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
            ids, attn, pos, C = (t.to(device) if torch.is_tensor(t) else t for t in pad(chunk, pad_id))
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
