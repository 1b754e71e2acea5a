"""Small factories for tests: a real tiny Llama built from a config on disk, tasks, groups."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.miniature import make_tokenizer  # the character-level tokenizer the miniatures use too
from engine.types import Rollout, RolloutGroup, Task

# The real benchmark files, read in place (never copied into the project).
SHARED_DATA = Path(os.environ.get("TTRL_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")


def require_shared_data() -> Path:
    """``SHARED_DATA``, or skip the test without it — unless ``TTRL_REQUIRE_DATA=1`` (CI): then fail, so a
    missing data folder cannot turn the benchmark-data tests into silent skips."""
    if SHARED_DATA.is_dir():
        return SHARED_DATA
    if os.environ.get("TTRL_REQUIRE_DATA") == "1":
        pytest.fail(f"TTRL_REQUIRE_DATA=1 but there is no benchmark data at {SHARED_DATA} (set TTRL_DATA_DIR)")
    pytest.skip(f"no benchmark data at {SHARED_DATA}")


def make_model_dir(path: Path, *, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Save a randomly initialised tiny Llama and its tokenizer under ``path``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_task(i: int, question: str = "1+1", label: str | None = "2", tokenizer=None) -> Task:
    ids = tuple(tokenizer(question)["input_ids"]) if tokenizer is not None else (1, 5, 6)
    return Task(id=str(i), question=question, label=label, prompt=question, prompt_ids=ids)


def make_group(answers: list[str | None], task: Task | None = None) -> RolloutGroup:
    """A group whose rollouts answer ``answers`` (None = a rollout with no number in it)."""
    rollouts = [
        Rollout(text=f"so \\boxed{{{a}}}" if a is not None else "no idea", token_ids=[5, 6, 2], logprobs=[-1.0] * 3,
                finish_reason="stop")
        for a in answers
    ]
    return RolloutGroup(task=task or make_task(0), rollouts=rollouts)


def run_in_process(args: list[str], *, log=lambda _line: None, wrap_generate=None):
    """``ttrl run ARGS`` in this process: the config parsed, the seeds set, the parts built and the loop run, as
    the command does. ``wrap_generate(generate)`` returns what replaces the sampler's ``generate`` (a spy, or a
    Ctrl-C while a chosen step samples). Returns (summary, policy, sampler)."""
    import random

    import torch

    from engine.cli.build import build
    from engine.config.options import parse_config
    from engine.loop import run

    cfg = parse_config(args)
    torch.manual_seed(cfg.grpo.seed)
    random.seed(cfg.grpo.seed)
    _, tasks, policy, sampler = build(cfg)
    if wrap_generate is not None:
        sampler.generate = wrap_generate(sampler.generate)
    summary = run(cfg, sampler=sampler, policy=policy, tasks=tasks, out_dir=Path(cfg.grpo.output_dir), log=log)
    return summary, policy, sampler
