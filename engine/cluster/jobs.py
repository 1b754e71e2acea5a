"""``ttrl submit`` / ``ttrl status`` / ``ttrl logs``: a run or a suite as a job on a Ray cluster (Jobs API).

``ttrl submit CONFIG [--option value ...]`` sends ``ttrl run CONFIG ...`` and ``ttrl submit suite S1 S2
... [options]`` sends ``ttrl suite ...``, through ``JobSubmissionClient``, with a ``runtime_env`` whose
``working_dir`` is the config's folder (or ``--working_dir``): the folder is zipped and unpacked on the
cluster, and the job runs inside it. That is how a custom reward module beside the config travels with
it — ``parse_config`` puts the config's folder on ``sys.path``, there as here. Paths in the command
that lie inside the working directory are rewritten relative to it; files outside it do not travel and
must exist on the cluster. ``ttrl submit CONFIG --num_workers N`` needs nothing more: the job's driver is
that ``ttrl run`` process, which starts the Ray Train workers (``engine.cluster.train``); they inherit the
job's runtime environment, shipped folder included. The job's outputs land where its ``--output_dir`` points on the node that
runs it (default: inside the unpacked working directory, which Ray deletes eventually): give an
absolute path on shared storage to keep them.

Submit's own options (everything else goes to ``ttrl run`` / ``ttrl suite``):

  --address URL        the cluster's dashboard (default: $RAY_ADDRESS, else http://127.0.0.1:8265)
  --working_dir DIR    the folder to ship (default: the config's folder; for a suite, this folder)
  --pip PKG[,PKG...]   packages the job's environment installs first (runtime_env pip)
  --env KEY=VALUE      an environment variable for the job (repeatable)
  --num_cpus N / --num_gpus N   resources the job's driver process reserves (a `ttrl run` job trains
                       there: give it the GPU it needs; a suite's driver only waits on its tasks, and so
                       does a `ttrl run --num_workers N` driver: its Ray Train workers take the GPUs)
  --no_wait            print the job id and return, instead of following its logs to the end
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from engine.config.options import split_options
from engine.cluster.connect import ClusterError

SUBMIT_OPTIONS = ("address", "working_dir", "pip", "env", "num_cpus", "num_gpus")
EXCLUDES = [".git", ".venv*", "runs", "__pycache__", "*.pyc", ".pytest_cache", "checkpoint"]
DEFAULT_ADDRESS = "http://127.0.0.1:8265"


def client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    try:  # Ray >= 2.5x: send the cluster's auth token when one is here, as `ray start` and ray.init() do
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

        import logging

        quiet = logging.getLogger("ray._private.authentication.authentication_token_setup")
        level, _ = quiet.level, quiet.setLevel(logging.ERROR)  # it warns that auth is on: no news to a client
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        quiet.setLevel(level)
    except ImportError:
        pass
    address = address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ClusterError(f"cannot reach a Ray cluster's job server at {address}: {str(err).rstrip('.')}. "
                           "Start one with `ray start --head`, or pass --address http://HEAD:8265") from None


def job_command(argv: list[str], working_dir: Path) -> tuple[str, list[str]]:
    """The entrypoint (``python -m engine.cli.main run|suite ...``), with local files inside ``working_dir``
    made relative to it; also the local files outside it (which do not travel)."""
    command, args = ("suite", argv[1:]) if argv and argv[0] == "suite" else ("run", argv)
    outside, out = [], []
    for arg in args:
        path = Path(arg)
        if not arg.startswith("-") and path.is_file():
            try:
                arg = str(path.resolve().relative_to(working_dir))
            except ValueError:
                outside.append(arg)
        out.append(arg)
    return shlex.join(["python", "-m", "engine.cli.main", command, *out]), outside


def submit(argv: list[str]) -> int:
    """``ttrl submit``: send the job, then (unless --no_wait) follow its logs; the job's status decides
    the exit code (0 succeeded, 1 otherwise)."""
    own, rest = split_options(argv, SUBMIT_OPTIONS, flags=("no_wait",))
    if not rest:
        raise ClusterError("name what to run: `ttrl submit CONFIG.yaml [--option value ...]` or "
                           "`ttrl submit suite S1 S2 ... [--option value ...]`")
    config = rest[0] if rest[0] != "suite" and not rest[0].startswith("-") else None  # as parse_config reads it
    working_dir = Path(_last(own, "working_dir") or (Path(config).parent if config else ".")).resolve()
    if not working_dir.is_dir():
        raise ClusterError(f"--working_dir {working_dir} is not a folder")
    entrypoint, outside = job_command(rest, working_dir)
    for path in outside:
        print(f"ttrl submit: note: {path} is outside {working_dir}; it is not shipped and must exist on the cluster")
    if not any(a == "--output_dir" or a.startswith("--output_dir=") for a in rest):
        print("ttrl submit: note: no --output_dir; outputs stay in the job's unpacked working directory on the "
              "cluster (deleted eventually). Pass --output_dir /shared/path to keep them")
    env = {"PYTHONUNBUFFERED": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    for item in own.get("env", []):
        key, eq, value = item.partition("=")
        if not eq:
            raise ClusterError(f"--env {item}: expected KEY=VALUE")
        env[key] = value
    runtime_env = {"working_dir": str(working_dir), "excludes": EXCLUDES, "env_vars": env}
    if own.get("pip"):
        runtime_env["pip"] = [p for item in own["pip"] for p in item.split(",") if p]
    try:
        resources = {f"entrypoint_{k}": float(_last(own, k)) for k in ("num_cpus", "num_gpus") if _last(own, k)}
    except ValueError as err:
        raise ClusterError(f"--num_cpus / --num_gpus take a number: {err}") from None
    jobs = client(_last(own, "address"))
    job_id = jobs.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, **resources)
    print(f"ttrl submit: job {job_id}: {entrypoint}\n  (working dir {working_dir} shipped)\n"
          f"  follow it: ttrl status {job_id} · ttrl logs {job_id} --follow")
    if own.get("no_wait"):
        return 0
    return follow(jobs, job_id)


def status(argv: list[str]) -> int:
    """``ttrl status [JOB_ID] [--address URL]``: one job's state, or a table of the cluster's jobs."""
    own, rest = split_options(argv, ("address",))
    jobs = client(_last(own, "address"))
    if rest:
        info = _info(jobs, rest[0])
        print(f"{rest[0]}: {info.status}" + (f" ({info.message})" if info.message else ""))
        print(f"  entrypoint: {info.entrypoint}")
        return 0
    listed = sorted(jobs.list_jobs(), key=lambda j: j.start_time or 0)
    print(f"{'job':<28} {'status':<10} entrypoint")
    for info in listed:
        print(f"{info.submission_id or info.job_id:<28} {info.status:<10} {info.entrypoint}")
    return 0


def logs(argv: list[str]) -> int:
    """``ttrl logs JOB_ID [--follow] [--address URL]``: the job's output so far, or followed to its end."""
    own, rest = split_options(argv, ("address",), flags=("follow",))
    if len(rest) != 1:
        raise ClusterError("usage: ttrl logs JOB_ID [--follow] [--address URL]")
    jobs = client(_last(own, "address"))
    _info(jobs, rest[0])  # an unknown id fails here, clearly
    if own.get("follow"):
        return follow(jobs, rest[0])
    print(jobs.get_job_logs(rest[0]), end="")
    return 0


def follow(jobs, job_id: str) -> int:
    """Print the job's logs as they come until it ends; 0 if it succeeded."""
    import asyncio

    async def tail():
        async for lines in jobs.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(tail())
    info = jobs.get_job_info(job_id)
    print(f"ttrl: job {job_id} {info.status}" + (f": {info.message}" if info.message else ""), file=sys.stderr)
    return 0 if info.status == "SUCCEEDED" else 1


def _info(jobs, job_id: str):
    try:
        return jobs.get_job_info(job_id)
    except RuntimeError as err:
        raise ClusterError(f"no job {job_id!r} on this cluster ({err}); `ttrl status` lists them") from None


def _last(own: dict, key: str) -> str | None:
    return own[key][-1] if own.get(key) else None
