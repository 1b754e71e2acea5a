"""``ttrl suite ... --ray [ADDRESS]``: every (model, benchmark) job of a suite as one Ray task on a cluster.

``engine.cli.suites`` plans the jobs (which run directories are finished, which suites are unavailable,
the ``ttrl run`` arguments of the rest) and writes the summary; this module only runs the pending jobs,
as Ray tasks instead of one after the other:

* **Per-job resources.** Each job's own config is parsed here first (so a bad option fails before
  anything is submitted) and its task reserves ``ray_cpus`` CPUs and ``ray_gpus`` GPUs (default: one
  when the cluster has GPUs). ``ray.cluster_resources()`` and the nodes' own resources are checked before
  submitting: a job no node can hold is an error naming the job, what it asks and what the cluster has,
  not a task that waits forever. A job with ``rollout_workers > 1`` also needs its pool's actors; jobs
  are started only while the cluster's totals cover every started job's task *and* pool, so pools
  never wait on CPUs held by other jobs' tasks (a deadlock otherwise).
* **A fresh process per job.** The task (``max_calls=1``: its worker exits afterwards) runs ``ttrl run``
  as a child process, with ``OMP_NUM_THREADS`` set to its CPUs: GPU memory, vLLM engines and global
  seeds never leak from one benchmark into the next, as in the sequential ``ttrl suite``. The child is
  tied to its worker (``PR_SET_PDEATHSIG``): a killed worker takes its ``ttrl run`` with it, so a retry
  never races a stray attempt for the same run directory.
* **Retries.** A worker that dies (killed, out of memory, node lost) or a ``ttrl run`` killed by a
  signal is retried up to ``ray_max_retries`` times; the retry runs into the same run directory, so it
  continues from the last checkpoint. A ``ttrl run`` that *exits* with an error (a bad reward, a bad
  file) is not retried: it would fail the same way. Every attempt is appended to ``RUN_DIR/ray_job.log``.
* **Results as they finish.** A run directory with ``summary.json`` is finished (``engine.rundir.results``), so
  a re-run of the same command skips what finished even if the driver died. The task also returns the
  run directory's small files, and the driver writes those missing on its side: on a cluster without
  a shared filesystem the summary, metrics and report still land in the suite folder (the adapter and
  checkpoints stay on the worker's node).

Ray is imported only inside functions, so ``ttrl suite`` without ``--ray`` works without Ray installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from engine.cluster.connect import ClusterError, connect
from engine.config.options import parse_config
from engine.rundir.results import finish_job

LOG = "ray_job.log"
ATTEMPT_MARK = "=== ttrl suite --ray: attempt"
RETURNED_FILE_BYTES = 20_000_000  # larger files (adapters, checkpoints) stay on the worker's node


class JobKilled(RuntimeError):
    """A job's ``ttrl run`` died of a signal (OOM killer, a node going away): worth a retry."""


@dataclass
class Job:
    """One pending (model, suite) run: its summary row, ``ttrl run`` arguments and Ray resources."""

    row: dict
    args: list[str]
    cpus: float
    gpus: float | None          # None: one if the cluster has GPUs, else none
    workers: int                # rollout_workers: actors the job's own pool will ask for
    retries: int

    @property
    def name(self) -> str:
        model = self.row.get("model")
        return self.row["suite"] if not model else f"{Path(model).name}/{self.row['suite']}"

    def demand(self) -> dict[str, float]:
        """Everything the job holds while it runs: its task, plus its rollout pool's actors (each
        ``ray_cpus`` CPUs, and one GPU on a GPU job: ``engine.samplers.ray_pool``)."""
        pool = self.workers if self.workers > 1 else 0
        return {"CPU": self.cpus * (1 + pool), "GPU": (self.gpus or 0) + pool * (1.0 if self.gpus else 0.0)}


def requested_address(own: dict, rest: list[str]) -> str | None:
    """Where ``ttrl suite`` runs its jobs: None for here, one after the other (no Ray); ``""`` for the
    cluster Ray finds by itself; else an address (``auto``, ``host:port``, ``ray://host:port``, ``local``).
    ``--ray [ADDRESS]`` comes first, then ``--ray_address`` among the run options, then ``ray_address``
    in the ``--config`` file."""
    if own.get("ray") is not None:
        return own["ray"]
    for i, arg in enumerate(rest):
        if arg == "--ray_address" and i + 1 < len(rest):
            return rest[i + 1]
        if arg.startswith("--ray_address="):
            return arg.split("=", 1)[1]
    if own.get("config"):
        import yaml

        try:
            data = yaml.safe_load(Path(own["config"]).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            return None  # the jobs' own config parsing reports the problem
        if isinstance(data, dict) and data.get("ray_address"):
            return str(data["ray_address"])
    return None


def run_on_ray(todo: list[tuple[dict, list[str]]], address: str | None) -> None:
    """Run the pending ``(row, ttrl run arguments)`` jobs as Ray tasks, filling each row as it finishes."""
    if not todo:
        return
    jobs = [plan_job(row, args) for row, args in todo]  # every job's options are checked before any runs
    import ray

    connect(address)
    total = ray.cluster_resources()
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    for job in jobs:
        if job.gpus is None:
            job.gpus = 1.0 if total.get("GPU", 0) >= 1 else 0.0
        check_fits(job, total, nodes)
    print(f"ttrl suite --ray: {len(jobs)} jobs on a cluster of {_fmt(total)}", flush=True)
    task = ray.remote(max_calls=1)(run_job)
    free = {"CPU": total.get("CPU", 0.0), "GPU": total.get("GPU", 0.0)}
    pending, running, finished = list(jobs), {}, 0
    cwd = os.getcwd()
    while pending or running:
        while pending and all(free[k] >= v for k, v in pending[0].demand().items()):
            job = pending.pop(0)
            for k, v in job.demand().items():
                free[k] -= v
            ref = task.options(num_cpus=job.cpus, num_gpus=job.gpus, max_retries=job.retries,
                               retry_exceptions=[JobKilled], name=f"ttrl {job.name}").remote(
                job.name, job.args, cwd, max(1, int(job.cpus)))
            running[ref] = (job, time.perf_counter())
            print(f"==> {job.name}: submitted ({_fmt({'CPU': job.cpus, 'GPU': job.gpus})}); "
                  f"log: {Path(job.row['run_dir']) / LOG}", flush=True)
        [ref], _ = ray.wait(list(running), num_returns=1)
        job, start = running.pop(ref)
        for k, v in job.demand().items():
            free[k] += v
        collect(job, ref)
        finished += 1
        again = f" after {job.row['attempts']} attempts" if job.row.get("attempts", 1) > 1 else ""
        print(f"==> {job.name}: {job.row['status']} in {time.perf_counter() - start:.0f} s{again} "
              f"[{finished}/{len(jobs)} finished]", flush=True)


def plan_job(row: dict, args: list[str]) -> Job:
    """A job with the resources its own config asks for (``parse_config`` also validates it)."""
    cfg = parse_config(list(args))
    t = cfg.ttrl
    return Job(row=row, args=list(args), cpus=float(t.ray_cpus), gpus=t.ray_gpus, workers=t.rollout_workers,
               retries=t.ray_max_retries)


def check_fits(job: Job, total: dict[str, float], nodes: list[dict[str, float]]) -> None:
    """A clear error, before submitting, for a job the cluster could never run."""
    task = {"CPU": job.cpus, "GPU": job.gpus or 0}
    on_a_node = any(all(node.get(k, 0) >= v for k, v in task.items() if v) for node in nodes)
    in_total = all(total.get(k, 0) >= v for k, v in job.demand().items() if v)
    if on_a_node and in_total:
        return
    largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
    pool = f" plus {job.workers} rollout workers of {_fmt({'CPU': job.cpus, 'GPU': 1 if job.gpus else 0})} each" \
        if job.workers > 1 else ""
    raise ClusterError(f"job {job.name!r} asks for {_fmt(task)}{pool}, but the cluster has {_fmt(total)} "
                       f"(largest node: {_fmt(largest)}); lower ray_cpus / ray_gpus / rollout_workers or add nodes")


def collect(job: Job, ref) -> None:
    """Fill the job's row from its task: results, attempts, and its files written back where missing."""
    import ray

    row, log = job.row, Path(job.row["run_dir"]) / LOG
    try:
        result = ray.get(ref)
    except ray.exceptions.RayError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        row.update(status="failed", reason=f"{type(err).__name__} (retried up to {job.retries} times): {first[:300]}; "
                                           f"log: {log}")
        return
    run_dir = Path(row["run_dir"])
    for name, data in result["files"].items():
        if not (run_dir / name).exists():  # a cluster without a shared filesystem
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / name).write_bytes(data)
    finish_job(row, result["code"], see=f"log: {log}")
    row.update(attempts=result["attempt"], node=result["node"])


def run_job(name: str, args: list[str], cwd: str, threads: int) -> dict:
    """The body of one job's Ray task: ``ttrl run ARGS`` in a child process, its output to the job log
    and to the driver (Ray prefixes each line with the task's name, ``ttrl <job>``). Raises ``JobKilled``
    when the child dies of a signal, which Ray retries; returns the exit status and, on success, the run
    directory's small files."""
    import ray

    here = cwd if Path(cwd).is_dir() else os.getcwd()  # the driver's folder, where the node shares it
    run_dir = Path(here) / args[args.index("--output_dir") + 1]
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / LOG
    attempt = 1 + (log_path.read_text(encoding="utf-8").count(ATTEMPT_MARK) if log_path.exists() else 0)
    node = ray.util.get_node_ip_address()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
           "TTRL_RAY_ADDRESS": ray.get_runtime_context().gcs_address}  # a rollout pool joins this cluster
    start = time.perf_counter()
    with log_path.open("a", encoding="utf-8") as log:
        log.write(f"{ATTEMPT_MARK} {attempt}: worker pid {os.getpid()} on {node}, "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        log.flush()
        proc = subprocess.Popen([sys.executable, "-m", "engine.cli.main", "run", *args], cwd=here, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        log.write(f"ttrl run pid {proc.pid}\n")
        log.flush()
        for line in proc.stdout:
            log.write(line)
            log.flush()
            print(line.rstrip().rsplit("\r", 1)[-1], flush=True)  # a progress bar's last frame only
        code = proc.wait()
        log.write(f"=== exit status {code} after {time.perf_counter() - start:.0f} s\n")
    if code < 0:
        raise JobKilled(f"{name}: ttrl run was killed by signal {-code} (attempt {attempt})")
    return {"code": code, "attempt": attempt, "node": node, "files": _small_files(run_dir) if code == 0 else {}}


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGKILL it when the worker that started it dies."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _small_files(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir())
            if p.is_file() and p.stat().st_size <= RETURNED_FILE_BYTES}


def _fmt(resources: dict[str, float]) -> str:
    return ", ".join(f"{resources.get(k, 0):g} {k}" for k in ("CPU", "GPU"))
