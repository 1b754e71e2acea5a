"""Drift telemetry: how far the adapted policy has moved from its base model, measured every step.

Why. An update that stays close to its base keeps the model able to adapt again, and RL updates are
sparse (arXiv 2505.11711: 5-30% of parameters move); low-drift adapters (``engine.adapters``) are chosen
for exactly that, so a run reports both numbers beside its accuracy:

- ``drift/kl_heldout``: KL(policy || base) on a FIXED set of held-out prompts, never trained on nor
  evaluated (``hold_out``: the last ``drift_prompts`` tasks). Precisely: the base model's greedy
  completion of each held-out prompt is decoded once, at the start of the run (by the run's own sampler,
  so with its EOS and token budget); at every step, for every completion token position t (the context
  being prompt + completion[:t]), KL(p_policy(. | ctx) || p_base(. | ctx)) is summed over the full
  vocabulary, and the mean over all completion tokens of all held-out prompts is reported (temperature 1,
  no sampling, so the number moves only when the weights do). The logits live only inside the call: nothing
  vocabulary-sized is kept.
- ``drift/changed_fraction``: the share of the base model's parameters (elements, tied weights once)
  whose value differs from the base. Full fine-tuning: the policy's weights against a copy of the base
  taken at the start. Adapters: the merged weights ``W + delta`` (``engine.adapters.adapter_deltas``)
  against ``W``; weights no adapter touches count as unchanged.

The base is the policy with its adapter disabled (what TRL's KL anchor uses), or under full fine-tuning
a float32 copy of the weights taken before the first update (one more copy of the model in memory: the
cost of turning drift telemetry on).
"""

from __future__ import annotations

import contextlib

import torch

from engine.adapters import adapter_deltas
from engine.errors import ConfigError
from engine.types import SamplingParams, Task


def hold_out(tasks: list[Task], n: int) -> tuple[list[Task], list[Task]]:
    """(tasks to train and evaluate on, the last ``n`` held out for ``drift/kl_heldout``)."""
    if n <= 0:
        return tasks, []
    if n >= len(tasks):
        raise ConfigError(f"drift_prompts ({n}) must be fewer than the tasks ({len(tasks)}): the held-out prompts "
                          "are taken out of the task, and some must be left to train on")
    return tasks[:-n], tasks[-n:]


class Drift:
    """Measures ``drift/*`` for a policy against the base it started from (module docstring)."""

    def __init__(self, model, rows: list[list[int]], prompt_lengths: list[int]):
        self.rows, self.prompt_lengths = rows, prompt_lengths  # prompt + base greedy completion, per prompt
        self.peft = getattr(model, "prefix", None) is not None and hasattr(model, "disable_adapter")
        # Full fine-tuning: the weights as they are now (the base), frozen, for the KL and the comparison.
        self.base = None if self.peft else frozen_copy(model)

    def __call__(self, model) -> dict[str, float]:
        return {"drift/kl_heldout": self.kl(model), "drift/changed_fraction": self.changed_fraction(model)}

    @torch.no_grad()
    def kl(self, model) -> float:
        total, tokens = 0.0, 0
        training = model.training
        model.eval()
        try:
            for ids, start in zip(self.rows, self.prompt_lengths, strict=True):
                if len(ids) <= start:
                    continue  # an empty completion (EOS first): no token to compare on
                x = torch.tensor([ids], device=model.device)
                policy = self._logprobs(model, x, start)
                # the base: PEFT's adapter switched off (as TRL's reference sees it), or the copy taken at the start
                with model.disable_adapter() if self.peft else contextlib.nullcontext():
                    ref = self._logprobs(model if self.peft else self.base, x, start)
                total += float((policy.exp() * (policy - ref)).sum())   # sum over positions and vocab
                tokens += len(ids) - start
        finally:
            model.train(training)
        return total / max(tokens, 1)

    @staticmethod
    def _logprobs(model, x: torch.Tensor, start: int) -> torch.Tensor:
        logits = model(input_ids=x).logits[0, start - 1:-1].float()  # (completion tokens, vocab): predicts them
        return torch.log_softmax(logits, dim=-1)

    @torch.no_grad()
    def changed_fraction(self, model) -> float:
        if self.peft:
            deltas = adapter_deltas(model)
            params = dict(model.named_parameters())
            changed = sum(int(((params[n] + d.to(params[n].dtype)) != params[n]).sum()) for n, d in deltas.items())
            total = sum(p.numel() for n, p in model.named_parameters() if model.prefix not in n)
        else:
            base = dict(self.base.named_parameters())
            changed = sum(int((p != base[n]).sum()) for n, p in model.named_parameters())
            total = sum(p.numel() for p in base.values())
        return changed / total


def frozen_copy(model):
    """A frozen copy of ``model``'s weights in a fresh module of its class. Not ``copy.deepcopy``: accelerate
    has replaced ``model.forward`` by a wrapper bound to ``model``, and a deep copy would keep calling it."""
    with torch.random.fork_rng(devices=[]):  # the fresh module's random init must not move the run's RNG
        base = type(model)(model.config)
    base.load_state_dict(model.state_dict())
    return base.to(model.device).requires_grad_(False).eval()


def no_drift(_model) -> dict[str, float]:
    """Drift telemetry off (``drift_prompts`` 0): nothing to report."""
    return {}


def start_drift(tasks: list[Task], n: int, sampler, model, max_new_tokens: int):
    """``(tasks left to train on, drift measure)``: holds out the last ``n`` tasks and decodes the base's
    greedy completions of them with ``sampler`` — call it before the first update, while ``model`` and the
    sampler still hold the base weights. ``n`` 0: the tasks unchanged and ``no_drift``."""
    tasks, heldout = hold_out(tasks, n)
    if not heldout:
        return tasks, no_drift
    params = SamplingParams(n=1, max_new_tokens=max_new_tokens, greedy=True)
    groups = sampler.generate([t.unlabeled() for t in heldout], params, desc="drift: base completions")
    rows = [list(g.task.prompt_ids) + list(g.rollouts[0].token_ids) for g in groups]
    return tasks, Drift(model, rows, [len(g.task.prompt_ids) for g in groups])
