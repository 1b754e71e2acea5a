"""GPU check: the recipes in miniature on CUDA in bf16, and one ~0.5B-shaped random model, measured.

For a CUDA machine that has torch, transformers, peft and accelerate but no vLLM and no model hub (TRL
and its ``datasets`` dependency installed there from wheels brought along): downloads nothing, builds
every model from a config (benchmarks/miniature.py). Per GPU recipe of ``benchmarks/configs/``: the
recipe's update (its optimizer, schedule, gradient accumulation, num_iterations, LoRA-or-full, KL) on the
miniature in bf16 autocast with float32 masters, two updates on fixed rows, against the same in float32:
weight-movement cosine and norm ratio (the check that bf16 full fine-tuning at lr 5e-7 really trains),
peak GPU memory and seconds per update; then one transformers-sampler call. Then a random model of
Qwen2.5-0.5B's shape (hidden 896, 24 layers, 151,936 rows) fully fine-tuned in bf16 for one update: peak
GPU memory against the shapes' formula.

Usage: ``python -m benchmarks.gpu_check`` → ``benchmarks/results/gpu_check.{json,md}``. It has not run
yet where the README says so.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.memory import fixed_batch
from benchmarks.miniature import (CONFIGS, make_data, make_model_dir, miniature_options, recipe, runs_on_gpu,
                                  trained_per_group)
from benchmarks.provenance import collect, finish, footer

RESULTS = Path(__file__).parent / "results"
HALF_B = {"hidden": 896, "layers": 24, "heads": 14, "kv_heads": 2, "intermediate": 4864}   # Qwen2.5-0.5B's shape


def missing() -> list[str]:
    return [m for m in ("torch", "transformers", "peft", "accelerate", "trl", "datasets")
            if importlib.util.find_spec(m) is None]


def update_run(config: Path, model_dir: Path, data: Path, dtype: str, out: Path) -> dict:
    import torch

    from engine.cli.build import build
    from engine.config.options import parse_config
    from engine.distributed import trainable_parameters

    options = recipe(config)
    cfg = parse_config(miniature_options(config, model_dir, data, dtype=dtype) + ["--output_dir", str(out)])
    torch.manual_seed(0)
    _, tasks, policy, sampler = build(cfg)
    batch = fixed_batch(int(options["prompts_per_step"]), trained_per_group(options), 5, 8)
    before = trainable_parameters(policy.model)
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(2):
        torch.cuda.synchronize()
        start = time.perf_counter()
        metrics = policy.update(batch)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    after = trainable_parameters(policy.model)
    delta = torch.cat([(after[k] - before[k]).float().flatten() for k in sorted(before)])
    from engine.types import SamplingParams

    start = time.perf_counter()
    groups = sampler.generate(tasks[: int(options["prompts_per_step"])], SamplingParams(n=4, max_new_tokens=8))
    torch.cuda.synchronize()
    return {"delta": delta, "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20, "update_s": times,
            "sample_s": time.perf_counter() - start, "sampled": sum(len(g.rollouts) for g in groups),
            "loss": metrics["train/loss"], "compute_dtype": cfg.model.dtype,
            "master_dtypes": sorted({str(p.dtype) for p in policy.model.parameters() if p.requires_grad})}


def check_recipe(config: Path, tmp: Path) -> dict:
    import torch

    options = recipe(config)
    model_dir = make_model_dir(tmp / config.stem, options["model"])
    data = make_data(tmp / f"{config.stem}.jsonl", 2 * int(options["prompts_per_step"]))
    runs = {dtype: update_run(config, model_dir, data, dtype, tmp / f"{config.stem}-{dtype}")
            for dtype in ("bfloat16", "float32")}
    bf16, fp32 = runs["bfloat16"].pop("delta"), runs["float32"].pop("delta")
    return {"config": config.name, "lora": bool(options.get("lora", True)), "learning_rate": options.get("learning_rate"),
            "cosine_bf16_vs_fp32": float(torch.nn.functional.cosine_similarity(bf16, fp32, dim=0)),
            "norm_ratio_bf16_vs_fp32": float(bf16.norm() / fp32.norm()),
            "moved_fraction_bf16": float(((bf16 != 0) & (fp32 != 0)).sum() / (fp32 != 0).sum()), "runs": runs}


def check_half_b(tmp: Path) -> dict:
    """Full fine-tuning of a 0.5B-shaped random model in bf16: peak GPU memory against float32 masters +
    gradients + Adam (16 bytes/parameter) + the bf16 reference (2 bytes/parameter) + activations."""
    config = CONFIGS / "qwen2.5-math-1.5b-math500.yaml"
    model_dir = make_model_dir(tmp / "half_b", "Qwen/Qwen2.5-Math-1.5B", **HALF_B)
    data = make_data(tmp / "half_b.jsonl", 64)
    run = update_run(config, model_dir, data, "bfloat16", tmp / "half_b-run")
    from safetensors.torch import load_file

    params = sum(t.numel() for t in load_file(model_dir / "model.safetensors").values())
    run.pop("delta")
    return {"params": params, "formula_state_mb": 18 * params / 2**20, **run}


def main() -> dict:
    gone = missing()
    if gone:
        raise SystemExit(f"gpu_check needs {', '.join(gone)} installed (trl and datasets from wheels brought along)")
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_check needs a CUDA device; on CPU the same checks run as tests/test_recipes.py")
    prov = collect(__file__, gpu=torch.cuda.get_device_name(0))
    tmp = Path(tempfile.mkdtemp())
    recipes = [check_recipe(c, tmp) for c in sorted(CONFIGS.glob("*.yaml")) if runs_on_gpu(recipe(c))]
    for r in recipes:
        print(r["config"], f"cosine {r['cosine_bf16_vs_fp32']:.3f}", f"peak {r['runs']['bfloat16']['peak_gpu_mb']:.0f} MB",
              flush=True)
    half_b = check_half_b(tmp)
    result = {"provenance": finish(prov), "recipes": recipes, "half_b_full_ft": half_b,
              "passed": all(r["cosine_bf16_vs_fp32"] >= 0.9 and 0.8 < r["norm_ratio_bf16_vs_fp32"] < 1.25
                            and r["moved_fraction_bf16"] > 0.9 for r in recipes)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# GPU check on {prov['gpu']}", "",
             "| recipe (miniature) | bf16 vs fp32 cosine | norm ratio | moved | peak GPU MB (bf16) | update s (bf16) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in recipes:
        b = r["runs"]["bfloat16"]
        lines.append(f"| {r['config']} | {r['cosine_bf16_vs_fp32']:.3f} | {r['norm_ratio_bf16_vs_fp32']:.2f} | "
                     f"{r['moved_fraction_bf16']:.1%} | {b['peak_gpu_mb']:.0f} | {min(b['update_s']):.2f} |")
    lines += ["", f"0.5B-shaped full fine-tune (bf16 autocast, fp32 masters): {half_b['params'] / 1e6:.0f}M parameters, "
              f"peak {half_b['peak_gpu_mb']:.0f} MB against {half_b['formula_state_mb']:.0f} MB of weights + Adam + reference "
              f"by formula; update {min(half_b['update_s']):.2f} s.", "", footer(result["provenance"]), ""]
    (RESULTS / "gpu_check.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    sys.exit(0 if main().get("passed") else 1)
