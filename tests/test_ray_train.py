"""``ttrl run --num_workers 2`` through Ray Train on a local cluster (engine/cluster/train.py, engine/cli/main.py).

Each run is a real ``ttrl run --num_workers 2 --ray_address local`` process: the driver starts a local Ray
cluster of its own (in a short temp dir of the test's, Ray's memory monitor off as in tests/test_ray.py),
Ray Train starts two workers of 1 CPU each, sets up their gloo process group, and each worker runs the
rank-aware ``ttrl run`` in-process. The demo run of tests/test_distributed.py (4 steps, a checkpoint
after each) is the workload, with its probe selector writing each rank's weight hash per step.

Checked: the run finishes with one metrics row per step, both workers hold the same weights at every
step, and its metrics equal the torchrun two-process run of the same options (the same ranks, seeds,
shards and gloo all-reduce: Ray Train only launches them differently). A worker SIGKILLed on its first
attempt after step 2 is restarted with its group by Ray Train; the new group resumes from the step-2
checkpoint and ends with the same 4 steps and the same metrics as the uninterrupted run. With the
collapse guard's snapshots, both workers end on the snapshot the guard chose.

Without Ray these tests skip, unless TTRL_REQUIRE_RAY=1 (CI sets it): then a missing Ray fails the run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

if os.environ.get("TTRL_REQUIRE_RAY") != "1":
    pytest.importorskip("ray.train")

from test_distributed import (DEMO, GUARDED, check_rollback_on_every_rank, env, probe_lines,  # noqa: E402
                              without_times)

from engine import distributed  # noqa: E402
from engine.config.options import parse_config  # noqa: E402
from engine.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_memory_monitor_refresh_ms": "0"}


@pytest.fixture(scope="module")
def demo_model():
    from engine.data.demo import build_demo

    return build_demo()  # built once here, so the two workers never race to build the cache


def ray_train_run(run_dir: Path, probe: Path, *extra: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """``ttrl run --num_workers 2 --ray_address local`` on the demo options, its Ray in a temp dir of its own."""
    temp = tempfile.mkdtemp(prefix="ttrlt", dir="/tmp")  # Ray's socket paths must stay short
    try:
        return subprocess.run([sys.executable, "-m", "engine.cli.main", "run", *DEMO, "--num_workers", "2",
                               "--ray_address", "local", "--output_dir", str(run_dir), *extra], cwd=ROOT,
                              env={**env(probe), **RAY_ENV, "RAY_TMPDIR": temp, "PYTHONUNBUFFERED": "1",
                                   **(extra_env or {})},
                              capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_train_two_workers(demo_model, tmp_path_factory) -> tuple[Path, Path, str]:
    """An uninterrupted two-worker Ray Train run of the demo, guarded: (run directory, probe folder, output)."""
    base = tmp_path_factory.mktemp("ray-train")
    run_dir, probe = base / "run", base / "probe"
    done = ray_train_run(run_dir, probe, *GUARDED)
    out = done.stdout + done.stderr
    assert done.returncode == 0 and (run_dir / "summary.json").exists(), out[-4000:]
    return run_dir, probe, out


def test_two_ray_train_workers_keep_identical_weights_and_match_torchrun(ray_train_two_workers, two_ranks):
    run_dir, probe, out = ray_train_two_workers
    ranks = [probe_lines(probe, r) for r in (0, 1)]
    assert [x["step"] for x in ranks[0]] == [0, 1, 2, 3], out[-3000:]
    assert [(x["step"], x["hash"]) for x in ranks[0]] == [(x["step"], x["hash"]) for x in ranks[1]]
    assert len({x["hash"] for x in ranks[0]}) == 4, "the weights change at every step"
    assert ranks[0][0]["pid"] != ranks[1][0]["pid"] != os.getpid(), "two worker processes"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4] and all(row["groups/trained"] == 8 for row in rows)
    assert json.loads((run_dir / "summary.json").read_text())["compute"]["steps"] == 4
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    assert state["world_size"] == 2 and len(state["rng_other_ranks"]) == 1
    assert json.loads((run_dir / "run.lock").read_text())["pid"] == ranks[0][0]["pid"], "rank 0 holds the lock"
    assert "ttrl run: finished on 2 Ray Train workers" in out

    torchrun_dir, torchrun_probe, _ = two_ranks  # the same options under torchrun (tests/conftest.py)
    assert without_times(run_dir) == without_times(torchrun_dir), "the same ranks, launched by Ray Train or torchrun"
    assert [x["hash"] for x in probe_lines(torchrun_probe, 0)] == [x["hash"] for x in ranks[0]]


def test_a_killed_ray_train_worker_is_restarted_and_the_run_resumes_from_its_checkpoint(ray_train_two_workers,
                                                                                       tmp_path):
    uninterrupted, _, _ = ray_train_two_workers
    run_dir, probe, marker = tmp_path / "run", tmp_path / "probe", tmp_path / "killed"
    done = ray_train_run(run_dir, probe, *GUARDED, "--selector", "plugins:KillOnceSelector",
                         extra_env={"TTRL_TEST_KILL_RANK": "1", "TTRL_TEST_KILL_STEP": "2",
                                    "TTRL_TEST_KILL_MARKER": str(marker)})
    out = done.stdout + done.stderr
    assert done.returncode == 0 and (run_dir / "summary.json").exists(), out[-4000:]
    killed = int(marker.read_text())
    rank1 = probe_lines(probe, 1)
    # First attempt: steps 0, 1, 2 (killed about to take step 3); the restarted group resumes after step 2.
    assert [x["step"] for x in rank1] == [0, 1, 2, 2, 3], out[-3000:]
    assert rank1[2]["pid"] == killed and rank1[3]["pid"] != killed, "a new worker process after the kill"
    assert rank1[3]["hash"] == rank1[2]["hash"], "the restarted worker holds the step-2 checkpoint's weights"
    assert "resumed from" in out and "after step 2" in out
    assert json.loads((run_dir / "summary.json").read_text())["compute"]["steps"] == 4
    assert without_times(run_dir) == without_times(uninterrupted)


@pytest.mark.parametrize("launched, args, message", [
    (2, [], "num_workers 2 asks Ray Train to start the ranks, but this process is already one of 2 ranks"),
    (1, ["--rollout_workers", "2"], r"rollout_workers 2 is not supported with num_workers 2 \(Ray Train\)"),
    (1, ["--prompts_per_step", "3"], r"prompts_per_step \(3\) must be a multiple of the number of processes \(2\)"),
])
def test_what_ray_train_workers_do_not_support_is_refused_at_start_up(monkeypatch, launched, args, message):
    monkeypatch.setattr(distributed, "world_size", lambda: launched)  # as under torchrun, without a process group
    with pytest.raises(ConfigError, match=message):
        parse_config(["--model", "m", "--data", "d", "--n_votes", "4", "--n_train", "4", "--num_workers", "2", *args])


def test_ray_train_workers_roll_back_to_a_guard_snapshot_together(ray_train_two_workers):
    """Rank 0's snapshot files, in the shared run directory, loaded by both workers at the rollback."""
    check_rollback_on_every_rank(*ray_train_two_workers)
