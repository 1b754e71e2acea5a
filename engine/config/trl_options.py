"""TRL ``GRPOConfig`` options that this engine cannot honour, each with the reason it says at start-up.

Every ``GRPOConfig`` option is an option of ``ttrl run`` (the parser is TRL's own), but the engine
replaces two of the things TRL's trainer does: it samples rollouts itself (``engine/samplers/``,
TRL's generation is bypassed through ``rollout_func``), and its loop (``engine/loop.py``) stands where
``Trainer.train()`` would. Options that only configure those two parts would be accepted and then do
nothing. An option listed here is refused when it differs from its default, naming why and what to use
instead; every option not listed takes effect (``tests/test_trl_options.py`` walks this table).
"""

from __future__ import annotations

_GENERATION = ("configures TRL's own generation, which the engine replaces with its sampler; the sampler "
               "takes temperature, top_p and max_completion_length")
_SERVER = "the engine's vLLM sampler runs in-process (vllm.LLM, colocated); a vLLM server is not supported"
_CHECKPOINTS = "checkpoints are the engine's own: --save_every N, resume with ttrl run --resume RUN_DIR"
_EVAL = "evaluation is the engine's own: --eval_every, --eval_k, --eval_greedy"
_LOGS = "the engine logs one metrics row per step (metrics.jsonl, and --report_to trackers)"
_DATA = "there is no dataloader: the engine hands TRL its batches directly"
_HUB = "the engine saves the adapter or weights to the run directory; push that folder yourself"
_DISTRIBUTED = ("the engine is data-parallel through accelerate itself: launch `ttrl run` with torchrun --nproc_per_node N "
                "or accelerate launch (DDP); for FSDP launch with the shipped accelerate config, accelerate launch "
                "--config_file engine/config/accelerate/fsdp.yaml -m engine.cli.main run ...; DeepSpeed is not supported")
_DERIVED = "set by the engine from n_train, prompts_per_step and gradient_accumulation_steps"

REFUSED: dict[str, str] = {
    # TRL's generation, replaced by the engine's sampler
    "use_vllm": "the engine samples rollouts itself: choose vLLM with --sampler vllm (TRL would start a second vLLM engine)",
    "vllm_mode": _SERVER, "vllm_server_base_url": _SERVER, "vllm_server_host": _SERVER,
    "vllm_server_port": _SERVER, "vllm_server_timeout": _SERVER, "vllm_group_port": _SERVER,
    "vllm_tensor_parallel_size": "the engine's vLLM sampler runs one engine per process, without tensor parallelism",
    "vllm_structured_outputs_regex": _GENERATION, "top_k": _GENERATION, "min_p": _GENERATION,
    "repetition_penalty": _GENERATION, "generation_kwargs": _GENERATION, "cache_implementation": _GENERATION,
    "use_transformers_paged": _GENERATION, "use_transformers_continuous_batching": _GENERATION,
    "transformers_continuous_batching_config": _GENERATION, "max_tool_calling_iterations": _GENERATION,
    "ds3_gather_for_generation": _GENERATION, "num_generations_eval": _GENERATION,
    "chat_template_kwargs": "prompts are built by the engine: use --chat, --system_prompt and --template",
    "reward_weights": "TRL sees one reward, the engine's: combine rewards with a YAML list of {name, weight}",
    "multi_objective_aggregation": "TRL sees one reward, the engine's: combine rewards with a YAML list of {name, weight}",
    "shuffle_dataset": "the engine shuffles the prompts itself every episode (seeded by --seed)",
    "log_completions": _LOGS, "log_unique_prompts": _LOGS, "log_completions_hub_repo": _LOGS,
    "num_completions_to_print": _LOGS,
    # fields the engine derives from its own options
    "num_generations": _DERIVED, "per_device_train_batch_size": _DERIVED, "steps_per_generation": _DERIVED,
    "generation_batch_size": _DERIVED,
    # Trainer.train(), replaced by the engine's loop
    "num_train_epochs": "the engine's passes over the prompts are --episodes",
    "torch_compile": "not supported: the policy module is also sampled with generate() between updates",
    "torch_compile_backend": "not supported: the policy module is also sampled with generate() between updates",
    "torch_compile_mode": "not supported: the policy module is also sampled with generate() between updates",
    "save_strategy": _CHECKPOINTS, "save_steps": _CHECKPOINTS, "save_total_limit": _CHECKPOINTS,
    "save_only_model": _CHECKPOINTS, "save_on_each_node": _CHECKPOINTS, "resume_from_checkpoint": _CHECKPOINTS,
    "restore_callback_states_from_checkpoint": _CHECKPOINTS,
    "eval_strategy": _EVAL, "eval_steps": _EVAL, "eval_delay": _EVAL, "eval_on_start": _EVAL, "do_eval": _EVAL,
    "per_device_eval_batch_size": _EVAL, "eval_accumulation_steps": _EVAL, "batch_eval_metrics": _EVAL,
    "load_best_model_at_end": _EVAL, "metric_for_best_model": _EVAL, "greater_is_better": _EVAL,
    "logging_steps": _LOGS, "logging_strategy": _LOGS, "logging_first_step": _LOGS,
    "dataloader_drop_last": _DATA, "dataloader_num_workers": _DATA, "dataloader_persistent_workers": _DATA,
    "dataloader_prefetch_factor": _DATA, "dataloader_pin_memory": _DATA, "train_sampling_strategy": _DATA,
    "data_seed": _DATA, "ignore_data_skip": _DATA, "auto_find_batch_size": _DATA,
    "push_to_hub": _HUB, "hub_model_id": _HUB, "hub_strategy": _HUB, "hub_private_repo": _HUB,
    "hub_always_push": _HUB, "hub_revision": _HUB,
    "neftune_noise_alpha": "NEFTune's embedding-noise hooks are attached by Trainer.train(), which the engine does not run",
    "sync_ref_model": "TRL syncs the reference model from a Trainer callback that the engine's loop does not drive",
    "deepspeed": _DISTRIBUTED, "fsdp": _DISTRIBUTED, "fsdp_config": _DISTRIBUTED, "parallelism_config": _DISTRIBUTED,
}


def refused_changes(values: dict, defaults: dict) -> list[str]:
    """One message per option in ``REFUSED`` whose value in ``values`` differs from ``defaults``."""
    return [f"{name} has no effect in this engine ({why}); got {values[name]!r}, leave it at {defaults[name]!r}"
            for name, why in REFUSED.items()
            if name in values and name in defaults and _differs(values[name], defaults[name])]


def _differs(value, default) -> bool:
    if isinstance(default, (list, tuple)) or isinstance(value, (list, tuple)):
        return list(value or []) != list(default or [])
    return value != default
