"""Benchmark: where plain TTRL fails, and what protects it — the guard, the best filter, a random-reward control.

Issue 17's question: a model editing itself on its own pseudo-labels must be protected from the wrong
ones. On the clean demo the vote is right ~90% of the time and nothing needs protecting; errors that
vary between samples wash out in the vote. What hurts is a *systematic* error (TTRL-Guard, arXiv
2605.19444; the TTRL authors' rise-then-fall, arXiv 2603.08660): a class of prompts on which the model
is consistently wrong, so the majority is confidently wrong there and the update spreads it. Three
settings, each at the demo preset's prompt budget:

- ``systematic``: the demo variant whose pre-training taught one carry pattern wrongly
  (``engine.data.demo`` variants), where plain TTRL rises then falls;
- ``flipped``: the clean demo with 20% of pseudo-labels flipped (``benchmarks.noise``);
- ``clean``: the demo itself (what protection costs when nothing needs it).

Configurations: ``plain`` (TTRL), ``plain_b`` (plain on other seeds: the noise of every comparison),
``filter`` (``FILTER``: the best filter configuration found for wrong votes), ``random`` (``--reward
random``, the spurious-reward control of arXiv 2506.10947; it ignores the labels' noise, so ``flipped``
shows the clean runs) and ``flip_alarm`` (``ALARM``: the guard that stops a run when the majority answers
flip on more than 10% of revisited prompts over 4 steps and ends on the snapshot from before those steps;
until it stops, a run is its seed's plain run step for step, which the benchmark checks, so its "best in
hindsight" is the plain run's). ``guard`` is not a separate run: every plain run carries the ``watch`` guard
(``GUARD``), which never changes a step — it keeps weight snapshots every ``SNAPSHOT_EVERY`` steps and at
the end rolls back to the best snapshot by the label-free score — so a plain run's trajectory is plain
TTRL's, its last evaluated step is plain's result, and the step its guard chose is the guard's.

Measured per run: greedy / avg@16 / maj@16 every ``--eval-every`` steps (the curve; the base is step 0);
a run's result is its last evaluated step (the guard's: the step it chose), so every figure compared is a
periodic evaluation of the same kind; the final evaluation after a rollback is recorded beside it.
The guard's targets: its chosen checkpoint within 1 point of the best checkpoint in hindsight (the best
evaluated step of its own run's curve, the base included) on ≥ 4 of 5 seeds; on average ≥ 3 points above
plain's last checkpoint where plain declines; ≤ 1 point of cost on the clean demo. The filter's: ≥ 3
points above plain on ≥ 4 of 5 seeds where the vote is often wrong, within 1 point on the clean demo.
And whether the label-free flip rate tracks the labelled correct → wrong transitions: the Pearson
correlation over all steps of the plain runs (per setting, and pooled).

Writes benchmarks/results/collapse.{json,md,png}. Usage: ``python -m benchmarks.collapse [--seeds 0 1 2
3 4] [--jobs 2] [--work-dir DIR]`` (finished runs found in ``--work-dir`` are reused).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from benchmarks import provenance
from benchmarks.filtering import FINAL, TARGET, run_all, stats, work_dir

RESULTS = Path(__file__).parent / "results"
FLIP = 0.2
SNAPSHOT_EVERY = 4      # one episode of the demo preset (128 prompts / 32 per step)
GUARD = {"guard": "watch", "guard_snapshot_every": SNAPSHOT_EVERY, "guard_keep": 3}
# the alarm stops a run and ends on the snapshot before the alarming steps; "none": no score-based rollback
ALARM = {"guard": "flip_alarm", "guard_snapshot_every": SNAPSHOT_EVERY, "guard_keep": 3, "guard_score": "none"}
FILTER: dict = {"selector": "max_variance"}
SETTINGS: dict[str, dict] = {
    "systematic": {"model": "demo-systematic", "data": "demo-systematic"},
    "flipped": {},  # + NoisyMajorityVote per seed (below)
    "clean": {},
}
CONFIGS: dict[str, dict] = {
    "plain": GUARD,   # the guard only watches: these runs are plain TTRL, and the guard's choice is read from them
    "plain_b": {},
    "filter": FILTER,
    "random": {"reward": "random"},
    "flip_alarm": ALARM,
    # held out: the alarm's threshold (0.1) was read off the flip rates of the plain and plain_b runs above
    "plain_h": {},
    "flip_alarm_h": ALARM,
}
SEED_OFFSET = {"plain_b": 100, "plain_h": 200, "flip_alarm_h": 200}
PAIRED = {"flip_alarm": "plain", "flip_alarm_h": "plain_h"}  # an alarm run against the plain run of its seed


def overrides(setting: str, config: str, seed: int) -> dict:
    """The ``ttrl run`` options of one run: the setting's, then the configuration's."""
    cfg = {**SETTINGS[setting], **CONFIGS[config]}
    if setting == "flipped" and config != "random":
        cfg["reward"] = {"name": "benchmarks.noise:NoisyMajorityVote", "flip": FLIP, "seed": seed}
    return cfg


def jobs_for(seeds: list[int], settings=tuple(SETTINGS), configs=tuple(CONFIGS)) -> list[tuple[str, dict, int]]:
    """Every (run name, options, seed); random-reward runs on ``flipped`` are the clean ones (not re-run),
    and ``plain_b`` runs where the comparisons are the point (``systematic``; elsewhere plain's spread shows)."""
    jobs = []
    for setting in settings:
        for config in configs:
            if (config == "plain_b" and setting != "systematic") or (config.endswith("_h") and setting == "flipped"):
                continue
            if setting == "flipped" and config == "random":
                continue
            for s in seeds:
                seed = s + SEED_OFFSET.get(config, 0)
                jobs.append((f"{setting}-{config}", overrides(setting, config, seed), seed))
    return jobs


def curve(out: Path, before: dict) -> list[dict]:
    """Step 0 (the base) and every evaluated step: avg@16 (``avg16``) and the ``FINAL`` metrics."""
    points = [{"step": 0, "avg16": before[TARGET], **{k: before[k] for k in FINAL}}]
    for line in (out / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if TARGET in row:
            points.append({"step": row["step"], "avg16": row[TARGET], **{k: row[k] for k in FINAL}})
    return points


def steps_telemetry(out: Path) -> list[dict]:
    """Per step: flip rate (label-free) and the share of revisited prompts that went correct → wrong."""
    rows = []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        # after the first episode every sampled prompt is a revisit
        flip, to_wrong, revisited = (row.get("vote/flip_rate"), row.get("label/correct_to_wrong"),
                                     row.get("prompts/sampled"))
        if flip is not None and not math.isnan(flip) and to_wrong is not None and revisited:
            rows.append({"flip_rate": flip, "correct_to_wrong": to_wrong / revisited,
                         "locked_in": row.get("vote/locked_in")})
    return rows


def pearson(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 3 or statistics.pstdev(xs) == 0 or statistics.pstdev(ys) == 0:
        return None
    return statistics.correlation(xs, ys)


def describe(run: dict, out: Path) -> dict:
    """Add the curve, the guard's choice and the telemetry to ``run`` (from ``benchmarks.filtering``)."""
    summary = json.loads((out / "summary.json").read_text())
    points = curve(out, summary["before"])
    best = max(points, key=lambda p: p["avg16"])
    run.update(curve=points, best_step=best["step"], best_avg16=best["avg16"], final_eval=run["final"],
               final={k: points[-1][k] for k in FINAL}, telemetry=steps_telemetry(out))
    run["peak_minus_last"] = best["avg16"] - points[-1]["avg16"]
    guard = summary.get("guard")
    if guard:
        chosen = (guard.get("chosen") or {}).get("step")
        run["guard"] = {"chosen_step": chosen, "reason": guard.get("reason"), "rolled_back": bool(guard.get("rolled_back")),
                        "stopped": guard.get("stopped"),
                        "snapshots": [{"step": x["step"], "score": x["score"]} for x in guard.get("snapshots") or []]}
        if run["config"] in PAIRED and guard.get("rolled_back"):
            # the run ends on the snapshot it rolled back to: its result is that step's periodic evaluation
            at = {p["step"]: p for p in points}
            run["final"] = {k: at[chosen][k] for k in FINAL}
    # only the figures this benchmark reads (benchmarks.filtering.collect gathers more)
    keep = ("setting", "config", "seed", "reused", "final", "before", "tokens_generated", "tokens_trained", "curve", "best_step",
            "best_avg16", "final_eval", "telemetry", "peak_minus_last", "guard")
    return {k: run[k] for k in keep if k in run}


def guard_run(plain: dict) -> dict:
    """The guard's result from a plain run that carried it: the evaluated step it chose (its last step
    when it kept the final weights), beside the final evaluation of the weights it rolled back to."""
    at = {p["step"]: p for p in plain["curve"]}
    chosen = plain["guard"]["chosen_step"]
    if chosen not in at:  # no figure for the weights it chose: refuse rather than read another step's
        raise SystemExit(f"{plain['setting']} seed {plain['seed']}: the guard chose step {chosen}, which was not "
                         f"evaluated (evaluated: {sorted(at)}); evaluate every snapshot step (eval_every)")
    point = at[chosen]
    return {**plain, "config": "guard", "final": {k: point[k] for k in FINAL},
            "peak_minus_last": plain["best_avg16"] - point["avg16"],
            "within_1_point_of_best": plain["best_avg16"] - point["avg16"] <= 0.01}


def alarm_vs_plain(alarm: dict, plain: dict) -> dict:
    """The alarm run against its seed's plain run: the same trajectory until the stop (every evaluated
    step they share equal), and the chosen step within 1 point of the plain run's best in hindsight."""
    at = {p["step"]: p["avg16"] for p in plain["curve"]}
    shared = [p for p in alarm["curve"] if p["step"] in at]
    return {"same_as_plain_until_stop": all(abs(p["avg16"] - at[p["step"]]) < 1e-9 for p in shared),
            "within_1_point_of_best": plain["best_avg16"] - alarm["final"][TARGET] <= 0.01}


def summarize(runs: list[dict]) -> dict:
    """Per setting and configuration: final accuracy, the difference from plain, and the guard's targets."""
    out = {}
    for setting in SETTINGS:
        rs = [r for r in runs if r["setting"] == setting]
        plain = [r for r in rs if r["config"] == "plain"]
        if not plain:
            continue
        p = stats([r["final"][TARGET] for r in plain])
        table = {}
        for config in dict.fromkeys(r["config"] for r in rs):
            cs = [r for r in rs if r["config"] == config]
            a = stats([r["final"][TARGET] for r in cs])
            # an alarm run is compared with the plain run of its own seed (flip_alarm_h: plain_h's)
            partner = {r["seed"]: r for r in rs if r["config"] == PAIRED.get(config, "plain")}
            paired = [r["final"][TARGET] - partner[r["seed"]]["final"][TARGET] for r in cs if r["seed"] in partner]
            row = {
                "seeds": [r["seed"] for r in cs],
                "final": {k: stats([r["final"][k] for r in cs]) for k in FINAL},
                "before_avg16": statistics.mean(r["before"][TARGET] for r in cs),
                "peak_avg16": stats([r["best_avg16"] for r in cs]),
                "peak_minus_last_points": 100 * statistics.mean(r["peak_minus_last"] for r in cs),
                "minus_plain_points": 100 * (statistics.mean(paired) if config in PAIRED else a["mean"] - p["mean"]),
                "minus_plain_se_points": 100 * (statistics.stdev(paired) / math.sqrt(len(paired)) if config in PAIRED
                                                else math.sqrt(a["std"] ** 2 / len(cs) + p["std"] ** 2 / len(plain))),
                "worst_seed_minus_plain_points": 100 * min(paired) if paired else None,
                "seeds_3_points_above_plain": sum(d >= 0.03 for d in paired) if paired else None,
            }
            if config == "guard":
                row["guard"] = {"within_1_point_of_best": sum(r["within_1_point_of_best"] for r in cs), "runs": len(cs),
                                "chosen_steps": [r["guard"]["chosen_step"] for r in cs],
                                "rolled_back": sum(r["guard"]["rolled_back"] for r in cs),
                                "final_eval_after_rollback": stats([r["final_eval"][TARGET] for r in cs])}
            if config in PAIRED:
                checks = [alarm_vs_plain(r, partner[r["seed"]]) for r in cs if r["seed"] in partner]
                row["guard"] = {"within_1_point_of_best": sum(c["within_1_point_of_best"] for c in checks), "runs": len(checks),
                                "chosen_steps": [r["curve"][-1]["step"] if r["guard"]["chosen_step"] is None
                                                 else r["guard"]["chosen_step"] for r in cs],
                                "stopped": sum(bool(r["guard"]["stopped"]) for r in cs),
                                "same_as_plain_until_stop": sum(c["same_as_plain_until_stop"] for c in checks)}
            table[config] = row
        tele = [t for r in plain for t in r["telemetry"]]
        out[setting] = {"configs": table, "flip_vs_correct_to_wrong": pearson(
            [t["flip_rate"] for t in tele], [t["correct_to_wrong"] for t in tele]), "telemetry_steps": len(tele)}
    pooled = [t for r in runs if r["config"] == "plain" for t in r["telemetry"]]
    return {"settings": out, "flip_vs_correct_to_wrong_pooled": pearson(
        [t["flip_rate"] for t in pooled], [t["correct_to_wrong"] for t in pooled])}


def markdown(summary: dict, seeds: list[int]) -> str:
    lines = [f"### Where TTRL fails: plain, guard, filter and random reward at equal budgets ({len(seeds)} seeds)", "",
             "avg@16 in points. Δ = difference of means from plain ± its standard error; plain_b is plain on other "
             "seeds (the noise of every Δ). Peak = the best evaluated step of each run (the base included), "
             "peak − last = how much a run lost after its best (for guard: the best minus the step it chose). guard is not a "
             "separate run: it is each plain run's own choice of snapshot (the watch guard keeps snapshots every "
             f"{SNAPSHOT_EVERY} steps and ranks them by its label-free score), read from the same periodic evaluations; "
             "random on flipped repeats the clean runs (a random reward ignores the labels). flip_alarm is a separate run "
             "that stops when the majority answers flip on more than 10% of revisited prompts over 4 steps and ends on the "
             "snapshot from before them (its best in hindsight is its seed's plain run's, which it follows step for step "
             "until it stops; its Δ is paired with that run, ± the paired standard error). plain_h and flip_alarm_h: the same pair "
             "on held-out seeds (200+), run after the alarm's threshold was read off the plain and plain_b runs.", "",
             "| setting | config | avg@16 before | peak | final (± std) | peak − last | Δ vs plain | worst seed Δ | "
             "seeds ≥ +3 | greedy | maj@16 | guard: chosen within 1 pt of its best |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for setting, s in summary["settings"].items():
        for config, row in s["configs"].items():
            f = row["final"]
            plain = config == "plain"
            g = row.get("guard")
            lines.append(
                f"| {setting} | {config} | {100 * row['before_avg16']:.1f} | {100 * row['peak_avg16']['mean']:.1f} | "
                f"{100 * f[TARGET]['mean']:.1f} (± {100 * f[TARGET]['std']:.1f}) | {row['peak_minus_last_points']:.1f} | "
                + ("— | — | — | " if plain else
                   f"{row['minus_plain_points']:+.1f} ± {row['minus_plain_se_points']:.1f} | "
                   + ("— (other seeds) | — | " if row["worst_seed_minus_plain_points"] is None else
                      f"{row['worst_seed_minus_plain_points']:+.1f} | "
                      f"{row['seeds_3_points_above_plain']}/{len(row['seeds'])} | "))
                + f"{100 * f['accuracy/greedy']['mean']:.1f} | {100 * f['accuracy/maj@16']['mean']:.1f} | "
                + (f"{g['within_1_point_of_best']}/{g['runs']} (steps {', '.join(map(str, g['chosen_steps']))})"
                   if g else "")
                + (f"; stopped {g['stopped']}/{len(row['seeds'])}, same as plain until the stop "
                   f"{g['same_as_plain_until_stop']}/{g['runs']}" if g and "stopped" in g else "") + " |")
    lines += ["", "Flip rate (label-free) against the share of revisited prompts that went correct → wrong (labels), "
              "Pearson r over the steps of the plain runs: "
              + ", ".join(f"{k} {fmt_r(s['flip_vs_correct_to_wrong'])} ({s['telemetry_steps']} steps)"
                          for k, s in summary["settings"].items())
              + f"; pooled {fmt_r(summary['flip_vs_correct_to_wrong_pooled'])}."]
    return "\n".join(lines)


def fmt_r(r: float | None) -> str:
    return "n/a" if r is None else f"{r:+.2f}"


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(r["setting"] for r in runs))
    fig, axes = plt.subplots(1, len(settings), figsize=(5 * len(settings), 4), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        for config in dict.fromkeys(r["config"] for r in runs if r["setting"] == setting):
            rs = [r for r in runs if r["setting"] == setting and r["config"] == config]
            n = min(len(r["curve"]) for r in rs)
            xs = [statistics.mean(r["curve"][i]["step"] for r in rs) for i in range(n)]
            ys = [100 * statistics.mean(r["curve"][i]["avg16"] for r in rs) for i in range(n)]
            ax.plot(xs, ys, marker=".", label=config)
        ax.set(xlabel="optimizer step", ylabel="avg@16 (%)", title=f"{setting} (mean of seeds)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    ap.add_argument("--eval-every", type=int, default=SNAPSHOT_EVERY, help="steps between avg@16 evaluations")
    ap.add_argument("--work-dir", help="keep run directories here; finished runs found there are reused")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--finished-only", action="store_true",
                    help="run nothing: write the results from the runs already finished in --work-dir (the rest are "
                         "listed under not_run)")
    args = ap.parse_args(argv)
    record = provenance.collect(__file__, argv, threads_per_run=1, parallel_runs=args.jobs)
    work = work_dir(args.work_dir, "ttrl-collapse-")
    jobs = jobs_for(args.seeds, args.settings, args.configs)
    not_run = []
    if args.finished_only:
        not_run = [f"{name}-s{seed}" for name, _, seed in jobs if not (work / f"{name}-s{seed}" / "summary.json").exists()]
        jobs = [j for j in jobs if f"{j[0]}-s{j[2]}" not in not_run]
    runs = run_all(jobs, work, args.jobs, args.eval_every, "")
    for (name, _, seed), run in zip(jobs, runs):
        run["setting"], run["config"] = name.split("-", 1)
    runs = [describe(run, work / f"{name}-s{seed}") for (name, _, seed), run in zip(jobs, runs)]
    runs += [guard_run(r) for r in runs if r["config"] == "plain"]
    # the random-reward control ignores the labels' noise: flipped shows the clean runs
    if "flipped" in args.settings:
        runs += [{**r, "setting": "flipped"} for r in runs if r["setting"] == "clean" and r["config"] == "random"]
    summary = summarize(runs)
    result = {"provenance": provenance.finish(record), "settings": {k: SETTINGS[k] for k in args.settings}, "configs": CONFIGS, "flip": FLIP,
              "seeds": args.seeds, "seed_offset": SEED_OFFSET, "eval_every": args.eval_every, "summary": summary,
              "runs_reused": sum(r["reused"] for r in runs), "not_run": not_run, "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "collapse.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(summary, args.seeds)
    if not_run:
        md += f"\n\nNot run (no finished run directory): {', '.join(not_run)}."
    md += "\n\n" + provenance.footer(result["provenance"])
    (RESULTS / "collapse.md").write_text(md + "\n")
    plot(runs, RESULTS / "collapse.png")
    print(md)


if __name__ == "__main__":
    main()
