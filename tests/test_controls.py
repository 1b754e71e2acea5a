"""The spurious-reward controls (rewards/controls.py): rewards that ignore correctness, run beside TTRL."""

import json
import random

import torch

from factories import make_group
from engine.config.options import parse_config
from engine.distributed import trainable_parameters
from rewards import REWARDS
from rewards.controls import constant_reward, random_reward


def test_random_reward_ignores_the_answer_and_hits_its_rate():
    rng = random.Random(0)
    groups = [make_group([rng.choice(["4", "4", "4", "5", None]) for _ in range(16)]) for _ in range(200)]
    for i, g in enumerate(groups):
        g.task = type(g.task)(id=f"t{i}", question="q")
    rewards = [random_reward(g, p=0.3, seed=7) for g in groups]
    flat = [r for rs in rewards for r in rs]
    assert set(flat) == {0.0, 1.0}
    assert abs(sum(flat) / len(flat) - 0.3) < 0.03  # 3,200 draws: 3 standard errors is 0.024
    agree = [r for g, rs in zip(groups, rewards) for ro, r in zip(g.rollouts, rs) if ro.answer == g.label]
    disagree = [r for g, rs in zip(groups, rewards) for ro, r in zip(g.rollouts, rs) if ro.answer != g.label]
    assert abs(sum(agree) / len(agree) - sum(disagree) / len(disagree)) < 0.06  # no signal in it
    assert all(g.label in ("4", "5") and g.stats["vote/majority_ratio"] > 0 for g in groups)  # the vote is kept for telemetry
    again = [random_reward(g, p=0.3, seed=7) for g in groups]
    other = [random_reward(g, p=0.3, seed=8) for g in groups]
    assert again == rewards and other != rewards  # reproducible, and the seed matters


def test_constant_reward_gives_every_rollout_the_same_value():
    g = make_group(["4", "5", None])
    assert constant_reward(g, value=0.25) == [0.25] * 3 and g.label in ("4", "5")
    assert REWARDS["random"] is random_reward and REWARDS["constant"] is constant_reward


def run_control(tiny_model, tiny_data, out, reward):
    from engine.cli.build import build
    from engine.loop import run

    cfg = parse_config(["--model", str(tiny_model), "--data", str(tiny_data), "--template", "{question}",
                        "--n_votes", "4", "--n_train", "4", "--prompts_per_step", "2", "--episodes", "1",
                        "--max_completion_length", "6", "--eval_k", "2", "--output_dir", str(out),
                        "--learning_rate", "0.05", "--beta", "0.1", "--progress", "false", "--seed", "3",
                        "--max_steps", "1", "--reward", reward])
    torch.manual_seed(3)
    _, tasks, policy, sampler = build(cfg)
    before = trainable_parameters(policy.model)
    run(cfg, sampler=sampler, policy=policy, tasks=tasks, out_dir=out, log=lambda s: None)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    moved = any(not torch.equal(before[n], p) for n, p in trainable_parameters(policy.model).items())
    return rows, moved


def test_the_controls_through_a_real_run(tiny_model, tiny_data, tmp_path):
    """``--reward constant``: zero GRPO advantage and, at the first step, a KL gradient of zero (the
    policy is its reference), so the weights do not move; ``--reward random`` moves them. Both log the
    vote's telemetry against the labels, as a TTRL run does."""
    rows, moved = run_control(tiny_model, tiny_data, tmp_path / "constant", "constant")
    assert rows[0]["reward/mean"] == 1.0 and rows[0]["reward/std"] == 0.0 and not moved
    assert "label_accuracy" in rows[0] and "vote/majority_ratio" in rows[0]
    rows, moved = run_control(tiny_model, tiny_data, tmp_path / "random", "random")
    assert 0.0 < rows[0]["reward/mean"] < 1.0 and moved
    assert "label_accuracy" in rows[0]
