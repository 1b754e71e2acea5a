"""Adapters as a config choice (engine.adapters), each trained for two GRPO steps on the real demo model.

For every adapter type: only the adapter's own parameters train and they move; TRL's KL reference is the
base model (its reference log-probs equal those of the demo checkpoint loaded fresh from disk, after the
policy has left it); the transformers sampler samples from the new weights (its log-probs are the
policy's, not the base's); and the merged weights the vLLM sampler is sent (``policy_weights``) make a
plain model compute what the PEFT policy computes, without merging anything into the policy.
"""

import json

import pytest
import torch

from engine.adapters import adapter_deltas, peft_config
from engine.config.options import parse_config
from engine.errors import ConfigError
from engine.types import SamplingParams

# name: (adapter_type, its options, learning rate that moves the demo model in two steps)
ADAPTERS = {
    "lora-r16": ("lora", [], "1e-2"),
    "lora-r1": ("lora", ["--lora_r", "1", "--lora_alpha", "2"], "1e-2"),
    "tinylora": ("tinylora", ["--adapter_options", "{u: 4}"], "1e-1"),
    "shira": ("shira", ["--adapter_options", "{r: 4}"], "1e-2"),
    "osf": ("osf", ["--adapter_options", "{effective_rank: 8}"], "1e-2"),
}
PREFIX = {"lora": "lora_", "tinylora": "tinylora_", "shira": "shira_", "osf": "osf_"}


def demo_args(tmp_path, kind, extra, lr, *more):
    return ["--model", "demo", "--data", "demo", "--lora", "true", "--adapter_type", kind, *extra,
            "--learning_rate", lr, "--beta", "0.04", "--n_votes", "4", "--n_train", "4", "--prompts_per_step", "2",
            "--output_dir", str(tmp_path / "out"), "--progress", "false", "--seed", "1", *more]


def logprobs(model, prompt_ids, completion_ids) -> torch.Tensor:
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion_ids)[:, None]).squeeze(-1)


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_adapter_trains_against_the_base_and_reaches_the_samplers(name, tmp_path):
    from transformers import AutoModelForCausalLM

    from engine.cli.build import build, resolve_model_and_data
    from engine.samplers.hf import HFSampler
    from engine.samplers.vllm import policy_weights
    from engine.distributed import trainable_parameters
    from engine.update import Batch

    kind, extra, lr = ADAPTERS[name]
    cfg = parse_config(demo_args(tmp_path, kind, extra, lr))
    torch.manual_seed(0)
    _, tasks, policy, sampler = build(cfg)
    assert isinstance(sampler, HFSampler)
    before = trainable_parameters(policy.model)
    assert before and all(PREFIX[kind] in n for n in before), "only the adapter's parameters train"

    captured = []
    original = policy.trainer._generate_and_score_completions
    policy.trainer._generate_and_score_completions = lambda inputs: captured.append(original(inputs)) or captured[-1]
    metrics = []
    for _ in range(2):
        groups = sampler.generate(tasks[:2], SamplingParams(n=4, temperature=1.0, max_new_tokens=8))
        for group in groups:
            for i, r in enumerate(group.rollouts):
                r.reward = float(i % 2)  # reward variance: non-zero advantages
        metrics.append(policy.update(Batch.from_groups(groups, [[0, 1, 2, 3]] * 2)))
    after = trainable_parameters(policy.model)
    assert any(not torch.equal(before[n], after[n]) for n in before), "the adapter trained"
    assert metrics[1]["train/kl"] > 0, "the policy left its reference"

    # TRL's reference log-probs (step 2, adapter moved) equal the base checkpoint's, loaded fresh.
    base = AutoModelForCausalLM.from_pretrained(resolve_model_and_data(cfg)[0], dtype=torch.float32).eval()
    out = captured[-1]
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    with torch.no_grad():
        logits = base(input_ids=ids, attention_mask=mask).logits[:, -out["completion_ids"].size(1) - 1:-1]
    base_logps = torch.log_softmax(logits, -1).gather(-1, out["completion_ids"].unsqueeze(-1)).squeeze(-1)
    m = out["completion_mask"].bool()
    assert torch.allclose(out["ref_per_token_logps"][m], base_logps[m], atol=1e-5)

    # The transformers sampler samples from the trained weights: its log-probs are the policy's.
    fresh = sampler.generate(tasks[2:4], SamplingParams(n=2, temperature=1.0, max_new_tokens=8))
    moved = 0.0
    for group in fresh:
        for r in group.rollouts:
            mine = logprobs(policy.model, group.task.prompt_ids, r.token_ids)
            assert torch.allclose(torch.tensor(r.logprobs), mine, atol=1e-4)
            moved = max(moved, float((mine - logprobs(base, group.task.prompt_ids, r.token_ids)).abs().max()))
    assert moved > 1e-3, "the sampled log-probs are not the base model's"

    # The vLLM sampler's weights (adapter merged): a plain model given them computes what the policy does.
    merged = AutoModelForCausalLM.from_pretrained(resolve_model_and_data(cfg)[0], dtype=torch.float32).eval()
    missing, unexpected = merged.load_state_dict(dict(policy_weights(policy.model)), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied to the embeddings
    x = torch.tensor([list(tasks[0].prompt_ids)])
    policy.model.eval()
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=x).logits, policy.model(input_ids=x).logits, atol=1e-5)
        assert not torch.allclose(merged(input_ids=x).logits, base(input_ids=x).logits, atol=1e-4)
    assert adapter_deltas(policy.model), "the merged weights came from the adapter's deltas"
    assert not any(getattr(mod, "merged", False) for mod in policy.model.modules()), "the policy is not merged"


def test_adapter_options_reach_the_peft_config():
    cfg = peft_config("tinylora", {"u": 3, "r": 2}, target_modules="q_proj,v_proj")
    assert (type(cfg).__name__, cfg.u, cfg.r, sorted(cfg.target_modules)) == ("TinyLoraConfig", 3, 2, ["q_proj", "v_proj"])
    lora = peft_config("lora", {"use_rslora": True}, target_modules="all-linear", lora_r=1, lora_alpha=2)
    assert (lora.r, lora.lora_alpha, lora.use_rslora) == (1, 2, True)


@pytest.mark.parametrize("argv, message", [
    (["--adapter_type", "shira"], "needs --lora true"),                 # the demo preset is full fine-tuning
    (["--lora", "false", "--adapter_options", "{r: 2}"], "needs --lora true"),
    (["--lora", "true", "--adapter_type", "shira", "--adapter_options", "{rank: 4}"], "ShiraConfig has no field 'rank'"),
    (["--lora", "true", "--adapter_type", "osf", "--lora_r", "4"], "lora_r set, but adapter_type is osf"),
    (["--lora", "true", "--adapter_options", "{r: 2}"], "set r with --lora_r"),
    (["--lora", "true", "--adapter_type", "tinylora", "--adapter_options", "{target_modules: [q_proj]}"],
     "set by the engine"),
    (["--lora", "true", "--adapter_type", "tinylora", "--adapter_options", "{weight_tying: 3}"], "refuses them"),
    (["--lora", "true", "--adapter_type", "shira", "--adapter_options", "[4]"], "must be a mapping"),
    (["--lora", "true", "--adapter_type", "shira", "--selector", "influence"], "influence selector"),
    (["--lora", "true", "--adapter_type", "ia3"], "invalid choice"),
])
def test_an_adapter_setting_that_cannot_take_effect_is_refused_at_start_up(argv, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        parse_config(["--output_dir", str(tmp_path / "o"), *argv])


def test_the_plasticity_pair_is_two_disjoint_five_digit_tasks_split_by_the_carry(tmp_path):
    from benchmarks.adapters import demo_pair
    from engine.data.demo import demo_tasks

    a, b = (([json.loads(line) for line in p.read_text().splitlines()]) for p in demo_pair(tmp_path))
    carry = [int(r["prompt"][4]) + int(r["prompt"][6]) >= 10 for r in a + b]   # "xxxxx+y=": units of x, and y
    assert len(a) == len(b) == 128 and carry == [False] * 128 + [True] * 128
    prompts = [r["prompt"] for r in a + b]
    assert len(set(prompts)) == 256 and not set(prompts) & {t["prompt"] for t in demo_tasks()}
    assert all(int(r["answer"]) == sum(map(int, r["prompt"][:-1].split("+"))) for r in a + b)


def adapter_run(config: str, seed: int, gain: float, plastic: dict | None = None) -> dict:
    from benchmarks.adapters import AVG, PLASTICITY

    return {"config": config, "seed": seed, "trainable_parameters": 10, "after": {AVG: 0.5 + gain},
            "gain_avg16": gain, "gain_greedy": 0.0, "kl_heldout_end": 0.01, "changed_fraction_end": 1.0,
            "update_s_per_step": 2.0, **dict.fromkeys(PLASTICITY), **(plastic or {})}


def test_the_adapter_table_marks_plasticity_unmeasured_when_only_main_runs_ran():
    from benchmarks.adapters import PLASTICITY, summarize

    table = summarize([adapter_run("full", 0, 0.1), adapter_run("full", 1, 0.3),
                       adapter_run("lora_r1", 0, 0.2, dict.fromkeys(PLASTICITY, 0.1) | {"gain_b_after_a": 0.05})])
    assert table["full"]["gain_avg16"]["mean"] == pytest.approx(0.2)
    assert table["full"]["gain_b_fresh"] is None and table["full"]["plasticity"] is None
    assert table["lora_r1"]["plasticity"] == pytest.approx(0.5)
