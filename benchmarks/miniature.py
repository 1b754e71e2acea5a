"""The GPU recipes in miniature: each config of ``benchmarks/configs/`` on a random model of its real
architecture class and vocabulary size, with lengths scaled down — what CI runs on CPU and
``benchmarks/gpu_check.py`` runs on CUDA, so a recipe that would not train fails before a GPU is rented.

Kept (what decides whether a recipe trains): the architecture class (Qwen2 / Llama), the vocabulary size
and embedding tying, the compute dtype the recipe gets on a GPU (``dtype: auto`` = bfloat16 there), the
optimizer, learning rate and schedule, ``prompts_per_step``, gradient accumulation, ``num_iterations``,
LoRA-or-full and the KL coefficient. Scaled down: hidden size (16: a bf16 matmul against a 152k-row output layer is ~9x slower than float32 on an AVX2 CPU, and the width does not change what is tested) and depth (2 layers), completion and
evaluation lengths (8 tokens), votes per prompt (twice the trained ones: the fewest, >= 2, whose rows split evenly over
the recipe's gradient accumulation — 8 of 16 for 64 micro-batches of 8 prompts), evaluation (one sample, no greedy pass), and the data
(two steps' worth of short synthetic prompts). The reward is ``benchmarks.miniature:token_reward``: a
random model's majority vote rarely has a majority, so every group would be all-zero and nothing would
train; this reward has variance in every group.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

CONFIGS = Path(__file__).parent / "configs"
CHARS = list("0123456789+-*=?:. abcdefghijklmnopqrstuvwxyz\\{}()\n")

# The real models' shapes that matter here (their config.json files): class, vocabulary rows, tying.
ARCHITECTURES = {
    "Qwen/Qwen2.5-Math-1.5B": {"arch": "qwen2", "vocab_size": 151936, "tie_word_embeddings": True},
    "Qwen/Qwen2.5-Math-7B": {"arch": "qwen2", "vocab_size": 152064, "tie_word_embeddings": False},
    "smollm2-135m": {"arch": "llama", "vocab_size": 49152, "tie_word_embeddings": True},
}

SCALED = {"max_completion_length": 8, "eval_max_tokens": 8, "eval_k": 1, "eval_greedy": False,
          "episodes": 1, "temperature": 1.0, "template": "{question}", "reward": "benchmarks.miniature:token_reward",
          "progress": False, "save_every": 0}


def make_tokenizer():
    """A character-level tokenizer with BOS/EOS/PAD and no chat template (ids 0-3 are the specials)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<pad>", "<s>", "</s>", "<unk>", *CHARS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def make_model_dir(path: Path, model: str, *, hidden: int = 16, layers: int = 2, heads: int = 4,
                   kv_heads: int = 2, intermediate: int | None = None, seed: int = 0) -> Path:
    """Save a random miniature of ``model`` (a key of ``ARCHITECTURES``) and a tokenizer under ``path``.

    The embedding and output layer have the real number of rows (151,936 for Qwen2.5-Math-1.5B), so every
    vocabulary-sized tensor has its real size. The tokenizer stays character-level: ids past it decode to
    nothing, as the real Qwen2.5 checkpoints' padding rows do (151,665 tokens, 151,936 rows).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    spec = ARCHITECTURES[model]
    config_cls, model_cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}[spec["arch"]]
    tok = make_tokenizer()
    torch.manual_seed(seed)
    config = config_cls(vocab_size=spec["vocab_size"], hidden_size=hidden, intermediate_size=intermediate or hidden * 2,
                        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                        max_position_embeddings=512, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id, tie_word_embeddings=spec["tie_word_embeddings"])
    model_cls(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_data(path: Path, n: int) -> Path:
    """``n`` short addition prompts with labels (JSON lines)."""
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"q{i}", "question": f"{i % 10}+{i // 10}=", "answer": str(i % 10 + i // 10)}) + "\n")
    return path


def recipe(config: Path) -> dict:
    """The options a config file sets (a flat YAML mapping), with those that shape a step filled in from the
    presets and defaults ``ttrl run`` would apply (the demo preset's 32 prompts per step and full fine-tuning)."""
    from engine.config.options import parse_config

    options = yaml.safe_load(config.read_text()) or {}
    cfg = parse_config([str(config), "--output_dir", "unused"])
    options.setdefault("prompts_per_step", cfg.ttrl.prompts_per_step)
    options.setdefault("gradient_accumulation_steps", cfg.grpo.gradient_accumulation_steps)
    options.setdefault("lora", cfg.model.lora)
    return options


def runs_on_gpu(options: dict) -> bool:
    """The GPU recipes (not the ``cpu-*`` ones) get ``dtype: auto`` = bfloat16 on a CUDA machine."""
    return options.get("model") in ARCHITECTURES and not str(options.get("model")).startswith("smollm2")


def trained_per_group(options: dict) -> int:
    """The fewest trained rollouts per prompt (>= 2) whose rows split evenly over the recipe's gradient
    accumulation: 8 for 64 micro-batches of 8 prompts (one row each)."""
    pps, accum = int(options.get("prompts_per_step", 8)), int(options.get("gradient_accumulation_steps", 1))
    return next(n for n in range(2, accum + 3) if n * pps % accum == 0)


def miniature_options(config: Path, model_dir: Path | None, data: Path, *, dtype: str | None = None) -> list[str]:
    """``ttrl run`` arguments for ``config`` in miniature: the config file, then the scaled-down overrides.

    ``model_dir``: the miniature of the config's model (None for the demo, which is already tiny).
    ``dtype``: the compute dtype; by default what the recipe gets where it is meant to run.
    """
    options = recipe(config)
    over = dict(SCALED)
    over["n_train"] = trained_per_group(options)
    over["n_votes"] = 2 * over["n_train"]
    over["limit"] = 2 * int(options.get("prompts_per_step", 8))
    over["data"] = str(data)
    if model_dir is not None:
        over["model"] = str(model_dir)
    over["dtype"] = dtype or ("bfloat16" if runs_on_gpu(options) else "float32")
    args = [str(config)]
    for key, value in over.items():
        args += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return args


def token_reward(group):
    """1 for rollouts whose first token id is even, else 0: variance in a random model's every group.

    (A reward the miniatures can train on; it means nothing.)"""
    return [float(bool(r.token_ids) and r.token_ids[0] % 2 == 0) for r in group.rollouts]
