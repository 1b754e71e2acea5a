"""A rollout pool: ``rollout_workers`` samplers as Ray actors behind the ``Sampler`` protocol.

``generate`` shards the prompts across the actors (contiguous, balanced slices, so groups come back in
the order the loop asked for them) and samples every shard at once; ``load_weights`` puts the policy's
current weights (LoRA merged, ``engine.samplers.vllm.policy_weights``) into Ray's object store *once*
per update, and every actor loads that one object — on a node, the actors read the same shared-memory
copy instead of each receiving their own.

Each actor owns one sampler: the transformers sampler (``HFSampler`` over its own copy of the model,
on the GPU Ray gives it, or on ``ray_cpus`` threads of CPU), or an in-process vLLM engine
(``VLLMSampler``, one per GPU). Actor ``i`` is seeded with ``seed + i`` once, when it starts, so a run
is reproducible: the rollouts of actor ``i`` are the ones the same sampler, seeded the same way and
handed the same shards in the same order, produces in one process (tests/test_ray.py checks this).
Like vLLM's engine RNG, the actors' RNG state is not in a checkpoint: a resumed run continues
correctly but samples different rollouts from that point on.

The pool is the cluster's own code path: nothing here runs unless ``rollout_workers > 1``.
"""

from __future__ import annotations

import os
import time

from engine.types import RolloutGroup, SamplingParams, Task


def shard(items: list, n: int) -> list[list]:
    """``items`` in ``n`` contiguous slices whose sizes differ by at most one (larger ones first).

    >>> shard([1, 2, 3, 4, 5], 2), shard([1], 3)
    ([[1, 2, 3], [4, 5]], [[1], [], []])
    """
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


class RolloutWorker:
    """One sampler in one process. Used as a Ray actor by the pool; a plain object in tests."""

    def __init__(self, spec: dict, seed: int, threads: int = 1):
        import torch
        from transformers import set_seed

        from engine.data.models import load_tokenizer

        torch.set_num_threads(threads)
        set_seed(seed)  # once: the actor's random stream then runs on from call to call
        tokenizer = load_tokenizer(spec["model_path"])
        if spec["sampler"] == "vllm":
            from engine.samplers.vllm import VLLMSampler

            self.sampler = VLLMSampler(spec["model_path"], tokenizer, dtype=spec["dtype"], seed=seed, progress=False,
                                       **spec.get("vllm", {}))
        else:
            from transformers import AutoModelForCausalLM

            from engine.samplers.hf import HFSampler

            model = AutoModelForCausalLM.from_pretrained(spec["model_path"], dtype=getattr(torch, spec["dtype"]))
            model.to("cuda" if torch.cuda.is_available() else "cpu").eval()  # Ray sets CUDA_VISIBLE_DEVICES
            self.sampler = HFSampler(model, tokenizer, batch_size=spec.get("batch_size", 256), progress=False)

    def generate(self, tasks: list[Task], params: SamplingParams) -> list[RolloutGroup]:
        return self.sampler.generate(tasks, params) if tasks else []

    def load_weights(self, state: dict) -> float:
        """Load ``{name: tensor}`` (the policy's weights, LoRA merged); returns the seconds it took."""
        start = time.perf_counter()
        if hasattr(self.sampler, "llm"):
            self.sampler.load_weights(_Weights(state))
        else:
            model = self.sampler.model
            expected = {name for name, _ in model.named_parameters()}  # tied weights appear once
            if set(state) != expected:
                raise ValueError(f"weights do not match the sampler's model: missing "
                                 f"{sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}")
            model.load_state_dict(state, strict=False)  # strict would also demand the tied copies
        return time.perf_counter() - start


class _Weights:
    """A ``{name: tensor}`` dict dressed as a plain model, for ``VLLMSampler.load_weights``."""

    prefix = None

    def __init__(self, state: dict):
        self.state = state

    def named_parameters(self):
        return iter(self.state.items())


class RayRolloutPool:
    """``Sampler`` over ``workers`` Ray actors, each ``RolloutWorker(spec, seed + i)``."""

    def __init__(self, spec: dict, *, workers: int, seed: int, num_cpus: float = 1, num_gpus: float = 0):
        import ray

        actor = ray.remote(RolloutWorker)
        threads = max(1, int(num_cpus))
        self.actors = [actor.options(num_cpus=num_cpus, num_gpus=num_gpus).remote(spec, seed + i, threads)
                       for i in range(workers)]
        self.sync_s: list[float] = []

    def generate(self, tasks: list[Task], params: SamplingParams, desc: str = "sample") -> list[RolloutGroup]:
        import ray

        shards = shard(list(tasks), len(self.actors))
        refs = [a.generate.remote(s, params) for a, s in zip(self.actors, shards) if s]
        return [group for part in ray.get(refs) for group in part]

    def load_weights(self, model) -> dict[str, float]:
        """Broadcast ``model``'s current weights: one ``ray.put``, every actor loads that object."""
        import ray

        from engine.samplers.vllm import policy_weights  # no vllm import: a plain PyTorch helper

        start = time.perf_counter()
        ref = ray.put({name: t.detach().to("cpu").contiguous() for name, t in policy_weights(model)})
        ray.get([a.load_weights.remote(ref) for a in self.actors])
        self.sync_s.append(time.perf_counter() - start)
        return {"time/weight_sync_s": self.sync_s[-1]}

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []


def make_ray_pool(cfg, model_path: str, policy_model=None) -> RayRolloutPool:
    """The pool for ``rollout_workers > 1``, joined to ``ray_address`` (inside a ``ttrl suite --ray`` job:
    that suite's cluster). The policy's weights are synced once, as for vLLM, so a policy that differs
    from the checkpoint on disk (a resumed run) is what gets sampled."""
    from engine.data.models import torch_dtype
    from engine.cluster.connect import connect

    g, t = cfg.grpo, cfg.ttrl
    connect(os.environ.get("TTRL_RAY_ADDRESS") or t.ray_address)
    spec = {"model_path": model_path, "sampler": t.sampler, "dtype": torch_dtype(cfg.model.dtype, g.use_cpu),
            "batch_size": t.sampler_batch_size}
    if t.sampler == "vllm":
        spec["vllm"] = {"memory_fraction": g.vllm_gpu_memory_utilization, "max_model_len": g.vllm_max_model_length,
                        "enable_sleep_mode": g.vllm_enable_sleep_mode, "model_impl": g.vllm_model_impl}
    pool = RayRolloutPool(spec, workers=t.rollout_workers, seed=g.seed, num_cpus=t.ray_cpus,
                          num_gpus=0 if g.use_cpu else 1)
    if policy_model is not None:
        pool.load_weights(policy_model)
    return pool
