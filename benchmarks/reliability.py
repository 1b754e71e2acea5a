"""Benchmark: what checkpoints cost, and whether a long run's memory stays flat.

One real `ttrl run` on the demo model for 200 steps (50 episodes of 4 steps; the demo's own settings
otherwise), checkpointing every ``--save_every`` steps and at every episode end, with each metrics row
recording the process's resident memory. Reported:

- checkpoint cost: seconds and MB per save, and a save's seconds as a fraction of a mean step
  (sampling + scoring + update), from the run's own ``summary.json``;
- the memory curve: resident MB at every step, and its growth from the end of warm-up (step 20) to the
  last step, in MB and per 100 steps.

Writes ``benchmarks/results/reliability.json`` and ``reliability.md``. Usage:
``python -m benchmarks.reliability [--steps 200] [--save_every 10]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import provenance

RESULTS = Path(__file__).parent / "results"
WARMUP = 20


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200, help="update steps (4 per demo episode)")
    ap.add_argument("--save_every", type=int, default=10)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    record = provenance.collect(__file__, argv)
    episodes = max(1, args.steps // 4)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "engine.cli.main", "run", "--episodes", str(episodes), "--save_every",
               str(args.save_every), "--output_dir", str(run_dir), "--progress", "false"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"the run failed:\n{proc.stderr[-4000:]}")
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        summary = json.loads((run_dir / "summary.json").read_text())
    trained = [r for r in rows if not r.get("update/skipped")]
    step_s = sum(r["time/generate_s"] + r["time/reward_s"] + r["time/update_s"] for r in trained) / len(trained)
    saves = summary["checkpoints"]
    per_save = saves["seconds"] / saves["count"]
    rss = [r["memory/rss_mb"] for r in rows]
    warm = rss[min(WARMUP, len(rss) - 1)]
    growth = rss[-1] - warm
    steps_after = max(1, len(rss) - 1 - min(WARMUP, len(rss) - 1))
    result = {
        "provenance": provenance.finish(record),
        "command": " ".join(["ttrl", *cmd[3:]]).replace(str(run_dir), "RUN_DIR"),
        "steps": len(rows), "wall_s": wall,
        "checkpoint": {"saves": saves["count"], "seconds_per_save": per_save, "mb_per_save": saves["mb"],
                       "mean_step_s": step_s, "save_fraction_of_step": per_save / step_s,
                       "overhead_fraction_of_run": saves["seconds"] / sum(
                           r["time/generate_s"] + r["time/reward_s"] + r["time/update_s"] for r in trained)},
        "memory": {"rss_mb_per_step": rss, "rss_mb_at_warmup": warm, "rss_mb_last": rss[-1],
                   "rss_mb_peak": max(rss), "growth_mb_after_warmup": growth,
                   "growth_mb_per_100_steps": 100 * growth / steps_after,
                   "growth_fraction": growth / warm},
        "after": {k: v for k, v in summary["after"].items() if k.startswith("accuracy/")},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reliability.json").write_text(json.dumps(result, indent=2))
    c, m = result["checkpoint"], result["memory"]
    table = "\n".join([
        "# Reliability: checkpoint cost and memory over a long run", "",
        f"`{result['command']}` (demo model, full fine-tuning; {result['provenance']['cpu_count']} CPU cores)", "",
        "| measure | value |", "|---|---:|",
        f"| steps | {len(rows)} |",
        f"| checkpoints written | {c['saves']} |",
        f"| seconds per checkpoint | {c['seconds_per_save']:.3f} |",
        f"| MB per checkpoint | {c['mb_per_save']:.2f} |",
        f"| one checkpoint / one step | {100 * c['save_fraction_of_step']:.1f}% |",
        f"| all checkpoints / all step time | {100 * c['overhead_fraction_of_run']:.1f}% |",
        f"| resident memory after warm-up (step {WARMUP}) | {m['rss_mb_at_warmup']:.0f} MB |",
        f"| resident memory at the last step | {m['rss_mb_last']:.0f} MB (peak {m['rss_mb_peak']:.0f}) |",
        f"| growth after warm-up | {m['growth_mb_after_warmup']:+.1f} MB ({100 * m['growth_fraction']:+.1f}%; "
        f"{m['growth_mb_per_100_steps']:+.1f} MB per 100 steps) |", "",
        provenance.footer(result["provenance"]), "",
    ])
    (args.out / "reliability.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
