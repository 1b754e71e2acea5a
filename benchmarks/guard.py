"""Benchmark: collapse guards on a failure their thresholds were not read from (issue 26).

``flip_alarm``'s threshold (0.1) and ``flip_collapse``'s (``filters.guard``) were read off ``demo-systematic``'s
plain runs (and the clean demo's) in ``benchmarks/results/collapse.json``. Here they are reported, unchanged, on
a second failure: ``demo-overwrite`` (``engine.data.demo``: another wrong rule, ``y`` written over the units
digit, on another class of prompts, the sums that do not carry), beside ``demo-systematic`` (the tuning failure)
and the clean demo on 10 seeds none of the thresholds saw (300-309: false stops). Every run is the demo preset's
12 episodes (48 steps), evaluated every ``EVAL_EVERY`` steps.

Configurations, and where each figure comes from:

- ``plain``: TTRL. Each plain run carries the ``watch`` guard with ``--guard_score anchor_accuracy --anchor FILE``
  (``PLAIN``): it never changes a step and the anchors are never trained on, so the run is plain TTRL and its
  last evaluated step (48) is plain's result.
- ``anchor_guard``: the same run's own choice: the snapshot (every 4 steps) with the best greedy accuracy on the
  16 labeled anchors (``benchmarks.influence_signal.write_anchors``), read from the periodic evaluation of that step.
- ``flip_alarm`` (burst: a 4-step mean flip rate above 0.1) and ``flip_collapse`` (collapse: after such a burst,
  the 4-step mean falls to 0.35 x its peak while >= 3% of prompts lock in on a new answer): each guard function
  is replayed on the plain run's own label-free rows (``vote/*``, ``guard/*``: what ``engine.rundir.guard`` hands
  it). Until it stops, a guarded run *is* its seed's plain run step for step (collapse.md checked this on 30
  runs), so the stop step is the one the replay finds, and the run ends on the latest snapshot (every 4 steps, all
  kept: ``guard_keep`` 12) at or before the step its rollback names; its result is that step's periodic
  evaluation. ``REPLAYED`` holds the options of the equivalent real runs.
- ``ttrl_guard``: a real run of TTRL-Guard's label-free levers as this project has them (``filters.guard.ttrl_guard``:
  skip groups whose majority flipped since their last visit; pause, and stop after 3 paused steps, when the flip
  rate exceeds 0.5; stop when more than 20% of prompts are locked in on a new answer). Its result is its last
  evaluated step (no rollback). TTRL-Guard's minority-answer bonus and flip-rate reward scaling are not in the
  engine (a per-group reward scale cancels in TRL's per-group advantage normalisation: ``filters.guard``).

Per run: the curve of periodic evaluations (the base is step 0), the best checkpoint in hindsight (the best
evaluated step of the run's own curve; for the replays and the anchor guard, the plain run's), whether the guard
stopped and the step it ended on, and the two label-free signals of the plain runs: the burst (the highest 4-step
mean flip rate) and the collapse after it (``signals_of``: how far and how soon the flip rate falls after the
peak, the locked-in share then, and where ``flip_collapse`` stops). Targets (issue 26): on the held-out failure, a guard's result within 1 point
of the best in hindsight on >= 4 of 5 seeds; at most 1 stop in 10 clean runs.

Writes benchmarks/results/guard.{json,md}. Usage: ``python -m benchmarks.guard [--jobs 2] [--work-dir DIR]``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from benchmarks import provenance
from benchmarks.filtering import run_all, work_dir
from benchmarks.influence_signal import write_anchors
from engine.rundir.guard import label_free
from filters.guard import flip_alarm, flip_collapse
from filters.vote_history import VoteHistory

RESULTS = Path(__file__).parent / "results"
TARGET, GREEDY = "accuracy/avg@16", "accuracy/greedy"
EVAL_EVERY = SNAPSHOT_EVERY = 4   # one episode of the demo preset: every snapshot step is evaluated
WINDOW = 4                        # flip_alarm's and flip_collapse's window (their defaults)
SETTINGS: dict[str, dict] = {
    "systematic": {"model": "demo-systematic", "data": "demo-systematic"},   # the tuning failure
    "overwrite": {"model": "demo-overwrite", "data": "demo-overwrite"},      # held out: nothing tuned on it
    "clean": {},
}
SEEDS = {"systematic": [0, 1, 2, 3, 4], "overwrite": [0, 1, 2, 3, 4], "clean": list(range(300, 310))}
PLAIN = {"guard": "watch", "guard_snapshot_every": SNAPSHOT_EVERY, "guard_keep": 12, "guard_score": "anchor_accuracy"}
RUNS: dict[str, dict] = {"plain": PLAIN, "ttrl_guard": {"guard": "ttrl_guard"}}
# the real runs the replays stand for (with the same --anchor file: evaluated beside the test prompts, never trained on)
REPLAYED: dict[str, dict] = {
    "flip_alarm": {"guard": "flip_alarm", "guard_snapshot_every": SNAPSHOT_EVERY, "guard_keep": 12, "guard_score": "none"},
    "flip_collapse": {"guard": "flip_collapse", "guard_snapshot_every": SNAPSHOT_EVERY, "guard_keep": 12,
                      "guard_score": "none"},
}
POLICIES = {"flip_alarm": flip_alarm, "flip_collapse": flip_collapse}
CONFIGS = ("plain", "anchor_guard", "flip_alarm", "flip_collapse", "ttrl_guard")


def curve(out: Path, before: dict) -> list[dict]:
    """Step 0 (the base) and every evaluated step: avg@16 and greedy."""
    points = [{"step": 0, "avg16": before[TARGET], "greedy": before[GREEDY]}]
    for row in rows_of(out):
        if TARGET in row:
            points.append({"step": row["step"], "avg16": row[TARGET], "greedy": row[GREEDY]})
    return points


def rows_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def replay(policy, rows: list[dict]) -> dict:
    """``policy`` screening the run's label-free rows as ``engine.rundir.guard.RunGuard.screen`` would: the
    first stop, the step it names for the rollback, and the snapshot the run would end on."""
    history = []
    for row in rows:
        signals = label_free(row)
        verdict = policy(signals, [], VoteHistory(), history)
        if verdict.action == "stop":
            step = int(row["step"])
            target = step - verdict.rollback_steps + 1 if verdict.rollback_steps else step
            return {"stopped": True, "stop_step": step, "chosen_step": target // SNAPSHOT_EVERY * SNAPSHOT_EVERY,
                    "reason": verdict.reason}
        history.append(signals)
    return {"stopped": False, "stop_step": None, "chosen_step": None, "reason": ""}


FALL = 0.35  # flip_collapse's default: a 4-step mean at or below this share of the peak counts as fallen


def signals_of(rows: list[dict]) -> dict:
    """The burst: the highest 4-step mean flip rate (and the step ending it). The collapse after it: the mean
    flip rate over the 8 revisiting steps after the peak window as a share of the peak, the first step whose
    4-step mean fell to ``FALL`` x the peak, the locked-in share there, and the first step ``flip_collapse``
    stopped at (its lock-in condition too)."""
    flips = [(int(r["step"]), r["vote/flip_rate"], r.get("vote/locked_in", 0.0)) for r in rows
             if not math.isnan(r.get("vote/flip_rate", math.nan))]
    means = [(flips[j + WINDOW - 1][0], statistics.mean(f for _, f, _ in flips[j:j + WINDOW]), flips[j + WINDOW - 1][2])
             for j in range(len(flips) - WINDOW + 1)]
    if not means:
        return {"burst": None, "burst_step": None, "after_burst_ratio": None, "fall_step": None,
                "locked_in_at_fall": None, "collapse_step": None, "locked_in_last": None}
    peak_at = max(range(len(means)), key=lambda j: means[j][1])
    peak = means[peak_at][1]
    after = [f for _, f, _ in flips[peak_at + WINDOW:peak_at + WINDOW + 8]]
    fallen = [(step, locked) for step, m, locked in means[peak_at + 1:] if m <= FALL * peak]
    return {"burst": peak, "burst_step": means[peak_at][0],
            "after_burst_ratio": statistics.mean(after) / peak if after and peak > 0 else None,
            "fall_step": fallen[0][0] if fallen else None, "locked_in_at_fall": fallen[0][1] if fallen else None,
            "collapse_step": replay(flip_collapse, rows)["stop_step"], "locked_in_last": rows[-1].get("vote/locked_in")}


def result_at(points: list[dict], step: int | None) -> dict:
    """The periodic evaluation of ``step`` (the last evaluated step when None); refuses a step not evaluated."""
    at = {p["step"]: p for p in points}
    if step is None:
        return points[-1]
    if step not in at:
        raise SystemExit(f"step {step} was not evaluated (evaluated: {sorted(at)})")
    return at[step]


def records(setting: str, config: str, seed: int, out: Path) -> list[dict]:
    """The configurations one run stands for, each with its result, its best in hindsight and its stop."""
    summary = json.loads((out / "summary.json").read_text())
    points, rows = curve(out, summary["before"]), rows_of(out)
    best = max(points, key=lambda p: p["avg16"])
    base = {"setting": setting, "seed": seed, "best_step": best["step"], "best_avg16": best["avg16"], "curve": points}

    def record(name: str, chosen: int | None, stopped: bool, stop_step, reason: str) -> dict:
        p = result_at(points, chosen)
        return {**base, "config": name, "chosen_step": p["step"], "final_avg16": p["avg16"], "final_greedy": p["greedy"],
                "stopped": stopped, "stop_step": stop_step, "reason": reason,
                "within_1_point_of_best": best["avg16"] - p["avg16"] <= 0.01}

    if config == "ttrl_guard":
        guard = summary.get("guard") or {}
        return [record("ttrl_guard", None, bool(guard.get("stopped")), None, guard.get("reason") or "")]
    guard = summary["guard"]
    chosen = (guard.get("chosen") or {}).get("step")
    out_records = [{**record("plain", None, False, None, ""), "signals": signals_of(rows)},
                   record("anchor_guard", chosen, False, None, guard.get("reason") or "")]
    for name, policy in POLICIES.items():
        r = replay(policy, rows)
        out_records.append(record(name, r["chosen_step"], r["stopped"], r["stop_step"], r["reason"]))
    return out_records


def summarize(runs: list[dict]) -> dict:
    table = {}
    for setting in dict.fromkeys(r["setting"] for r in runs):
        plain = {r["seed"]: r for r in runs if r["setting"] == setting and r["config"] == "plain"}
        rows = {}
        for config in CONFIGS:
            rs = sorted((r for r in runs if r["setting"] == setting and r["config"] == config), key=lambda r: r["seed"])
            if not rs:
                continue
            finals = [r["final_avg16"] for r in rs]
            rows[config] = {
                "seeds": [r["seed"] for r in rs],
                "final_avg16": statistics.mean(finals), "worst_avg16": min(finals),
                "std_avg16": statistics.stdev(finals) if len(finals) > 1 else 0.0,
                "final_greedy": statistics.mean(r["final_greedy"] for r in rs),
                "best_avg16": statistics.mean(r["best_avg16"] for r in rs),
                "within_1_point_of_best": sum(r["within_1_point_of_best"] for r in rs),
                "stopped": sum(r["stopped"] for r in rs),
                "chosen_steps": [r["chosen_step"] for r in rs],
                "minus_plain_points": [100 * (r["final_avg16"] - plain[r["seed"]]["final_avg16"]) for r in rs],
            }
        sig = [plain[s]["signals"] for s in sorted(plain)]
        table[setting] = {"configs": rows, "signals": {
            "burst": [x["burst"] for x in sig], "burst_step": [x["burst_step"] for x in sig],
            "after_burst_ratio": [x["after_burst_ratio"] for x in sig], "fall_step": [x["fall_step"] for x in sig],
            "locked_in_at_fall": [x["locked_in_at_fall"] for x in sig], "collapse_step": [x["collapse_step"] for x in sig],
            "locked_in_last": [x["locked_in_last"] for x in sig],
            "greedy_fell_while_avg16_rose": [greedy_fell(plain[s]["curve"]) for s in sorted(plain)]}}
    return table


def targets(table: dict) -> dict:
    """Per guard configuration: the held-out failure's within-1-point count and the clean runs' stops."""
    out = {}
    for config in CONFIGS[1:]:
        held = table.get("overwrite", {}).get("configs", {}).get(config)
        clean = table.get("clean", {}).get("configs", {}).get(config)
        out[config] = {"held_out_within_1_point": held["within_1_point_of_best"] if held else None,
                       "held_out_runs": len(held["seeds"]) if held else None,
                       "clean_stops": clean["stopped"] if clean else None,
                       "clean_runs": len(clean["seeds"]) if clean else None,
                       "met": bool(held and clean and 5 * held["within_1_point_of_best"] >= 4 * len(held["seeds"])
                                   and 10 * clean["stopped"] <= len(clean["seeds"]))}
    return out


def greedy_fell(points: list[dict]) -> bool:
    """Whether the run ended with greedy more than 1 point below the base while avg@16 ended more than 1 point
    above it (the failure a guard reading avg@16-like signals would miss)."""
    base, last = points[0], points[-1]
    return base["greedy"] - last["greedy"] > 0.01 and last["avg16"] - base["avg16"] > 0.01


def fmt(x, spec=".2f") -> str:
    return "—" if x is None else format(x, spec)


def markdown(table: dict) -> str:
    lines = ["### Collapse guards on the tuning failure, a held-out failure and the clean demo", "",
             "avg@16 in points; a guard's result is the periodic evaluation of the step it ended on. Best = best "
             "evaluated step in hindsight (base included) of the run it follows. Δ = result − plain's (last step), same "
             "seed. flip_alarm and flip_collapse are replays of the guard on the plain run's label-free rows (see the "
             "script's docstring); anchor_guard is the plain run's own snapshot choice; ttrl_guard is a separate run. "
             "Thresholds were chosen on demo-systematic (and clean seeds 0-4, 200-204); overwrite and clean seeds "
             "300-309 are held out.", "",
             "| setting | config | final mean (worst) ± std | greedy | best in hindsight | within 1 pt of best | stopped | "
             "steps ended on | Δ vs plain per seed |", "|---|---|---:|---:|---:|---:|---:|---|---|"]
    for setting, s in table.items():
        for config, row in s["configs"].items():
            n = len(row["seeds"])
            lines.append(f"| {setting} | {config} | {100 * row['final_avg16']:.1f} ({100 * row['worst_avg16']:.1f}) ± "
                         f"{100 * row['std_avg16']:.1f} | {100 * row['final_greedy']:.1f} | {100 * row['best_avg16']:.1f} | "
                         f"{row['within_1_point_of_best']}/{n} | {row['stopped']}/{n} | "
                         f"{', '.join(map(str, row['chosen_steps']))} | "
                         + ("—" if config == "plain" else ", ".join(f"{d:+.1f}" for d in row["minus_plain_points"])) + " |")
    lines += ["", "Targets (issue 26), per guard: on the held-out failure (overwrite) within 1 point of the best in "
              "hindsight on >= 4 of 5 seeds; at most 1 stop in the 10 clean runs.", "",
              "| guard | overwrite: within 1 pt | clean: stops | both met |", "|---|---:|---:|---|"]
    for config, t in targets(table).items():
        lines.append(f"| {config} | {fmt(t['held_out_within_1_point'], 'd')}/{fmt(t['held_out_runs'], 'd')} | "
                     f"{fmt(t['clean_stops'], 'd')}/{fmt(t['clean_runs'], 'd')} | {'yes' if t['met'] else 'no'} |")
    lines += ["", "Label-free signals of the plain runs, per seed: burst = highest 4-step mean flip rate (the step "
              "ending it); after/burst = mean flip rate over the 8 revisiting steps after the peak window / the peak; fall "
              "step = first step whose 4-step mean is <= 0.35 x the peak (the locked-in share there); collapse step = "
              "where flip_collapse stops (the fall, and >= 3% locked in, after a peak >= 0.1); locked-in share at the "
              "last step; runs whose greedy ended > 1 pt below the base while avg@16 ended > 1 pt above it.", "",
              "| setting | burst (step) | after/burst | fall step (locked-in) | collapse step | locked-in at end | "
              "greedy fell, avg@16 rose |", "|---|---|---|---|---|---|---|"]
    for setting, s in table.items():
        g = s["signals"]
        lines.append(f"| {setting} | " + ", ".join(f"{fmt(b)} ({st})" for b, st in zip(g["burst"], g["burst_step"]))
                     + " | " + ", ".join(fmt(c) for c in g["after_burst_ratio"])
                     + " | " + ", ".join("—" if f is None else f"{f} ({fmt(x)})" for f, x in zip(g["fall_step"], g["locked_in_at_fall"]))
                     + " | " + ", ".join("—" if c is None else str(c) for c in g["collapse_step"])
                     + " | " + ", ".join(fmt(x) for x in g["locked_in_last"])
                     + f" | {sum(g['greedy_fell_while_avg16_rose'])}/{len(g['greedy_fell_while_avg16_rose'])} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    ap.add_argument("--work-dir", help="keep run directories here; finished runs found there are reused")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    ap.add_argument("--finished-only", action="store_true",
                    help="run nothing: write the results from the runs already finished in --work-dir (the rest are "
                         "listed under not_run)")
    args = ap.parse_args(argv)
    record = provenance.collect(__file__, argv, threads_per_run=1, parallel_runs=args.jobs)
    work = work_dir(args.work_dir, "ttrl-guard-")
    anchors = write_anchors(work / "anchors.jsonl")
    # plain first (it stands for four configurations), then ttrl_guard, the held-out failure first
    order = sorted(args.settings, key=["overwrite", "systematic", "clean"].index)
    jobs = [(f"{setting}-{name}", {**SETTINGS[setting], **RUNS[name], "anchor": str(anchors)}, seed)
            for name in args.runs for setting in order for seed in SEEDS[setting]]
    not_run = []
    if args.finished_only:
        not_run = [f"{name}-s{seed}" for name, _, seed in jobs if not (work / f"{name}-s{seed}" / "summary.json").exists()]
        jobs = [j for j in jobs if f"{j[0]}-s{j[2]}" not in not_run]
    run_all(jobs, work, args.jobs, EVAL_EVERY, "")
    runs = [r for name, _, seed in jobs for r in records(*name.split("-", 1), seed, work / f"{name}-s{seed}")]
    table = summarize(runs)
    result = {"provenance": provenance.finish(record), "settings": {k: SETTINGS[k] for k in args.settings},
              "seeds": {k: SEEDS[k] for k in args.settings}, "runs_configs": RUNS, "replayed": REPLAYED,
              "eval_every": EVAL_EVERY, "anchors": [{"prompt": a["prompt"], "answer": a["answer"]}
                                                         for a in map(json.loads, anchors.read_text().splitlines())],
              "summary": table, "targets": targets(table), "not_run": not_run, "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "guard.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(table)
    if not_run:
        md += f"\n\nNot run (no finished run directory): {', '.join(not_run)}."
    md += "\n\n" + provenance.footer(result["provenance"])
    (RESULTS / "guard.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
