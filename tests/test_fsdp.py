"""``ttrl run`` sharded with FSDP2 through the shipped accelerate config: real processes, gloo on CPU.

``accelerate launch --config_file engine/config/accelerate/fsdp.yaml`` with two ranks: the demo trains
under bf16 mixed precision with every weight, gradient and Adam moment sharded (torch ``fully_shard``);
the whole weights, gathered from the shards, are the same bits on both ranks after every step; a
Ctrl-C and a resume from the gathered checkpoint end exactly where the uninterrupted run does; a
one-step FSDP update on a fixed batch equals the one-process update. Refusals are checked on the config.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from engine import distributed
from engine.config.options import parse_config
from engine.errors import ConfigError
from test_distributed import (DEMO, GUARDED, ROOT, TESTS, check_rollback_on_every_rank, env, finish, free_port,
                              probe_lines, without_times)

FSDP_CONFIG = ROOT / "engine" / "config" / "accelerate" / "fsdp.yaml"
BF16 = ["--dtype", "bfloat16"]  # FSDP2's mixed precision: bf16 compute, float32 sharded masters


def accelerate_fsdp(*args, probe: Path | None = None) -> subprocess.Popen:
    """``accelerate launch --config_file fsdp.yaml ARGS``: two ranks, as the shipped config says."""
    return subprocess.Popen([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG),
                             "--main_process_port", str(free_port()), *args], cwd=ROOT, env=env(probe),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def ttrl_fsdp(*args, probe: Path | None = None) -> subprocess.Popen:
    return accelerate_fsdp("-m", "engine.cli.main", "run", *args, probe=probe)


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> tuple[Path, Path, str]:
    """An uninterrupted two-rank FSDP demo run: (run directory, probe folder, output)."""
    base = tmp_path_factory.mktemp("fsdp")
    run_dir, probe = base / "run", base / "probe"
    out = finish(ttrl_fsdp(*DEMO, *BF16, "--output_dir", str(run_dir), probe=probe))
    assert (run_dir / "summary.json").exists(), out[-3000:]
    return run_dir, probe, out


def test_an_fsdp_run_trains_sharded_with_the_same_gathered_weights_on_both_ranks(fsdp_run):
    run_dir, probe, out = fsdp_run
    ranks = [probe_lines(probe, r) for r in (0, 1)]
    assert all(x["sharded"] for r in ranks for x in r), "the policy was sharded by FSDP, not replicated by DDP"
    assert [(x["step"], x["hash"]) for x in ranks[0]] == [(x["step"], x["hash"]) for x in ranks[1]]
    assert [x["step"] for x in ranks[0]] == [0, 1, 2, 3]
    assert len({x["hash"] for x in ranks[0]}) == 4, "the weights change at every step"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4] and all(row["groups/trained"] == 8 for row in rows)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["dtype"] == "bfloat16"
    from safetensors.torch import load_file

    # The checkpoint and the saved weights are whole (gathered), in one process's layout.
    saved = load_file(run_dir / "adapter" / "model.safetensors")
    state = load_file(run_dir / "checkpoint" / "state.safetensors")
    embed = "model.embed_tokens.weight"
    assert saved[embed].shape == state[f"policy/weights/{embed}"].shape and saved[embed].shape[1] == 64
    assert json.loads((run_dir / "checkpoint" / "state.json").read_text())["world_size"] == 2


def test_an_fsdp_run_resumed_after_ctrl_c_ends_like_the_uninterrupted_one(fsdp_run, tmp_path):
    uninterrupted, _, _ = fsdp_run
    run_dir, probe = tmp_path / "run", tmp_path / "probe"
    proc = ttrl_fsdp(*DEMO, *BF16, "--output_dir", str(run_dir), probe=probe)
    deadline = time.time() + 300
    while len(probe_lines(probe, 1)) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    os.kill(probe_lines(probe, 1)[0]["pid"], signal.SIGINT)  # rank 1 alone sees Ctrl-C, during step 2
    out = finish(proc)
    assert proc.returncode != 0 and not (run_dir / "summary.json").exists(), out[-3000:]
    assert 2 <= len(without_times(run_dir)) < 4, out[-3000:]
    out = finish(ttrl_fsdp("--resume", str(run_dir), probe=probe))
    assert (run_dir / "summary.json").exists(), out[-3000:]
    assert without_times(run_dir) == without_times(uninterrupted)


def test_an_fsdp_run_rolls_back_to_a_guard_snapshot_on_every_rank(tmp_path):
    """Snapshots gather the shards (every rank joins); the rollback loads rank 0's file into each rank's shard."""
    run_dir, probe = tmp_path / "run", tmp_path / "probe"
    out = finish(ttrl_fsdp(*DEMO, *BF16, *GUARDED, "--output_dir", str(run_dir), probe=probe))
    check_rollback_on_every_rank(run_dir, probe, out)


def test_a_two_rank_fsdp_update_equals_the_one_process_update_of_the_whole_batch(tiny_model, tmp_path):
    """As the DDP test in test_distributed.py, with the weights sharded: FSDP2 reduce-scatters the gradients
    (averaged over the ranks, as DDP's all-reduce) and each rank steps its shard. One SGD step agrees with the
    one-process step up to float32 summation order: 1e-5 of the largest step (measured: 2.2e-7)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    probe = TESTS / "dp_update_probe.py"
    one = subprocess.run([sys.executable, str(probe), str(tiny_model), str(tmp_path / "one")], cwd=ROOT, env=env(),
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = finish(accelerate_fsdp(str(probe), str(tiny_model), str(tmp_path / "two")))
    with safe_open(tmp_path / "two" / "rank0.safetensors", "pt") as f:
        assert f.metadata()["sharded"] == "True", two[-3000:]
    a, b, c = (load_file(tmp_path / d / f"rank{r}.safetensors") for d, r in (("one", 0), ("two", 0), ("two", 1)))
    assert b.keys() == c.keys() == a.keys(), two[-3000:]
    assert all((b[k] == c[k]).all() for k in b), "the two ranks gather the same weights"
    largest = diff = 0.0
    for key in (k for k in a if k.startswith("after/")):
        before = key.replace("after/", "before/")
        assert (a[before] == b[before]).all()
        step_one, step_two = a[key] - a[before], b[key] - b[before]
        largest = max(largest, step_one.abs().max().item())
        diff = max(diff, (step_one - step_two).abs().max().item())
    assert largest > 1e-3, "the step moved the weights"
    assert diff <= 1e-5 * largest


def test_fsdp_is_refused_for_what_it_does_not_support_and_accepts_full_fine_tuning(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    base = ["--model", "m", "--data", "d", "--n_votes", "4", "--n_train", "4"]
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ConfigError, match="FSDP version 1 is not supported: the engine runs FSDP2"):
        parse_config([*base, "--lora", "false"])
    monkeypatch.setenv("FSDP_VERSION", "2")
    with pytest.raises(ConfigError, match="lora with FSDP is not supported"):
        parse_config([*base, "--lora", "true"])
    assert parse_config([*base, "--lora", "false"]).model.lora is False
