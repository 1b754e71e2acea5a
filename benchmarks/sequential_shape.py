"""Benchmark: what sequential voting saves at TTRL's own shape — 64 votes per prompt, 32 of them trained.

TTRL's recipes (arXiv 2504.16084; ``benchmarks/configs/``) sample 64 rollouts per prompt and train on 32.
``--sequential_vote enforce`` samples the training rows first (round 1 = max(n_train, vote_round) = 32 votes)
and then ``vote_round`` more only while the vote is undecided, so at this shape it can save at most half of the
votes. The recipes' miniatures cannot say how much: their random models vote on noise under a token reward
(``benchmarks.miniature``), so the demo model stands in, at the recipes' shape, with everything else the demo
preset's (12 episodes, 32 prompts a step).

- ``plain_monitor``: plain TTRL at 64/32 with ``--sequential_vote monitor``: all 64 votes sampled and trained as
  plain TTRL does, the rule replayed on the same samples (``sampling/would_sample_mean``: the votes enforce would
  have sampled; ``sampling/decision_differs``: the share of groups whose sequential decision is not the 64-vote
  majority).
- ``seq_keep``: ``--sequential_vote enforce --vote_unanimous train`` at 64/32 (unanimous groups trained as plain
  TTRL trains them, so only the votes are cut): the tokens actually sampled, and the accuracy.

Two seeds each on the demo and on ``demo-systematic``: a measurement of tokens, not an accuracy claim
(``benchmarks/sequential.py`` makes that one, 5 seeds at the demo's 32/16).
Writes benchmarks/results/sequential_shape.{json,md}.

Usage: ``python -m benchmarks.sequential_shape [--seeds 0 1] [--jobs 2] [--work-dir DIR]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from benchmarks import provenance
from benchmarks.filtering import run_all, work_dir

RESULTS = Path(__file__).parent / "results"
TARGET = "accuracy/avg@16"
SHAPE = {"n_votes": 64, "n_train": 32}
SETTINGS: dict[str, dict] = {"demo": {}, "systematic": {"model": "demo-systematic", "data": "demo-systematic"}}
CONFIGS: dict[str, dict] = {
    "plain_monitor": {"sequential_vote": "monitor"},
    "seq_keep": {"sequential_vote": "enforce", "vote_unanimous": "train"},
}


def votes_of(out: Path) -> dict:
    """The run's sampling/* vote columns, averaged over its steps."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    keys = ("sampling/votes_mean", "sampling/would_sample_mean", "sampling/decision_differs", "label_accuracy")
    return {k: statistics.mean(r[k] for r in rows if k in r) for k in keys if any(k in r for r in rows)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    ap.add_argument("--work-dir", help="keep run directories here; finished runs found there are reused")
    args = ap.parse_args(argv)
    record = provenance.collect(__file__, argv, threads_per_run=1, parallel_runs=args.jobs)
    work = work_dir(args.work_dir, "ttrl-seq-shape-")
    jobs = [(f"{setting}-{name}", {**SETTINGS[setting], **SHAPE, **CONFIGS[name]}, seed)
            for setting in SETTINGS for name in CONFIGS for seed in args.seeds]
    runs = []
    for (name, _, seed), r in zip(jobs, run_all(jobs, work, args.jobs, 0, "")):
        setting, config = name.split("-", 1)
        runs.append({"setting": setting, "config": config, "seed": seed, "final_avg16": r["final"][TARGET],
                     "before_avg16": r["before"][TARGET], "tokens_generated": r["tokens_generated"],
                     "tokens_trained": r["tokens_trained"], "generate_s": r["seconds"]["generate"],
                     "update_s": r["seconds"]["update"], "votes": votes_of(work / f"{name}-s{seed}"),
                     "reused": r["reused"]})
    summary = {}
    for setting in SETTINGS:
        plain = [r for r in runs if r["setting"] == setting and r["config"] == "plain_monitor"]
        seq = [r for r in runs if r["setting"] == setting and r["config"] == "seq_keep"]
        summary[setting] = {
            "would_sample_mean": statistics.mean(r["votes"]["sampling/would_sample_mean"] for r in plain),
            "decision_differs": statistics.mean(r["votes"]["sampling/decision_differs"] for r in plain),
            "votes_mean_enforced": statistics.mean(r["votes"]["sampling/votes_mean"] for r in seq),
            "tokens_sampled_x_plain": statistics.mean(r["tokens_generated"] for r in seq)
            / statistics.mean(r["tokens_generated"] for r in plain),
            "generate_seconds_x_plain": statistics.mean(r["generate_s"] for r in seq)
            / statistics.mean(r["generate_s"] for r in plain),
            "sampling_share_plain": statistics.mean(r["generate_s"] / (r["generate_s"] + r["update_s"]) for r in plain),
            "avg16_plain": statistics.mean(r["final_avg16"] for r in plain),
            "avg16_seq_keep": statistics.mean(r["final_avg16"] for r in seq),
            "label_accuracy_plain": statistics.mean(r["votes"]["label_accuracy"] for r in plain),
            "label_accuracy_seq_keep": statistics.mean(r["votes"]["label_accuracy"] for r in seq),
        }
    result = {"provenance": provenance.finish(record), "shape": SHAPE, "configs": CONFIGS, "seeds": args.seeds,
              "summary": summary, "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sequential_shape.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"### Sequential voting at TTRL's shape: 64 votes, 32 trained (demo preset otherwise; seeds "
             f"{', '.join(map(str, args.seeds))})", "",
             "| setting | monitor: votes enforce would sample / 64 | decision ≠ 64-vote majority | enforce: votes / prompt "
             "| tokens sampled (x plain) | sampling seconds (x plain) | plain's sampling share | avg@16 plain → seq_keep "
             "| label acc. plain → seq_keep |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for setting, s in summary.items():
        lines.append(f"| {setting} | {s['would_sample_mean']:.1f} | {100 * s['decision_differs']:.2f}% | "
                     f"{s['votes_mean_enforced']:.1f} | {s['tokens_sampled_x_plain']:.2f} | "
                     f"{s['generate_seconds_x_plain']:.2f} | {100 * s['sampling_share_plain']:.0f}% | "
                     f"{100 * s['avg16_plain']:.1f} → {100 * s['avg16_seq_keep']:.1f} | "
                     f"{100 * s['label_accuracy_plain']:.1f} → {100 * s['label_accuracy_seq_keep']:.1f} |")
    md = "\n".join(lines) + "\n\n" + provenance.footer(result["provenance"])
    (RESULTS / "sequential_shape.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
