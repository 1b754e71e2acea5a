"""Drift telemetry (engine.drift) on a real tiny model through the real loop: zero at the base, positive
after an update, measured on held-out prompts that are never sampled for training or evaluation."""

import json

import pytest
import torch
import torch.nn.functional as F

from factories import make_task
from engine.config.options import parse_config
from engine.drift import Drift, hold_out, start_drift
from engine.errors import ConfigError


class RecordingSampler:
    """The real sampler, recording which task ids each ``generate`` call asked for and how."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def generate(self, tasks, params, **kw):
        self.calls.append(([t.id for t in tasks], params.greedy, params.n))
        return self.inner.generate(tasks, params, **kw)

    def load_weights(self, model):
        return self.inner.load_weights(model)


def six_tasks(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps({"id": f"t{i}", "question": f"{i}+{i}=", "answer": str(2 * i)}) + "\n"
                            for i in range(6)))
    return path


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_drift_is_zero_at_the_base_and_positive_after_updates_on_prompts_never_trained_on(tiny_model, tmp_path, lora):
    from engine.cli.build import build
    from engine.loop import run

    out = tmp_path / "run"
    cfg = parse_config(["--model", str(tiny_model), "--data", str(six_tasks(tmp_path)), "--template", "{question}",
                        "--n_votes", "4", "--n_train", "2", "--prompts_per_step", "2", "--max_completion_length", "6",
                        "--eval_k", "2", "--learning_rate", "0.05", "--beta", "0.1", "--lora", str(lora).lower(),
                        "--drift_prompts", "2", "--output_dir", str(out), "--progress", "false", "--seed", "3"])
    torch.manual_seed(3)
    _, tasks, policy, sampler = build(cfg)

    train, drift = start_drift(tasks, 2, sampler, policy.model, 6)
    assert [t.id for t in train] == ["t0", "t1", "t2", "t3"]
    assert drift(policy.model) == {"drift/kl_heldout": 0.0, "drift/changed_fraction": 0.0}

    spy = RecordingSampler(sampler)
    run(cfg, sampler=spy, policy=policy, tasks=tasks, out_dir=out, log=lambda s: None)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2  # four tasks left, two per step
    for row in rows:
        assert row["drift/kl_heldout"] > 0
        assert 0 < row["drift/changed_fraction"] <= 1
    if lora:  # the embeddings carry no adapter: some base parameters never change
        assert rows[-1]["drift/changed_fraction"] < 1
    # The held-out prompts were decoded once, greedily, for the base completions — and never again.
    held = [call for call in spy.calls if {"t4", "t5"} & set(call[0])]
    assert held == [(["t4", "t5"], True, 1)]
    trained = {i for ids, greedy, n in spy.calls if n == cfg.ttrl.n_votes and not greedy for i in ids}
    assert trained == {"t0", "t1", "t2", "t3"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["compute"]["steps"] == 2


def test_kl_heldout_is_the_mean_per_token_kl_over_the_full_vocabulary(tiny_model):
    """Against a hand-written KL (torch's kl_div) on two fixed rows, with a perturbed copy as the policy."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    rows, starts = [[1, 5, 6, 7, 8, 9], [1, 9, 8, 7]], [3, 2]   # prompt + completion ids; prompt lengths
    drift = Drift(base, rows, starts)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with torch.no_grad():
        policy.model.layers[0].mlp.down_proj.weight.add_(0.5)
    total, tokens = 0.0, 0
    for ids, s in zip(rows, starts):
        x = torch.tensor([ids])
        with torch.no_grad():
            p = torch.log_softmax(policy(input_ids=x).logits[0, s - 1:-1], -1)
            q = torch.log_softmax(base(input_ids=x).logits[0, s - 1:-1], -1)
        total += float(F.kl_div(q, p, log_target=True, reduction="sum"))  # sum p (log p - log q)
        tokens += len(ids) - s
    assert drift.kl(policy) == pytest.approx(total / tokens, rel=1e-5) and total > 0
    changed = policy.model.layers[0].mlp.down_proj.weight.numel()
    assert drift.changed_fraction(policy) == pytest.approx(changed / sum(p.numel() for p in base.parameters()))


def test_hold_out_takes_the_last_tasks_and_leaves_some_to_train_on():
    tasks = [make_task(i) for i in range(5)]
    assert hold_out(tasks, 0) == (tasks, [])
    assert [t.id for t in hold_out(tasks, 2)[1]] == ["3", "4"]
    with pytest.raises(ConfigError, match="drift_prompts"):
        hold_out(tasks, 5)
