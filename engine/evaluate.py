"""Accuracy of a policy on labeled tasks: greedy, avg@k, maj@k and pass@k, the numbers TTRL reports.

- ``accuracy/greedy``: one argmax decode per task (TTRL's first-version "pass@1").
- ``accuracy/avg@k``: mean correctness of k samples = sampled pass@1 (the current paper's avg@16).
- ``accuracy/maj@k``: the majority answer of the k samples is correct — the quality of the very
  pseudo-label TTRL trains on, which the adapted model's avg@k is claimed to beat (§4).
- ``accuracy/pass@k``: the unbiased estimator 1 - C(n-c, k) / C(n, k) of Chen et al. (2021).
Tasks without a label are skipped (and counted in ``eval/labeled``).

Under ``torchrun`` each rank samples and grades its own contiguous share of the tasks; the per-task
grades are all-gathered (``engine.distributed``) before averaging, so every rank reports the numbers
one process would have computed from the same samples, at 1/N of the sampling time.
"""

from __future__ import annotations

import math
import time

from engine import distributed
from engine.types import RolloutGroup, SamplingParams, Task
from rewards import extract_answer, is_correct, majority_vote


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct.

    >>> pass_at_k(16, 0, 16), pass_at_k(16, 1, 16), round(pass_at_k(4, 1, 2), 4)
    (0.0, 1.0, 0.5)
    """
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def grade(group: RolloutGroup, label: str, answer_type: str = "math") -> list[bool]:
    """Correctness of each rollout against the true label (fills ``rollout.answer`` where unset).

    ``answer_type`` (math, number, choice or 'module:function'; see ``rewards.answer_types``) decides
    extraction and comparison; ``choice`` reads the options from the task's question.
    """
    out = []
    for r in group.rollouts:
        if r.answer is None:
            r.answer = extract_answer(r.text, answer_type, question=group.task.question)
        out.append(is_correct(r.answer, label, answer_type))
    return out


def evaluate(sampler, tasks: list[Task], *, k: int, params: SamplingParams, greedy: bool = True,
             answer_type: str = "math", sample: bool = True) -> dict[str, float]:
    """Sample, grade against ``task.label`` and average. ``params`` gives temperature and budget.
    ``sample=False``: greedy only, no k samples (no random draws: the run's random stream is untouched)."""
    labeled = [t for t in tasks if t.label is not None]
    metrics: dict[str, float] = {"eval/labeled": float(len(labeled))}
    if not labeled:
        return metrics
    start = time.perf_counter()
    mine = distributed.shard(labeled)  # every task in one process; this rank's share under torchrun
    grades: list[dict[str, float]] = [{} for _ in mine]
    if greedy:
        greedy_params = SamplingParams(n=1, max_new_tokens=params.max_new_tokens, greedy=True, stop=params.stop)
        for row, g in zip(grades, sampler.generate(mine, greedy_params, desc="eval greedy")):
            row["greedy"] = float(grade(g, g.task.label, answer_type)[0])
    sample_params = SamplingParams(n=k, temperature=params.temperature, top_p=params.top_p,
                                   max_new_tokens=params.max_new_tokens, stop=params.stop)
    for row, g in zip(grades, sampler.generate(mine, sample_params, desc=f"eval @{k}") if sample else []):
        correct = grade(g, g.task.label, answer_type)
        row[f"avg@{k}"] = sum(correct) / len(correct)
        majority_vote(g, answer_type=answer_type)  # sets g.label: the pseudo-label TTRL would train on
        row[f"maj@{k}"] = float(is_correct(g.label, g.task.label, answer_type))
        row[f"pass@{k}"] = pass_at_k(len(correct), sum(correct), k)
    grades = distributed.gather_lists(grades)
    for name in (["greedy"] if greedy else []) + ([f"avg@{k}", f"maj@{k}", f"pass@{k}"] if sample else []):
        metrics[f"accuracy/{name}"] = _mean([row[name] for row in grades])
    metrics["eval/time_s"] = time.perf_counter() - start
    return metrics


def _mean(xs) -> float:
    xs = [float(x) for x in xs]
    return sum(xs) / len(xs) if xs else float("nan")
