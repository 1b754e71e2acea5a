"""Turn a ``Config`` into the loop's parts: tokenizer, prepared tasks, policy and sampler.

Kept apart from the loop so ``ttrl eval``, the benchmarks and the tests build the same way.
"""

from __future__ import annotations

import logging
import os

from engine import distributed
from engine.config.options import Config
from engine.data.models import load_tokenizer
from engine.errors import ConfigError

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # TRL reports usage unless told not to
log = logging.getLogger(__name__)


def resolve_model_and_data(cfg: Config) -> tuple[str, str, str | None]:
    """The model path, data path and prompt template, building the demo on first use and
    converting a model alias (``engine.data.models.ALIASES``, e.g. ``smollm2-135m``) to its cached directory."""
    from engine.data.models import resolve_model_alias

    from engine.data.demo import DEMO_TEMPLATE, DEMOS, build_demo

    model, data, template = resolve_model_alias(cfg.model.model, log=print), cfg.data.data, cfg.data.template
    if model in DEMOS:  # demo, demo-systematic: built on first use
        model = str(build_demo(log=print, variant=model)[0])
    if data in DEMOS:
        data = str(build_demo(log=print, variant=data)[1])
        template = template or DEMO_TEMPLATE
    from engine.data.arithmetic import generated_path

    return model, generated_path(data), template


def load_prepared_tasks(cfg: Config, tokenizer, data: str, template: str | None):
    """The tasks with their prompts; prompts too long for the model's context (its positions minus
    the completion budget, read from the config at the tokenizer's path) are skipped or an error
    (``on_too_long``)."""
    from engine.data.tasks import load_tasks

    d = cfg.data
    tasks = load_tasks(data, prompt_field=d.prompt_field, label_field=d.label_field, id_field=d.id_field,
                       split=d.split, limit=d.limit, data_dir=d.data_dir)
    return prepare(cfg, tokenizer, tasks, template)


def load_prepared_anchors(cfg: Config, tokenizer, template: str | None, tasks) -> list:
    """``--anchor``'s labeled examples (``engine.data.anchors``), read with the ``--data`` options (no
    ``limit``) and prompted with the same template as ``tasks``, the run's test prompts; [] without it."""
    from engine.data.anchors import load_anchors

    if cfg.ttrl.anchor is None:
        return []
    d = cfg.data
    anchors = load_anchors(cfg.ttrl.anchor, tasks, prompt_field=d.prompt_field, label_field=d.label_field,
                           id_field=d.id_field, split=d.split, data_dir=d.data_dir)
    if cfg.ttrl.anchor_train > len(anchors):
        raise ConfigError(f"anchor_train {cfg.ttrl.anchor_train}: anchor {cfg.ttrl.anchor} has {len(anchors)} examples; "
                          "train on at most that many each step")
    return prepare(cfg, tokenizer, anchors, template)


def prepare(cfg: Config, tokenizer, tasks, template: str | None):
    """``tasks`` with their prompts: the template (or the question and TTRL's boxed instruction), the chat
    template, and the context limit (``engine.data.prompts.prepare_tasks``)."""
    from engine.data.prompts import DEFAULT_INSTRUCTION, model_context_length, prepare_tasks

    d = cfg.data
    chat = {"auto": None, "on": True, "off": False}[d.chat]
    budget = max(cfg.grpo.max_completion_length, cfg.eval.eval_max_tokens or 0)
    return prepare_tasks(tasks, tokenizer, template=template or "{question}\n" + DEFAULT_INSTRUCTION, chat=chat,
                         system_prompt=d.system_prompt, max_prompt_tokens=d.max_prompt_tokens,
                         on_too_long=d.on_too_long, completion_tokens=budget,
                         context_length=model_context_length(getattr(tokenizer, "name_or_path", None)))


def build(cfg: Config):
    """(tokenizer, tasks, policy, sampler) for ``cfg``; the model loads once, inside TRL's trainer.
    ``--anchor``'s examples are read and checked first, into ``cfg.anchors`` (the loop reads them there)."""
    from engine.adapters import peft_config
    from engine.samplers.hf import HFSampler
    from engine.update import GRPOPolicy, optimizer_steps_for

    for note in cfg.notes:  # what "auto" resolved to, and why
        print(note)
    model_path, data, template = resolve_model_and_data(cfg)
    tokenizer = load_tokenizer(model_path)
    tasks = load_prepared_tasks(cfg, tokenizer, data, template)
    cfg.anchors = load_prepared_anchors(cfg, tokenizer, template, tasks)  # checked before the model loads
    g = cfg.grpo
    m = cfg.model
    lora = None  # the PEFT adapter's config (engine.adapters), or None: full fine-tuning
    if m.lora:
        lora = peft_config(m.adapter_type, m.adapter_options, target_modules=m.lora_target_modules,
                           lora_r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout)
    total = optimizer_steps_for(cfg.ttrl.episodes, len(tasks), cfg.ttrl.prompts_per_step, g.gradient_accumulation_steps,
                                g.num_iterations, g.max_steps, cfg.ttrl.n_train, ranks=distributed.world_size())
    policy = GRPOPolicy(model_path, tokenizer, g, lora=lora, total_steps=total,
                        sampler_is_separate_engine=cfg.ttrl.sampler == "vllm", logps_chunk_tokens=m.logps_chunk_tokens)
    if cfg.ttrl.rollout_workers > 1:  # samplers as Ray actors, prompts sharded across them
        from engine.samplers.ray_pool import make_ray_pool

        sampler = make_ray_pool(cfg, model_path, policy.model)
    elif cfg.ttrl.sampler == "vllm":
        from engine.samplers.vllm import make_vllm_sampler

        sampler = make_vllm_sampler(cfg, model_path, tokenizer, policy.model)
    elif policy.sharded:  # FSDP: the sampler generates from its own whole copy (HFSampler.load_weights)
        from transformers import AutoModelForCausalLM

        compute = "bfloat16" if g.bf16 else "float16" if g.fp16 else "float32"
        copy = AutoModelForCausalLM.from_pretrained(model_path, dtype=compute)
        sampler = HFSampler(copy, tokenizer, batch_size=cfg.ttrl.sampler_batch_size, progress=cfg.ttrl.progress,
                            own_copy=True)
    else:
        sampler = HFSampler(policy.model, tokenizer, batch_size=cfg.ttrl.sampler_batch_size,
                            progress=cfg.ttrl.progress)
    return tokenizer, tasks, policy, sampler
