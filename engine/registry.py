"""One resolver for every pluggable stage (rewards, filters, selectors, answer types).

A *spec* is either a registry name (``"majority_vote"``), an import path in entry-point syntax
(``"my_rewards:length_penalty"``; the module is looked for in the current directory, then next to the
config file, then on the rest of ``sys.path``: see ``spec_search_path``), or a mapping
``{"name": <either of those>, **kwargs}``. Installed packages add names through the entry-point group
``ttrl_engine.<kind>`` (e.g. ``[project.entry-points."ttrl_engine.rewards"]``).

A class is instantiated with the kwargs; a function gets them bound with ``functools.partial`` — both
pickle, so a resolved stage can travel to a Ray worker (lambdas and closures would not). Keyword
arguments are checked against the target's signature here, so a misspelt option fails at start-up,
not at the first step.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any


class SpecError(ValueError):
    """A stage spec that names nothing, or names something unusable."""


def spec_search_path(config_dir: str | Path | None = None) -> None:
    """Put the current directory, then ``config_dir`` (the YAML config's folder), at the front of
    ``sys.path``, so ``my_rewards:fn`` finds ``./my_rewards.py`` the way ``python -m``, pytest and uvicorn
    find a module in the directory they are started from. The ``ttrl`` console script alone would not:
    a script's ``sys.path[0]`` is the script's own folder (the environment's ``bin``), not the cwd."""
    front = [os.getcwd()] + ([str(Path(config_dir).resolve())] if config_dir is not None else [])
    front = list(dict.fromkeys(front))
    sys.path[:] = front + [p for p in sys.path if p not in front]


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


def spec_name(spec: Any) -> str:
    """A short human name for any spec, for error messages: ``"a"``, ``"a + b"`` for a list."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, Mapping):
        return str(spec.get("name", spec))
    if isinstance(spec, (list, tuple)):
        return " + ".join(spec_name(s) for s in spec)
    return repr(spec)


def load_target(name: str, registry: Mapping[str, Any], kind: str) -> Any:
    """The object a spec's name points at (not yet bound to kwargs)."""
    if ":" in name:
        module_name, _, attr = name.rpartition(":")
        try:
            target = importlib.import_module(module_name)
            for part in attr.split("."):
                target = getattr(target, part)
            return target
        except (ImportError, AttributeError) as err:
            raise SpecError(f"{kind} spec {name!r}: cannot import {attr!r} from module {module_name!r} ({err})") from err
    names = registered(registry, kind)
    if name in names:
        target = names[name]
        return target.load() if isinstance(target, EntryPoint) else target
    # Registry order, not sorted: the default comes first in every registry.
    valid = ", ".join(names) or "(none)"
    raise SpecError(f"unknown {kind} {name!r}; valid names: {valid}, or 'module:function'")


def check_kwargs(target: Any, kwargs: Mapping[str, Any], kind: str, name: str) -> None:
    """Fail now, naming the accepted options, if ``target`` cannot take ``kwargs``."""
    if not kwargs:
        return
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return  # a builtin without a signature: let the call decide
    params = sig.parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    accepted = [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        options = [p.name for p in params if p.kind is p.KEYWORD_ONLY or p.default is not p.empty]
        raise SpecError(f"{kind} {name!r}: unknown option(s) {unknown}; it accepts: {', '.join(options) or '(none)'}")


def accepts(target: Any, option: str) -> bool:
    """Whether calling (or instantiating) ``target`` takes the keyword ``option``."""
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return option in params and params[option].kind in (inspect.Parameter.KEYWORD_ONLY,
                                                       inspect.Parameter.POSITIONAL_OR_KEYWORD)


def bind(target: Any, kwargs: Mapping[str, Any], kind: str, name: str) -> Callable:
    """Instantiate a class with ``kwargs``, or bind them to a function (picklable either way)."""
    check_kwargs(target, kwargs, kind, name)
    if inspect.isclass(target):
        try:
            return target(**kwargs)
        except (TypeError, ValueError) as err:
            raise SpecError(f"{kind} {name!r}: cannot be built with {dict(kwargs)!r} ({err})") from err
    if not callable(target):
        raise SpecError(f"{kind} spec {name!r} resolved to {target!r}, which is not callable")
    return functools.partial(target, **kwargs) if kwargs else target


def resolve(spec: str | Mapping[str, Any], registry: Mapping[str, Any], kind: str) -> Callable:
    """Turn ``spec`` into a ready callable, failing with the list of valid names."""
    name, kwargs = split_spec(spec)
    return bind(load_target(name, registry, kind), kwargs, kind, name)
