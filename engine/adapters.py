"""Which PEFT adapter the update trains, built from the run's options, and the weight change it makes.

Why several. RL updates are intrinsically sparse (5-30% of parameters move, arXiv 2505.11711), rank-1
LoRA matches full fine-tuning for RL at ~10x the learning rate ("LoRA Without Regret", Thinking Machines
2025; TRL's PEFT guide), TinyLoRA trains a few vectors projected through a frozen SVD of each weight
(arXiv 2602.04118: 13 parameters lift Qwen2.5 to 91% on GSM8K), ShiRA trains a fixed random sparse
subset of each weight's entries (arXiv 2406.13175), and OSF trains the low-singular-value subspace of
each weight with gradients kept orthogonal to the high one (orthogonal subspace fine-tuning, arXiv
2504.07097). Staying near the base keeps the model able to adapt again; ``engine.drift`` measures that.

``ADAPTERS`` names the PEFT config class of each choice (``--adapter_type``); ``--adapter_options`` is
a mapping of that class's own fields (checked against them at start-up, before any model loads). LoRA's
rank, alpha and dropout keep their own options (``--lora_r`` ...), so they are not accepted twice;
``--lora_target_modules`` chooses the adapted modules for every type.

Every type here merges: its layers have PEFT's ``get_delta_weight``, so the sampler gets ``W + delta``
(``adapter_deltas``) and TRL's KL reference is the same model with the adapter disabled — the base —
for every type (``tests/test_adapters.py`` checks both on the real tiny model).
"""

from __future__ import annotations

import dataclasses
import importlib

from engine.errors import ConfigError

# --adapter_type -> the PEFT config class (module path, class name), imported only when used.
ADAPTERS: dict[str, tuple[str, str]] = {
    "lora": ("peft", "LoraConfig"),
    "tinylora": ("peft", "TinyLoraConfig"),
    "shira": ("peft", "ShiraConfig"),
    "osf": ("peft", "OSFConfig"),
}

# Fields the engine sets itself, so adapter_options may not: the task and the modules for every type,
# and LoRA's own options for LoRA.
_ENGINE_FIELDS = {"task_type", "target_modules", "peft_type"}
_LORA_OPTIONS = {"r": "lora_r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout"}


def config_class(adapter_type: str):
    """The PEFT config class for ``adapter_type``; an unknown name fails with the valid ones."""
    if adapter_type not in ADAPTERS:
        raise ConfigError(f"adapter_type: unknown adapter {adapter_type!r}; choose one of {', '.join(ADAPTERS)}")
    module, name = ADAPTERS[adapter_type]
    return getattr(importlib.import_module(module), name)


def peft_config(adapter_type: str, options: dict | None, *, target_modules: str, lora_r: int = 16,
                lora_alpha: int = 32, lora_dropout: float = 0.0):
    """The ``peft.PeftConfig`` TRL wraps the model with: ``adapter_type``'s class built from ``options``
    (its own fields) plus the modules to adapt; LoRA also takes ``lora_r`` / ``lora_alpha`` / ``lora_dropout``.
    A field the class does not have, one the engine sets, or a value the class refuses is a ``ConfigError``."""
    cls = config_class(adapter_type)
    options = dict(options or {})
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(options) - fields)
    if unknown:
        from peft import PeftConfig  # the fields every PEFT config shares (revision, inference_mode, ...)

        shared = {f.name for f in dataclasses.fields(PeftConfig)}
        own = sorted(fields - shared - _ENGINE_FIELDS - set(_LORA_OPTIONS if adapter_type == "lora" else ()))
        raise ConfigError(f"adapter_options: {cls.__name__} has no field {', '.join(map(repr, unknown))}; "
                          f"its fields: {', '.join(own)}")
    taken = sorted(set(options) & _ENGINE_FIELDS)
    if taken:
        raise ConfigError(f"adapter_options: {', '.join(taken)} is set by the engine (target_modules: "
                          "--lora_target_modules), not by adapter_options")
    if adapter_type == "lora":
        twice = sorted(set(options) & set(_LORA_OPTIONS))
        if twice:
            raise ConfigError(f"adapter_options: set {', '.join(twice)} with "
                              f"{', '.join('--' + _LORA_OPTIONS[k] for k in twice)} instead")
        options.update(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout)
    targets = target_modules if target_modules == "all-linear" else target_modules.split(",")
    try:
        return cls(task_type="CAUSAL_LM", target_modules=targets, **options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"adapter_options for {adapter_type}: {cls.__name__} refuses them: {err}") from None


def adapter_deltas(model) -> dict[str, "torch.Tensor"]:  # noqa: F821 (torch is imported lazily)
    """``{name of the adapted base weight: delta}`` for every adapted layer of a PEFT ``model`` whose
    adapter is active and not merged: the weight change the adapter makes (``W_merged = W + delta``),
    computed with PEFT's own ``get_delta_weight`` (dense; ShiRA's is sparse) without touching the model.
    Names are the PeftModel's (``...q_proj.base_layer.weight``). Empty for a plain model."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    deltas = {}
    if getattr(model, "prefix", None) is None:  # not a PeftModel
        return deltas
    for name, module in model.named_modules():
        if not isinstance(module, BaseTunerLayer) or module.merged or module.disable_adapters:
            continue
        weights = getattr(module, module.adapter_layer_names[0], {})  # lora_A, tinylora_v, shira_weight, ...
        active = [a for a in module.active_adapters if a in weights]
        if not active:
            continue
        with torch.no_grad():
            parts = [module.get_delta_weight(a) for a in active]
            deltas[f"{name}.base_layer.weight"] = sum(p.to_dense() if p.is_sparse else p for p in parts)
    return deltas
