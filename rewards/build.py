"""From a config's ``reward`` spec to the one group reward ``(group) -> list[float]`` a run calls.

A spec is a name in ``rewards.REWARDS``, a ``'module:function'`` (a module next to the config or on
``sys.path``), an entry point of group ``ttrl_engine.rewards``, or a mapping ``{name: ..., **kwargs}``;
a *list* of specs, each with an optional ``weight`` (default 1.0), is their weighted sum. Every piece
is a module-level function, a ``functools.partial`` of one, or an instance of a class defined at
module level, so a built reward pickles (Ray ships it to workers).

Two signatures are accepted:

- group-level ``(group) -> list[float]`` (the engine's own; a majority vote needs the whole group);
- TRL-style per-completion ``(prompts, completions, **kwargs) -> list[float | None]``, recognised by
  its first two parameters being ``prompts, completions`` or by a parameter named ``completions``, and
  wrapped in ``PerCompletion`` so TRL reward functions work unchanged.

``answer_type`` is passed to every reward that declares an ``answer_type`` parameter (all built-in
votes do) unless the spec sets it itself.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

from engine.registry import SpecError, accepts, bind, load_target, split_spec
from rewards.answer_types import get_answer_type
from rewards.registry import REWARDS


class PerCompletion:
    """Adapter: a TRL-style reward ``f(prompts, completions, completion_ids, **kwargs)`` as a group reward.

    It is called once per group with one entry per rollout: ``prompts`` (the task's prompt, repeated),
    ``completions`` (the rollout texts) and ``completion_ids`` (their token ids), plus the spec's own
    keyword arguments. Two options belong to the adapter and are not passed on:

    - ``conversational``: pass completions as ``[{"role": "assistant", "content": text}]`` and prompts
      as ``[{"role": "user", "content": prompt}]``, TRL's conversational format (what ``trl.rewards``'
      functions read). Default False: plain strings, TRL's standard format.
    - ``pseudo_label_as``: also pass the group's current pseudo-label (set by a vote that ran before
      this reward in a combination), repeated, under this keyword — e.g. ``solution`` for
      ``trl.rewards.accuracy_reward``. A group without a label passes ``""``.

    TRL's trainer-only keywords (``trainer_state``, ``log_extra``, ``log_metric``) are not passed.
    A ``None`` result means "this reward does not apply to the sample" in TRL, where other reward
    functions fill in; a group reward needs a number for every rollout, so None becomes 0.0 here.
    """

    def __init__(self, fn: Callable, kwargs: Mapping[str, Any] | None = None, *, conversational: bool = False,
                 pseudo_label_as: str | None = None):
        self.fn, self.kwargs = fn, dict(kwargs or {})
        self.conversational, self.pseudo_label_as = conversational, pseudo_label_as

    def __call__(self, group) -> list[float]:
        n = len(group.rollouts)
        prompt = group.task.prompt or group.task.question
        texts = [r.text for r in group.rollouts]
        if self.conversational:
            prompts: list = [[{"role": "user", "content": prompt}] for _ in range(n)]
            completions: list = [[{"role": "assistant", "content": t}] for t in texts]
        else:
            prompts, completions = [prompt] * n, texts
        extra = dict(self.kwargs)
        if self.pseudo_label_as:
            extra[self.pseudo_label_as] = [group.label if group.label is not None else ""] * n
        values = self.fn(prompts=prompts, completions=completions,
                         completion_ids=[list(r.token_ids) for r in group.rollouts], **extra)
        return [0.0 if v is None else float(v) for v in values]

    def __repr__(self) -> str:
        return f"PerCompletion({getattr(self.fn, '__name__', self.fn)!r})"


class WeightedSum:
    """Several group rewards combined: ``sum(weight * reward)`` per rollout, computed in list order.

    Order matters when a reward reads what an earlier one wrote (a vote sets ``group.label``, which a
    ``PerCompletion`` reward with ``pseudo_label_as`` reads). Each part's mean is recorded in
    ``group.stats["reward/<name>"]``. A part that returns the wrong count or a non-finite value raises
    a ValueError naming that part.
    """

    def __init__(self, parts: list[tuple[str, float, Callable]]):
        self.parts = parts

    def __call__(self, group) -> list[float]:
        n = len(group.rollouts)
        total = [0.0] * n
        for name, weight, fn in self.parts:
            values = list(fn(group))
            if len(values) != n:
                raise ValueError(f"part {name!r} returned {len(values)} values for {n} rollouts")
            for i, v in enumerate(values):
                if not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise ValueError(f"part {name!r} returned {v!r} for rollout {i}")
                total[i] += weight * v
            group.stats[f"reward/{name}"] = sum(values) / n if n else 0.0
        return total

    def __repr__(self) -> str:
        return " + ".join(f"{w:g}*{name}" for name, w, _ in self.parts)


def is_per_completion(fn: Callable) -> bool:
    """A TRL-style signature: first parameters ``prompts, completions``, or one named ``completions``."""
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return False
    return params[:2] == ["prompts", "completions"] or "completions" in params


def build_one(spec: str | Mapping[str, Any], *, answer_type: str = "math") -> Callable:
    """One spec (no weight) to a group reward."""
    name, kwargs = split_spec(spec)
    target = load_target(name, REWARDS, "rewards")
    adapter = {k: kwargs.pop(k) for k in ("conversational", "pseudo_label_as") if k in kwargs}
    if is_per_completion(target):
        return PerCompletion(target, kwargs, **adapter)
    if adapter:
        raise SpecError(f"rewards {name!r}: {sorted(adapter)} apply only to TRL-style (prompts, completions) rewards")
    if "answer_type" not in kwargs and accepts(target, "answer_type"):
        kwargs["answer_type"] = answer_type
    reward = bind(target, kwargs, "rewards", name)
    # A class may be TRL-style only once instantiated (its __call__ takes completions).
    return PerCompletion(reward) if not inspect.isfunction(target) and is_per_completion(reward) else reward


def build_reward(spec: Any, *, answer_type: str = "math") -> Callable:
    """The group reward ``(group) -> list[float]`` a run uses, from its ``reward`` spec.

    ``answer_type`` says how answers are extracted and compared (the suite's or the config's); it is
    checked here, so a bad one fails at start-up.

    >>> from rewards.vote import boxed_group
    >>> reward = build_reward([{"name": "majority_vote", "weight": 0.5}, {"name": "soft_vote", "weight": 2}])
    >>> reward(boxed_group(["4", "4", "5", None]))
    [1.5, 1.5, 0.5, 0.0]
    """
    get_answer_type(answer_type)
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise SpecError("rewards: an empty list combines nothing; give at least one reward spec")
        parts = []
        for item in spec:
            name, kwargs = split_spec(item)
            weight = kwargs.pop("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise SpecError(f"rewards {name!r}: weight must be a finite number, got {weight!r}")
            parts.append((name, float(weight), build_one({"name": name, **kwargs}, answer_type=answer_type)))
        return WeightedSum(parts)
    if isinstance(spec, Mapping) and "weight" in spec:
        return build_reward([spec], answer_type=answer_type)
    return build_one(spec, answer_type=answer_type)
