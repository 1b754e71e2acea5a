"""The chunked log-prob path (engine.chunked_logps) computes what TRL's own fused head computes.

Two policies from the same model directory and seed, one with ``logps_chunk_tokens 0`` (TRL's
``add_fused_lm_head`` branch) and one with 3 positions a chunk (several chunks and a short last one), take
the same rows: TRL's ``_get_per_token_logps_and_entropies`` must give the same log-probs and entropies, and
one ``update`` — two SGD steps at learning rate 0.05 (``num_iterations`` 2, so the second step's loss has a
ratio != 1 and a non-zero KL to the reference, both computed through the path under test), no clipping —
the same loss, KL and entropy metrics and the same weights, whose change is minus the summed gradients.
LoRA and full fine-tuning, gradient accumulation 1 and 2, float32 and bf16 autocast (CPU bf16).

Tolerances (log-probs and entropies elementwise, rtol = atol; the metrics relative; each parameter's step
as the norm of its difference over its norm): float32 1e-5, the two paths summing the softmax in a
different order (measured: 6e-6 at worst on a step); bf16 2e-2, both paths rounding the logits to bf16
but TRL's backward accumulating the head's gradients in float32 where autograd's bf16 matmul rounds each
chunk's once, as the model's own forward under autocast does (measured: 0.7% at worst under full
fine-tuning; bf16's spacing is 2^-8 = 3.9e-3 relative).
"""

from __future__ import annotations

import pytest
import torch

from engine.adapters import peft_config
from engine.chunked_logps import chosen_logps
from engine.config.options import parse_config
from engine.errors import ConfigError
from engine.update import Batch, GRPOPolicy


def make_policy(model_dir, out, *, chunk: int, lora: bool, accum: int, dtype: str, tokenizer):
    cfg = parse_config(["--model", str(model_dir), "--data", "unused.jsonl", "--n_votes", "2", "--n_train", "2",
                        "--prompts_per_step", "2", "--gradient_accumulation_steps", str(accum), "--beta", "0.1",
                        "--num_iterations", "2", "--temperature", "0.7", "--optim", "sgd", "--learning_rate", "0.05",
                        "--max_grad_norm", "0", "--lora", str(lora).lower(), "--dtype", dtype,
                        "--max_completion_length", "8", "--output_dir", str(out), "--progress", "false",
                        "--logps_chunk_tokens", str(chunk)])
    adapter = peft_config("lora", None, target_modules="all-linear", lora_r=4, lora_alpha=8) if lora else None
    torch.manual_seed(0)  # the same LoRA initialisation in both policies
    return GRPOPolicy(str(model_dir), tokenizer, cfg.grpo, lora=adapter, total_steps=2,
                      logps_chunk_tokens=cfg.model.logps_chunk_tokens)


def rows(tokenizer) -> Batch:
    """Two groups of two rows, completions of 2 to 7 tokens (padding in every micro-batch), rewards 1/0."""
    digits = tokenizer.convert_tokens_to_ids(list("0123456789+="))
    prompts = [list(tokenizer("1+2=")["input_ids"]), list(tokenizer("7+5=")["input_ids"])]
    completions = [digits[:2], digits[3:10], digits[1:5], digits[6:12]]
    return Batch(prompt_ids=[prompts[0]] * 2 + [prompts[1]] * 2, completion_ids=completions, logprobs=None,
                 rewards=[1.0, 0.0, 0.0, 1.0], n_per_group=2)


def trainable(policy) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in policy.model.named_parameters() if p.requires_grad}


def per_token(policy, batch: Batch):
    """TRL's ``_get_per_token_logps_and_entropies`` on ``batch``'s rows, right-padded as TRL pads them."""
    pad = policy.tokenizer.pad_token_id
    width = max(len(c) for c in batch.completion_ids)
    completions = torch.tensor([c + [pad] * (width - len(c)) for c in batch.completion_ids])
    mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in batch.completion_ids])
    prompts = torch.tensor(batch.prompt_ids)
    ids = torch.cat([prompts, completions], 1)
    attention = torch.cat([torch.ones_like(prompts), mask], 1)
    logps, entropies, _ = policy.trainer._get_per_token_logps_and_entropies(
        policy.trainer.model_wrapped, ids, attention, width, compute_entropy=True)
    return logps * mask, entropies * mask, mask


CASES = [(lora, accum, dtype) for lora in (True, False) for accum in (1, 2) for dtype in ("bfloat16",)]
CASES += [(True, 2, "float32"), (False, 1, "float32")]


@pytest.mark.parametrize("lora,accum,dtype", CASES,
                         ids=[f"{'lora' if lo else 'full'}-accum{a}-{d}" for lo, a, d in CASES])
def test_chunked_path_matches_trls_fused_head(tiny_model, tmp_path, lora, accum, dtype):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    kw = dict(lora=lora, accum=accum, dtype=dtype, tokenizer=tokenizer)
    trl_policy = make_policy(tiny_model, tmp_path / "trl", chunk=0, **kw)
    ours = make_policy(tiny_model, tmp_path / "ours", chunk=3, **kw)
    tol = {"float32": 1e-5, "bfloat16": 2e-2}[dtype]
    batch = rows(tokenizer)

    want_logps, want_ent, mask = per_token(trl_policy, batch)
    got_logps, got_ent, _ = per_token(ours, batch)
    assert want_logps.abs().sum() > 0 and want_ent.abs().sum() > 0
    torch.testing.assert_close(got_logps, want_logps, rtol=tol, atol=tol)
    torch.testing.assert_close(got_ent, want_ent, rtol=tol, atol=tol)

    before = trainable(trl_policy)
    assert all(torch.equal(before[n], p) for n, p in trainable(ours).items())
    torch.manual_seed(1)  # TRL shuffles the rows between micro-batches
    want = trl_policy.update(batch)
    torch.manual_seed(1)
    got = ours.update(batch)
    assert want["train/optimizer_steps"] == got["train/optimizer_steps"] == 2
    assert want["train/kl"] > 0
    for key in ("train/loss", "train/kl", "train/entropy"):
        assert got[key] == pytest.approx(want[key], rel=tol, abs=1e-6), key
    step = {n: trainable(trl_policy)[n] - w for n, w in before.items()}      # -0.05 x the summed gradients
    assert all(d.norm() > 0 for d in step.values())
    for name, after in trainable(ours).items():
        error = ((after - before[name]) - step[name]).norm() / step[name].norm()
        assert error <= tol, f"{name}: the step differs from TRL's by {error:.2e} of its norm"


def test_a_micro_batchs_logits_are_never_held_whole_at_a_real_vocabulary():
    """At Qwen2.5's 151,936 rows (hidden 16), forward + backward of 4 rows x 96 positions in chunks of 32
    (the entropy for the metric, without a gradient, as TRL's GRPO asks it): no tensor the ops create is
    larger than one chunk's logits, and vocabulary-wide tensors alive at once never add up to half the
    whole logits (12 chunks' worth a copy; each chunk's recomputed logits must be freed after its backward)."""
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    vocab, positions, chunk = 151936, 4 * 96, 32
    torch.manual_seed(0)
    head = torch.nn.Linear(16, vocab, bias=False)
    hidden = torch.randn(positions, 16, requires_grad=True)
    targets = torch.randint(0, vocab, (positions,))

    class VocabularyWide(TorchDispatchMode):
        largest = live = peak = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.numel() >= vocab and t._base is None:  # storage owners
                    cls = VocabularyWide
                    cls.largest = max(cls.largest, t.numel())
                    cls.live += t.numel()
                    cls.peak = max(cls.peak, cls.live)
                    weakref.finalize(t, lambda n=t.numel(): setattr(cls, "live", cls.live - n))
            return out

    with VocabularyWide():
        logps, ent = chosen_logps(head, hidden, targets, 0.7, chunk, entropy=True, entropy_grad=False)
        logps.sum().backward()
    whole = positions * vocab
    assert VocabularyWide.largest == chunk * vocab
    assert VocabularyWide.peak < whole / 2, f"{VocabularyWide.peak / (chunk * vocab):.1f} chunks' logits alive at once"
    want = torch.log_softmax(head(hidden).float() / 0.7, -1)
    torch.testing.assert_close(logps, want.gather(-1, targets[:, None])[:, 0].detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, -(want.exp() * want).sum(-1).detach(), rtol=1e-4, atol=1e-4)
    assert head.weight.grad is not None and hidden.grad.abs().sum() > 0


def test_a_chunk_size_the_model_cannot_take_is_refused(tmp_path):
    """A model that soft-caps its logits (Gemma 2) has no chunked path: asked for by number, refused at
    start-up; under auto, TRL's fused head is left in place."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from benchmarks.miniature import make_tokenizer

    tok = make_tokenizer()
    config = Gemma2Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=8, final_logit_softcapping=30.0,
                          pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    Gemma2ForCausalLM(config).save_pretrained(tmp_path / "gemma")
    tok.save_pretrained(tmp_path / "gemma")
    with pytest.raises(ConfigError, match="final_logit_softcapping"):
        make_policy(tmp_path / "gemma", tmp_path / "a", chunk=64, lora=False, accum=1, dtype="float32", tokenizer=tok)
    auto = make_policy(tmp_path / "gemma", tmp_path / "b", chunk=-1, lora=False, accum=1, dtype="float32", tokenizer=tok)
    assert auto.update(rows(tok))["train/optimizer_steps"] == 2
