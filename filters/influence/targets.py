"""Targets: the batch-level direction each rollout's gradient is scored against, and the score (a cosine).

* ``batch_mean`` (the default) and ``leave_one_out``: DTV-style alignment for GRPO (2026), ``g_i . mean(g)``
  over the mini-batch, or with row i left out; label-free, robust to ~20% reversed rankings. IIF
  (NeurIPS 2025): TracIn-style influence at the current step, per-sample LoRA gradients from hooks inside
  the training backward (``per_row``), negative influence dropped (``keep="drop_negative"``).
* ``labeled``: LESS (Xia et al., arXiv 2402.04333) — the loss gradient of a few labeled examples the user
  supplies, each normalised to unit length: ``labeled_path``, a JSONL of ``{prompt, answer}``, or ``labeled``,
  examples in memory (``--anchor FILE``: the run's anchors, read and templated as the test prompts are, LESS's
  own setting of a small labeled dev set).
* ``agree``: the label-free analogue of LESS in TTRL: the loss gradient of the rollouts that agree with
  the majority-vote pseudo-label (reward 1, positive advantage) across the batch, each unit length.

The score is the cosine (L2-normalised, so length does not decide), from norms and dot products only.
"""

from __future__ import annotations

import json

import torch

from filters.influence.sequence import sequence_gradients

TARGETS = ("batch_mean", "leave_one_out", "agree", "labeled")


def cosines(feats, target: str, t: list[torch.Tensor] | None = None, sq: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) cosine of each row's feature ``f_i`` with the target: ``batch_mean`` — the batch's summed
    gradient ``g = sum_j f_j`` (DTV's ``g_i . mean(g)``; ``t`` may hand it in when it is known already, as
    autograd's ``.grad`` in the update stage), ``leave_one_out`` — ``g - f_i``, or a given direction ``t``
    (one tensor per block); ``sq``: the rows' squared norms where the caller has them already. Rows of norm
    0 score 0. Norms and dot products only: no normalised copy."""
    sq = feats.sq_norms().cpu() if sq is None else sq
    if t is None:
        t = feats.weighted_sum(torch.ones(len(sq)))                          # sum of the rows
    norms = sq.sqrt()
    inv = (norms > 0).float() / norms.clamp(min=1e-12)
    t_sq = sum((tj.float() ** 2).sum() for tj in t).cpu()
    dots = feats.dots(t).cpu()                                               # f_i . t
    if target == "leave_one_out":
        rest = (t_sq - 2 * dots + sq).clamp(min=0).sqrt()                    # |t - f_i|
        return (dots - sq) * inv / rest.clamp(min=1e-12)
    return dots * inv / t_sq.sqrt().clamp(min=1e-12)


def agree_target(feats, agree: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``agree`` from loss-gradient features (update stage): the sum of the unit features of the rows
    where ``agree`` (N,) holds, one tensor per block; with the rows' squared norms, which ``cosines`` reuses."""
    sq = feats.sq_norms().cpu()
    return feats.weighted_sum(agree.float() / sq.sqrt().clamp(min=1e-12)), sq


def agree_target_logprob(U: torch.Tensor, agree: torch.Tensor) -> list[torch.Tensor]:
    """``agree`` from (N, D) log-prob gradients ``U`` (rollouts stage): the loss gradient is ``-U``, so
    ``-sum`` of the unit rows where ``agree`` (N,) holds."""
    w = agree.float() / U.norm(dim=1).clamp(min=1e-12)
    return [-(w @ U)]


def load_labeled(path: str, tokenizer) -> list[tuple[list[int], list[int]]]:
    """A JSONL of ``{"prompt", "answer"}`` -> (prompt ids, answer ids + EOS) rows."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                ex = json.loads(line)
                answer = list(tokenizer(ex["answer"], add_special_tokens=False)["input_ids"])
                if tokenizer.eos_token_id is not None:
                    answer.append(tokenizer.eos_token_id)
                rows.append((list(tokenizer(ex["prompt"])["input_ids"]), answer))
    if not rows:
        raise ValueError(f"no labeled target examples in {path}")
    return rows


def labeled_rows(examples: list[tuple[list[int], str]], tokenizer) -> list[tuple[list[int], list[int]]]:
    """Examples in memory, (prompt token ids, reference answer text) -> (prompt ids, answer ids + EOS) rows,
    the answer tokenized as ``load_labeled`` tokenizes a file's."""
    rows = []
    for prompt_ids, answer in examples:
        ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        rows.append((list(prompt_ids), ids))
    if not rows:
        raise ValueError("no labeled target examples were given")
    return rows


def labeled_examples(path: str | None, examples: list[tuple[list[int], str]] | None, tokenizer):
    """The ``labeled`` target's rows: the examples in memory where given (``--anchor``), else the JSONL at ``path``."""
    return labeled_rows(examples, tokenizer) if examples is not None else load_labeled(path, tokenizer)


def labeled_target(model, rows: list[tuple[list[int], list[int]]], layers, *, temperature: float,
                   max_rows: int) -> torch.Tensor:
    """``labeled``: (D,) the sum of the labeled examples' unit loss gradients (loss = -mean log-prob) on the
    weights of ``layers``, flattened and concatenated in order, as ``sequence_gradients`` lays them out;
    ``rows`` from ``labeled_examples``."""
    T = sequence_gradients(model, rows, layers, temperature=temperature, max_rows=max_rows)
    return -(1 / T.norm(dim=1).clamp(min=1e-12)) @ T
