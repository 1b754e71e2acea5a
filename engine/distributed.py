"""The process group a run may be one rank of: rank, world size and the few collectives the loop needs.

``ttrl run`` launched by ``torchrun --nproc_per_node N`` (or ``accelerate launch``) runs as N processes.
accelerate's ``PartialState`` — built by TRL's trainer, or earlier by ``init`` — initialises the
``torch.distributed`` process group from the launcher's environment (RANK, WORLD_SIZE, MASTER_ADDR ...;
gloo on CPU, NCCL on CUDA), and the update is data-parallel through accelerate (DDP). This module holds
only the facts and collectives the engine's own loop adds on top: who am I, how many are we, and
all-gathers of small Python objects (scored rollout groups, per-task grades, metrics dicts, RNG states),
and the whole weights of a model whose parameters may be FSDP shards (what checkpoints, the sampler's own
copy and the guard's snapshots read).

In one process — no launcher, or a world of one — every function is a no-op that returns what a world
of one would, so the one-process path calls no collective and changes in nothing.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def active() -> bool:
    """True when this process is one rank of an initialised process group of more than one."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Ranks in the run: the process group's size, else the launcher's WORLD_SIZE (before the group exists), else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (0 in one process)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Rank 0: the one process that writes the run directory and prints the run's log."""
    return rank() == 0


def launched() -> bool:
    """Started by a distributed launcher with more than one rank (torchrun, accelerate launch)."""
    return world_size() > 1


def fsdp() -> bool:
    """Launched with FSDP: ``accelerate launch`` with a ``distributed_type: FSDP`` config (such as the shipped
    ``engine/config/accelerate/fsdp.yaml``) says so in ACCELERATE_USE_FSDP, the variable accelerate itself reads."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes")


def init(cpu: bool, mixed_precision: str = "no") -> None:
    """Initialise the process group the launcher describes, through accelerate (as TRL's trainer would
    later), so that the CLI can wait on rank 0 before any model loads. ``cpu``: gloo even where CUDA is.

    FSDP on CPU: accelerate 1.15 turns FSDP on only for accelerator devices (``AcceleratorState`` lists
    MULTI_GPU, MULTI_XPU, ... and not MULTI_CPU), so under ``accelerate launch`` with an FSDP config a gloo
    run silently falls back to DDP. torch's ``fully_shard`` (FSDP2) does run on gloo, so on CPU this sets
    the state accelerate sets on a GPU — distributed type FSDP, the plugin read from the launcher's
    FSDP_* variables, its mixed precision — before TRL's trainer builds its ``Accelerator`` from it.
    Everything after (``accelerator.prepare`` sharding the model, FSDP2 mixed precision) is accelerate's own."""
    if not launched():
        return
    from accelerate import PartialState

    PartialState(cpu=cpu)  # the process group (already there when TrainingArguments made it: shared state)
    if not (cpu and fsdp()):
        return
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, TorchDynamoPlugin

    plugin = FullyShardedDataParallelPlugin()
    state = AcceleratorState(cpu=True, mixed_precision=mixed_precision, dynamo_plugin=TorchDynamoPlugin(),
                             _from_accelerator=True)
    state.distributed_type, state.fsdp_plugin = DistributedType.FSDP, plugin
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as AcceleratorState's own __init__ ends
    if mixed_precision != "no":
        plugin.set_mixed_precision(mixed_precision)


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if active():
        dist.barrier()


def all_gather(obj) -> list:
    """Every rank's ``obj``, in rank order (``[obj]`` in one process). Pickled: for small objects only."""
    if not active():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_lists(items: list) -> list:
    """The concatenation, in rank order, of every rank's ``items``: a list sharded by ``shard`` made whole."""
    if not active():
        return items
    return [x for part in all_gather(items) for x in part]


def shard(items: list, *, of: int | None = None, at: int | None = None) -> list:
    """This rank's contiguous slice of ``items`` (rank r of W takes ``items[r*n//W : (r+1)*n//W]``): the
    ranks' slices, concatenated in rank order, are ``items`` again, and their sizes differ by at most one."""
    size = world_size() if of is None else of
    here = rank() if at is None else at
    n = len(items)
    return items[here * n // size : (here + 1) * n // size]


def any_rank(flag: bool) -> bool:
    """True when ``flag`` is true on any rank: one decision every rank takes together (Ctrl-C seen by one)."""
    if not active():
        return flag
    return any(all_gather(bool(flag)))


def sum_across(value: float) -> float:
    """The sum of ``value`` over the ranks."""
    if not active():
        return value
    return sum(all_gather(value))


def mean_across(metrics: dict[str, float]) -> dict[str, float]:
    """Each key's mean over the ranks that report it (TRL's per-rank train metrics: loss, kl, ...)."""
    if not active():
        return metrics
    parts = all_gather(metrics)
    keys = dict.fromkeys(k for part in parts for k in part)
    return {k: sum(p[k] for p in parts if k in p) / sum(1 for p in parts if k in p) for k in keys}


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """The whole ``model``'s state on this rank: its own ``state_dict()``, or, when its parameters are FSDP
    shards (DTensors), the full tensors all-gathered onto every rank (torch's full-state-dict API; a
    collective every rank must join). What a sampler holding its own copy of the policy loads."""
    from torch.distributed.tensor import DTensor

    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))


def load_full_state(model, weights: dict[str, torch.Tensor]) -> None:
    """Load whole tensors keyed as in one process (what ``full_state_dict`` gives) into ``model``'s
    parameters of those names: copied in place, or, when the parameters are FSDP shards, each rank keeping
    its own shard of them (torch's full-state-dict API; every rank passes the whole tensors and joins)."""
    from torch.distributed.tensor import DTensor

    params = dict(model.named_parameters())
    if any(isinstance(p, DTensor) for p in params.values()):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        # strict=False: buffers, and the frozen weights under a partial load, are not in ``weights``
        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=False))
        return
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device))


def trainable_parameters(model, device=None) -> dict[str, torch.Tensor]:
    """Copies of the parameters the update may change (the LoRA ones under PEFT), whole under FSDP too;
    made on ``device`` when given (the guard's CPU snapshots: one copy, no second one on the accelerator),
    else where each tensor lives."""
    from torch.distributed.tensor import DTensor

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if any(isinstance(p, DTensor) for p in params.values()):
        full = full_state_dict(model)
        params = {n: full[n] for n in params}
    return {n: p.detach().to(device or p.device, copy=True) for n, p in params.items()}
