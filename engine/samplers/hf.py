"""Rollouts from a transformers model: the CPU and small-GPU sampler, and the tests' default.

The sampler holds a reference to the *live* policy module (the PEFT-wrapped model the update trains),
so new weights are in the sampler the moment the optimizer steps: ``load_weights`` only swaps the
module it points at. Sampling log-probs are those of the processed distribution (after the temperature
and top-p warpers), the one the tokens were really drawn from — the quantity TRL's importance-sampling
correction compares against the trainer's own log-probs.

Memory: ``generate(output_scores=True)`` would keep a (sequences, vocabulary) float tensor per generated
token — with a 151,936-token vocabulary, 32 sequences x 64 tokens peaked at 6 GB. Instead the last
logits processor (``ChosenTokenLogprobs``) keeps one step's log-probs, reads off the log-prob of the
token chosen from them at the next step, and drops them: at most one (sequences, vocabulary) tensor
lives at a time, and the number of sequences decoded together never exceeds ``batch_size`` (a prompt
with more samples than that is sampled in several calls), whatever ``n_votes`` is.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from engine.distributed import full_state_dict
from engine.samplers.common import eos_ids
from engine.types import Rollout, RolloutGroup, SamplingParams, Task


class ChosenTokenLogprobs(LogitsProcessor):
    """Records log p(chosen token) at every decoding step, holding one step's log-probs at a time.

    It must run last, after the warpers, so it sees the distribution the token is drawn from. At step t
    it stores log_softmax(scores_t) (sequences x vocab); at step t+1 the token chosen at t is the last
    column of ``input_ids``, whose log-prob is gathered (sequences floats) and the step's tensor freed.
    ``finish`` reads the last step's tokens after ``generate`` returns.
    """

    def __init__(self):
        self._pending: torch.Tensor | None = None   # (B, vocab) log-probs of the step not yet resolved
        self._chosen: list[torch.Tensor] = []       # T tensors of shape (B,)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._pending is not None:
            self._chosen.append(self._pending.gather(-1, input_ids[:, -1:]).squeeze(-1))  # (B,)
        self._pending = torch.log_softmax(scores.float(), dim=-1)  # (B, vocab)
        return scores

    def finish(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) log-probs of ``new_tokens`` (B, T), the tokens ``generate`` returned."""
        if self._pending is not None and len(self._chosen) < new_tokens.size(1):
            self._chosen.append(self._pending.gather(-1, new_tokens[:, len(self._chosen)].unsqueeze(-1)).squeeze(-1))
        self._pending = None
        if not self._chosen:
            return new_tokens.new_zeros(new_tokens.shape, dtype=torch.float32)
        return torch.stack(self._chosen, dim=1)[:, : new_tokens.size(1)]  # (B, T)


class HFSampler:
    """Batched ``model.generate`` over tasks, ``params.n`` completions per prompt.

    ``batch_size`` bounds the number of sequences (prompts x n) decoded together, which bounds the
    KV-cache memory and the one (sequences, vocab) log-prob tensor kept while decoding. A prompt with
    more samples than ``batch_size`` is sampled in several calls (its group is still one group).
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 256, progress: bool = True, own_copy: bool = False):
        self.model = model
        self.own_copy = own_copy
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.progress = progress
        self.eos_ids = eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    def load_weights(self, model) -> None:
        """Point at the updated policy: same process and same module, nothing to copy. A sampler built
        with ``own_copy`` (FSDP: the policy's weights are shards, and generating from them would make every
        decoding step a collective that ranks sampling different prompts cannot keep in step) loads the
        whole weights, gathered from the shards on every rank, into its own copy instead."""
        if not self.own_copy:
            self.model = model
            return
        with torch.no_grad():
            self.model.load_state_dict(full_state_dict(model))

    @torch.inference_mode()
    def generate(self, tasks: list[Task], params: SamplingParams, desc: str = "sample") -> list[RolloutGroup]:
        n = 1 if params.greedy else params.n
        groups: list[RolloutGroup] = []
        was_training = self.model.training
        self.model.eval()
        try:
            if n <= self.batch_size:
                per_batch = self.batch_size // n
                chunks = range(0, len(tasks), per_batch)
                for start in tqdm(chunks, desc=desc, disable=not self.progress, leave=False):
                    groups += self._generate_chunk(tasks[start : start + per_batch], params, n)
            else:  # one prompt at a time, its n samples in calls of at most batch_size sequences
                sizes = [min(self.batch_size, n - i) for i in range(0, n, self.batch_size)]
                for task in tqdm(tasks, desc=desc, disable=not self.progress, leave=False):
                    parts = [self._generate_chunk([task], params, size)[0] for size in sizes]
                    groups.append(RolloutGroup(task=task, rollouts=[r for part in parts for r in part.rollouts]))
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
        recorder = ChosenTokenLogprobs()
        processors = []
        if not params.greedy:  # our own warpers, so the recorder runs after them (generate appends its own last)
            if params.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(params.temperature))
            if params.top_p < 1.0:
                processors.append(TopPLogitsWarper(params.top_p))
        processors.append(recorder)
        # temperature/top_p/top_k at their neutral values: generate adds none of its own warpers
        sampling = {} if params.greedy else {"temperature": 1.0, "top_p": 1.0, "top_k": 0}
        out = self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            do_sample=not params.greedy,
            num_return_sequences=n,
            max_new_tokens=params.max_new_tokens,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids,
            logits_processor=LogitsProcessorList(processors),
            return_dict_in_generate=True,
            stop_strings=list(params.stop) or None,
            tokenizer=self.tokenizer if params.stop else None,
            **sampling,
        )
        new_tokens = out.sequences[:, width:]  # (len(tasks) * n, T)
        logps = recorder.finish(new_tokens)  # (len(tasks) * n, T)
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
