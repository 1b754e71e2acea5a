"""One training run as N Ray Train workers: ``ttrl run --num_workers N`` on a Ray cluster.

``fit`` hands a per-worker function to ``ray.train.torch.TorchTrainer`` and waits for it. Ray Train
does what a launcher does, on a cluster: it places the N workers (one GPU each on a GPU cluster, else
``ray_cpus`` CPUs each), initialises the ``torch.distributed`` process group among them (NCCL on GPUs,
gloo on CPU) and sets the torchrun environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR ...), so the
function each worker runs is the same rank-aware ``ttrl run`` that torchrun starts (``engine.distributed``
finds the group already there, and accelerate's ``PartialState`` in TRL's trainer takes it as it is).
When a worker dies (killed, out of memory, its node lost), Ray Train tears the worker group down and
starts it again, up to ``max_failures`` times.

Why not Ray Train's own checkpoints (``ray.train.report(checkpoint=...)``): the run directory already
holds a complete, atomically written checkpoint of everything a resume needs (weights, optimizer, every
rank's RNGs, the prompt stream, the filters' state: ``engine.rundir.checkpoint``), and a ``ttrl run`` into
a directory that holds one continues after its step. A restarted worker group is exactly that run again,
so it resumes by itself; copying the same state into Ray's storage as well would cost a second save per
checkpoint and give a second source of truth. The price: ``output_dir`` must be storage every worker can
see (one machine, or a shared file system on a cluster), which is what rank 0 writes anyway. Ray Train's
``storage_path`` then holds only its own bookkeeping (kept in the run directory).

The per-worker function is the caller's (``engine.cli.main``): this wing sits below the CLI and knows
Ray, not how a run is built.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from engine.cluster.connect import ClusterError, connect


def fit(worker: Callable[[dict], None], worker_config: dict, *, num_workers: int, address: str | None,
        cpus_per_worker: float, gpus_per_worker: float | None, max_failures: int, storage_path: Path,
        name: str) -> None:
    """Run ``worker(worker_config)`` on ``num_workers`` Ray Train workers (one process group) until every
    worker returns; restart the group up to ``max_failures`` times when a worker dies. ``gpus_per_worker``:
    None is one GPU each when the cluster has GPUs, else none. A worker's failure past the retries is
    raised again here: as the worker's own exception when it is one a user can fix (a ``ConfigError``),
    else as a ``ClusterError`` carrying Ray's account of it."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from engine.errors import ConfigError

    # Ray Train's print patch sends a worker's print() to its logger and, where Ray redirects stdout (it
    # does in workers), to the original print as well: rank 0's log lines would reach the driver twice.
    # Ray Train hands this variable on from the driver to its controller and workers.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    connect(address)
    cluster = ray.cluster_resources()
    gpus = (1.0 if cluster.get("GPU", 0) >= 1 else 0.0) if gpus_per_worker is None else gpus_per_worker
    resources = {"CPU": cpus_per_worker, **({"GPU": gpus} if gpus else {})}
    for key, each in resources.items():
        if each * num_workers > cluster.get(key, 0):
            raise ClusterError(f"num_workers {num_workers} x {each:g} {key} each is more than the cluster has "
                               f"({cluster.get(key, 0):g} {key}); lower --num_workers or --ray_cpus, or add nodes")
    trainer = TorchTrainer(
        worker, train_loop_config=worker_config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=bool(gpus), resources_per_worker=resources),
        run_config=RunConfig(name=name, storage_path=str(storage_path),
                             failure_config=FailureConfig(max_failures=max_failures)))
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as err:
        failures = {rank: getattr(e, "cause", None) or e for rank, e in (getattr(err, "worker_failures", None) or {}).items()}
        for failure in failures.values():
            if isinstance(failure, ConfigError):
                raise failure from None
        said = "; ".join(f"rank {rank}: {type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
                         for rank, e in sorted(failures.items())) or str(err).strip()[-2000:]
        raise ClusterError(f"the Ray Train run failed, {max_failures} restart(s) of its worker group allowed: "
                           f"{said}") from None
