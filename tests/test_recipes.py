"""Every config in benchmarks/configs/ in miniature (benchmarks/miniature.py): the real architecture class,
vocabulary size, compute dtype, optimizer, schedule, gradient accumulation, num_iterations, LoRA-or-full and
KL settings, two steps with lengths scaled down. A recipe that would not train on a GPU fails here.

Each recipe runs through the real ``ttrl run`` in a subprocess (its peak memory read from the kernel when it
exits); a second check feeds the same rows to the recipe's update in its GPU precision and in float32, and
asserts the two move the weights alike."""

import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.miniature import (CONFIGS, SCALED, make_data, make_model_dir, miniature_options, recipe, runs_on_gpu,
                                  trained_per_group)
from engine.distributed import trainable_parameters
from engine.update import Batch

RECIPES = sorted(CONFIGS.glob("*.yaml"))
ROOT = Path(__file__).resolve().parents[1]


def training_shape(config: Path) -> tuple:
    """What a recipe's miniature trains with: its options less those the miniature replaces (``SCALED``, the
    votes, data and dtype, and ``suite``, which only picks the data). Recipes of one shape run the same
    miniature — TTRL's AIME 2024 and AMC recipes differ only in episodes and suite — so one of them runs."""
    replaced = set(SCALED) | {"suite", "n_train", "n_votes", "limit", "data", "dtype"}
    return tuple(sorted((k, str(v)) for k, v in recipe(config).items() if k not in replaced))


SHAPES: dict[tuple, list[Path]] = {}
for _config in RECIPES:
    SHAPES.setdefault(training_shape(_config), []).append(_config)
DISTINCT = [configs[0] for configs in SHAPES.values()]  # one recipe per shape; its id names the others


def shape_id(config: Path) -> str:
    """``qwen2.5-math-1.5b-aime24+amc``: the recipe that runs, and the recipes of its shape after a +."""
    same = next(c for c in SHAPES.values() if c[0] == config)
    return "+".join([config.stem] + [c.stem.removeprefix(config.stem.rsplit("-", 1)[0] + "-") for c in same[1:]])


@pytest.fixture(scope="module")
def miniatures(tmp_path_factory):
    """One random miniature per real model the recipes name (None: the demo, already tiny)."""
    made = {}

    def get(config: Path):
        model = recipe(config).get("model")
        if model == "demo":
            return None
        if model not in made:
            made[model] = make_model_dir(tmp_path_factory.mktemp(model.replace("/", "_")), model)
        return made[model]

    return get


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    assert files, f"no weights saved in {path}"
    out = {}
    for f in files:
        out.update(load_file(f))
    return out


def model_path_of(args: list[str]) -> Path:
    from engine.cli.build import resolve_model_and_data
    from engine.config.options import parse_config

    return Path(resolve_model_and_data(parse_config(args + ["--output_dir", "/tmp/unused"]))[0])


# `ttrl run ARGS`, then the process's peak resident memory (MiB) written to the file named first.
PEAK_REPORTING_RUN = """
import resource, runpy, sys
report = sys.argv.pop(1)
sys.argv[0] = "ttrl"
try:
    runpy.run_module("engine.cli.main", run_name="__main__")
finally:
    open(report, "w").write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
"""


@functools.cache
def baseline_rss_mb() -> float:
    """Peak memory of a process that imports what ``ttrl run`` imports and loads no model (measured once:
    a process that imports TRL takes seconds to start)."""
    code = ("import resource, engine.cli.main, engine.cli.build, engine.loop, trl, transformers, peft; "
            "from trl import GRPOTrainer; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return float(out.stdout.split()[-1])


def memory_bound_mb(model_dir: Path, options: dict, dtype: str, lora: bool) -> float:
    """What the shapes say the run needs above the import baseline, with room for the allocator (x2).

    Weights: full fine-tuning keeps float32 masters, their gradients and Adam's two moments (16 bytes per
    parameter) plus the reference in the compute dtype; LoRA keeps the base in the compute dtype. Per
    micro-batch the update holds a few (rows, tokens, vocab) float32 tensors (logits, log-softmax, their
    gradients); the sampler holds a few (sequences, vocab) ones, never one per generated token."""
    config = json.loads((model_dir / "config.json").read_text())
    vocab = config["vocab_size"]
    params = sum(t.numel() for t in weights(model_dir).values())
    compute = 2 if dtype == "bfloat16" else 4
    state = params * (compute if lora else 16 + compute)
    rows = trained_per_group(options) * int(options.get("prompts_per_step", 8)) // int(options.get("gradient_accumulation_steps", 1))
    tokens = 16  # prompt (<= 5 characters + specials) + 8 completion tokens, padded
    update = 6 * rows * tokens * vocab * 4
    sequences = min(256, int(options.get("prompts_per_step", 8)) * 2 * trained_per_group(options))
    sampler = 4 * sequences * vocab * 4
    return 2 * (state + update + sampler) / 2**20 + 300


@pytest.mark.slow
@pytest.mark.parametrize("config", DISTINCT, ids=shape_id)
def test_recipe_in_miniature_trains_for_two_steps(config, miniatures, tmp_path):
    options = recipe(config)
    model_dir = miniatures(config)
    data = make_data(tmp_path / "data.jsonl", 2 * int(options.get("prompts_per_step", 8)))
    args = miniature_options(config, model_dir, data)
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", PEAK_REPORTING_RUN, str(tmp_path / "peak_mb"), "run", *args,
                           "--output_dir", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["train/loss"]) for r in rows), rows
    iterations = int(options.get("num_iterations", 1))
    assert rows[-1]["train/optimizer_steps"] == 2 * iterations

    lora = bool(options.get("lora", True))
    saved = weights(out / "adapter")
    if lora:  # LoRA B starts at zero: a trained adapter has moved it
        assert any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k)
    else:
        base = weights(model_dir or model_path_of(args))
        moved = [k for k in base if k in saved and not torch.equal(base[k].float(), saved[k].float())]
        assert len(moved) >= 0.9 * len(base), f"only {len(moved)} of {len(base)} tensors moved"
        assert {v.dtype for v in saved.values()} == {torch.float32}, "full fine-tuning saves float32 masters"

    if model_dir is not None:
        peak = float((tmp_path / "peak_mb").read_text())
        dtype = "bfloat16" if runs_on_gpu(options) else "float32"
        bound = baseline_rss_mb() + memory_bound_mb(model_dir, options, dtype, lora)
        assert peak < bound, f"peak {peak:.0f} MB over the shapes' bound {bound:.0f} MB"


def fixed_batch(groups: int, n: int, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    prompts, completions, rewards = [], [], []
    for g in range(groups):
        prompt = torch.randint(4, 40, (5,), generator=gen).tolist()
        for i in range(n):
            prompts.append(prompt)
            completions.append(torch.randint(4, 40, (8,), generator=gen).tolist())
            rewards.append(float((i + g) % 2))
    return Batch(prompts, completions, None, rewards, n)


GPU_RECIPES = [c for c in DISTINCT if runs_on_gpu(recipe(c))]


def test_every_recipe_has_a_miniature_of_its_shape():
    """The recipes left out of the runs above train exactly as one that runs (only episodes and suite differ)."""
    assert sum(len(c) for c in SHAPES.values()) == len(RECIPES) and len(DISTINCT) < len(RECIPES)
    for configs in SHAPES.values():
        first = recipe(configs[0])
        for other in configs[1:]:
            differ = {k for k in first.keys() | recipe(other).keys() if first.get(k) != recipe(other).get(k)}
            assert differ <= {"episodes", "suite"}, (configs[0].name, other.name, differ)


@pytest.mark.slow
@pytest.mark.parametrize("config", GPU_RECIPES, ids=shape_id)
def test_recipe_update_in_bf16_moves_the_weights_as_float32_does(config, miniatures, tmp_path):
    from engine.cli.build import build
    from engine.config.options import parse_config

    options = recipe(config)
    model_dir = miniatures(config)
    data = make_data(tmp_path / "data.jsonl", 2 * int(options["prompts_per_step"]))
    batch = fixed_batch(int(options["prompts_per_step"]), trained_per_group(options))
    deltas = {}
    for dtype in ("bfloat16", "float32"):
        cfg = parse_config(miniature_options(config, model_dir, data, dtype=dtype) + ["--output_dir", str(tmp_path / dtype)])
        torch.manual_seed(0)
        _, _, policy, _ = build(cfg)
        before = trainable_parameters(policy.model)
        for _ in range(2):         # two steps: the recipes' warm-up gives the first one a learning rate of 0
            policy.update(batch)
        after = trainable_parameters(policy.model)
        deltas[dtype] = torch.cat([(after[k] - before[k]).flatten() for k in sorted(before)])
    bf16, fp32 = deltas["bfloat16"], deltas["float32"]
    # Every weight float32 moved must move in bf16 too (embedding rows of unseen tokens move in neither).
    assert ((bf16 != 0) & (fp32 != 0)).sum() > 0.99 * (fp32 != 0).sum(), "weights float32 moves must move in bf16"
    assert torch.nn.functional.cosine_similarity(bf16, fp32, dim=0) >= 0.9
    assert 0.8 < bf16.norm() / fp32.norm() < 1.25
