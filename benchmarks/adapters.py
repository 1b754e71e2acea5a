"""Benchmark: full fine-tuning against LoRA r16, rank-1 LoRA, TinyLoRA and ShiRA under TTRL.

Does a sparser update cost accuracy, and does it keep the model closer to its base? Per configuration
and seed (``CONFIGS``; every run is ``ttrl run`` in a subprocess, one thread):

1. **Main run** on the task (default: the demo task, 128 five-digit additions, with ``drift_prompts``
   of them held out for ``engine.drift``): before/after greedy, avg@16 and maj@16, trainable parameters,
   update seconds per step (``time/update_s`` over the optimizer steps: sampling excluded), and
   ``drift/kl_heldout`` and ``drift/changed_fraction`` at the last step.
2. **Plasticity**: adapt on task A, then on task B, against adapting the fresh base on B. The gain on B is
   after-minus-before *within* the B run, so a model that already knew more of B (transfer from A) is not
   credited for it; ``plasticity`` = gain on B after A / gain on B from the base (1: as plastic as the
   base; a model that lost plasticity learns less). Between A and B an adapter is merged into the weights
   (PEFT ``merge_and_unload``) and B trains a fresh adapter of the same type on that model, KL-anchored to
   it: the continual-adaptation protocol, in which each adaptation starts and is anchored where the last
   ended. Full fine-tuning continues from A's weights.

   The demo pair (``demo_pair``): A = 128 five-digit additions ``xxxxx+y=`` with no carry (``x % 10 + y <
   10``), B = 128 with a carry out of the units digit. Why: the demo model is partly right on five-digit
   sums only (greedy on the base: ~61% without a carry, ~78% with one, 0% on six-digit ``x``, a two-digit
   ``y`` or ``y+x=``: measured while choosing, no headroom there for a majority vote), so both halves have
   the headroom TTRL needs, the prompts never overlap, and B exercises a step (the carry) that A never
   does — training on A can reinforce "copy the upper digits", which B must then overrule.

Learning rates (demo; chosen to train, not tuned): full fine-tuning 1e-4 (the demo preset; 3e-4 is unstable
there). LoRA 3e-4, r16 and r1 alike with alpha 32: "LoRA Without Regret" finds the best LoRA rate ~10x full
fine-tuning's and independent of rank when alpha is fixed, but at 10x (1e-3) rank-1 LoRA left the demo
model in 4 steps (one seed: drift/kl_heldout 0.27, avg@16 63.9 -> 56.9) while 3e-4 trained like full
fine-tuning does (KL 0.005 vs 0.009; avg@16 -> 66.0 vs 68.3). ShiRA 1e-3 (it trains weight entries directly,
scale 1, on a ~9% mask; in the same check: KL 0.009, avg@16 -> 66.9). TinyLoRA 1e-3 (13 numbers per module
scaling frozen rank-2 SVD directions: at 1e-2 the first step alone moved the held-out KL to 0.67, it
reached 1.5 in 4 steps and avg@16 fell 63.9 -> 13.4; at 1e-3: KL 0.006, avg@16 -> 67.3). ``--lr NAME=VALUE``
overrides one; another model needs its own (``--model``, ``--data``, ``--task-a``/``--task-b``,
``--options`` for sampler, template, answer type...).

Usage: ``python -m benchmarks.adapters [--seeds 0 1 2] [--jobs 1] [--episodes 12] [--plasticity-episodes 6]``
(``--plasticity-episodes 0``: main runs only; ``--add NEW=NAME:LR``: a configuration at a second learning rate).
Writes benchmarks/results/adapters.json and adapters.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from benchmarks import provenance

RESULTS = Path(__file__).parent / "results"
FINAL = ("accuracy/greedy", "accuracy/avg@16", "accuracy/maj@16")
AVG = "accuracy/avg@16"
PLASTICITY = ("gain_a", "gain_b_after_a", "gain_b_fresh", "b_before_after_a", "b_final_after_a", "b_final_fresh")

# Only what differs from the task's own settings (the demo preset: full fine-tuning, lr 1e-4, beta 0.04).
CONFIGS: dict[str, dict] = {
    "full": {"lora": False, "learning_rate": 1e-4},
    "lora_r16": {"lora": True, "adapter_type": "lora", "lora_r": 16, "lora_alpha": 32, "learning_rate": 3e-4},
    "lora_r1": {"lora": True, "adapter_type": "lora", "lora_r": 1, "lora_alpha": 32, "learning_rate": 3e-4},
    "tinylora": {"lora": True, "adapter_type": "tinylora", "adapter_options": {"r": 2, "u": 13},
                 "learning_rate": 1e-3},
    "shira": {"lora": True, "adapter_type": "shira", "adapter_options": {"r": 4}, "learning_rate": 1e-3},
}


def demo_pair(out: Path, n: int = 128) -> tuple[Path, Path]:
    """Task A (no carry) and task B (a carry out of the units digit): distinct five-digit ``x+y=`` prompts,
    none of them in the demo task (module docstring)."""
    from engine.data.demo import demo_tasks

    taken = {t["prompt"] for t in demo_tasks()}
    rng = random.Random("ttrl-adapters-plasticity")
    tasks: dict[str, list[dict]] = {"a": [], "b": []}
    while min(len(v) for v in tasks.values()) < n:
        x, y = rng.randint(10_000, 99_999), rng.randint(0, 9)
        prompt, part = f"{x}+{y}=", "b" if x % 10 + y >= 10 else "a"
        if prompt not in taken and len(tasks[part]) < n:
            taken.add(prompt)
            tasks[part].append({"id": f"{part}-{len(tasks[part]):03d}", "prompt": prompt, "answer": str(x + y)})
    paths = []
    for part, rows in tasks.items():
        path = out / f"task_{part}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(path)
    return paths[0], paths[1]


def model_settings(model: str) -> dict:
    """The options every run shares: the demo preset, spelt out (a merged model dir is not ``demo``); another
    model by its directory (an alias such as ``smollm2-135m`` resolved, so it can be loaded and merged here)."""
    if model != "demo":
        from engine.data.models import resolve_model_alias

        return {"model": resolve_model_alias(model)}
    from engine.data.demo import DEMO_SETTINGS, DEMO_TEMPLATE, build_demo

    return {**DEMO_SETTINGS, "model": str(build_demo()[0]), "template": DEMO_TEMPLATE}


def ttrl_run(out: Path, options: dict, env: dict) -> dict:
    """One ``ttrl run`` into ``out`` (reused when it finished before); its summary and metrics rows."""
    if not (out / "summary.json").exists():
        shutil.rmtree(out, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        cfg_file = out.with_suffix(".yaml")
        cfg_file.write_text(yaml.safe_dump({**options, "output_dir": str(out), "progress": False}))
        proc = subprocess.run([sys.executable, "-m", "engine.cli.main", "run", str(cfg_file)], env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{out.name} failed:\n{proc.stderr[-4000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"summary": json.loads((out / "summary.json").read_text()), "rows": rows}


def merged_model(run_dir: Path, base: str, out: Path) -> str:
    """A model directory holding ``run_dir``'s adapted weights: full fine-tuning saved them whole; an
    adapter is merged into ``base`` (PEFT ``merge_and_unload``) and saved with the tokenizer."""
    saved = run_dir / "adapter"
    if not (saved / "adapter_config.json").exists():
        return str(saved)
    if not (out / "config.json").exists():
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(saved))
        model.merge_and_unload().save_pretrained(out)
        AutoTokenizer.from_pretrained(saved).save_pretrained(out)
    return str(out)


def trainable_parameters(base: str, options: dict) -> int:
    """Parameters the update trains: the adapter's (built by ``engine.adapters`` as a run builds it) or all."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    if options.get("lora", True):
        from peft import get_peft_model

        from engine.adapters import peft_config

        model = get_peft_model(model, peft_config(options.get("adapter_type", "lora"), options.get("adapter_options"),
                                                  target_modules=options.get("lora_target_modules", "all-linear"),
                                                  lora_r=options.get("lora_r", 16), lora_alpha=options.get("lora_alpha", 32)))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def gain(run: dict, key: str = AVG) -> float:
    return run["summary"]["after"][key] - run["summary"]["before"][key]


def one(name: str, seed: int, args, shared: dict, work: Path, env: dict) -> dict:
    """Every figure of one configuration and seed."""
    options = {**shared, **CONFIGS[name], "seed": seed}
    d = work / f"{name}-s{seed}"
    main = ttrl_run(d / "main", {**options, "data": args.data, "episodes": args.episodes,
                                 "drift_prompts": args.drift_prompts}, env)
    rows, c = main["rows"], main["summary"]["compute"]
    trained = [r for r in rows if "drift/kl_heldout" in r]
    result = {
        "config": name, "seed": seed, "trainable_parameters": trainable_parameters(shared["model"], CONFIGS[name]),
        "before": {k: main["summary"]["before"][k] for k in FINAL},
        "after": {k: main["summary"]["after"][k] for k in FINAL},
        "gain_avg16": gain(main), "gain_greedy": gain(main, "accuracy/greedy"),
        "kl_heldout_end": trained[-1]["drift/kl_heldout"], "changed_fraction_end": trained[-1]["drift/changed_fraction"],
        "update_s_per_step": c["time/update_s"] / max(c["steps"], 1), "steps": c["steps"], "wall_s": c["time/total_s"],
        **dict.fromkeys(PLASTICITY),
    }
    if args.plasticity_episodes > 0:
        plastic = {"episodes": args.plasticity_episodes}
        a = ttrl_run(d / "a", {**options, **plastic, "data": str(args.task_a)}, env)
        after_a = merged_model(d / "a", shared["model"], d / "a-model")
        b_after_a = ttrl_run(d / "b-after-a", {**options, **plastic, "data": str(args.task_b), "model": after_a}, env)
        b_fresh = ttrl_run(d / "b-fresh", {**options, **plastic, "data": str(args.task_b)}, env)
        result.update({
            "gain_a": gain(a), "gain_b_after_a": gain(b_after_a), "gain_b_fresh": gain(b_fresh),
            "b_before_after_a": b_after_a["summary"]["before"][AVG],
            "b_final_after_a": b_after_a["summary"]["after"][AVG], "b_final_fresh": b_fresh["summary"]["after"][AVG]})
    plasticity = ("" if result["gain_b_fresh"] is None else
                  f", B gain after A {100 * result['gain_b_after_a']:+.1f} vs fresh {100 * result['gain_b_fresh']:+.1f}")
    print(f"{name} seed {seed}: avg@16 {100 * result['before'][AVG]:.1f} -> {100 * result['after'][AVG]:.1f}, "
          f"KL {result['kl_heldout_end']:.4f}, changed {100 * result['changed_fraction_end']:.1f}%{plasticity}", flush=True)
    return result


def mean_std(xs: list[float | None]) -> dict | None:
    """Mean and sample std over seeds; None where the figure was not measured (plasticity skipped)."""
    if any(x is None for x in xs):
        return None
    return {"mean": statistics.mean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0}


def summarize(runs: list[dict]) -> dict:
    keys = ("gain_avg16", "gain_greedy", "kl_heldout_end", "changed_fraction_end", "update_s_per_step", *PLASTICITY)
    table = {}
    for name in dict.fromkeys(r["config"] for r in runs):
        rs = [r for r in runs if r["config"] == name]
        row = {k: mean_std([r[k] for r in rs]) for k in keys}
        row["after_avg16"] = mean_std([r["after"][AVG] for r in rs])
        row["trainable_parameters"] = rs[0]["trainable_parameters"]
        row["seeds"] = [r["seed"] for r in rs]
        fresh = row["gain_b_fresh"] and row["gain_b_fresh"]["mean"]
        row["plasticity"] = row["gain_b_after_a"]["mean"] / fresh if fresh and abs(fresh) > 1e-9 else None
        table[name] = row
    return table


def markdown(table: dict, args) -> str:
    def pm(x: dict | None) -> str:
        return "—" if x is None else f"{100 * x['mean']:+.1f} ± {100 * x['std']:.1f}"

    plastic = (f"plasticity A -> B ({args.plasticity_episodes} episodes each)" if args.plasticity_episodes > 0
               else "main runs only (no plasticity runs)")
    lines = [f"### TTRL with full fine-tuning and with adapters: {args.model} on {args.data} ({args.episodes} "
             f"episodes), {plastic}", "",
             "Gains in points of avg@16 (mean ± std over seeds). KL drift: mean per-token KL(policy || base) on "
             f"{args.drift_prompts} held-out prompts at the last step; changed: share of base parameters the "
             "(merged) update changed. Plasticity: gain on B after adapting on A / gain on B from the base.", "",
             "| config | trainable params | avg@16 after | gain avg@16 | gain greedy | KL drift (end) | changed | "
             "update s/step | gain on A | B: gain after A | B: gain from base | plasticity |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in table.items():
        p = "—" if r["plasticity"] is None else f"{r['plasticity']:.2f}"
        lines.append(
            f"| {name} | {r['trainable_parameters']:,} | {100 * r['after_avg16']['mean']:.1f} | {pm(r['gain_avg16'])} | "
            f"{pm(r['gain_greedy'])} | {r['kl_heldout_end']['mean']:.4f} | {100 * r['changed_fraction_end']['mean']:.1f}% | "
            f"{r['update_s_per_step']['mean']:.2f} | {pm(r['gain_a'])} | {pm(r['gain_b_after_a'])} | "
            f"{pm(r['gain_b_fresh'])} | {p} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="*", help="run only these configurations")
    ap.add_argument("--model", default="demo", help="'demo', a model directory or an alias (smollm2-135m)")
    ap.add_argument("--data", default="demo", help="the main task: 'demo' or a tasks file")
    ap.add_argument("--task-a", type=Path, help="plasticity task A (default with the demo: no-carry sums)")
    ap.add_argument("--task-b", type=Path, help="plasticity task B (default with the demo: sums with a carry)")
    ap.add_argument("--options", help="YAML mapping of further `ttrl run` options for every run (sampler, template...)")
    ap.add_argument("--lr", nargs="*", default=[], help="NAME=VALUE: another learning rate for one configuration")
    ap.add_argument("--add", nargs="*", default=[],
                    help="NEW=NAME:LR: a further configuration, NAME's at another learning rate (full_1e-5=full:1e-5)")
    ap.add_argument("--episodes", type=int, default=12, help="episodes of the main run (the demo preset's 12)")
    ap.add_argument("--plasticity-episodes", type=int, default=6,
                    help="episodes of each plasticity run; 0: main runs only (no plasticity figures)")
    ap.add_argument("--drift-prompts", type=int, default=8, help="tasks held out of the main task for drift/kl_heldout")
    ap.add_argument("--jobs", type=int, default=1, help="configurations at a time (one thread each)")
    ap.add_argument("--work-dir", help="keep run directories here; finished runs found there are reused")
    ap.add_argument("--out", default="adapters", help="results name under benchmarks/results/")
    args = ap.parse_args(argv)
    for item in args.lr:
        name, _, value = item.partition("=")
        CONFIGS[name]["learning_rate"] = float(value)
    for item in args.add:
        new, _, spec = item.partition("=")
        name, _, value = spec.partition(":")
        CONFIGS[new] = {**CONFIGS[name], "learning_rate": float(value)}
    record = provenance.collect(__file__, argv, threads_per_run=1, parallel_runs=args.jobs)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="ttrl-adapters-"))
    work.mkdir(parents=True, exist_ok=True)
    if (args.task_a is None or args.task_b is None) and args.plasticity_episodes > 0:
        if args.model != "demo":
            raise SystemExit("--task-a and --task-b are needed with a model other than the demo")
        args.task_a, args.task_b = demo_pair(work)
    if args.data == "demo":
        from engine.data.demo import build_demo

        args.data = str(build_demo()[1])
    shared = {**model_settings(args.model), **(yaml.safe_load(args.options) if args.options else {})}
    if shared.get("eval_k", 16) != 16:
        raise SystemExit(f"--options sets eval_k {shared['eval_k']}: this benchmark reads avg@16 and maj@16 (eval_k 16)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    names = [n for n in CONFIGS if not args.only or n in args.only]
    jobs = [(n, s) for n in names for s in args.seeds]  # configuration-major: an interruption leaves whole configs
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(lambda job: one(*job, args, shared, work, env), jobs))
    table = summarize(runs)
    result = {"provenance": provenance.finish(record), "model": args.model, "data": args.data,
              "task_a": str(args.task_a), "task_b": str(args.task_b), "episodes": args.episodes,
              "plasticity_episodes": args.plasticity_episodes, "drift_prompts": args.drift_prompts,
              "configs": {n: CONFIGS[n] for n in names}, "shared_options": sorted(shared.items()), "seeds": args.seeds,
              "summary": table, "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(table, args) + "\n\n" + provenance.footer(result["provenance"])
    (RESULTS / f"{args.out}.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
