"""Checkpoints: everything a run needs to continue exactly where it stopped, written atomically.

A TTRL run on a real model takes hours (80 episodes over AIME); a machine that dies at hour three
must not cost three hours. ``save`` writes ``RUN_DIR/checkpoint/`` with

- ``state.safetensors`` and ``state.json``: the policy's ``state_dict()`` (``GRPOPolicy``: the trainable
  weights — the LoRA adapter's, or every weight under full fine-tuning — TRL's optimizer and scheduler
  state and the trainer's step counters) and every RNG the run draws from (the loop's
  ``random.Random``, Python's, NumPy's, torch's CPU and CUDA generators). Every tensor (weights, Adam's
  moments and steps, torch's RNG states) is in the safetensors file; everything else (counters,
  optimizer hyper-parameters, scheduler state, Python's and NumPy's RNG states) is plain JSON
  (``engine.rundir.tensor_tree``). Nothing is a pickle, so loading a checkpoint runs no code from it: a
  ``torch.load(weights_only=False)`` of a file from elsewhere can execute anything;
- ``loop.json``: the position in the prompt stream (episode, this episode's shuffled order, index),
  the step count, cumulative compute, the metrics history (so ``metrics.jsonl`` can be cut back to it)
  and the filters' own state (GRESO's per-prompt streaks and its adapted ``p``).

Atomicity: the new checkpoint is written into a temporary folder, flushed to disk, then swapped in by
two renames (``checkpoint`` → ``checkpoint.old``, temporary → ``checkpoint``) before the old one is
deleted. A kill at any instant leaves ``checkpoint`` or ``checkpoint.old`` complete, and ``load``
takes whichever is there. The weights of the frozen base model are never written: they are on disk.

Resuming restores the RNG states, so with the transformers sampler on CPU a resumed run takes the very
same random draws as one never interrupted and writes identical metrics (``tests/test_checkpoint.py``
checks this with a SIGKILL mid-run). The vLLM sampler's engine RNG lives in its own process and is not
captured: a resumed vLLM run continues correctly but samples different rollouts from that point on.

A run of N ranks (torchrun) is checkpointed by rank 0 alone: the policy state is the same on every rank
(DDP keeps the replicas equal; under FSDP every rank joins the gather of the shards and rank 0 writes
the whole state, in the same layout as one process), the loop state is the same by construction (``engine.loop``), and every
rank's RNG states, gathered, go in beside ``world_size``. Each rank restores its own on resume; resuming
on another number of ranks is refused (``CheckpointError`` naming both sizes): the ranks' sampling
streams cannot be split or merged.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from engine.rundir import tensor_tree
from engine.errors import ConfigError

NAME = "checkpoint"
FILES = ("state.safetensors", "state.json", "loop.json")
LEGACY = "state.pt"  # the pickle format of earlier versions: recognised, never loaded


class CheckpointError(ConfigError):
    """A checkpoint this version will not load; the message says why and what to do."""


def rng_states(rng: random.Random) -> dict:
    """Every RNG this process draws from: the loop's ``random.Random``, Python's, NumPy's, torch's CPU and CUDA."""
    return {"loop": rng.getstate(), "python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def save(out_dir: Path, *, policy, rng: random.Random, loop_state: dict, other_ranks: list[dict] | tuple = (),
         policy_state: dict | None = None) -> dict[str, float]:
    """Write the checkpoint for the step just finished; returns ``checkpoint/seconds`` and ``checkpoint/mb``.

    ``other_ranks``: the ``rng_states`` of ranks 1 .. N-1 of a distributed run, in rank order (this is rank 0).
    ``policy_state``: ``policy.state_dict()`` already taken (FSDP: every rank joined the gather), else taken here."""
    start = time.perf_counter()
    final, old = out_dir / NAME, out_dir / f"{NAME}.old"
    for stale in out_dir.glob(f".{NAME}.tmp-*"):  # left by a save that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out_dir / f".{NAME}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True)
    state = {
        "policy": policy.state_dict() if policy_state is None else policy_state,
        "rng": rng_states(rng),
        "world_size": 1 + len(other_ranks),
        "rng_other_ranks": list(other_ranks),
    }
    tree, tensors = tensor_tree.split(state)
    save_file(tensors, tmp / "state.safetensors")
    _fsync_file(tmp / "state.safetensors")
    write_synced(tmp / "state.json", json.dumps(tree).encode("utf-8"))
    write_synced(tmp / "loop.json", json.dumps(loop_state, default=str).encode("utf-8"))
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    _fsync_dir(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    size = sum(p.stat().st_size for p in final.iterdir())
    return {"checkpoint/seconds": time.perf_counter() - start, "checkpoint/mb": size / 2**20}


def find(out_dir: Path) -> Path | None:
    """The complete checkpoint in ``out_dir`` (``checkpoint``, else ``checkpoint.old``), or None.

    A checkpoint in the earlier pickle format (``state.pt``) is an error rather than None: starting
    over would cut back the run's metrics without a word."""
    for name in (NAME, f"{NAME}.old"):
        path = out_dir / name
        if all((path / f).exists() for f in FILES):
            return path
    for name in (NAME, f"{NAME}.old"):
        if (out_dir / name / LEGACY).exists():
            raise CheckpointError(
                f"{out_dir / name} is a checkpoint in the old pickle format ({LEGACY}), which is not loaded: "
                "unpickling a file can run arbitrary code. Finish that run with the ttrl-engine version that "
                "wrote it, or start this one in another --output_dir")
    return None


def load(path: Path, *, policy, rng: random.Random, rank: int = 0, world_size: int = 1) -> dict:
    """Restore the policy (``policy.load_state_dict``) and this rank's RNGs from ``path``; returns the loop state."""
    check_world_size(path, world_size)
    tensors = load_file(path / "state.safetensors")
    state = tensor_tree.join(json.loads((path / "state.json").read_text(encoding="utf-8")), tensors)
    policy.load_state_dict(state["policy"])
    rngs = state["rng"] if rank == 0 else state["rng_other_ranks"][rank - 1]
    rng.setstate(rngs["loop"])
    random.setstate(rngs["python"])
    np.random.set_state(rngs["numpy"])
    torch.set_rng_state(rngs["torch"])
    if rngs["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rngs["cuda"])
    return json.loads((path / "loop.json").read_text(encoding="utf-8"))


def check_world_size(path: Path, world_size: int) -> None:
    """``CheckpointError`` naming both sizes unless the checkpoint at ``path`` was written by a run of
    ``world_size`` processes (a checkpoint from before distributed runs counts as one)."""
    saved = json.loads((path / "state.json").read_text(encoding="utf-8")).get("world_size", 1)
    if saved != world_size:
        raise CheckpointError(
            f"{path} was written by a run of {saved} process(es) (world size {saved}), and this run has world size "
            f"{world_size}. A run resumes only on the world size it was started with (the checkpoint holds each "
            f"rank's random streams): launch it with {saved} process(es)"
            + (f" (torchrun --nproc_per_node {saved} -m engine.cli.main run ..., or ttrl run ... --num_workers {saved} "
               "through Ray Train)" if saved > 1 else " (plain ttrl run)"))


def write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and flush it to disk."""
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_file(path: Path) -> None:
    with path.open("rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
