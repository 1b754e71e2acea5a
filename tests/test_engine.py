"""The engine core on a real tiny model: a two-step TTRL run through TRL's GRPO, end to end."""

import json
import math
import random

import pytest
import torch

import plugins
from factories import make_group, make_task
from engine.errors import ConfigError
from engine.config.options import parse_config
from engine.evaluate import pass_at_k
from engine.loop import PromptStream, RewardError, apply_reward, telemetry
from engine.registry import SpecError, resolve
from engine.distributed import trainable_parameters
from engine.update import Batch
from filters import SELECTORS
from rewards import REWARDS


def tiny_args(model, data, out, *extra):
    return ["--model", str(model), "--data", str(data), "--template", "{question}", "--n_votes", "4",
            "--n_train", "2", "--prompts_per_step", "2", "--episodes", "1", "--max_completion_length", "6",
            "--eval_k", "2", "--output_dir", str(out), "--learning_rate", "0.05", "--beta", "0.1",
            "--progress", "false", "--seed", "3", *extra]


def build_and_run(args):
    from engine.cli.build import build
    from engine.loop import run

    cfg = parse_config(args)
    torch.manual_seed(cfg.grpo.seed)
    random.seed(cfg.grpo.seed)
    _, tasks, policy, sampler = build(cfg)
    return cfg, tasks, policy, sampler, run


def test_two_step_run_trains_lora_against_the_base_model_without_labels(tiny_model, tiny_data, tmp_path):
    cfg, tasks, policy, sampler, run = build_and_run(
        tiny_args(tiny_model, tiny_data, tmp_path / "run", "--reward", "plugins:spy_reward"))
    assert all(t.label is not None for t in tasks)
    before = trainable_parameters(policy.model)
    assert before and all("lora" in name for name in before), "only LoRA parameters are trainable"

    # Spy on what TRL computed, to check its reference log-probs against the base model on disk.
    captured = []
    original = policy.trainer._generate_and_score_completions

    def spy(inputs):
        out = original(inputs)
        captured.append(out)
        return out

    policy.trainer._generate_and_score_completions = spy
    plugins.SEEN_LABELS.clear()
    summary = run(cfg, sampler=sampler, policy=policy, tasks=tasks, out_dir=tmp_path / "run", log=lambda s: None)

    # Two steps (4 tasks, 2 per step), and the LoRA weights moved.
    assert summary["compute"]["steps"] == 2
    after = trainable_parameters(policy.model)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    # The reward stage never saw a true label.
    assert len(plugins.SEEN_LABELS) == 4 and set(plugins.SEEN_LABELS) == {None}
    # The KL term was computed against the base model: TRL's reference log-probs equal the base
    # model's own (loaded fresh from disk), and at step 2 the policy has left it (KL > 0).
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    out = captured[-1]
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    with torch.no_grad():
        logits = base(input_ids=ids, attention_mask=mask).logits[:, -out["completion_ids"].size(1) - 1 : -1]
    base_logps = torch.log_softmax(logits / cfg.grpo.temperature, -1).gather(-1, out["completion_ids"].unsqueeze(-1)).squeeze(-1)
    m = out["completion_mask"].bool()
    assert torch.allclose(out["ref_per_token_logps"][m], base_logps[m], atol=1e-4)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[1]["train/kl"] > 0
    for key in ("label_accuracy", "reward_accuracy", "vote/majority_ratio", "reward/mean", "train/loss",
                "tokens/generated", "tokens/trained", "time/generate_s", "time/update_s"):
        assert key in rows[0], key
    for name in ("summary.json", "report.md", "curves.png", "adapter/adapter_config.json"):
        assert (tmp_path / "run" / name).exists(), name
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert {"accuracy/greedy", "accuracy/avg@2", "accuracy/maj@2"} <= set(s["after"])
    assert s["compute"]["tokens/trained"] > 0 and s["compute"]["time/total_s"] > 0


def test_true_labels_do_not_change_training(tiny_model, tiny_data, tmp_path):
    """Same seed, true labels vs corrupted labels: the trained weights are identical."""
    wrong = tmp_path / "wrong.jsonl"
    rows = [json.loads(line) for line in tiny_data.read_text().splitlines()]
    wrong.write_text("".join(json.dumps({**r, "answer": "999"}) + "\n" for r in rows))
    weights = []
    for data in (tiny_data, wrong):
        cfg, tasks, policy, sampler, run = build_and_run(
            tiny_args(tiny_model, data, tmp_path / data.stem, "--eval_greedy", "false"))
        run(cfg, sampler=sampler, policy=policy, tasks=tasks, out_dir=tmp_path / data.stem, log=lambda s: None)
        weights.append(trainable_parameters(policy.model))
    assert all(torch.equal(weights[0][n], weights[1][n]) for n in weights[0])


def test_full_finetuning_changes_base_weights(tiny_model, tiny_data, tmp_path):
    cfg, tasks, policy, sampler, run = build_and_run(
        tiny_args(tiny_model, tiny_data, tmp_path / "full", "--lora", "false", "--eval_greedy", "false"))
    before = trainable_parameters(policy.model)
    assert not any("lora" in n for n in before)
    run(cfg, sampler=sampler, policy=policy, tasks=tasks, out_dir=tmp_path / "full", log=lambda s: None)
    after = trainable_parameters(policy.model)
    assert any(not torch.equal(before[n], after[n]) for n in before)


# ---- pure logic -------------------------------------------------------------------------------


def test_prompt_stream_visits_every_task_each_episode_across_batch_boundaries():
    tasks = [make_task(i) for i in range(5)]
    stream = PromptStream(tasks, 2, random.Random(0))
    batches = [stream.take(4)[0] for _ in range(3)]
    assert [len(b) for b in batches] == [4, 4, 2] and stream.exhausted
    ids = [t.id for b in batches for t in b]
    assert set(ids[:5]) == set(ids[5:]) == {str(i) for i in range(5)}  # each episode visits all


def test_prompt_stream_skips_count_as_visits():
    stream = PromptStream([make_task(i) for i in range(4)], 1, random.Random(0))
    taken, skipped = stream.take(4, skip=lambda task: task.id in {"1", "2"})
    assert sorted(t.id for t in taken) == ["0", "3"] and skipped == 2 and stream.exhausted


def test_batch_from_groups_flattens_in_group_order():
    g1, g2 = make_group(["1", "2", "3"]), make_group(["4", "4", "5"])
    for g, rewards in ((g1, [1, 0, 0]), (g2, [1, 1, 0])):
        for r, v in zip(g.rollouts, rewards):
            r.reward = float(v)
    batch = Batch.from_groups([g1, g2], [[0, 2], [1, 2]])
    assert batch.rewards == [1.0, 0.0, 1.0, 0.0] and batch.n_per_group == 2 and len(batch) == 4
    with pytest.raises(ValueError, match="same number"):
        Batch.from_groups([g1, g2], [[0], [1, 2]])


def test_apply_reward_rejects_nan_wrong_count_and_exceptions():
    group = make_group(["1", "1"])
    with pytest.raises(RewardError, match=r"'plugins:nan_reward' returned nan for rollout 0 of task '0'"):
        apply_reward(plugins.nan_reward, "plugins:nan_reward", group)
    with pytest.raises(RewardError, match="returned 1 values for the 2 rollouts"):
        apply_reward(plugins.short_reward, "plugins:short_reward", group)
    with pytest.raises(RewardError, match="raised on task '0': ZeroDivisionError"):
        apply_reward(lambda g: [1 / 0], "boom", group)


def test_telemetry_label_and_reward_accuracy_by_hand():
    # Votes 4,4,5,None -> pseudo-label 4, rewards 1,1,0,0. True label 5: label wrong; the true
    # rewards would be 0,0,1,0, so the pseudo-rewards agree on rollout 3 only (1 of 4).
    group = make_group(["4", "4", "5", None], task=make_task(0, label=None))
    apply_reward(REWARDS["majority_vote"], "majority_vote", group)
    out = telemetry([group], {"0": "5"})
    assert out["label_accuracy"] == 0.0 and out["reward_accuracy"] == 0.25
    assert out["reward/mean"] == 0.5 and out["vote/majority_ratio"] == 0.5


def test_pass_at_k():
    assert pass_at_k(16, 0, 16) == 0.0 and pass_at_k(16, 3, 16) == 1.0
    assert math.isclose(pass_at_k(10, 2, 3), 1 - (8 * 7 * 6) / (10 * 9 * 8))


def test_resolve_names_specs_and_kwargs():
    assert resolve("first_k", SELECTORS, "selectors") is SELECTORS["first_k"]
    assert resolve("plugins:spy_reward", REWARDS, "rewards") is plugins.spy_reward
    bound = resolve({"name": "first_k", "k": 1}, SELECTORS, "selectors")
    assert bound(make_group(["1", "2"])) == [0]
    with pytest.raises(SpecError, match="unknown rewards 'nope'; valid names: majority_vote"):
        resolve("nope", REWARDS, "rewards")
    with pytest.raises(SpecError, match="cannot import"):
        resolve("plugins:missing", REWARDS, "rewards")


# ---- configuration ------------------------------------------------------------------------------


def test_config_defaults_yaml_and_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("model: some/model\ndata: x.jsonl\nbeta: 0.02\nn_votes: 8\nn_train: 4\n")
    cfg = parse_config([str(cfg_file), "--beta", "0.03", "--output_dir", str(tmp_path / "o")])
    assert cfg.grpo.beta == 0.03 and cfg.ttrl.n_votes == 8
    assert cfg.grpo.num_generations == 4 and cfg.grpo.per_device_train_batch_size == 4 * 8
    default = parse_config(["--model", "m", "--data", "d.jsonl", "--output_dir", str(tmp_path / "p")])
    assert default.grpo.beta == 0.001, "the KL anchor is on by default (TTRL's 0.001), unlike TRL's 0"


@pytest.mark.parametrize("args, message", [
    (["--n_train", "65"], "n_train (65) must be <= n_votes (64)"),
    (["--temperature", "0"], "temperature must be > 0"),
    (["--reward", "nope"], "reward: unknown rewards 'nope'; valid names:"),
    (["--template", "no placeholder"], "template must contain the placeholder {question}"),
    (["--gradient_accumulation_steps", "3"], "gradient_accumulation_steps (3) must divide"),
])
def test_bad_config_values_name_the_field(args, message, tmp_path):
    with pytest.raises(ConfigError) as err:
        parse_config(["--model", "m", "--data", "d.jsonl", "--output_dir", str(tmp_path), *args])
    assert message in str(err.value)


def test_yaml_with_unknown_key_fails(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("model: m\nvotes: 3\n")
    with pytest.raises(ConfigError, match=r"unknown keys \['votes'\]"):
        parse_config([str(cfg_file)])
