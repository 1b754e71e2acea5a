"""Distributed update: what each recipe needs per GPU under DDP, FSDP and ZeRO-3 (from the shapes).

    python -m benchmarks.distributed

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
        "frozen_bf16_gb": 2 * p / shard,
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


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args = ap.parse_args(argv)
    record = provenance.collect(__file__, argv)
    rows = memory_table()
    result = {"provenance": provenance.finish(record), "memory": rows, "gpu_gb": GPU_GB, "overhead": OVERHEAD}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "distributed.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    md = ["# Distributed update: memory per GPU", ""] + markdown(rows) + ["", provenance.footer(result["provenance"])]
    (RESULTS / "distributed.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print("\n".join(md))
    return result


if __name__ == "__main__":
    main()
