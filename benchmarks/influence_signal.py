"""Diagnostic: does any influence target's score tell a rollout rewarded on a wrong pseudo-label from one
rewarded on a right pseudo-label? (Before asking a selector to protect TTRL from its wrong votes, check the
signal exists.)

Each run is plain TTRL (``ttrl run``, the demo preset, first 16 of 32 votes trained) whose selector is
``ScoreRecorder``: it trains on the first k rollouts as plain TTRL does and, on the way, scores every
rollout of every group with the influence selector's rollouts stage (``filters.influence``: the
cosine of each rollout's policy-gradient loss gradient with the target) for each target — ``batch_mean``
(DTV), ``leave_one_out``, ``agree`` (the rollouts that agree with the vote) and ``labeled`` (LESS, arXiv
2402.04333: the loss gradient of 16 labeled sums that are not test prompts, half of them carrying out of the
units digit, the class ``demo-systematic`` gets wrong). Beside them, the label-free baseline every
selector must beat: the group's consensus (its majority ratio).

The benchmark knows the true labels. Over the rollouts the vote rewarded (reward 1), it computes the AUROC of
each score at ranking those whose answer is right above those whose answer is wrong (where rewards follow
the vote: those of groups whose pseudo-label is right above those of groups whose pseudo-label is wrong;
0.5: no signal; the bar for "a signal": above 0.6), pooled over the run's steps and seeds, on the clean demo,
on ``demo-systematic`` and on the demo with 20% of the groups' rewards inverted (``benchmarks.noise``). Writes benchmarks/results/influence_signal.{json,md}.

Usage: ``python -m benchmarks.influence_signal [--seeds 0 1] [--episodes 3] [--jobs 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

from benchmarks import provenance
from benchmarks.noise import reward_spec
from engine.data.demo import demo_tasks, units_carry
from filters.influence import InfluenceSelector
from rewards import is_correct

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("batch_mean", "leave_one_out", "agree", "labeled")
SETTINGS = {"demo": {}, "systematic": {"model": "demo-systematic", "data": "demo-systematic"},
            "flipped": {}}  # the demo with 20% of the groups' rewards inverted (benchmarks.noise), seeded per run
FLIP = 0.2


class ScoreRecorder:
    """A selector that trains as plain TTRL does (each group's first k rollouts) and writes, for every group
    of every step, its pseudo-label, rewards and every rollout's influence score under each target (one JSON
    line per group to ``out``). Composed of one rollouts-stage ``InfluenceSelector`` per target."""

    def __init__(self, out: str, labeled_path: str, seed: int = 0):
        self.out = out
        self.scorers = {t: InfluenceSelector(target=t, stage="rollouts", seed=seed,
                                             labeled_path=labeled_path if t == "labeled" else None) for t in TARGETS}
        self.last_metrics: dict[str, float] = {}

    def __call__(self, group, k: int) -> list[int]:
        return list(range(k))

    def select_batch(self, groups, k: int, policy) -> list[list[int]]:
        scores = {}
        for target, scorer in self.scorers.items():
            scorer.select_batch(groups, k, policy)
            scores[target] = scorer.last_alignment       # per group, every rollout's cosine
        with open(self.out, "a", encoding="utf-8") as f:
            for i, g in enumerate(groups):
                f.write(json.dumps({"task": g.task.id, "label": g.label, "rewards": g.rewards,
                                    "answers": [r.answer for r in g.rollouts],
                                    "scores": {t: scores[t][i] for t in TARGETS}}) + "\n")
        return [list(range(k)) for _ in groups]


def write_anchors(path: Path, n: int = 16, seed: int = 1234) -> Path:
    """``n`` labeled 5-digit + 1-digit sums in the demo's format that are not test prompts, half of them
    carrying out of the units digit (LESS's handful of labeled target examples)."""
    test = {t["prompt"] for t in demo_tasks()}
    rng, rows = random.Random(seed), []
    while len(rows) < n:
        x, y = rng.randint(10000, 99999), rng.randint(0, 9)
        prompt = f"{x}+{y}="
        if prompt not in test and units_carry(x, y) == (len(rows) % 2 == 0):
            rows.append({"prompt": prompt, "answer": str(x + y)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run_one(setting: str, seed: int, episodes: int, work: Path, anchors: Path) -> Path:
    """One recorded plain-TTRL run; returns its scores file (reused when the run finished before)."""
    out = work / f"{setting}-s{seed}"
    scores = work / f"{setting}-s{seed}.jsonl"
    if (out / "summary.json").exists():
        return scores
    scores.unlink(missing_ok=True)
    cfg = {**SETTINGS[setting], "episodes": episodes, "seed": seed, "eval_every": 0, "progress": False,
           **({"reward": reward_spec(FLIP, seed)} if setting == "flipped" else {}),
           "output_dir": str(out), "selector": {"name": "benchmarks.influence_signal:ScoreRecorder",
                                                "out": str(scores), "labeled_path": str(anchors), "seed": seed}}
    cfg_file = work / f"{setting}-s{seed}.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "engine.cli.main", "run", str(cfg_file)], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{setting} seed {seed} failed:\n{proc.stderr[-4000:]}")
    return scores


def auroc(positive: list[float], negative: list[float]) -> float | None:
    """P(a positive scores above a negative), ties counting half (Mann–Whitney U / n+ n-)."""
    if not positive or not negative:
        return None
    scores = np.concatenate([positive, negative])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):   # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    n_pos = len(positive)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * len(negative)))


def separation(files: list[Path]) -> dict:
    """Per score: the AUROC of right over wrong rewarded rollouts, and the counts. A rewarded rollout is wrong
    when its answer is (where rewards follow the vote, exactly the rollouts of a group whose pseudo-label is
    wrong; with flipped rewards, the dissenters a flipped group rewards, mostly wrong)."""
    truth = {t["id"]: t["answer"] for t in demo_tasks()}
    by_score: dict[str, tuple[list[float], list[float]]] = {s: ([], []) for s in (*TARGETS, "consensus")}
    groups = wrong_groups = 0
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            g = json.loads(line)
            groups += 1
            wrong_groups += not (g["label"] is not None and is_correct(g["label"], truth[g["task"]], "math"))
            consensus = sum(g["rewards"]) / len(g["rewards"])
            for i, reward in enumerate(g["rewards"]):
                if reward < 0.5:
                    continue
                answer = g["answers"][i]
                right = answer is not None and is_correct(answer, truth[g["task"]], "math")
                for target in TARGETS:
                    by_score[target][0 if right else 1].append(g["scores"][target][i])
                by_score["consensus"][0 if right else 1].append(consensus)
    return {"groups": groups, "wrong_label_groups": wrong_groups,
            "rewarded_rollouts": {"right": len(by_score["consensus"][0]), "wrong": len(by_score["consensus"][1])},
            "auroc": {s: auroc(*by_score[s]) for s in by_score}}


def markdown(result: dict) -> str:
    lines = ["# Is there a signal? Influence scores against wrong pseudo-labels", "",
             "AUROC of each score at ranking rewarded rollouts whose answer is right above rewarded rollouts whose "
             "answer is wrong — where rewards follow the vote, those of right pseudo-labels above those of wrong ones "
             "(0.5 = no signal; above 0.6 = a signal worth selecting on). Plain TTRL runs of the demo preset "
             f"({result['episodes']} episodes, seeds {result['seeds']}); every rollout of every group scored by the "
             "influence selector's rollouts stage; `consensus` is the group's majority ratio (label-free).", "",
             "| setting | groups (wrong label) | rewarded rollouts right / wrong | " + " | ".join(
                 (*TARGETS, "consensus")) + " |",
             "|---|---:|---:|" + "---:|" * (len(TARGETS) + 1)]
    for setting, r in result["settings"].items():
        cells = ["—" if r["auroc"][s] is None else f"{r['auroc'][s]:.3f}" for s in (*TARGETS, "consensus")]
        lines.append(f"| {setting} | {r['groups']} ({r['wrong_label_groups']}) | "
                     f"{r['rewarded_rollouts']['right']:,} / {r['rewarded_rollouts']['wrong']:,} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--episodes", type=int, default=3)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--work-dir", help="keep run directories here; finished runs found there are reused")
    args = ap.parse_args(argv)
    record = provenance.collect(__file__, argv, threads_per_run=1, parallel_runs=args.jobs)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="ttrl-signal-"))
    work.mkdir(parents=True, exist_ok=True)
    anchors = write_anchors(work / "anchors.jsonl")
    plan = [(s, seed) for s in args.settings for seed in args.seeds]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        files = list(pool.map(lambda p: run_one(p[0], p[1], args.episodes, work, anchors), plan))
    settings = {s: separation([f for (setting, _), f in zip(plan, files) if setting == s]) for s in args.settings}
    result = {"provenance": provenance.finish(record), "episodes": args.episodes, "seeds": args.seeds,
              "targets": list(TARGETS), "anchors": [json.loads(x) for x in anchors.read_text().splitlines()],
              "settings": settings}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "influence_signal.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result) + "\n\n" + provenance.footer(result["provenance"])
    (RESULTS / "influence_signal.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
