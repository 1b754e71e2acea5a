"""The update's logged metrics mean the same thing whatever the gradient accumulation.

TRL's ``compute_loss`` already divides each micro-batch's loss by ``gradient_accumulation_steps`` (or, for
``dapo``, normalises by the tokens of the whole accumulation window), so that the micro-batch losses of
one optimizer step *sum* to that step's loss; transformers' ``Trainer`` logs that sum per optimizer step.
``train/loss`` must therefore be the same number for one batch of 4 rows trained in one micro-batch or in
two: same weights, same rows, no optimizer step in between.
"""

import pytest

from engine.config.options import parse_config
from engine.update import Batch, GRPOPolicy


def policy_with(model_dir, out, accum: int, tokenizer):
    cfg = parse_config(["--model", str(model_dir), "--data", "unused.jsonl", "--n_votes", "2", "--n_train", "2",
                        "--prompts_per_step", "2", "--gradient_accumulation_steps", str(accum), "--beta", "0",
                        "--lora", "false", "--learning_rate", "0.01", "--max_completion_length", "8",
                        "--output_dir", str(out), "--progress", "false"])
    return GRPOPolicy(str(model_dir), tokenizer, cfg.grpo, lora=None, total_steps=1)


def fixed_batch(tokenizer) -> Batch:
    """Two groups of two, rewards 1/0 and completions of different lengths: a non-zero GRPO loss at the
    first step (the ratio is 1, so the loss is -sum(advantage x length) / tokens)."""
    prompt = list(tokenizer("1+1=")["input_ids"])
    digits = tokenizer.convert_tokens_to_ids(list("2345678"))
    lengths, rewards = [2, 6, 3, 5], [1.0, 0.0, 0.0, 1.0]
    return Batch(prompt_ids=[prompt] * 4, completion_ids=[digits[:n] for n in lengths], logprobs=None,
                 rewards=rewards, n_per_group=2)


def test_logged_loss_does_not_depend_on_gradient_accumulation(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    one = policy_with(tiny_model, tmp_path / "a", 1, tokenizer).update(fixed_batch(tokenizer))
    two = policy_with(tiny_model, tmp_path / "b", 2, tokenizer).update(fixed_batch(tokenizer))
    assert abs(one["train/loss"]) > 1e-4
    assert two["train/loss"] == pytest.approx(one["train/loss"], rel=1e-4)
