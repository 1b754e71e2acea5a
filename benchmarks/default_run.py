"""Benchmark (the headline): the default command, `ttrl run` with no arguments, over 5 seeds.

Seed 42 is the default command itself (TRL's default seed, which ``ttrl run`` keeps): it runs with no
``--seed`` at all, and the run's saved config must say 42. Four more seeds (0-3) show how much of a
gain is the seed's. Each run is the real command in a subprocess; the first goes into an empty model
cache, so whatever a first ``ttrl run`` does before training (finding or building the demo model) is
inside its wall time. Each run gets one thread by default (``--threads``), so that a shared machine's
load slows it in proportion rather than by OpenMP spin-waiting (threads_per_run in the provenance).

Writes ``benchmarks/results/default_run.json`` and ``default_run.md``: greedy / avg@16 / maj@16 /
pass@16 before and after per seed; their mean, the worst seed (smallest greedy gain) and the spread of
the gains (min-max, and the sample standard deviation over seeds); and whether the project's target, a
greedy gain of at least 10 points, holds on the mean. Usage: ``python -m benchmarks.default_run
[--seeds 42 0 1 2 3] [-- extra ttrl run options]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from benchmarks import provenance

RESULTS = Path(__file__).parent / "results"
KEYS = ("accuracy/greedy", "accuracy/avg@16", "accuracy/maj@16", "accuracy/pass@16")
COMPUTE = ("tokens/generated", "tokens/trained", "steps", "time/total_s", "time/generate_s", "time/reward_s", "time/update_s", "time/eval_s")
DEFAULT_SEED = 42           # `ttrl run`'s seed when none is given (GRPOConfig's default)
GREEDY_TARGET_POINTS = 10.0  # the project's target: TTRL lifts greedy accuracy by >= 10 points


def run_seed(seed: int, cache: Path, out: Path, extra: list[str], threads: int | None) -> dict:
    """One `ttrl run` (no ``--seed`` for the default seed: the default command exactly) and its figures.

    A finished run already in ``out`` (``--work-dir``) is read, not re-run: ``reused``, and no wall minutes.
    """
    seed_args = [] if seed == DEFAULT_SEED else ["--seed", str(seed)]
    reused = (out / "summary.json").exists()
    if not reused:
        shutil.rmtree(out, ignore_errors=True)  # an interrupted run: start it afresh
    wall = None if reused else run_command(seed_args, cache, out, extra, threads)
    used = yaml.safe_load((out / "config.yaml").read_text())
    used_seed = used.get("seed", used.get("grpo", {}).get("seed"))
    if used_seed != seed:
        raise SystemExit(f"seed {seed}: the run's config.yaml says seed {used_seed}")
    summary = json.loads((out / "summary.json").read_text())
    before = {k: summary["before"][k] for k in KEYS}
    after = {k: summary["after"][k] for k in KEYS}
    return {"seed": seed, "command": " ".join(["ttrl", "run", *seed_args, *extra]), "reused": reused,
            "minutes": None if wall is None else wall / 60, "before": before, "after": after,
            "gain_points": {k: 100 * (after[k] - before[k]) for k in KEYS},
            "compute": {k: summary["compute"][k] for k in COMPUTE}}


def run_command(seed_args: list[str], cache: Path, out: Path, extra: list[str], threads: int | None) -> float:
    """Run `ttrl run` into ``out``; its wall seconds."""
    env = {**os.environ, "TTRL_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "engine.cli.main", "run", *seed_args, "--output_dir", str(out),
                           "--progress", "false", *extra], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"`ttrl run {' '.join(seed_args)}` failed:\n{proc.stderr[-4000:]}")
    return wall


def spread(values: list[float]) -> dict:
    """Mean, min, max and sample standard deviation (0 for one value)."""
    return {"mean": statistics.mean(values), "min": min(values), "max": max(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarize(rows: list[dict]) -> dict:
    """Means, the worst seed, the spread of the gains and the greedy-target verdict."""
    mean = {side: {k: statistics.mean(r[side][k] for r in rows) for k in KEYS} for side in ("before", "after")}
    gains = {k: spread([r["gain_points"][k] for r in rows]) for k in KEYS}
    worst = min(rows, key=lambda r: r["gain_points"]["accuracy/greedy"])
    greedy = gains["accuracy/greedy"]
    return {
        "mean": mean,
        "gain_points": gains,
        "worst_seed": {"seed": worst["seed"], "before": worst["before"], "after": worst["after"],
                       "gain_points": worst["gain_points"]},
        "greedy_target": {"points": GREEDY_TARGET_POINTS, "mean_gain_points": greedy["mean"],
                          "holds_on_mean": greedy["mean"] >= GREEDY_TARGET_POINTS,
                          "seeds_meeting": sum(r["gain_points"]["accuracy/greedy"] >= GREEDY_TARGET_POINTS
                                               for r in rows),
                          "seeds": len(rows)},
        "final_avg16_minus_base_maj16_points": 100 * (mean["after"]["accuracy/avg@16"]
                                                      - mean["before"]["accuracy/maj@16"]),
        # wall minutes of the first run (None when it was reused from --work-dir); the engine's own
        # clock (training + evaluation, time/total_s) for every run
        "minutes": {"first_run_empty_cache": rows[0]["minutes"],
                    "engine_mean": statistics.mean(r["compute"]["time/total_s"] for r in rows) / 60},
    }


def markdown(result: dict) -> str:
    rows, s = result["seeds"], result["summary"]
    pct = lambda side, k, r: f"{100 * r[side][k]:.1f}"  # noqa: E731
    lines = ["| seed | greedy before → after (gain) | avg@16 before → after | maj@16 before → after "
             "| pass@16 before → after | minutes (engine clock) |", "|---|---|---|---|---|---:|"]
    for r in rows:
        label = f"{r['seed']} (default)" if r["seed"] == DEFAULT_SEED else str(r["seed"])
        lines.append(f"| {label} | {pct('before', KEYS[0], r)} → {pct('after', KEYS[0], r)} "
                     f"({r['gain_points'][KEYS[0]]:+.1f}) | "
                     + " | ".join(f"{pct('before', k, r)} → {pct('after', k, r)}" for k in KEYS[1:])
                     + f" | {r['compute']['time/total_s'] / 60:.2f} |")
    m = s["mean"]
    lines.append(f"| **mean** | {100 * m['before'][KEYS[0]]:.1f} → {100 * m['after'][KEYS[0]]:.1f} "
                 f"({s['gain_points'][KEYS[0]]['mean']:+.1f}) | "
                 + " | ".join(f"{100 * m['before'][k]:.1f} → {100 * m['after'][k]:.1f}" for k in KEYS[1:])
                 + f" | {s['minutes']['engine_mean']:.2f} |")
    g, w, t = s["gain_points"], s["worst_seed"], s["greedy_target"]
    lines += ["", "| gain (points) | mean | worst seed | min – max | std over seeds |", "|---|---:|---:|---:|---:|"]
    for k in KEYS:
        lines.append(f"| {k.removeprefix('accuracy/')} | {g[k]['mean']:+.1f} | {w['gain_points'][k]:+.1f} | "
                     f"{g[k]['min']:+.1f} – {g[k]['max']:+.1f} | {g[k]['std']:.1f} |")
    verdict = "holds" if t["holds_on_mean"] else "does NOT hold"
    first = s["minutes"]["first_run_empty_cache"]
    load = result["provenance"]["load_average_start"][0]
    lines += ["", f"Worst seed (smallest greedy gain): {w['seed']}. Greedy target (+{t['points']:.0f} points) "
                  f"{verdict} on the mean ({t['mean_gain_points']:+.1f}); {t['seeds_meeting']} of {t['seeds']} "
                  f"seeds meet it. Final avg@16 minus base maj@16 (mean): "
                  f"{s['final_avg16_minus_base_maj16_points']:+.1f} points. First run (empty model cache): "
                  + (f"{first:.2f} min wall." if first is not None else "wall time not measured (reused run).")
                  + f" Minutes are one thread per run under a load average of {load:.1f} at the start: "
                  "timings from a shared machine, not the command's speed on a free one.", "",
              provenance.footer(result["provenance"])]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[DEFAULT_SEED, 0, 1, 2, 3])
    ap.add_argument("--threads", type=int, default=1,
                    help="OMP_NUM_THREADS of each run (0: torch's default). On a shared machine two threads spin-wait "
                         "for each other: a 0.5-minute run took over 10 here under a load of 4, one thread does not")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time after the first (which goes alone)")
    ap.add_argument("--work-dir", help="keep run directories (and the model cache) here; finished runs are reused")
    ap.add_argument("extra", nargs="*", help="extra `ttrl run` options, after --")
    args = ap.parse_args(argv)
    record = provenance.collect(__file__, argv, threads_per_run=args.threads or None, parallel_runs=args.jobs)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="ttrl-bench-"))
    cache = work / "cache"  # empty at first: the first seed pays for whatever a first run does before training

    def one(seed: int) -> dict:
        r = run_seed(seed, cache, work / f"seed{seed}", args.extra, args.threads)
        print(f"seed {seed}: " + "  ".join(f"{k[9:]} {100 * r['before'][k]:.1f}->{100 * r['after'][k]:.1f}"
                                          for k in KEYS) + ("  (reused)" if r["reused"] else ""), flush=True)
        return r

    rows = [one(args.seeds[0])]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows += list(pool.map(one, args.seeds[1:]))
    result = {"provenance": provenance.finish(record), "default_seed": DEFAULT_SEED, "seeds": rows,
              "summary": summarize(rows)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "default_run.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "default_run.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
