"""One GRPO update on a fixed batch of whole groups, for tests/test_distributed.py's data-parallel check.

Run as ``python tests/dp_update_probe.py MODEL OUT`` (one process: the whole batch) or under
``torchrun --nproc_per_node N`` or ``accelerate launch`` with an FSDP config (rank r trains on its contiguous share of the groups, as ``engine.loop``
hands it). Each rank writes its trainable weights before and after the step to ``OUT/rank<r>.safetensors``.
SGD, not Adam: a step is then ``-lr * gradient``, so comparing steps compares gradients (Adam's first
step is about ``lr * sign(gradient)``, which flips on rounding wherever a gradient is near zero).
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine import distributed
from engine.config.options import parse_config
from engine.data.models import load_tokenizer
from engine.distributed import trainable_parameters
from engine.update import Batch, GRPOPolicy

GROUPS, N_TRAIN = 4, 4
REWARDS = [[1, 0, 0, 1], [0, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 1]]


def fixed_batch(vocab: int) -> Batch:
    """Whole groups in order: equal-length prompts (no left padding to differ between splits), completions
    of varied length (right padding, which a causal model's earlier positions never see)."""
    gen = torch.Generator().manual_seed(1)
    prompts, completions, rewards = [], [], []
    for g in range(GROUPS):
        prompt = torch.randint(4, vocab, (5,), generator=gen).tolist()
        for i in range(N_TRAIN):
            prompts.append(prompt)
            completions.append(torch.randint(4, vocab, (3 + (g + i) % 4,), generator=gen).tolist())
            rewards.append(float(REWARDS[g][i]))
    return Batch(prompts, completions, None, rewards, N_TRAIN)


def main(model: str, out: str) -> None:
    cfg = parse_config(["--model", model, "--data", "unused", "--n_votes", str(N_TRAIN), "--n_train", str(N_TRAIN),
                        "--prompts_per_step", str(GROUPS), "--lora", "false", "--optim", "sgd",
                        "--learning_rate", "0.5", "--max_grad_norm", "0", "--beta", "0.04",
                        "--output_dir", str(Path(out) / "trainer"), "--seed", "0", "--progress", "false"])
    distributed.init(cpu=True)
    tokenizer = load_tokenizer(model)
    policy = GRPOPolicy(model, tokenizer, cfg.grpo, lora=None, total_steps=1)
    full = fixed_batch(len(tokenizer))
    rows = distributed.shard(list(range(len(full))))  # whole groups: N_TRAIN divides each share
    batch = Batch([full.prompt_ids[i] for i in rows], [full.completion_ids[i] for i in rows], None,
                  [full.rewards[i] for i in rows], N_TRAIN)
    before = trainable_parameters(policy.model)
    policy.update(batch)
    after = trainable_parameters(policy.model)
    tensors = {f"before/{k}": v.contiguous() for k, v in before.items()}
    tensors.update({f"after/{k}": v.contiguous() for k, v in after.items()})
    Path(out).mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(Path(out) / f"rank{distributed.rank()}.safetensors"),
              metadata={"sharded": str(policy.sharded)})  # FSDP (accelerate launch with an FSDP config)


if __name__ == "__main__":
    main(*sys.argv[1:3])
