"""What every sampler shares: where a completion ends.

The transformers sampler, the in-process vLLM engine and the Ray pool's workers must stop a completion
at the same tokens, or the same policy would give different rollouts per backend.
"""

from __future__ import annotations


def eos_ids(model, tokenizer) -> list[int]:
    """Every token id that ends a completion: the generation config's EOS ids plus the tokenizer's."""
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = list(ids) if isinstance(ids, (list, tuple)) else ([ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("the model and tokenizer define no EOS token; set tokenizer.eos_token")
    return ids
