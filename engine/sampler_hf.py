"""Rollouts from a transformers model: the CPU and small-GPU sampler, and the tests' default.

The sampler holds a reference to the *live* policy module (the PEFT-wrapped model the update trains),
so new weights are in the sampler the moment the optimizer steps: ``load_weights`` only swaps the
module it points at. Sampling log-probs are taken from ``generate``'s processed scores (after the
temperature and top-p warpers), which is the distribution the tokens were really drawn from — the
quantity TRL's importance-sampling correction compares against the trainer's own log-probs.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from engine.types import Rollout, RolloutGroup, SamplingParams, Task


class HFSampler:
    """Batched ``model.generate`` over tasks, ``params.n`` completions per prompt.

    ``batch_size`` bounds the number of sequences (prompts x n) decoded together, which bounds the
    KV-cache memory; prompts are never split across batches so a group is always sampled together.
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 256, progress: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.progress = progress
        self.eos_ids = _eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    def load_weights(self, model) -> None:
        """Point at the updated policy. Same process and same module: nothing to copy."""
        self.model = model

    @torch.inference_mode()
    def generate(self, tasks: list[Task], params: SamplingParams, desc: str = "sample") -> list[RolloutGroup]:
        n = 1 if params.greedy else params.n
        per_batch = max(1, self.batch_size // n)
        groups: list[RolloutGroup] = []
        was_training = self.model.training
        self.model.eval()
        try:
            chunks = range(0, len(tasks), per_batch)
            for start in tqdm(chunks, desc=desc, disable=not self.progress, leave=False):
                groups += self._generate_chunk(tasks[start : start + per_batch], params, n)
        finally:
            self.model.train(was_training)
        return groups

    def _generate_chunk(self, tasks: list[Task], params: SamplingParams, n: int) -> list[RolloutGroup]:
        device = next(self.model.parameters()).device
        width = max(len(t.prompt_ids) for t in tasks)
        # Left padding: every prompt ends at the same column, so generated tokens line up.
        input_ids = torch.full((len(tasks), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(tasks), width), dtype=torch.long)
        for row, task in enumerate(tasks):
            input_ids[row, width - len(task.prompt_ids) :] = torch.tensor(task.prompt_ids)
            attention[row, width - len(task.prompt_ids) :] = 1
        sampling = {} if params.greedy else {"temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
        out = self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            do_sample=not params.greedy,
            num_return_sequences=n,
            max_new_tokens=params.max_new_tokens,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids,
            output_scores=True,
            return_dict_in_generate=True,
            stop_strings=list(params.stop) or None,
            tokenizer=self.tokenizer if params.stop else None,
            **sampling,
        )
        new_tokens = out.sequences[:, width:]  # (len(tasks) * n, T)
        scores = torch.stack(out.scores, dim=1).float()  # (len(tasks) * n, T, vocab)
        logps = torch.log_softmax(scores, dim=-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)  # (B*n, T)
        groups = []
        for row, task in enumerate(tasks):
            rollouts = [self._rollout(new_tokens[row * n + j], logps[row * n + j], params) for j in range(n)]
            groups.append(RolloutGroup(task=task, rollouts=rollouts))
        return groups

    def _rollout(self, tokens: torch.Tensor, logps: torch.Tensor, params: SamplingParams) -> Rollout:
        ids = tokens.tolist()
        finish = "length"
        for i, tok in enumerate(ids):
            if tok in self.eos_ids:
                ids, finish = ids[: i + 1], "stop"  # keep the EOS: the policy must learn to stop
                break
        else:
            # A row that ended on a stop string is padded by generate() to the batch's length.
            while ids and ids[-1] == self.pad_id and self.pad_id not in self.eos_ids:
                ids.pop()
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if finish == "length" and params.stop and any(s in text for s in params.stop):
            finish = "stop"
        return Rollout(text=text, token_ids=ids, logprobs=logps[: len(ids)].tolist(), finish_reason=finish)


def _eos_ids(model, tokenizer) -> list[int]:
    """Every token id that ends a completion: the generation config's EOS ids plus the tokenizer's."""
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = list(ids) if isinstance(ids, (list, tuple)) else ([ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("the model and tokenizer define no EOS token; set tokenizer.eos_token")
    return ids
