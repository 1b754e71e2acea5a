"""Distributed update: the demo at 1 and 2 ranks (measured), and what each GPU recipe needs per GPU under
DDP, FSDP and ZeRO-3 (from the shapes).

    python -m benchmarks.distributed                 # both parts (the timing takes ~10 minutes on 2 cores)
    python -m benchmarks.distributed --part memory   # the table from the shapes only

**Timing.** ``ttrl run`` on the demo (its preset, ``--episodes 1``: 4 steps of 32 prompts) in one process
and under ``torchrun --nproc_per_node 2`` (DDP through accelerate, gloo), one thread per process, the two
alternated ``--repeats`` times so both see the same machine. Step time = sampling + scoring + update per
optimizer step, as the run's own metrics rows record it (rank 0's clock; evaluation excluded). Parallel
efficiency = T_1 / (2 x T_2). With perfectly parallel work two ranks would take T_1 / 2 per step; the
rest of T_2, (T_2 - T_1/2) / T_2, is the step's *non-parallel share*: the all-gathers of scored groups,
DDP's gradient all-reduce, the wait for the slower rank, and work every rank repeats (filters and
telemetry on the gathered list) — an upper bound on the communication share, which is not timed apart.
Compared with the Ray fan-out's efficiency for separate jobs when ``benchmarks/results/ray.json`` exists
(``python -m benchmarks.ray_bench`` writes it; without it the comparison is left out).

Per GPU, in GB, for Qwen2.5-Math-1.5B and -7B (the TTRL recipes in ``benchmarks/configs``), full
fine-tuning and LoRA (r 16 on every linear layer), on 1 / 2 / 4 / 8 GPUs of 80 GB. The terms, each from
the real models' shapes (``benchmarks.memory.REAL_MODELS``):

* trainable state: float32 masters + float32 gradients + Adam's two float32 moments = 16 bytes per
  trainable parameter (mixed precision as ``engine/update.py`` sets it up: ``docs/scale.md``);
* DDP's gradient buckets: a second float32 copy of the gradients for the all-reduce (4 bytes per trainable
  parameter; PyTorch's default, ``gradient_as_bucket_view=False``);
* frozen weights in bf16: the full fine-tune's KL reference, or LoRA's base (which is also its reference,
  the adapter disabled) — 2 bytes per parameter;
* one micro-batch's loss tensors: logits and their gradient in float32 (rows x tokens x vocabulary x 8
  bytes; pessimistic: under bf16 autocast the logits are half that);
* checkpointed activations: one bf16 hidden state per layer per token (gradient checkpointing on, as
  the GPU recipes set it);
* under FSDP, the transformers sampler's own whole bf16 copy of the model (2 bytes per parameter, not
  sharded: ``docs/scale.md``), and the full fine-tune's KL reference kept float32 (4 bytes / N);
* 10% for the CUDA context, the allocator's fragmentation and collective buffers.

DDP replicates everything; FSDP (full shard) and ZeRO-3 shard the trainable state and the frozen weights
across the GPUs (the reference model is prepared like the policy, so it is sharded too), and gather one
layer at a time (the largest layer's bf16 weights, twice: the one in use and the one prefetched). Per-GPU
micro-batches stay at the recipe's size: with N GPUs each runs ``gradient_accumulation_steps / N``
micro-batches per optimizer step, so the global batch is the recipe's. This is an estimate from shapes,
not a measurement: no GPU was available to this benchmark. Writes
benchmarks/results/distributed.{json,md} with provenance.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import provenance
from benchmarks.memory import REAL_MODELS
from benchmarks.miniature import CONFIGS, recipe

RESULTS = Path(__file__).parent / "results"
GPU_GB = 80
GPUS = (1, 2, 4, 8)
STRATEGIES = ("ddp", "fsdp", "zero3")
OVERHEAD = 1.10
LORA_R = 16
RECIPES = ("qwen2.5-math-1.5b-aime24.yaml", "qwen2.5-math-7b-aime24.yaml", "qwen2.5-math-7b-math500.yaml")
# Qwen2.5-Math's linear layers: q, k, v, o, gate, up, down per layer, (in, out) from hidden, kv width and
# the MLP width (8960 for 1.5B, 18944 for 7B).
MLP = {"Qwen/Qwen2.5-Math-1.5B": 8960, "Qwen/Qwen2.5-Math-7B": 18944}


def lora_params(model: str) -> int:
    """Trainable parameters of LoRA r 16 on every linear layer: r x (in + out) per layer."""
    s, mlp = REAL_MODELS[model], MLP[model]
    h, kv = s["hidden"], s["kv"]
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, mlp), (h, mlp), (mlp, h)]
    return s["layers"] * sum(LORA_R * (i + o) for i, o in shapes)


def per_gpu_gb(model: str, options: dict, lora: bool, strategy: str, gpus: int) -> dict:
    s = REAL_MODELS[model]
    p = s["params"]
    trainable = lora_params(model) if lora else p
    shard = gpus if strategy in ("fsdp", "zero3") else 1
    rows = int(options["n_train"]) * int(options["prompts_per_step"]) // int(options["gradient_accumulation_steps"])
    tokens = int(options["max_completion_length"]) + 512
    terms = {  # bytes, per GPU
        "trainable_state_gb": 16 * trainable / shard,
        "ddp_buckets_gb": 4 * trainable if strategy == "ddp" and gpus > 1 else 0.0,
        # Under FSDP the full fine-tune's KL reference stays float32, sharded (FSDP casts it for compute).
        "frozen_bf16_gb": (4 if strategy == "fsdp" and not lora else 2) * p / shard,
        # FSDP: the transformers sampler's own whole bf16 copy (engine/samplers/hf.py, own_copy).
        "sampler_copy_gb": 2 * p if strategy == "fsdp" else 0.0,
        "gathered_layer_gb": 2 * 2 * (p - s["vocab"] * s["hidden"]) / s["layers"] if shard > 1 else 0.0,
        "logits_gb": rows * tokens * s["vocab"] * 8,
        "activations_gb": rows * tokens * s["hidden"] * s["layers"] * 2,
    }
    total = sum(terms.values()) * OVERHEAD
    return {"recipe": options["config"], "model": model, "lora": lora, "strategy": strategy, "gpus": gpus,
            "rows_per_micro_batch": rows, "tokens_per_row": tokens, "trainable_params": trainable,
            **{k: v / 1e9 for k, v in terms.items()}, "total_gb": total / 1e9, "fits_80gb": total / 1e9 <= GPU_GB}


def memory_table() -> list[dict]:
    out = []
    for name in RECIPES:
        options = {**recipe(CONFIGS / name), "config": name}
        for lora in (False, True):
            for strategy in STRATEGIES:
                for gpus in GPUS:
                    if gpus == 1 and strategy != "ddp":
                        continue  # one GPU: nothing to shard
                    out.append(per_gpu_gb(options["model"], options, lora, strategy, gpus))
    return out


def markdown(rows: list[dict]) -> list[str]:
    lines = [f"Per-GPU memory (GB, estimate from the shapes; fits = at most {GPU_GB} GB) — "
             "full fine-tuning (FT) and LoRA r 16:", "",
             "| recipe | update | 1 GPU | " + " | ".join(f"{s.upper()} x{g}" for s in STRATEGIES for g in GPUS[1:]) + " |",
             "|---|---|---:|" + "---:|" * (len(STRATEGIES) * (len(GPUS) - 1))]
    key = {(r["recipe"], r["lora"], r["strategy"], r["gpus"]): r for r in rows}
    for name in RECIPES:
        for lora in (False, True):
            cells = [key[(name, lora, "ddp", 1)]] + [key[(name, lora, s, g)] for s in STRATEGIES for g in GPUS[1:]]
            fmt = lambda r: f"{r['total_gb']:.0f}" + ("" if r["fits_80gb"] else " ✗")  # noqa: E731
            lines.append(f"| {name} | {'LoRA' if lora else 'FT'} | " + " | ".join(fmt(c) for c in cells) + " |")
    lines += ["", "✗: over 80 GB. Terms per GPU (full fine-tuning, 7B AIME recipe, FSDP x8): " + ", ".join(
        f"{k.removesuffix('_gb')} {v:.1f}" for k, v in key[("qwen2.5-math-7b-aime24.yaml", False, "fsdp", 8)].items()
        if k.endswith("_gb") and k != "total_gb") + " GB (before the 10% overhead)."]
    return lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_run(ranks: int, out: Path, episodes: int) -> dict:
    """One demo run at ``ranks`` processes, one thread each: its per-step times from metrics.jsonl."""
    args = ["run", "--episodes", str(episodes), "--progress", "false", "--output_dir", str(out)]
    launcher = [sys.executable, "-m", "engine.cli.main"] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
        "--master_port", str(free_port()), "-m", "engine.cli.main"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([*launcher, *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{ranks}-rank demo run failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if not r.get("update/skipped")]
    per = lambda key: sum(r[key] for r in steps) / len(steps)  # noqa: E731
    summary = json.loads((out / "summary.json").read_text())
    return {"ranks": ranks, "steps": len(steps), "generate_s": per("time/generate_s"), "reward_s": per("time/reward_s"),
            "update_s": per("time/update_s"),
            "step_s": per("time/generate_s") + per("time/reward_s") + per("time/update_s"),
            "avg_at_16_after": summary["after"].get("accuracy/avg@16"), "load_average": os.getloadavg()[0]}


def timing(repeats: int, episodes: int) -> dict:
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            for ranks in ((1, 2) if i % 2 == 0 else (2, 1)):  # alternate which goes first
                runs.append(demo_run(ranks, Path(tmp) / f"r{i}-{ranks}", episodes))
                print(f"repeat {i}: {ranks} rank(s): {runs[-1]}", flush=True)
    one = statistics.median(r["step_s"] for r in runs if r["ranks"] == 1)
    two = statistics.median(r["step_s"] for r in runs if r["ranks"] == 2)
    ray = json.loads((RESULTS / "ray.json").read_text()) if (RESULTS / "ray.json").exists() else {}
    return {"runs": runs, "step_s_1_rank": one, "step_s_2_ranks": two, "speedup": one / two,
            "parallel_efficiency": one / (2 * two), "non_parallel_share": (two - one / 2) / two,
            "ray_fan_out_efficiency": ray.get("suite", {}).get("efficiency")}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["all", "memory", "timing"], default="all")
    ap.add_argument("--repeats", type=int, default=2, help="1-rank / 2-rank pairs, alternated")
    ap.add_argument("--episodes", type=int, default=1, help="demo episodes per run (4 steps each)")
    args = ap.parse_args(argv)
    record = provenance.collect(__file__, argv, threads_per_run=1)
    rows = memory_table()
    timed = timing(args.repeats, args.episodes) if args.part in ("all", "timing") else None
    result = {"provenance": provenance.finish(record), "memory": rows, "gpu_gb": GPU_GB, "overhead": OVERHEAD,
              "timing": timed}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "distributed.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    md = ["# Distributed update", ""]
    if timed:
        md += ["The demo (its preset, 1 episode = 4 steps of 32 prompts), one thread per process, medians over "
               f"{args.repeats} alternated pairs; per optimizer step (sampling + scoring + update, rank 0's clock):", "",
               "| ranks | step s | generate s | update s | avg@16 after |", "|---:|---:|---:|---:|---:|"]
        for ranks in (1, 2):
            mine = [r for r in timed["runs"] if r["ranks"] == ranks]
            med = lambda key: statistics.median(r[key] for r in mine)  # noqa: E731
            md.append(f"| {ranks} | {med('step_s'):.2f} | {med('generate_s'):.2f} | {med('update_s'):.2f} | "
                      f"{100 * med('avg_at_16_after'):.1f} |")
        ray_eff = timed["ray_fan_out_efficiency"]
        md += ["", f"Speed-up {timed['speedup']:.2f}x, parallel efficiency {timed['parallel_efficiency']:.2f} "
               f"(Ray fan-out of separate jobs: {ray_eff if ray_eff is None else f'{ray_eff:.2f}'}); non-parallel share of a "
               f"2-rank step {100 * timed['non_parallel_share']:.0f}% (gathers, all-reduce, waiting, repeated work).", ""]
    md += ["## Memory per GPU", ""] + markdown(rows) + ["", provenance.footer(result["provenance"])]
    (RESULTS / "distributed.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print("\n".join(md))
    return result


if __name__ == "__main__":
    main()
