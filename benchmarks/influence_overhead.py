"""Overhead of the gradient-influence selector relative to the GRPO update it rides on.

For a few real TTRL steps (sample, vote) the same batch is trained from the same weights and optimizer
state twice, once plainly and once with the selector's update stage (per-row gradients recorded in
TRL's own backward, rows of negative alignment taken out of the gradient); the order alternates between
steps so drift in machine speed cancels. Overhead = (filtered update - plain update) / plain update,
median over warm steps (step 1 pays one-off costs); each update is timed ``repeats`` times, alternating,
and the least time kept (noise on a shared machine only adds). The selector's own clock (hooks + scoring) is
reported beside it. For contrast, the rollouts stage — a separate forward and backward over all N_vote
rollouts before the update — is timed on the same batches. Target: overhead <= 15% of the update.

Cases: the demo model under full fine-tuning (DEMO_SETTINGS: 32 prompts x 32 votes, train on 16) and
under LoRA r=16; ``--smollm2`` adds SmolLM2-135M-Instruct with LoRA on MAWPS SingleOp
(benchmarks/configs/cpu-smollm2-135m-mawps-singleop.yaml: 8 prompts x 8 votes, train on 4; needs ``setup.sh --smollm2``).

    python -m benchmarks.influence_overhead [--steps 5] [--smollm2]
Writes benchmarks/results/influence_overhead.json and .md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import provenance

RESULTS = Path(__file__).parent / "results"


def run_case(name: str, extra: list[str], steps: int, rollouts_stage: bool = True, threads: int = 1,
             repeats: int = 3) -> dict:
    from engine.cli.build import build
    from engine.config.options import parse_config
    from engine.loop import apply_reward
    from engine.types import SamplingParams
    from engine.update import Batch
    from filters.influence import InfluenceSelector
    from rewards import build_reward

    torch.set_num_threads(threads)
    out = tempfile.mkdtemp(prefix="influence-bench-")
    cfg = parse_config([*extra, "--output_dir", out, "--progress", "false", "--seed", "0"])
    torch.manual_seed(0)
    random.seed(0)
    _, tasks, policy, sampler = build(cfg)
    g, t = cfg.grpo, cfg.ttrl
    reward_fn = build_reward(t.reward, answer_type=t.answer_type)
    params = SamplingParams(n=t.n_votes, temperature=g.temperature, top_p=g.top_p, max_new_tokens=g.max_completion_length)
    in_update = InfluenceSelector()                       # stage="update": DTV batch-mean target, drop negative
    separate = InfluenceSelector(stage="rollouts")
    train_tasks = [x.unlabeled() for x in tasks]
    random.Random(0).shuffle(train_tasks)
    rows = []
    for step in range(steps):
        P = t.prompts_per_step
        batch_tasks = [train_tasks[(step * P + i) % len(train_tasks)] for i in range(P)]
        groups = sampler.generate(batch_tasks, params)
        for grp in groups:
            apply_reward(reward_fn, t.reward, grp)
        batch = Batch.from_groups(groups, in_update.select_batch(groups, t.n_train, policy))
        row = {"step": step + 1, "adam_state": bool(policy.trainer.optimizer.state), "rows_trained": len(batch),
               "rows_scored_rollouts_stage": sum(len(grp.rollouts) for grp in groups),
               "mean_completion_tokens": sum(map(len, batch.completion_ids)) / len(batch)}
        start_state = copy.deepcopy(policy.state_dict())
        times = {"plain": [], "filtered": []}
        for rep in range(repeats):                        # alternate, restore the start state each time
            for kind in (["plain", "filtered"] if (step + rep) % 2 == 0 else ["filtered", "plain"]):
                policy.load_state_dict(copy.deepcopy(start_state))
                in_update.select_batch(groups, t.n_train, policy)     # resets the selector's per-step clock
                start = time.perf_counter()
                metrics = policy.update(batch, grad_filter=in_update if kind == "filtered" else None)
                times[kind].append(time.perf_counter() - start)
                if kind == "filtered":
                    row["selector_clock_s"] = metrics["filters/influence/time_s"]
                    row["kept_fraction"] = metrics["filters/influence/kept_fraction"]
        # The least of the repeats: the machine's noise only ever adds time.
        row["update_plain_s"], row["update_filtered_s"] = min(times["plain"]), min(times["filtered"])
        if kind == "plain":                               # go on from the filtered update's weights
            policy.load_state_dict(copy.deepcopy(start_state))
            policy.update(batch, grad_filter=in_update)
        if rollouts_stage:
            start = time.perf_counter()
            separate.select_batch(groups, t.n_train, policy)
            row["rollouts_stage_s"] = time.perf_counter() - start
        sampler.load_weights(policy.model)
        rows.append(row)
        print(name, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    warm = rows[1:] or rows
    plain = statistics.median(r["update_plain_s"] for r in warm)
    summary = {"update_s": plain,
               "filtered_update_s": statistics.median(r["update_filtered_s"] for r in warm),
               "overhead": statistics.median((r["update_filtered_s"] - r["update_plain_s"]) / r["update_plain_s"]
                                             for r in warm),
               "selector_clock_fraction": statistics.median(r["selector_clock_s"] / r["update_plain_s"] for r in warm),
               "kept_fraction": statistics.mean(r["kept_fraction"] for r in warm)}
    if rollouts_stage:
        summary["rollouts_stage_fraction"] = statistics.median(r["rollouts_stage_s"] / r["update_plain_s"] for r in warm)
    trainable = sum(p.numel() for p in policy.model.parameters() if p.requires_grad)
    return {"case": name, "args": extra, "threads": threads, "repeats": repeats, "n_votes": t.n_votes, "n_train": t.n_train,
            "prompts_per_step": t.prompts_per_step, "trainable_params": trainable, "summary": summary, "steps": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--smollm2", action="store_true", help="add SmolLM2-135M-Instruct + LoRA on MAWPS")
    a = ap.parse_args()
    record = provenance.collect(__file__)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cases = [run_case("demo_full_ft", ["--model", "demo", "--lora", "false"], a.steps),
             run_case("demo_lora_r16", ["--model", "demo", "--lora", "true", "--learning_rate", "1e-3"], a.steps)]
    if a.smollm2:
        config = Path(__file__).parent / "configs" / "cpu-smollm2-135m-mawps-singleop.yaml"
        cases.append(run_case("smollm2_mawps_lora", [str(config)], 3, rollouts_stage=False,
                              threads=os.cpu_count() or 1, repeats=1))
    result = {"provenance": provenance.finish(record), "threads": {c["case"]: c["threads"] for c in cases}, "cpu": platform.processor() or platform.machine(),
              "torch": torch.__version__, "target_overhead": 0.15, "cases": cases}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "influence_overhead.json").write_text(json.dumps(result, indent=2))
    lines = ["# Influence selector overhead vs the GRPO update (CPU, median of warm steps)", "",
             f"torch {torch.__version__}. Same batch, same start state, trained plainly and with the selector "
             "(alternating, the least of the repeats); overhead = extra update time / plain update time, median over "
             "warm steps; target <= 0.15. Demo cases on 1 thread, SmolLM2 on all cores.", "",
             "| case | trainable params | rows trained | plain update s | with selector s | overhead | selector's own clock "
             "| kept | rollouts stage (separate pass) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in cases:
        s, r = c["summary"], c["steps"][-1]
        sep = f"{s['rollouts_stage_fraction']:.0%}" if "rollouts_stage_fraction" in s else "—"
        lines.append(f"| {c['case']} | {c['trainable_params']:,} | {r['rows_trained']} | {s['update_s']:.2f} | "
                     f"{s['filtered_update_s']:.2f} | {s['overhead']:+.1%} | {s['selector_clock_fraction']:.1%} | "
                     f"{s['kept_fraction']:.2f} | {sep} |")
    lines += ["", provenance.footer(result["provenance"])]
    (RESULTS / "influence_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
