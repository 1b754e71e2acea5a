"""The update as a GPU recipe runs it, in miniature on CPU: mixed precision with float32 masters,
gradient accumulation, num_iterations and the schedule's length, gradient checkpointing, max_steps."""

import json
import random

import pytest
import torch

from engine.config.options import parse_config
from engine.distributed import trainable_parameters
from engine.update import Batch, optimizer_steps_for
from factories import make_model_dir


def policy_for(model, data, out, *extra):
    from engine.cli.build import build

    cfg = parse_config(["--model", str(model), "--data", str(data), "--template", "{question}", "--n_votes", "4",
                        "--n_train", "4", "--prompts_per_step", "2", "--episodes", "1", "--max_completion_length", "6",
                        "--eval_k", "2", "--output_dir", str(out), "--beta", "0.04", "--progress", "false",
                        "--seed", "3", *extra])
    torch.manual_seed(cfg.grpo.seed)
    random.seed(cfg.grpo.seed)
    return cfg, build(cfg)


def fixed_batch(groups: int = 2, n: int = 4, prompt_len: int = 5, completion_len: int = 12, seed: int = 0) -> Batch:
    """Rollouts made up once, so runs in different precisions train on the very same rows."""
    gen = torch.Generator().manual_seed(seed)
    prompts, completions, rewards = [], [], []
    for g in range(groups):
        prompt = torch.randint(4, 40, (prompt_len,), generator=gen).tolist()
        for i in range(n):
            prompts.append(prompt)
            completions.append(torch.randint(4, 40, (completion_len,), generator=gen).tolist() + [2])
            rewards.append(float((i + g) % 2))
    return Batch(prompts, completions, None, rewards, n)


def flat_delta(before: dict, after: dict) -> torch.Tensor:
    return torch.cat([(after[k].float() - before[k].float()).flatten() for k in sorted(before)])


def update_delta(model, data, out, *extra, steps: int = 2, batch: Batch | None = None):
    cfg, (_, _, policy, _) = policy_for(model, data, out, *extra)
    before = trainable_parameters(policy.model)
    metrics = [policy.update(batch or fixed_batch()) for _ in range(steps)]
    return policy, flat_delta(before, trainable_parameters(policy.model)), metrics


@pytest.fixture(scope="module")
def deep_model(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("deep"), hidden=64, layers=4)


def test_bf16_full_finetuning_at_the_paper_lr_moves_the_weights_as_float32_does(deep_model, tiny_data, tmp_path):
    # TTRL's recipe: full fine-tuning at lr 5e-7. A bf16 weight cannot take that step (bf16 spacing at
    # |w| ~ 0.02 is 1.2e-4); float32 masters under bf16 autocast must move like a float32 run.
    common = ("--lora", "false", "--learning_rate", "5e-7")
    policy, bf16, _ = update_delta(deep_model, tiny_data, tmp_path / "bf16", *common, "--dtype", "bfloat16")
    assert {p.dtype for p in policy.model.parameters() if p.requires_grad} == {torch.float32}
    assert policy.trainer.accelerator.mixed_precision == "bf16"
    assert next(policy.trainer.ref_model.parameters()).dtype == torch.bfloat16   # frozen: compute dtype
    _, fp32, _ = update_delta(deep_model, tiny_data, tmp_path / "fp32", *common, "--dtype", "float32")
    assert ((bf16 != 0) & (fp32 != 0)).sum() > 0.99 * (fp32 != 0).sum(), "weights float32 moves must move in bf16"
    cosine = torch.nn.functional.cosine_similarity(bf16, fp32, dim=0)
    assert cosine >= 0.9, f"bf16 update points elsewhere than float32's: cosine {cosine:.3f}"
    assert 0.8 < bf16.norm() / fp32.norm() < 1.25


def test_bf16_lora_keeps_the_base_in_bf16_and_the_adapter_in_float32(tiny_model, tiny_data, tmp_path):
    policy, delta, metrics = update_delta(tiny_model, tiny_data, tmp_path / "o", "--lora", "true", "--dtype", "bfloat16",
                                          "--learning_rate", "1e-3", steps=1)
    trainable = {p.dtype for p in policy.model.parameters() if p.requires_grad}
    frozen = {p.dtype for p in policy.model.parameters() if not p.requires_grad}
    assert trainable == {torch.float32} and frozen == {torch.bfloat16}
    assert delta.abs().sum() > 0 and all(torch.isfinite(torch.tensor(m["train/loss"])) for m in metrics)


def test_gradient_accumulation_2_equals_1_on_the_same_rows(tiny_model, tiny_data, tmp_path):
    common = ("--lora", "false", "--learning_rate", "1e-3", "--dtype", "float32")
    _, one, m1 = update_delta(tiny_model, tiny_data, tmp_path / "ga1", *common, steps=1)
    _, two, m2 = update_delta(tiny_model, tiny_data, tmp_path / "ga2", *common, "--gradient_accumulation_steps", "2",
                              steps=1)
    assert torch.allclose(one, two, atol=1e-6, rtol=1e-3)
    # The logged loss is the optimizer step's loss, not that divided by the accumulation once more.
    assert m1[0]["train/loss"] == pytest.approx(m2[0]["train/loss"], rel=1e-4, abs=1e-6)


def test_num_iterations_2_takes_two_optimizer_steps_per_batch_and_the_schedule_ends_at_its_floor(
        tiny_model, tiny_data, tmp_path):
    from engine.loop import run

    cfg, (_, tasks, policy, sampler) = policy_for(
        tiny_model, tiny_data, tmp_path / "run", "--num_iterations", "2", "--lr_scheduler_type", "linear",
        "--learning_rate", "1e-3", "--episodes", "2")
    # 4 tasks x 2 episodes, 2 prompts per update = 4 updates, each 2 optimizer steps.
    assert policy.total_steps == 8 == optimizer_steps_for(2, 4, 2, 1, 2)
    run(cfg, sampler=sampler, policy=policy, tasks=tasks, out_dir=tmp_path / "run", log=lambda s: None)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/optimizer_steps"] for r in rows] == [2, 4, 6, 8]
    assert policy.optimizer_steps == 8
    assert policy.trainer.lr_scheduler.get_last_lr()[0] == 0.0      # linear decay reached its floor
    lrs = [r["train/lr"] for r in rows]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] > 0


def test_cosine_schedule_with_warmup_spans_the_whole_run(tiny_model, tiny_data, tmp_path):
    from engine.loop import run

    cfg, (_, tasks, policy, sampler) = policy_for(
        tiny_model, tiny_data, tmp_path / "run", "--num_iterations", "2", "--lr_scheduler_type", "cosine",
        "--warmup_steps", "0.1", "--learning_rate", "1e-3", "--episodes", "3")
    run(cfg, sampler=sampler, policy=policy, tasks=tasks, out_dir=tmp_path / "run", log=lambda s: None)
    lrs = [json.loads(line)["train/lr"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lrs) == 6 and lrs == sorted(lrs, reverse=True)       # never climbs back to its peak
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_max_steps_stops_after_that_many_optimizer_steps(tiny_model, tiny_data, tmp_path):
    from engine.loop import run

    cfg, (_, tasks, policy, sampler) = policy_for(tiny_model, tiny_data, tmp_path / "run", "--max_steps", "1",
                                                  "--episodes", "3")
    assert policy.total_steps == 1
    summary = run(cfg, sampler=sampler, policy=policy, tasks=tasks, out_dir=tmp_path / "run", log=lambda s: None)
    assert summary["compute"]["steps"] == 1 and policy.optimizer_steps == 1
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


def saved_activation_bytes(policy, batch: Batch) -> int:
    """Bytes autograd keeps for the backward pass outside checkpointed regions (checkpointing's own hooks
    take the tensors of the regions it recomputes), over one update."""
    seen: dict[int, int] = {}

    def pack(t):
        seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        policy.update(batch)
    return sum(seen.values())


def test_gradient_checkpointing_follows_the_flag_and_lowers_activation_memory(deep_model, tiny_data, tmp_path):
    batch = fixed_batch(completion_len=40)
    kept = {}
    for flag in ("false", "true"):
        _, (_, _, policy, _) = policy_for(deep_model, tiny_data, tmp_path / flag, "--lora", "false",
                                          "--gradient_checkpointing", flag)
        assert policy.trainer.model.is_gradient_checkpointing == (flag == "true")
        kept[flag] = saved_activation_bytes(policy, batch)
    assert kept["true"] < 0.6 * kept["false"], kept


def test_lora_dropout_takes_effect(tiny_model, tiny_data, tmp_path):
    # TRL's disable_dropout runs after PEFT and would zero the adapter's dropout as well.
    _, (_, _, policy, _) = policy_for(tiny_model, tiny_data, tmp_path / "o", "--lora_dropout", "0.1")
    rates = {m.p for n, m in policy.model.named_modules() if isinstance(m, torch.nn.Dropout) and "lora_dropout" in n}
    assert rates == {0.1}
