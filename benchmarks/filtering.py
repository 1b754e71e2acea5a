"""Benchmark (the project's headline): plain TTRL against rollout filters, side by side.

Each configuration runs `ttrl run` on the demo task for several seeds with an evaluation every
episode, and records final greedy / avg@16 / maj@16, tokens generated and trained, wall seconds per
stage, and the compute it needed to first reach plain TTRL's final avg@16 (within 1 point). Compute
is counted two ways: tokens (generated + trained) and wall seconds (sampling + scoring + update;
evaluation excluded). A second part repeats plain TTRL and the selectors with 20% of pseudo-labels
flipped (``benchmarks.noise``). Writes benchmarks/results/filters.json, filters.md and filters.png.

Usage: ``python -m benchmarks.filtering [--seeds 0 1 2] [--only NAME ...]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

RESULTS = Path(__file__).parent / "results"
TARGET = "accuracy/avg@16"

# Plain TTRL runs the demo preset's 12 episodes. Filtered runs get twice the prompt budget (24
# episodes): what is measured is the compute each needs to *first reach* plain TTRL's final avg@16,
# so a run that saves compute per prompt must be allowed to visit more prompts.
LONGER = {"episodes": 24}
CONFIGS: dict[str, dict] = {
    "plain": {},
    "zero_variance": {"filters": ["zero_variance"], **LONGER},
    "history_skip": {"filters": ["zero_variance", "history_skip"], **LONGER},
    "max_variance": {"selector": "max_variance", **LONGER},
    # The update stage (default): DTV's batch-gradient target, rows of negative alignment dropped.
    "influence": {"selector": {"name": "influence", "target": "batch_mean", "keep": "drop_negative"}, **LONGER},
    # Control for "best": plain TTRL (first_k) at half the vote budget, 16 votes / train on 8.
    "half_votes": {"n_votes": 16, "n_train": 8, **LONGER},
    # PODS down-sampling at half the vote budget: the 8 of 16 rollouts with the largest reward variance.
    "best": {"n_votes": 16, "n_train": 8, "selector": "max_variance", **LONGER},
    # Ablation: without the KL term (beta 0) a unanimous group adds nothing to plain TTRL's gradient but
    # its tokens in TRL's loss normaliser; does dropping it (no refill: same prompts, same steps) still cost?
    "plain_beta0": {"beta": 0.0},
    "zero_variance_beta0": {"filters": ["zero_variance"], "max_refill_rounds": 0, "beta": 0.0},
}
NOISY = {"plain": {}, "max_variance": {"selector": "max_variance"},
         "influence": {"selector": {"name": "influence", "target": "batch_mean", "keep": "drop_negative"}}}


def run_one(name: str, overrides: dict, seed: int, work: Path, env: dict) -> dict:
    """Run one configuration and seed (or reuse its finished run directory under ``work``)."""
    out = work / f"{name}-s{seed}"
    if not (out / "summary.json").exists():
        shutil.rmtree(out, ignore_errors=True)  # an interrupted run: start it afresh
        cfg = {"eval_every": 4, "progress": False, "seed": seed, "output_dir": str(out), **overrides}
        cfg_file = work / f"{name}-s{seed}.yaml"
        cfg_file.write_text(yaml.safe_dump(cfg))
        proc = subprocess.run([sys.executable, "-m", "engine.cli", "run", str(cfg_file)], env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{name} seed {seed} failed:\n{proc.stderr[-4000:]}")
    return collect(name, seed, out)


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
    # The final evaluation ends the curve: plain TTRL's target is its own final avg@16, so the same
    # evaluation must be on every curve (the periodic ones are separate samples, ~1 point of noise).
    curve.append({"avg16": summary["after"][TARGET], "tokens": c["tokens/generated"] + c["tokens/trained"],
                  "seconds": c["time/generate_s"] + c["time/reward_s"] + c["time/update_s"]})
    return {
        "config": name, "seed": seed, "wall_s": c["time/total_s"],
        "final": {k: summary["after"][k] for k in ("accuracy/greedy", "accuracy/avg@16", "accuracy/maj@16")},
        "before": {k: summary["before"][k] for k in ("accuracy/greedy", "accuracy/avg@16", "accuracy/maj@16")},
        "tokens_generated": c["tokens/generated"], "tokens_trained": c["tokens/trained"],
        "seconds": {"generate": c["time/generate_s"], "reward": c["time/reward_s"], "update": c["time/update_s"]},
        "steps": c["steps"], "curve": curve,
        "groups_trained": sum(r.get("groups/trained", 0) for r in rows),
        "prompts_sampled": sum(r.get("prompts/sampled", 0) for r in rows),
        "prompts_skipped": sum(r.get("prompts/skipped", 0) for r in rows),
    }


def first_reach(curve: list[dict], target: float, key: str) -> float | None:
    """Compute spent when avg@16 first came within 1 point of ``target`` (None: never)."""
    for point in curve:
        if point["avg16"] >= target - 0.01:
            return point[key]
    return None


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def summarize(runs: list[dict]) -> dict:
    by_seed_plain = {r["seed"]: r for r in runs if r["config"] == "plain"}
    table = {}
    for name in dict.fromkeys(r["config"] for r in runs):
        rs = [r for r in runs if r["config"] == name]
        fractions_tok, fractions_sec = [], []
        for r in rs:
            plain = by_seed_plain[r["seed"]]
            target = plain["final"][TARGET]
            plain_tok = plain["curve"][-1]["tokens"]
            plain_sec = plain["curve"][-1]["seconds"]
            tok, sec = first_reach(r["curve"], target, "tokens"), first_reach(r["curve"], target, "seconds")
            r["fraction_of_plain_compute_to_reach"] = {"tokens": tok / plain_tok if tok is not None else None,
                                                       "seconds": sec / plain_sec if sec is not None else None}
            fractions_tok.append(r["fraction_of_plain_compute_to_reach"]["tokens"])
            fractions_sec.append(r["fraction_of_plain_compute_to_reach"]["seconds"])
        table[name] = {
            **{k: mean([r["final"][k] for r in rs]) for k in rs[0]["final"]},
            "tokens_generated": mean([r["tokens_generated"] for r in rs]),
            "tokens_trained": mean([r["tokens_trained"] for r in rs]),
            "seconds": mean([sum(r["seconds"].values()) for r in rs]),
            "update_seconds": mean([r["seconds"]["update"] for r in rs]),
            "reached": sum(f is not None for f in fractions_tok), "seeds": len(rs),
            "fraction_tokens_to_reach": mean(fractions_tok), "fraction_seconds_to_reach": mean(fractions_sec),
        }
    return table


def markdown(table: dict, title: str) -> str:
    lines = [f"### {title}", "",
             "| config | greedy | avg@16 | maj@16 | tokens generated | tokens trained | seconds (sample+score+update) "
             "| reached plain's avg@16 | compute to reach (tokens / seconds, x plain) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in table.items():
        frac = (f"{row['fraction_tokens_to_reach']:.2f} / {row['fraction_seconds_to_reach']:.2f}"
                if row["fraction_tokens_to_reach"] is not None else "—")
        lines.append(f"| {name} | {100 * row['accuracy/greedy']:.1f} | {100 * row['accuracy/avg@16']:.1f} | "
                     f"{100 * row['accuracy/maj@16']:.1f} | {row['tokens_generated']:,.0f} | {row['tokens_trained']:,.0f} | "
                     f"{row['seconds']:.1f} | {row['reached']}/{row['seeds']} | {frac} |")
    return "\n".join(lines)


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r["config"] for r in runs):
        rs = [r for r in runs if r["config"] == name]
        n = min(len(r["curve"]) for r in rs)
        xs = [mean([r["curve"][i]["tokens"] for r in rs]) / 1e3 for i in range(n)]
        ys = [100 * mean([r["curve"][i]["avg16"] for r in rs]) for i in range(n)]
        ax.plot(xs, ys, marker=".", label=name)
    ax.set(xlabel="compute: tokens generated + trained (thousands)", ylabel="avg@16 (%)",
           title="Demo task: accuracy against compute (mean of seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="*", help="run only these configurations (plain is always run)")
    ap.add_argument("--noise", type=float, default=0.2, help="fraction of pseudo-labels flipped (0: skip)")
    ap.add_argument("--noise-seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--noisy-configs", nargs="*", default=list(NOISY), help="selectors to repeat with label noise")
    ap.add_argument("--work-dir", help="keep run directories here; finished runs found there are reused")
    args = ap.parse_args(argv)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="ttrl-filters-"))
    work.mkdir(parents=True, exist_ok=True)
    # One thread per run: every configuration is timed under the same conditions, and a busy machine
    # cannot turn OpenMP's spin-waiting into a 30x slowdown (seen here with two runs on 2 cores).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    names = ["plain"] + [n for n in CONFIGS if n != "plain" and (not args.only or n in args.only)]
    runs = []
    for name in names:
        for seed in args.seeds:
            runs.append(run_one(name, CONFIGS[name], seed, work, env))
            r = runs[-1]
            print(f"{name} seed {seed}: avg@16 {100 * r['final'][TARGET]:.1f} greedy {100 * r['final']['accuracy/greedy']:.1f} "
                  f"tokens {r['tokens_generated'] + r['tokens_trained']:,} ({r['wall_s']:.0f} s)", flush=True)
    noisy = []
    if args.noise > 0:
        for name, overrides in NOISY.items():
            if name not in args.noisy_configs:
                continue
            for seed in args.noise_seeds:
                reward = {"reward": {"name": "benchmarks.noise:NoisyMajorityVote", "flip": args.noise, "seed": seed}}
                noisy.append(run_one(f"noisy-{name}", {**overrides, **reward}, seed, work, env))
                noisy[-1]["config"] = name
                print(f"noisy {name} seed {seed}: avg@16 {100 * noisy[-1]['final'][TARGET]:.1f}", flush=True)
    table = summarize(runs)
    noisy_table = summarize(noisy) if noisy else {}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "filters.json").write_text(json.dumps(
        {"configs": CONFIGS, "seeds": args.seeds, "summary": table, "noisy_summary": noisy_table,
         "noise_flip": args.noise, "runs": runs, "noisy_runs": noisy}, indent=2))
    md = markdown(table, "Demo task, mean of seeds " + ", ".join(map(str, args.seeds)))
    if noisy_table:
        md += "\n\n" + markdown(noisy_table, f"With {int(100 * args.noise)}% of pseudo-labels flipped")
    (RESULTS / "filters.md").write_text(md + "\n")
    plot(runs, RESULTS / "filters.png")
    print(md)


if __name__ == "__main__":
    main()
