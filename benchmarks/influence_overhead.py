"""Overhead of the gradient-influence selector relative to the GRPO update it rides on.

On the demo model (full fine-tuning, DEMO_SETTINGS: 32 prompts x 32 votes, train on 16) and the same
model under LoRA (r=16, all-linear), for a few real TTRL steps: sample, vote, time
``InfluenceSelector.select_batch`` and the ``GRPOPolicy.update`` (engine/update.py, TRL) that follows.
Variants: every trainable layer (default), the top decoder layer only (a shorter backward), and the
"hooks" cost alone — the selector on the same n_train rows the update trains on, which is what the
per-sample features would cost inside the update's own pass (IIF-style), without the extra forward over
the N_vote - n_train rollouts the update never sees. Target: overhead <= 15% of the update.

    TTRL_CACHE=/tmp/cache python -m benchmarks.influence_overhead [--steps 4]
Writes benchmarks/results/influence_overhead.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
VARIANTS = {
    "all_layers": {},
    "top_layer": {"modules": ["layers.1."]},
}


def run_case(name: str, extra: list[str], steps: int) -> dict:
    from engine.build import build
    from engine.config import parse_config
    from engine.loop import apply_reward
    from engine.types import RolloutGroup, SamplingParams
    from engine.update import Batch
    from filters.influence import InfluenceSelector
    from rewards import build_reward

    out = tempfile.mkdtemp(prefix="influence-bench-")
    cfg = parse_config(["--model", "demo", "--output_dir", out, "--progress", "false", "--seed", "0", *extra])
    torch.manual_seed(0)
    random.seed(0)
    _, tasks, policy, sampler = build(cfg)
    g, t = cfg.grpo, cfg.ttrl
    reward_fn = build_reward(t.reward, answer_type=t.answer_type)
    params = SamplingParams(n=t.n_votes, temperature=g.temperature, top_p=g.top_p, max_new_tokens=g.max_completion_length)
    selectors = {v: InfluenceSelector(**kw) for v, kw in VARIANTS.items()}
    hooks_only = InfluenceSelector()
    rows = []
    train_tasks = [x.unlabeled() for x in tasks]
    random.Random(0).shuffle(train_tasks)
    for step in range(steps):
        P = t.prompts_per_step
        groups = sampler.generate(train_tasks[step * P:(step + 1) * P], params)
        for grp in groups:
            apply_reward(reward_fn, t.reward, grp)
        row = {"step": step + 1, "adam_state": bool(policy.trainer.optimizer.state)}
        for v, sel in selectors.items():
            start = time.perf_counter()
            picks = sel.select_batch(groups, t.n_train, policy)
            row[f"select_{v}_s"] = time.perf_counter() - start
            row[f"metrics_{v}"] = sel.last_metrics
        firsts = [RolloutGroup(grp.task, grp.rollouts[: t.n_train], grp.label) for grp in groups]
        start = time.perf_counter()
        hooks_only.select_batch(firsts, t.n_train, policy)
        row["select_hooks_only_s"] = time.perf_counter() - start
        batch = Batch.from_groups(groups, picks)          # the last variant's (top_layer) choice
        start = time.perf_counter()
        policy.update(batch)
        row["update_s"] = time.perf_counter() - start
        row["rows_scored"] = sum(len(grp.rollouts) for grp in groups)
        row["rows_trained"] = len(batch)
        row["mean_completion_tokens"] = sum(map(len, batch.completion_ids)) / len(batch)
        rows.append(row)
        print(name, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if not k.startswith("metrics")})
    warm = rows[1:] or rows                               # step 1 pays one-off warm-up costs
    update = statistics.median(r["update_s"] for r in warm)
    summary = {"update_s": update}
    for v in [*VARIANTS, "hooks_only"]:
        sel = statistics.median(r[f"select_{v}_s"] for r in warm)
        summary[f"select_{v}_s"] = sel
        summary[f"overhead_{v}"] = sel / update
    trainable = sum(p.numel() for p in policy.model.parameters() if p.requires_grad)
    return {"case": name, "args": extra, "n_votes": t.n_votes, "n_train": t.n_train,
            "prompts_per_step": t.prompts_per_step, "trainable_params": trainable, "summary": summary, "steps": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=4)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cases = [run_case("demo_full_ft", ["--lora", "false"], a.steps),
             run_case("demo_lora_r16", ["--lora", "true", "--learning_rate", "1e-3"], a.steps)]
    result = {"threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "torch": torch.__version__, "target_overhead": 0.15, "cases": cases}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "influence_overhead.json").write_text(json.dumps(result, indent=2))
    lines = ["# Influence selector overhead vs the GRPO update (CPU, median of warm steps)", "",
             f"torch {torch.__version__}, {torch.get_num_threads()} threads. Overhead = selector time / update time; "
             "target <= 0.15.", "",
             "| case | trainable params | rows scored / trained | update s | all layers | top layer | hooks only (n_train rows) |",
             "|---|---|---|---|---|---|---|"]
    for c in cases:
        s, r = c["summary"], c["steps"][-1]
        lines.append(f"| {c['case']} | {c['trainable_params']:,} | {r['rows_scored']} / {r['rows_trained']} | "
                     f"{s['update_s']:.2f} | {s['select_all_layers_s']:.2f} s ({s['overhead_all_layers']:.0%}) | "
                     f"{s['select_top_layer_s']:.2f} s ({s['overhead_top_layer']:.0%}) | "
                     f"{s['select_hooks_only_s']:.2f} s ({s['overhead_hooks_only']:.0%}) |")
    (RESULTS / "influence_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
