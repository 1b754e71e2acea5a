"""Turn a ``Config`` into the loop's parts: tokenizer, prepared tasks, policy and sampler.

Kept apart from the loop so ``ttrl eval``, the benchmarks and the tests build the same way.
"""

from __future__ import annotations

import logging
import os

from engine.config import Config, ConfigError

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # TRL reports usage unless told not to
log = logging.getLogger(__name__)


def resolve_model_and_data(cfg: Config) -> tuple[str, str, str | None]:
    """The model path, data path and prompt template, building the demo on first use and
    converting a model alias (``engine.models.ALIASES``, e.g. ``smollm2-135m``) to its cached directory."""
    from engine.models import resolve_model_alias

    model, data, template = resolve_model_alias(cfg.model.model, log=print), cfg.data.data, cfg.data.template
    if model == "demo" or data == "demo":
        from engine.demo import DEMO_TEMPLATE, build_demo

        demo_model, demo_tasks = build_demo(log=print)
        if model == "demo":
            model = str(demo_model)
        if data == "demo":
            data = str(demo_tasks)
            template = template or DEMO_TEMPLATE
    return model, data, template


def load_prepared_tasks(cfg: Config, tokenizer, data: str, template: str | None):
    """The tasks with their prompts; prompts too long for the model's context (its positions minus
    the completion budget, read from the config at the tokenizer's path) are skipped or an error
    (``on_too_long``)."""
    from engine.data import load_tasks
    from engine.prompts import DEFAULT_INSTRUCTION, model_context_length, prepare_tasks

    d = cfg.data
    tasks = load_tasks(data, prompt_field=d.prompt_field, label_field=d.label_field, id_field=d.id_field,
                       split=d.split, limit=d.limit, data_dir=d.data_dir)
    chat = {"auto": None, "on": True, "off": False}[d.chat]
    budget = max(cfg.grpo.max_completion_length, cfg.eval.eval_max_tokens or 0)
    return prepare_tasks(tasks, tokenizer, template=template or "{question}\n" + DEFAULT_INSTRUCTION, chat=chat,
                         system_prompt=d.system_prompt, max_prompt_tokens=d.max_prompt_tokens,
                         on_too_long=d.on_too_long, completion_tokens=budget,
                         context_length=model_context_length(getattr(tokenizer, "name_or_path", None)))


def load_tokenizer(model_path: str):
    """The model's tokenizer, with EOS standing in as the pad token where it defines none."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as err:  # not a directory, not on the hub (or offline), no tokenizer files
        raise ConfigError(model_load_error(model_path, err)) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_load_error(model_path: str, err: Exception) -> str:
    """Why ``model_path`` names no loadable model, and what a model name may be."""
    from pathlib import Path

    from engine.models import ALIASES

    path = Path(model_path).expanduser()
    said = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if path.is_dir():
        files = sorted(p.name for p in path.iterdir())
        return (f"model directory {model_path} holds no loadable tokenizer and config (files: "
                f"{', '.join(files[:12]) or 'none'}{', ...' if len(files) > 12 else ''}); transformers said: {said}")
    valid = ", ".join(["demo", *ALIASES])
    return (f"model {model_path!r} is neither a built-in name ({valid}) nor a local directory, and it could not "
            f"be loaded as a hub id{' (HF_HUB_OFFLINE is set)' if os.environ.get('HF_HUB_OFFLINE') == '1' else ''}; "
            f"transformers said: {said}")


def torch_dtype(name: str, use_cpu: bool) -> str:
    if name == "auto":
        return "float32" if use_cpu else "bfloat16"
    return name


def build(cfg: Config):
    """(tokenizer, tasks, policy, sampler) for ``cfg``; the model loads once, inside TRL's trainer."""
    from peft import LoraConfig
    from engine.sampler_hf import HFSampler
    from engine.update import GRPOPolicy, optimizer_steps_for

    for note in cfg.notes:  # what "auto" resolved to, and why
        print(note)
    model_path, data, template = resolve_model_and_data(cfg)
    tokenizer = load_tokenizer(model_path)
    tasks = load_prepared_tasks(cfg, tokenizer, data, template)
    g = cfg.grpo
    lora = None
    if cfg.model.lora:
        targets = cfg.model.lora_target_modules
        lora = LoraConfig(r=cfg.model.lora_r, lora_alpha=cfg.model.lora_alpha, lora_dropout=cfg.model.lora_dropout,
                          target_modules=targets if targets == "all-linear" else targets.split(","),
                          task_type="CAUSAL_LM")
    total = optimizer_steps_for(cfg.ttrl.episodes, len(tasks), cfg.ttrl.prompts_per_step, g.gradient_accumulation_steps,
                                g.num_iterations, g.max_steps, cfg.ttrl.n_train)
    policy = GRPOPolicy(model_path, tokenizer, g, lora=lora, total_steps=total,
                        sampler_is_separate_engine=cfg.ttrl.sampler == "vllm")
    if cfg.ttrl.rollout_workers > 1:  # samplers as Ray actors, prompts sharded across them
        from engine.sampler_ray import make_ray_pool

        sampler = make_ray_pool(cfg, model_path, policy.model)
    elif cfg.ttrl.sampler == "vllm":
        from engine.sampler_vllm import make_vllm_sampler

        sampler = make_vllm_sampler(cfg, model_path, tokenizer, policy.model)
    else:
        sampler = HFSampler(policy.model, tokenizer, batch_size=cfg.ttrl.sampler_batch_size,
                            progress=cfg.ttrl.progress)
    return tokenizer, tasks, policy, sampler
