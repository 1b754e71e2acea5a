"""Small factories for tests: a real tiny Llama built from a config on disk, tasks, groups."""

from __future__ import annotations

from pathlib import Path

from engine.types import Rollout, RolloutGroup, Task

CHARS = list("0123456789+-*=?:. abcdefghijklmnopqrstuvwxyz\\{}()\n")


def make_tokenizer():
    """A character-level tokenizer with BOS/EOS/PAD, no chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<pad>", "<s>", "</s>", "<unk>", *CHARS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    from tokenizers import decoders

    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


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


# Real architectures in miniature: the class, vocabulary, tying and head layout of the models the GPU
# recipes train (Qwen2.5-Math-1.5B / 7B, SmolLM2-135M), at hidden size 64 and 2 layers.
ARCHITECTURES = {
    "qwen2.5-math-1.5b": {"arch": "qwen2", "vocab_size": 151936, "tie_word_embeddings": True},
    "qwen2.5-math-7b": {"arch": "qwen2", "vocab_size": 152064, "tie_word_embeddings": False},
    "smollm2-135m": {"arch": "llama", "vocab_size": 49152, "tie_word_embeddings": True},
}


def make_arch_model_dir(path: Path, name: str, *, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A random miniature of ``name`` (a key of ``ARCHITECTURES``): the real embedding and output-layer sizes.

    The tokenizer stays character-level; ids past it decode to nothing, as the real Qwen2.5 checkpoints'
    padding rows do (151,665 tokens, 151,936 rows), so a random model's samples decode fine."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    spec = ARCHITECTURES[name]
    tok = make_tokenizer()
    config_cls, model_cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}[spec["arch"]]
    torch.manual_seed(seed)
    config = config_cls(
        vocab_size=spec["vocab_size"], hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=spec["tie_word_embeddings"],
    )
    model_cls(config).save_pretrained(path)
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
