"""Benchmark: plain TTRL against a filtered run on a real model — SmolLM2-135M-Instruct on MAWPS SingleOp.

The demo-task benchmark (``benchmarks.filtering``) measures filters over seeds on a model that gets most
answers right; this one asks the same question where the model is weak (avg@8 ~10%) and its
pseudo-labels are mostly wrong. Both runs use ``benchmarks/configs/cpu-smollm2-135m-mawps-singleop.yaml``
with the vLLM sampler and one seed; the filtered run adds the filters below. Recorded per run: final
greedy / avg@8 / maj@8, tokens generated and trained, update steps, and wall seconds per stage
(sampling + scoring + update; evaluation excluded), with the filtered run's compute as a fraction of
plain's. Writes ``benchmarks/results/filters_smollm2.{json,md}``.

The plain run is the one ``benchmarks.smollm2_mawps`` makes (``--plain-dir`` reuses it). Usage:
``python -m benchmarks.filtering_smollm2 [--plain-dir runs/smollm2-mawps] [--work-dir runs/filters-smollm2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from benchmarks import provenance

RESULTS = Path(__file__).parent / "results"
CONFIG = Path(__file__).parent / "configs" / "cpu-smollm2-135m-mawps-singleop.yaml"
# A weak model's vote is unreliable where few rollouts agree: drop groups whose majority holds fewer
# than 3 of the 8 votes (and unanimous ones, which carry no advantage), refill the batch from further
# prompts once (DAPO), and train on the 4 rollouts with the largest reward variance (PODS).
FILTERED = {"filters": [{"name": "consensus", "low": 0.375}, "zero_variance"], "max_refill_rounds": 1,
            "selector": "max_variance"}


def run(cfg_file: Path, out: Path, sampler: str) -> None:
    if (out / "summary.json").exists():
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "engine.cli.main", "run", str(cfg_file), "--sampler", sampler, "--output_dir", str(out),
           "--progress", "false"]
    if subprocess.run(cmd, env=env).returncode != 0:
        raise SystemExit(f"`{' '.join(cmd[2:])}` failed")


def collect(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    c = summary["compute"]
    return {"final": {k: v for k, v in summary["after"].items() if k.startswith("accuracy/")},
            "before": {k: v for k, v in summary["before"].items() if k.startswith("accuracy/")},
            "steps": c["steps"], "tokens_generated": c["tokens/generated"], "tokens_trained": c["tokens/trained"],
            "seconds": {"sample": c["time/generate_s"], "score": c["time/reward_s"], "update": c["time/update_s"]},
            "label_accuracy_mean": summary["telemetry"].get("label_accuracy", {}).get("mean")}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plain-dir", type=Path, default=Path("runs/smollm2-mawps"))
    ap.add_argument("--work-dir", type=Path, default=Path("runs/filters-smollm2"))
    ap.add_argument("--sampler", default="vllm", choices=["vllm", "hf"])
    args = ap.parse_args(argv)
    record = provenance.collect(__file__, argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    run(CONFIG, args.plain_dir, args.sampler)
    filtered_cfg = args.work_dir / "filtered.yaml"
    filtered_cfg.write_text(yaml.safe_dump({**yaml.safe_load(CONFIG.read_text()), **FILTERED}, sort_keys=False))
    run(filtered_cfg, args.work_dir / "filtered", args.sampler)
    plain, filtered = collect(args.plain_dir), collect(args.work_dir / "filtered")
    for r in (plain, filtered):
        r["tokens"] = r["tokens_generated"] + r["tokens_trained"]
        r["wall_s"] = sum(r["seconds"].values())
    ratio = {"tokens": filtered["tokens"] / plain["tokens"], "wall_s": filtered["wall_s"] / plain["wall_s"]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "filters_smollm2.json").write_text(json.dumps(
        {"provenance": provenance.finish(record), "config": str(CONFIG.name), "filtered_overrides": FILTERED, "sampler": args.sampler, "plain": plain,
         "filtered": filtered, "filtered_over_plain": ratio}, indent=2))
    keys = list(plain["final"])
    head = ["run", *[k.removeprefix("accuracy/") for k in keys], "steps", "tokens generated", "tokens trained",
            "seconds (sample+score+update)"]
    lines = ["# SmolLM2-135M on MAWPS SingleOp (first 32): plain TTRL vs filtered, one seed", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in (("before (both)", None), ("plain", plain), ("filtered", filtered)):
        if r is None:
            lines.append("| before (both) | " + " | ".join(f"{100 * plain['before'][k]:.1f}" for k in keys) + " | | | | |")
            continue
        lines.append(f"| {name} | " + " | ".join(f"{100 * r['final'][k]:.1f}" for k in keys)
                     + f" | {r['steps']} | {r['tokens_generated']:,} | {r['tokens_trained']:,} | {r['wall_s']:.0f} |")
    lines += ["", f"Filtered = `{json.dumps(FILTERED)}`. Its compute as a fraction of plain's: "
                  f"{ratio['tokens']:.2f}x tokens (generated + trained), {ratio['wall_s']:.2f}x seconds. "
                  f"{args.sampler} sampler, seed 42.", "", provenance.footer(record)]
    (RESULTS / "filters_smollm2.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
