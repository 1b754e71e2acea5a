"""Generated arithmetic questions with verifiable answers: a task a small real model can be adapted on.

TTRL only helps where the base model's majority vote is right often enough to reward the right answers
(arXiv 2504.16084, §5: the method fails when the prior is too weak). SmolLM2-135M-Instruct is weak on
word problems such as MAWPS; asked for a sum or product of small numbers it is right on a fair share of
samples and its majority more often still (benchmarks/results/real_task_search.md measures which forms and
operand ranges give the widest maj@k - avg@k gap). This module makes such
questions in code, so the task needs no data file and no download:

``arithmetic_tasks(64, op="+", low=0, high=9)`` -> 64 distinct ``Task("add-3-4", "What is 3 + 4?", "7")``.

The built-in tasks a run can name (``--data arith-add-1d``, or ``--suite`` of the same name) are
:data:`GENERATED`; ``write_generated`` writes one as JSON lines into the cache, the file the loader
then reads like any other.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from engine.data.cache import atomic_dir, default_cache_dir
from engine.types import Task

OPS = {"+": ("add", lambda a, b: a + b), "-": ("sub", lambda a, b: a - b), "*": ("mul", lambda a, b: a * b)}
SYMBOLS = {"+": "+", "-": "-", "*": "×"}  # how the operator is written in the question


@dataclass(frozen=True)
class Arithmetic:
    """One generated task: ``n`` distinct questions ``form`` over operands ``low..high`` (both ends in)."""

    op: str = "+"
    low: int = 0
    high: int = 9
    n: int = 64
    form: str = "What is {a} {op} {b}?"
    seed: int = 0
    nonnegative: bool = True   # subtraction: a >= b, so answers stay natural numbers


# Built-in generated tasks, by the name ``--data`` / ``--suite`` takes.
GENERATED: dict[str, Arithmetic] = {
    "arith-add-1d": Arithmetic(op="+", low=0, high=9, n=64),
}


def arithmetic_tasks(n: int, *, op: str = "+", low: int = 0, high: int = 9,
                     form: str = "What is {a} {op} {b}?", seed: int = 0, nonnegative: bool = True) -> list[Task]:
    """``n`` distinct questions ``a op b`` with ``low <= a, b <= high``, drawn without replacement by ``seed``.

    Raises ValueError when the range holds fewer than ``n`` distinct pairs (a short task would silently
    evaluate on fewer questions than asked for).
    """
    if op not in OPS:
        raise ValueError(f"op must be one of {', '.join(OPS)}, got {op!r}")
    pairs = [(a, b) for a in range(low, high + 1) for b in range(low, high + 1)
             if not (op == "-" and nonnegative and a < b)]
    if n > len(pairs):
        raise ValueError(f"{len(pairs)} distinct {op!r} pairs in {low}..{high}, fewer than the {n} asked for")
    name, fn = OPS[op]
    chosen = random.Random(seed).sample(pairs, n)
    return [Task(id=f"{name}-{a}-{b}", question=form.format(a=a, b=b, op=SYMBOLS[op]), label=str(fn(a, b)))
            for a, b in chosen]


def generated_path(data: str, cache_dir: str | Path | None = None) -> str:
    """``data`` itself, or the tasks file when ``data`` names a built-in generated task (:data:`GENERATED`)."""
    return str(write_generated(data, cache_dir)) if data in GENERATED else data


def write_generated(name: str, cache_dir: str | Path | None = None) -> Path:
    """The JSON-lines file of built-in task ``name`` (written once into the cache; ``id``/``prompt``/``answer``)."""
    spec = GENERATED[name]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / f"{name}-s{spec.seed}-n{spec.n}"
    path = final / "tasks.jsonl"
    if path.exists():
        return path
    tasks = arithmetic_tasks(spec.n, op=spec.op, low=spec.low, high=spec.high, form=spec.form, seed=spec.seed,
                             nonnegative=spec.nonnegative)
    with atomic_dir(final) as tmp:
        (tmp / "tasks.jsonl").write_text("".join(
            json.dumps({"id": t.id, "prompt": t.question, "answer": t.label}) + "\n" for t in tasks))
    return path
