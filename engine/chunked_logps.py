"""Log-probs of the chosen tokens in chunks of positions, each chunk's logits recomputed in the backward.

What TRL already does. TRL 1.16's ``GRPOTrainer`` never holds a micro-batch's (rows, positions, vocab)
logits: it patches the causal LM's ``forward`` (``trl.trainer.utils.add_fused_lm_head``) so that
``model(..., labels=..., fused_lm_head=True)``, the call in ``_get_per_token_logps_and_entropies``, runs the
backbone and then ``trl.kernels.ChunkedLogProbFunction`` over tiles of 4,096 positions x 32,768 vocabulary
columns, folded into an online log-sum-exp (the idea of Liger's fused linear cross-entropy, arXiv 2410.10989).
On CUDA a Triton kernel folds each tile in place, and only the scored positions go through the head.

Why the engine has a path of its own. Where Triton does not run (CPU), TRL's torch fallback scores every
position (the prompt's too), and each [min(positions, 4096), 32768] float32 tile goes through about seven
temporaries of its size in the forward and again in the backward. At SmolLM2-135M's shape (3,296 positions,
hidden 576, 49,152 rows; the head alone, forward + backward, the entropy without a gradient as GRPO asks it;
one thread of a shared 2-core machine, so the times are loose) TRL's head grew the peak by 3.6 GB in 29-50 s,
whole logits through ``log_softmax`` by 2.4 GB in 15-22 s — on CPU TRL's fused head costs more than the logits
it avoids. The path here: the same backbone call, then only the scored positions' hidden states
(label != -100), and per chunk of ``chunk_tokens`` positions ``lm_head(h) / temperature -> log_softmax ->
the chosen token's log-prob`` (and the entropy), inside ``torch.utils.checkpoint`` (non-reentrant), so the
backward recomputes the chunk's logits instead of keeping them: 0.4 GB in 21 s at 512 positions a chunk.

The seam. TRL's own ``_get_per_token_logps_and_entropies`` still builds the rows, labels and autocast and
calls the whole model (DDP's forward, then PEFT's, with the adapter disabled for the LoRA reference); only
the ``fused_lm_head=True`` branch of the inner causal LM's forward — TRL's patch, wrapped here — is
replaced. So DDP sees the ordinary call it wraps, and the reference model (full fine-tuning's second copy,
or LoRA's base with the adapter off) takes the same path. Everything this path does not reproduce goes to
TRL's branch unchanged: FSDP (the head is a sharded DTensor there, gathered by TRL's branch), logit
soft-capping or scaling (Gemma 2, Granite, ...), vision-language models, MoE router losses, and the
``shift_labels`` / ``num_items_in_batch`` arguments TRL's GRPO never passes.
"""

from __future__ import annotations

import contextlib
import functools
import types

import torch
from torch.utils.checkpoint import checkpoint

AUTO = -1
AUTO_CHUNK_TOKENS = 512  # 512 x 151,936 float32 = 311 MB a temporary; the head's matmul stays efficient
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                    "logits_scaling")  # what TRL's fused head applies (add_fused_lm_head) and this path does not


def triton_folds_on(device: torch.device) -> bool:
    """Whether TRL's fused head runs its Triton kernel on ``device`` (it does on CUDA/XPU with Triton)."""
    from transformers.utils import is_triton_available

    return device.type in ("cuda", "xpu") and is_triton_available()


def chunk_tokens_for(setting: int, device: torch.device) -> int:
    """Positions per chunk for ``--logps_chunk_tokens`` on ``device``; 0 means TRL's own fused head.

    >>> chunk_tokens_for(-1, torch.device("cpu")), chunk_tokens_for(0, torch.device("cpu")), chunk_tokens_for(64, torch.device("cpu"))
    (512, 0, 64)
    """
    if setting == AUTO:
        return 0 if triton_folds_on(device) else AUTO_CHUNK_TOKENS
    return setting


def unsupported(causal_lm) -> str | None:
    """Why this path cannot stand in for TRL's fused head on ``causal_lm`` (None when it can)."""
    config = causal_lm.config
    if config.get_text_config() is not config:
        return "a vision-language model (its backbone takes more than text)"
    transforms = [name for name in LOGIT_TRANSFORMS if getattr(config, name, None) not in (None, 1.0)]
    if transforms:
        return f"the model transforms its logits ({', '.join(transforms)})"
    if getattr(config, "output_router_logits", False):
        return "a mixture-of-experts model whose loss adds the router's load-balancing term"
    if causal_lm.base_model is causal_lm:
        return "no backbone module under the causal LM"
    return None


def install(causal_lm, *, setting: int, temperature: float, entropy: bool, entropy_grad: bool,
            cast_lm_head_to_fp32: bool) -> None:
    """Wrap TRL's fused-head ``forward`` on ``causal_lm`` (the instance TRL patched: the PEFT model's base,
    or the reference model) so that ``fused_lm_head=True`` takes the chunked path where
    ``chunk_tokens_for(setting, device)`` > 0. ``entropy``: also the per-token entropy (TRL asks it of the
    policy, for its metric, ``top_entropy_quantile`` and an entropy bonus; not of the reference);
    ``entropy_grad``: with its gradient (only TRL's entropy bonus needs one: ``entropy_coef`` != 0 or
    ``use_adaptive_entropy``)."""
    trl_forward = causal_lm.forward  # TRL's patched forward, a bound method on this instance

    @functools.wraps(type(causal_lm).forward)  # generate() checks its kwargs against this signature
    def forward(self, *args, fused_lm_head=False, labels=None, **kwargs):
        device = (args[0] if args else kwargs.get("input_ids", kwargs.get("inputs_embeds"))).device
        chunk = chunk_tokens_for(setting, device)
        trl_only = {"shift_labels", "num_items_in_batch", "output_router_logits"} & kwargs.keys()
        if not fused_lm_head or chunk <= 0 or trl_only or labels is None:
            return trl_forward(*args, fused_lm_head=fused_lm_head, labels=labels, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]   # (B, T-1, H)
        targets = labels[:, 1:]                                                # (B, T-1): the next tokens
        mask = targets != -100
        per_token = chosen_logps(self.get_output_embeddings(), hidden[mask], targets[mask], temperature,
                                 chunk, entropy, cast_lm_head_to_fp32, entropy_grad)
        log_probs, ent = (None if x is None else x.new_zeros(mask.shape).masked_scatter(mask, x) for x in per_token)
        from trl.trainer.utils import FusedCausalLMOutput

        loss = -log_probs.sum() / mask.sum().clamp(min=1)
        return FusedCausalLMOutput(loss=loss, log_probs=log_probs, entropy=ent, label_mask=mask)

    causal_lm.forward = types.MethodType(forward, causal_lm)


def chosen_logps(head, hidden, targets, temperature: float, chunk_tokens: int, entropy: bool = False,
                 fp32_head: bool = False, entropy_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(M,) log-probs of ``targets`` under ``softmax(head(hidden) / temperature)``, and the (M,) entropies
    when ``entropy`` (without a gradient unless ``entropy_grad``), from ``hidden`` (M, H) in chunks of
    ``chunk_tokens`` rows; the (chunk, V) logits of a chunk live only inside its checkpoint. An entropy with a
    gradient nobody asks for would cost memory: the backward recomputes a chunk whole, and what the entropy's
    branch saved (two (chunk, V) tensors) is freed only when that branch is back-propagated, or the graph is. An empty ``hidden`` still gives outputs connected to it, so a
    micro-batch with nothing to score back-propagates a zero (as TRL's branch does)."""
    starts = range(0, hidden.shape[0], chunk_tokens) or [0]
    parts = [checkpoint(_chunk, head, hidden[s:s + chunk_tokens], targets[s:s + chunk_tokens], temperature,
                        entropy, entropy_grad, fp32_head, use_reentrant=False) for s in starts]
    logps = torch.cat([p[0] for p in parts])
    return logps, torch.cat([p[1] for p in parts]) if entropy else None


def _chunk(head, h, y, temperature, entropy, entropy_grad, fp32_head):
    # As TRL's kernel: the head in the autocast dtype (or float32 with cast_lm_head_to_fp32, outside autocast),
    # then float32 logits divided by the temperature before the softmax (GRPOConfig.temperature). Autocast's
    # weight cache is off inside a chunk: a cached bf16 copy of the head would collect every chunk's gradient
    # and sum them in bf16; each chunk's own copy hands its gradient back in float32, summed there.
    device = h.device.type
    if fp32_head:
        precision = torch.autocast(device, enabled=False)
    elif torch.is_autocast_enabled(device):
        precision = torch.autocast(device, dtype=torch.get_autocast_dtype(device), cache_enabled=False)
    else:
        precision = contextlib.nullcontext()
    with precision:
        logits = head(h.float() if fp32_head else h).float() / temperature   # (c, V)
    logp = logits.log_softmax(-1)                                             # (c, V)
    chosen = logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)                     # (c,)
    if not entropy:
        return chosen, None
    with contextlib.nullcontext() if entropy_grad else torch.no_grad():
        return chosen, -(logp.exp() * logp).sum(-1)                           # (c,)
