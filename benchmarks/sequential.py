"""Benchmark: sequential voting (``--sequential_vote enforce``) against plain TTRL at an equal prompt budget.

Plain TTRL samples all ``n_votes`` rollouts of every prompt; sequential voting (engine.samplers.rounds,
rewards.sequential; the idea of OptPO, arXiv 2512.02882, and ETTRL, arXiv 2508.11356) samples the
``n_train`` training rows first, then rounds of ``vote_round`` more only while the vote is undecided, and drops
a group unanimous after its first round. Every configuration runs ``ttrl run`` for the demo preset's 12
episodes (12 x 128 = 1,536 prompts; refills draw from the same budget) on two settings: the demo and
``demo-systematic`` (the demo whose vote is confidently wrong on one class of sums). Five seeds each.

Configurations (32 votes each):

- ``plain``: TTRL, train on 16. Run with ``--sequential_vote monitor``, which samples exactly what plain
  samples and replays the rule on the same rollouts: its ``decision_differs`` is the rule's false-decision
  rate against the full 32-vote majority, measured on identical samples.
- ``plain_b``: plain TTRL on five other seeds (100-104), ``--sequential_vote off``: the seed noise every
  difference is read against.
- ``seq16``: enforce, train on 16: round 1 is the 16 training rows, then rounds of 8 (floor: 0.5x the votes).
- ``seq8``: enforce, train on 8: round 1 is 8 rows, then rounds of 8 (floor 0.25x).
- ``seq16_keep``, ``seq8_keep``: the same with ``--vote_unanimous train``: a group unanimous after round 1
  stops sampling but is trained on, as plain TTRL trains it (zero advantage, the KL term only), so the run
  takes plain's steps and only the votes are cut; ``seq16``/``seq8`` drop and refill it (DAPO), which
  concentrates the same prompt budget into fewer, all-contested steps.

Per run: final greedy / avg@16 / maj@16, tokens generated (sampled) and trained, seconds per stage,
votes sampled per prompt, groups decided early and dropped unanimous, pseudo-label accuracy (TTRL's
``label_accuracy``, against the labels the run never trains on). Runs are one thread each, ``--jobs`` at a
time. Writes benchmarks/results/sequential.json and sequential.md.

Usage: ``python -m benchmarks.sequential [--seeds 0 1 2 3 4] [--jobs 2] [--settings demo systematic]``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from benchmarks import provenance
from benchmarks.filtering import run_all, work_dir

RESULTS = Path(__file__).parent / "results"
TARGET = "accuracy/avg@16"
FINAL = ("accuracy/greedy", "accuracy/avg@16", "accuracy/maj@16")
SETTINGS: dict[str, dict] = {
    "demo": {},
    "systematic": {"model": "demo-systematic", "data": "demo-systematic"},
}
CONFIGS: dict[str, dict] = {
    "plain": {"sequential_vote": "monitor"},
    "plain_b": {},
    "seq16": {"sequential_vote": "enforce", "vote_round": 8},
    "seq8": {"sequential_vote": "enforce", "vote_round": 8, "n_train": 8},
    # the same, with the unanimous groups trained on as plain TTRL trains them (only the votes are cut)
    "seq16_keep": {"sequential_vote": "enforce", "vote_round": 8, "vote_unanimous": "train"},
    "seq8_keep": {"sequential_vote": "enforce", "vote_round": 8, "n_train": 8, "vote_unanimous": "train"},
}
SEED_OFFSET = {"plain_b": 100}
STEP_KEYS = ("sampling/votes_mean", "sampling/decided_early", "sampling/unanimous_dropped", "label_accuracy",
             "sampling/decision_differs", "sampling/would_sample_mean", "prompts/sampled", "groups/trained")


def vote_figures(out: Path) -> dict:
    """Per-run means over steps of the sampling and label metrics (sums for the counts)."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    figures = {}
    for key in STEP_KEYS:
        vals = [r[key] for r in rows if key in r and isinstance(r[key], (int, float)) and not math.isnan(r[key])]
        if not vals:
            continue
        counted = key in ("sampling/decided_early", "sampling/unanimous_dropped", "prompts/sampled", "groups/trained")
        figures[key] = sum(vals) if counted else statistics.mean(vals)
    return figures


def run_record(run: dict, work: Path) -> dict:
    """The figures this benchmark keeps of one run (``benchmarks.filtering.run_one``'s, named here)."""
    setting, config = run["config"].split("-", 1)
    return {"setting": setting, "config": config, "seed": run["seed"], "wall_s": run["wall_s"],
            "final": run["final"], "before": run["before"], "steps": run["steps"],
            "tokens_generated": run["tokens_generated"], "tokens_trained": run["tokens_trained"],
            "seconds": {"generate": run["seconds"]["generate"], "reward": run["seconds"]["reward"],
                        "update": run["seconds"]["update"]},
            "reused": run["reused"], "votes": vote_figures(work / f"{setting}-{config}-s{run['seed']}")}


def stats(xs: list[float]) -> dict:
    return {"mean": statistics.mean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "min": min(xs)}


def summarize(runs: list[dict]) -> dict:
    """Per configuration: final accuracy, the paired difference from plain (same seed), tokens and seconds."""
    plain = {r["seed"]: r for r in runs if r["config"] == "plain"}
    plain_gen = statistics.mean(r["tokens_generated"] for r in plain.values())
    plain_tok = statistics.mean(r["tokens_generated"] + r["tokens_trained"] for r in plain.values())
    plain_sec = statistics.mean(sum(r["seconds"].values()) for r in plain.values())
    plain_avg = statistics.mean(r["final"][TARGET] for r in plain.values())
    table = {}
    for name in dict.fromkeys(r["config"] for r in runs):
        rs = [r for r in runs if r["config"] == name]
        paired = [r["final"][TARGET] - plain[r["seed"]]["final"][TARGET] for r in rs if r["seed"] in plain]
        gen_s = statistics.mean(r["seconds"]["generate"] for r in rs)
        all_s = statistics.mean(sum(r["seconds"].values()) for r in rs)
        table[name] = {
            "seeds": [r["seed"] for r in rs],
            "final": {k: stats([r["final"][k] for r in rs]) for k in FINAL},
            "avg16_minus_plain_points": 100 * (statistics.mean(r["final"][TARGET] for r in rs) - plain_avg),
            # seeds shared with plain: the same prompt order, so the difference is paired
            "paired_avg16_minus_plain_points": [100 * d for d in paired],
            "within_1_point_of_plain": sum(d >= -0.01 for d in paired), "paired_runs": len(paired),
            "tokens_generated": statistics.mean(r["tokens_generated"] for r in rs),
            "tokens_generated_x_plain": statistics.mean(r["tokens_generated"] for r in rs) / plain_gen,
            "tokens_x_plain": statistics.mean(r["tokens_generated"] + r["tokens_trained"] for r in rs) / plain_tok,
            "seconds": all_s, "seconds_x_plain": all_s / plain_sec, "sampling_share": gen_s / all_s,
            "votes": {k: statistics.mean(r["votes"][k] for r in rs) for k in STEP_KEYS
                      if all(k in r["votes"] for r in rs)},
        }
    return {"plain_mean_avg16": plain_avg, "configs": table}


def markdown(summary: dict, title: str) -> str:
    t = summary["configs"]
    lines = [f"### {title}", "",
             "Δ: the configuration's final avg@16 minus plain's on the same seed (plain_b: other seeds, so its "
             "mean difference is the noise). Within 1 pt: seeds whose Δ ≥ −1 point.", "",
             "| config | avg@16 mean (worst) | Δ avg@16 mean (worst) | within 1 pt | greedy | maj@16 | "
             "votes / prompt | label acc. | tokens sampled (x plain) | tokens sampled + trained (x plain) | "
             "seconds (x plain) | sampling share |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in t.items():
        f, v = row["final"], row["votes"]
        paired = row["paired_avg16_minus_plain_points"]
        if name == "plain":
            delta, within = "—", "—"
        elif paired:
            delta, within = f"{statistics.mean(paired):+.1f} ({min(paired):+.1f})", f"{row['within_1_point_of_plain']}/{row['paired_runs']}"
        else:
            delta, within = f"{row['avg16_minus_plain_points']:+.1f}", "—"
        votes = v.get("sampling/votes_mean")
        label = v.get("label_accuracy")
        lines.append(
            f"| {name} | {100 * f[TARGET]['mean']:.1f} ({100 * f[TARGET]['min']:.1f}) | {delta} | {within} | "
            f"{100 * f['accuracy/greedy']['mean']:.1f} | {100 * f['accuracy/maj@16']['mean']:.1f} | "
            f"{'32' if votes is None else f'{votes:.1f}'} | {'—' if label is None else f'{100 * label:.1f}'} | "
            f"{row['tokens_generated']:,.0f} ({row['tokens_generated_x_plain']:.2f}) | {row['tokens_x_plain']:.2f} | "
            f"{row['seconds']:.0f} ({row['seconds_x_plain']:.2f}) | {100 * row['sampling_share']:.0f}% |")
    plain_votes = t.get("plain", {}).get("votes", {})
    if "sampling/decision_differs" in plain_votes:
        lines += ["", f"The rule replayed on plain's own samples (monitor): it would sample "
                      f"{plain_votes.get('sampling/would_sample_mean', float('nan')):.1f} of 32 votes per prompt, and its "
                      f"decision differs from the full 32-vote majority on "
                      f"{100 * plain_votes['sampling/decision_differs']:.2f}% of groups (vote_error 0.05)."]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    ap.add_argument("--work-dir", help="keep run directories here; finished runs found there are reused")
    args = ap.parse_args(argv)
    record = provenance.collect(__file__, argv, threads_per_run=1, parallel_runs=args.jobs)
    work = work_dir(args.work_dir, "ttrl-sequential-")
    jobs = [(f"{setting}-{name}", {**SETTINGS[setting], **CONFIGS[name]}, seed + SEED_OFFSET.get(name, 0))
            for setting in args.settings for name in args.configs for seed in args.seeds]
    runs = run_all(jobs, work, args.jobs, 0, "")
    runs = [run_record(r, work) for r in runs]
    summaries = {s: summarize([r for r in runs if r["setting"] == s]) for s in args.settings}
    result = {"provenance": provenance.finish(record), "episodes": 12, "n_votes": 32, "configs": CONFIGS,
              "settings": {s: SETTINGS[s] for s in args.settings}, "seed_offset": SEED_OFFSET, "seeds": args.seeds,
              "summary": summaries, "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sequential.json").write_text(json.dumps(result, indent=2) + "\n")
    md = "\n\n".join(markdown(summaries[s], f"{s}: equal prompt budget (12 episodes = 1,536 prompts), "
                                            f"{len(args.seeds)} seeds each") for s in args.settings)
    md += "\n\n" + provenance.footer(result["provenance"])
    (RESULTS / "sequential.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
