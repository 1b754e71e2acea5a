"""Benchmark: the embedded default (`ttrl run` with no arguments) over 3 seeds.

Runs the real command in a subprocess per seed, the first one into an empty model cache so the
first-time demo-model build is inside its wall time, and writes
``benchmarks/results/default_run.json`` and ``default_run.md``: before/after greedy, avg@16 and
maj@16 per seed and averaged, and minutes per run. Usage: ``python -m benchmarks.default_run``.
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

RESULTS = Path(__file__).parent / "results"
KEYS = ("accuracy/greedy", "accuracy/avg@16", "accuracy/maj@16", "accuracy/pass@16")


def run_seed(seed: int, cache: Path, out: Path, extra: list[str]) -> dict:
    env = {**os.environ, "TTRL_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "run", "--seed", str(seed), "--output_dir", str(out),
                           "--progress", "false", *extra], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"seed {seed} failed:\n{proc.stderr[-4000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {"seed": seed, "minutes": wall / 60, "before": {k: summary["before"][k] for k in KEYS},
            "after": {k: summary["after"][k] for k in KEYS}, "compute": summary["compute"]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("extra", nargs="*", help="extra `ttrl run` options, after --")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ttrl-bench-"))
    cache = work / "cache"  # empty: the first seed pays for the demo-model build
    rows = []
    for i, seed in enumerate(args.seeds):
        row = run_seed(seed, cache, work / f"seed{seed}", args.extra)
        row["includes_model_build"] = i == 0
        rows.append(row)
        print(f"seed {seed}: " + "  ".join(f"{k[9:]} {100 * row['before'][k]:.1f}->{100 * row['after'][k]:.1f}"
                                          for k in KEYS) + f"  ({row['minutes']:.2f} min)", flush=True)
    mean = {side: {k: sum(r[side][k] for r in rows) / len(rows) for k in KEYS} for side in ("before", "after")}
    result = {
        "command": "ttrl run  (per seed: --seed S)",
        "machine": f"{os.cpu_count()} CPU cores",
        "seeds": rows,
        "mean": mean,
        "gain_points": {k: 100 * (mean["after"][k] - mean["before"][k]) for k in KEYS},
        "final_avg16_minus_base_maj16_points": 100 * (mean["after"]["accuracy/avg@16"] - mean["before"]["accuracy/maj@16"]),
        "minutes": {"first_run_with_build": rows[0]["minutes"], "mean": sum(r["minutes"] for r in rows) / len(rows)},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "default_run.json").write_text(json.dumps(result, indent=2))
    lines = ["| seed | greedy before → after | avg@16 before → after | maj@16 before → after | minutes |",
             "|---|---|---|---|---:|"]
    for r in rows + [{"seed": "mean", "before": mean["before"], "after": mean["after"],
                      "minutes": result["minutes"]["mean"]}]:
        cells = [f"{100 * r['before'][k]:.1f} → {100 * r['after'][k]:.1f}" for k in KEYS[:3]]
        lines.append(f"| {r['seed']} | " + " | ".join(cells) + f" | {r['minutes']:.2f} |")
    lines.append("")
    lines.append(f"Final avg@16 minus base maj@16: {result['final_avg16_minus_base_maj16_points']:+.1f} points. "
                 f"First run (demo-model build included): {result['minutes']['first_run_with_build']:.2f} min.")
    (RESULTS / "default_run.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
