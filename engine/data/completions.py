"""Grade completions produced elsewhere (another engine, an API, a paper's released samples).

``ttrl eval --suite S --completions FILE.jsonl`` reads one JSON object per line, ``{"id": task id,
"completion": text}`` (several lines per task allowed), and scores them with the very extraction,
equivalence and vote that ``ttrl eval`` and the training loop use, so the numbers compare with a run's
``eval.json``:

- ``accuracy/avg@n``: mean correctness of a task's completions, averaged over tasks;
- ``accuracy/maj@n``: the majority answer of a task's completions is correct;
- ``accuracy/pass@k``: the unbiased estimator, for k = 1, 2, 4, ... up to n.

``n`` is the smallest number of completions any graded task has (tasks may have more; avg and maj use
all of them). Tasks with no completions are left out and counted in ``eval/missing``.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.errors import DataError
from engine.evaluate import grade, pass_at_k
from engine.types import Rollout, RolloutGroup, Task
from rewards import is_correct, majority_vote


def read_completions(path: str | Path, task_ids: set[str]) -> dict[str, list[str]]:
    """Task id -> completion texts, in file order. Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"completions file {path} does not exist")
    out: dict[str, list[str]] = {}
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            loc = f"{path.name}, line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{loc}: malformed JSON ({err}); expected {{\"id\": ..., \"completion\": ...}}") from None
            if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("completion"), str):
                raise DataError(f"{loc}: expected an object with an \"id\" and a string \"completion\"; got {line.strip()[:120]}")
            task_id = str(row["id"])
            if task_id not in task_ids:
                sample = ", ".join(sorted(task_ids)[:5])
                raise DataError(f"{loc}: unknown task id {task_id!r}; the suite's ids look like {sample}, ...")
            out.setdefault(task_id, []).append(row["completion"])
    if not out:
        raise DataError(f"{path.name}: no completions; expected one JSON object per line")
    return out


def grade_completions(tasks: list[Task], completions: dict[str, list[str]], answer_type: str = "math") -> dict[str, float]:
    """avg@n, maj@n and pass@k (k <= n) over the labeled tasks that have completions."""
    graded = [t for t in tasks if t.label is not None and completions.get(t.id)]
    metrics: dict[str, float] = {"eval/labeled": float(len(graded)),
                                 "eval/missing": float(sum(1 for t in tasks if t.label is not None and not completions.get(t.id)))}
    if not graded:
        return metrics
    n = min(len(completions[t.id]) for t in graded)
    metrics["eval/completions"] = float(sum(len(completions[t.id]) for t in graded))
    ks = sorted({2 ** i for i in range(n.bit_length()) if 2 ** i <= n} | {n})
    avg, maj, passes = [], [], {k: [] for k in ks}
    for task in graded:
        group = RolloutGroup(task=task, rollouts=[Rollout(text=text, token_ids=[], logprobs=None, finish_reason="stop")
                                                  for text in completions[task.id]])
        correct = grade(group, task.label, answer_type)
        avg.append(sum(correct) / len(correct))
        majority_vote(group, answer_type=answer_type)
        maj.append(float(is_correct(group.label, task.label, answer_type)))
        for k in ks:
            passes[k].append(pass_at_k(len(correct), sum(correct), k))
    metrics[f"accuracy/avg@{n}"] = sum(avg) / len(avg)
    metrics[f"accuracy/maj@{n}"] = sum(maj) / len(maj)
    for k in ks:
        metrics[f"accuracy/pass@{k}"] = sum(passes[k]) / len(passes[k])
    return metrics
