"""One resolver for every pluggable stage (rewards, filters, selectors).

A *spec* is either a registry name (``"majority_vote"``), an import path in entry-point syntax
(``"my_rewards:length_penalty"``, the module found next to the config or on ``sys.path``), or a
mapping ``{"name": <either of those>, **kwargs}``. Installed packages add names through the entry-point
group ``ttrl_engine.<kind>`` (e.g. ``[project.entry-points."ttrl_engine.rewards"]``).

A class is instantiated with the kwargs; a function gets them bound with ``functools.partial`` — both
pickle, so a resolved stage can travel to a Ray worker (lambdas and closures would not).
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any


class SpecError(ValueError):
    """A stage spec that names nothing, or names something unusable."""


def registered(registry: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The built-in registry plus every installed entry point of group ``ttrl_engine.<kind>``."""
    names = dict(registry)
    for ep in entry_points(group=f"ttrl_engine.{kind}"):
        names.setdefault(ep.name, ep)
    return names


def split_spec(spec: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``"x"`` -> ("x", {}); ``{"name": "x", "k": 1}`` -> ("x", {"k": 1})."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        return spec["name"], kwargs
    raise SpecError(f"a stage spec is a name, 'module:function', or a mapping with a 'name' key; got {spec!r}")


def resolve(spec: str | Mapping[str, Any], registry: Mapping[str, Any], kind: str) -> Callable:
    """Turn ``spec`` into a ready callable, failing with the list of valid names."""
    name, kwargs = split_spec(spec)
    names = registered(registry, kind)
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            target = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise SpecError(f"{kind} spec {name!r}: cannot import {attr!r} from module {module_name!r} ({err})") from err
    elif name in names:
        target = names[name]
        if isinstance(target, EntryPoint):
            target = target.load()
    else:
        valid = ", ".join(sorted(names)) or "(none)"
        raise SpecError(f"unknown {kind} {name!r}; valid names: {valid}, or 'module:function'")
    if inspect.isclass(target):
        return target(**kwargs)
    if not callable(target):
        raise SpecError(f"{kind} spec {name!r} resolved to {target!r}, which is not callable")
    return functools.partial(target, **kwargs) if kwargs else target
