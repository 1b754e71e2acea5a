"""A nested state (dicts, lists, tuples, numbers, strings, tensors) as plain JSON plus a flat tensor map.

Checkpoints must load without unpickling: ``torch.load(weights_only=False)`` runs whatever code a
pickle names, so a checkpoint file from anywhere is a program. ``split`` turns a state — a policy's
``state_dict()`` (weights, an optimizer's ``state_dict``, a scheduler's, counters) and RNG states — into
a JSON-able tree and a ``{key: tensor}`` mapping that safetensors stores; ``join`` puts it back. What
JSON cannot say directly is tagged, so the round trip is exact:

- a tensor becomes ``{"__tensor__": key}`` (its path in the tree, e.g. ``policy/optimizer/state/0/exp_avg``);
- a NumPy array (NumPy's RNG state) ``{"__ndarray__": values, "dtype": name}``;
- a tuple (``random.getstate()``, Adam's ``betas``) ``{"__tuple__": [...]}``;
- a dict whose keys are not all plain strings (an optimizer state's integer parameter ids)
  ``{"__items__": [[key, value], ...]}``.

Anything else (an arbitrary object) is an error naming its path: it would need pickle.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

_TAGS = ("__tensor__", "__ndarray__", "__tuple__", "__items__")


def split(tree: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """``(json_tree, tensors)`` for ``tree``; ``join(json_tree, tensors)`` gives ``tree`` back."""
    tensors: dict[str, torch.Tensor] = {}
    return _encode(tree, prefix, tensors), tensors


def _child(path: str, key) -> str:
    return f"{path}/{key}" if path else str(key)


def join(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of ``split``."""
    if isinstance(tree, list):
        return [join(v, tensors) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if "__tensor__" in tree:
        return tensors[tree["__tensor__"]]
    if "__ndarray__" in tree:
        return np.asarray(tree["__ndarray__"], dtype=tree["dtype"])
    if "__tuple__" in tree:
        return tuple(join(v, tensors) for v in tree["__tuple__"])
    if "__items__" in tree:
        return {join(k, tensors): join(v, tensors) for k, v in tree["__items__"]}
    return {k: join(v, tensors) for k, v in tree.items()}


def _encode(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu().contiguous()
        return {"__tensor__": path}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, _child(path, i), tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, _child(path, i), tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not set(value) & set(_TAGS):
            return {k: _encode(v, _child(path, k), tensors) for k, v in value.items()}
        return {"__items__": [[_encode(k, _child(path, f"key{i}"), tensors), _encode(v, _child(path, k), tensors)]
                              for i, (k, v) in enumerate(value.items())]}
    raise TypeError(f"checkpoint state at {path or '/'} is a {type(value).__name__}, which neither JSON nor "
                    "safetensors can hold (only dicts, lists, tuples, numbers, strings, tensors and arrays)")
