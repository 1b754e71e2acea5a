"""Benchmark: plain TTRL against rollout filters and selectors at an equal prompt budget, with plain's own noise.

Every configuration runs `ttrl run` on the demo task for the demo preset's 12 episodes: the same
prompt budget, 12 x 128 = 1,536 prompts sampled (refill rounds draw from the same budget), each
sampled with the configuration's ``n_votes``. Five seeds each. ``plain_b`` is plain TTRL again on
five other seeds: the difference between ``plain`` and ``plain_b`` is what seed noise alone does, and
is printed beside every other difference.

Recorded per run: final greedy / avg@16 / maj@16, tokens generated and trained, seconds per stage, and
the curve of avg@16 (evaluated every 2 episodes by default) against compute. The question "does a filter reach plain's
accuracy with less compute?" is asked against one fixed target, plain's mean final avg@16 minus 1 point,
and counted over *all* seeds: a seed that never reaches it within the budget is a miss, and the median
compute to reach treats a miss as infinite (no median when half or more miss). Compute is counted in
tokens (generated + trained: independent of machine load) and in seconds (sampling + scoring + update,
evaluation excluded; runs are timed one thread each, two at a time on a shared machine, so seconds are
the noisier measure). A second part repeats plain (both seed sets) and the selectors with 20% of
pseudo-labels flipped (``benchmarks.noise``). Writes benchmarks/results/filters.json, filters.md and
filters.png.

Usage: ``python -m benchmarks.filtering [--seeds 0 1 2 3 4] [--jobs 2] [--only NAME ...]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from benchmarks import provenance
from benchmarks.noise import reward_spec

RESULTS = Path(__file__).parent / "results"
TARGET = "accuracy/avg@16"
FINAL = ("accuracy/greedy", "accuracy/avg@16", "accuracy/maj@16")
TOLERANCE = 0.01  # "reached" = within 1 point of plain's mean final avg@16
INFLUENCE = {"name": "influence", "target": "batch_mean", "keep": "drop_negative"}
INFLUENCE_KEPT = "filters/influence/kept_fraction"  # logged per step by filters.influence

# All at the demo preset's 12 episodes (the same prompt budget); only what differs from plain is listed.
CONFIGS: dict[str, dict] = {
    "plain": {},
    "plain_b": {},  # plain TTRL on other seeds: the noise floor of every comparison
    # PODS at half the vote budget: the 8 of 16 rollouts with the largest reward variance.
    "best": {"n_votes": 16, "n_train": 8, "selector": "max_variance"},
    # Control for "best": plain TTRL (first 8 of 16) at that budget.
    "half_votes": {"n_votes": 16, "n_train": 8},
    # PODS: train on the n_train of n_votes rollouts with the largest reward variance.
    "max_variance": {"selector": "max_variance"},
    # The update stage (default): DTV's batch-gradient target, rows of negative alignment dropped.
    "influence": {"selector": INFLUENCE},
    # DAPO's dynamic sampling: drop groups whose rollouts all got the same reward, refill from further prompts.
    "zero_variance": {"filters": ["zero_variance"]},
    # GRESO: also skip prompts that were unanimous in earlier episodes, before sampling them.
    "history_skip": {"filters": ["zero_variance", "history_skip"]},
}
SEED_OFFSET = {"plain_b": 100}  # plain_b runs seeds 100-104 against plain's 0-4
NOISY = ("plain", "plain_b", "max_variance", "influence")


def work_dir(path: str | None, prefix: str) -> Path:
    """A benchmark's ``--work-dir`` (created), or a fresh temporary directory named ``prefix``: where its runs go."""
    work = Path(path) if path else Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    return work


def run_one(name: str, overrides: dict, seed: int, work: Path, eval_every: int) -> dict:
    """Run one configuration and seed (or reuse its finished run directory under ``work``: ``reused``).
    Every run is offline, unbuffered and on one OpenMP thread: configurations are timed under the same
    conditions, and a busy machine cannot turn OpenMP's spin-waiting into a 30x slowdown (seen with two runs
    on 2 cores)."""
    out = work / f"{name}-s{seed}"
    reused = (out / "summary.json").exists()
    if not reused:
        shutil.rmtree(out, ignore_errors=True)  # an interrupted run: start it afresh
        cfg = {"eval_every": eval_every, "progress": False, "seed": seed, "output_dir": str(out), **overrides}
        cfg_file = work / f"{name}-s{seed}.yaml"
        cfg_file.write_text(yaml.safe_dump(cfg))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-m", "engine.cli.main", "run", str(cfg_file)], env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{name} seed {seed} failed:\n{proc.stderr[-4000:]}")
    return {**collect(name, seed, out), "reused": reused}


def collect(name: str, seed: int, out: Path) -> dict:
    """One run's figures from its run directory."""
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    curve = [{"avg16": summary["before"][TARGET], "tokens": 0, "seconds": 0.0}]
    for r in rows:
        if TARGET in r:
            curve.append({"avg16": r[TARGET], "tokens": r["compute/tokens/generated"] + r["compute/tokens/trained"],
                          "seconds": r["compute/time/generate_s"] + r["compute/time/reward_s"] + r["compute/time/update_s"]})
    c = summary["compute"]
    # The final evaluation ends every curve (the periodic ones are separate samples, ~1 point of noise).
    curve.append({"avg16": summary["after"][TARGET], "tokens": c["tokens/generated"] + c["tokens/trained"],
                  "seconds": c["time/generate_s"] + c["time/reward_s"] + c["time/update_s"]})
    return {
        "config": name, "seed": seed, "wall_s": c["time/total_s"],
        "final": {k: summary["after"][k] for k in FINAL},
        "before": {k: summary["before"][k] for k in FINAL},
        "tokens_generated": c["tokens/generated"], "tokens_trained": c["tokens/trained"],
        "seconds": {"generate": c["time/generate_s"], "reward": c["time/reward_s"], "update": c["time/update_s"]},
        "steps": c["steps"], "curve": curve,
        "groups_trained": sum(r.get("groups/trained", 0) for r in rows),
        "prompts_sampled": sum(r.get("prompts/sampled", 0) for r in rows),
        "prompts_skipped": sum(r.get("prompts/skipped", 0) for r in rows),
        # influence selector (update stage): share of trained rows kept in the gradient, mean over steps
        "influence_kept_fraction": statistics.mean(kept) if (kept := [r[INFLUENCE_KEPT] for r in rows
                                                                      if INFLUENCE_KEPT in r]) else None,
    }


def first_reach(curve: list[dict], target: float, key: str) -> float:
    """Compute spent when avg@16 first came within ``TOLERANCE`` of ``target`` (infinite: never, a miss)."""
    for point in curve:
        if point["avg16"] >= target - TOLERANCE:
            return point[key]
    return math.inf


def stats(xs: list[float]) -> dict:
    return {"mean": statistics.mean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0}


def median_or_none(xs: list[float]) -> float | None:
    """Median over all seeds, misses (inf) included; None when the median itself is a miss."""
    m = statistics.median(xs)
    return None if math.isinf(m) else m


def summarize(runs: list[dict]) -> dict:
    """Per configuration: means and spreads, the difference from plain with its standard error, and reach."""
    plain = [r for r in runs if r["config"] == "plain"]
    target = statistics.mean(r["final"][TARGET] for r in plain)
    plain_tokens = statistics.mean(r["tokens_generated"] + r["tokens_trained"] for r in plain)
    plain_seconds = statistics.mean(sum(r["seconds"].values()) for r in plain)
    plain_avg = stats([r["final"][TARGET] for r in plain])
    table = {}
    for name in dict.fromkeys(r["config"] for r in runs):
        rs = [r for r in runs if r["config"] == name]
        avg = stats([r["final"][TARGET] for r in rs])
        tok = [first_reach(r["curve"], target, "tokens") / plain_tokens for r in rs]
        sec = [first_reach(r["curve"], target, "seconds") / plain_seconds for r in rs]
        for r, t, s in zip(rs, tok, sec):
            r["to_reach_x_plain"] = {"tokens": None if math.isinf(t) else t, "seconds": None if math.isinf(s) else s}
        tokens = statistics.mean(r["tokens_generated"] + r["tokens_trained"] for r in rs)
        seconds = statistics.mean(sum(r["seconds"].values()) for r in rs)
        table[name] = {
            "seeds": [r["seed"] for r in rs],
            "final": {k: stats([r["final"][k] for r in rs]) for k in FINAL},
            "avg16_minus_plain_points": 100 * (avg["mean"] - plain_avg["mean"]),
            # standard error of a difference of two independent means over seeds
            "avg16_minus_plain_se_points": 100 * math.sqrt(avg["std"] ** 2 / len(rs) + plain_avg["std"] ** 2 / len(plain)),
            "tokens_generated": statistics.mean(r["tokens_generated"] for r in rs),
            "tokens_trained": statistics.mean(r["tokens_trained"] for r in rs),
            "tokens_x_plain": tokens / plain_tokens,
            "seconds": seconds, "seconds_x_plain": seconds / plain_seconds,
            "steps": statistics.mean(r["steps"] for r in rs),
            "influence_kept_fraction": (statistics.mean(r["influence_kept_fraction"] for r in rs)
                                        if all(r["influence_kept_fraction"] is not None for r in rs) else None),
            "reached": sum(not math.isinf(t) for t in tok), "runs": len(rs),
            "median_tokens_to_reach_x_plain": median_or_none(tok),
            "median_seconds_to_reach_x_plain": median_or_none(sec),
        }
    return {"target_avg16": target - TOLERANCE, "plain_mean_avg16": target, "configs": table}


def markdown(summary: dict, title: str) -> str:
    t = summary["configs"]
    noise = t.get("plain_b")
    lines = [f"### {title}", "",
             f"Target: plain's mean final avg@16 ({100 * summary['plain_mean_avg16']:.1f}) minus 1 point = "
             f"{100 * summary['target_avg16']:.1f}. Δ = difference of means from plain ± its standard error."
             + (f" Seed noise alone (plain_b − plain): {noise['avg16_minus_plain_points']:+.1f} ± "
                f"{noise['avg16_minus_plain_se_points']:.1f} points." if noise else ""), "",
             "| config | seeds | greedy | avg@16 (± std) | Δ avg@16 vs plain | maj@16 | steps | tokens gen + trained "
             "(x plain) | seconds (x plain) | reached target | median to reach, tokens / seconds (x plain's run) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in t.items():
        f = row["final"]
        tok, sec = row["median_tokens_to_reach_x_plain"], row["median_seconds_to_reach_x_plain"]
        reach = f"{tok:.2f} / {sec:.2f}" if tok is not None and sec is not None else "— (half or more miss)"
        seeds = f"{row['seeds'][0]}–{row['seeds'][-1]}" if len(row["seeds"]) > 1 else str(row["seeds"][0])
        delta = ("—" if name == "plain" else
                 f"{row['avg16_minus_plain_points']:+.1f} ± {row['avg16_minus_plain_se_points']:.1f}")
        lines.append(
            f"| {name} | {seeds} | {100 * f['accuracy/greedy']['mean']:.1f} | {100 * f[TARGET]['mean']:.1f} "
            f"(± {100 * f[TARGET]['std']:.1f}) | {delta} | {100 * f['accuracy/maj@16']['mean']:.1f} | {row['steps']:.0f} | "
            f"{row['tokens_generated'] + row['tokens_trained']:,.0f} ({row['tokens_x_plain']:.2f}) | "
            f"{row['seconds']:.1f} ({row['seconds_x_plain']:.2f}) | {row['reached']}/{row['runs']} | {reach} |")
    kept = {n: r["influence_kept_fraction"] for n, r in t.items() if r["influence_kept_fraction"] is not None}
    if kept:
        lines += [""] + [f"{n}: {100 * k:.1f}% of trained rows kept in the gradient ({100 * (1 - k):.1f}% dropped; "
                         "mean over steps and seeds)." for n, k in kept.items()]
    return "\n".join(lines)


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r["config"] for r in runs):
        rs = [r for r in runs if r["config"] == name]
        n = min(len(r["curve"]) for r in rs)
        xs = [statistics.mean(r["curve"][i]["tokens"] for r in rs) / 1e3 for i in range(n)]
        ys = [100 * statistics.mean(r["curve"][i]["avg16"] for r in rs) for i in range(n)]
        ax.plot(xs, ys, marker=".", label=name)
    ax.set(xlabel="compute: tokens generated + trained (thousands)", ylabel="avg@16 (%)",
           title="Demo task, 12 episodes each: accuracy against compute (mean of seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_all(jobs: list[tuple[str, dict, int]], work: Path, parallel: int, eval_every: int,
            label: str) -> list[dict]:
    """Run (name, overrides, seed) jobs, ``parallel`` at a time; results in job order."""
    def one(job):
        name, overrides, seed = job
        r = run_one(name, overrides, seed, work, eval_every)
        print(f"{label}{name} seed {seed}: avg@16 {100 * r['final'][TARGET]:.1f} greedy "
              f"{100 * r['final']['accuracy/greedy']:.1f} tokens {r['tokens_generated'] + r['tokens_trained']:,} "
              f"({r['wall_s']:.0f} s)", flush=True)
        return r

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(one, jobs))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--only", nargs="*", help="run only these configurations (plain and plain_b always run)")
    ap.add_argument("--noise", type=float, default=0.2, help="fraction of pseudo-labels flipped (0: skip)")
    ap.add_argument("--noisy-configs", nargs="*", default=list(NOISY), help="configurations to repeat with label noise")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    ap.add_argument("--eval-every", type=int, default=8, help="steps between avg@16 evaluations (4 steps = 1 episode)")
    ap.add_argument("--work-dir", help="keep run directories here; finished runs found there are reused")
    args = ap.parse_args(argv)
    # One thread per run (run_one)
    record = provenance.collect(__file__, argv, threads_per_run=1, parallel_runs=args.jobs)
    work = work_dir(args.work_dir, "ttrl-filters-")
    names = [n for n in CONFIGS if n in ("plain", "plain_b") or not args.only or n in args.only]
    seeds_of = {n: [s + SEED_OFFSET.get(n, 0) for s in args.seeds] for n in CONFIGS}
    # configuration-major, in CONFIGS order: an interrupted benchmark has its first configurations on all seeds
    runs = run_all([(n, CONFIGS[n], s) for n in names for s in seeds_of[n]],
                   work, args.jobs, args.eval_every, "")
    noisy = []
    if args.noise > 0:
        jobs = [(f"noisy-{n}", {**CONFIGS[n], "reward": reward_spec(args.noise, s)}, s)
                for n in NOISY if n in args.noisy_configs for s in seeds_of[n]]
        noisy = run_all(jobs, work, args.jobs, args.eval_every, "")
        for r in noisy:
            r["config"] = r["config"].removeprefix("noisy-")
    table = summarize(runs)
    noisy_table = summarize(noisy) if noisy else None
    result = {"provenance": provenance.finish(record), "episodes": 12, "eval_every": args.eval_every, "configs": CONFIGS, "seed_offset": SEED_OFFSET,
              "seeds": args.seeds, "tolerance": TOLERANCE, "summary": table, "noisy_summary": noisy_table,
              "noise_flip": args.noise, "runs_reused": sum(r["reused"] for r in runs + noisy),
              "runs": runs, "noisy_runs": noisy}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "filters.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(table, f"Demo task, equal prompt budget (12 episodes = 1,536 prompts), {len(args.seeds)} seeds each")
    if noisy_table:
        md += "\n\n" + markdown(noisy_table, f"With {int(100 * args.noise)}% of pseudo-labels flipped")
    md += "\n\n" + provenance.footer(result["provenance"])
    (RESULTS / "filters.md").write_text(md + "\n")
    plot(runs, RESULTS / "filters.png")
    print(md)


if __name__ == "__main__":
    main()
