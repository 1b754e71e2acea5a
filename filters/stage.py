"""Running group filters over a step's groups, each in ``monitor`` or ``enforce`` mode.

Every filter is evaluated on every group, so a monitor-mode filter reports what it *would* drop
(prime-rl's filters do the same: detection metrics are always logged, enforcement is a switch).
A group is dropped when any enforcing filter rejects it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.registry import SpecError, resolve, split_spec
from engine.types import GroupFilter, RolloutGroup

MODES = ("enforce", "monitor")


@dataclass
class FilterStage:
    """One configured filter: ``fn`` is a ``GroupFilter``, and may have more of the stage capabilities
    of ``engine.types`` (GRESO's ``HistorySkip`` is also a ``Skipper``, ``EndOfStep`` and ``Stateful``)."""

    name: str
    fn: GroupFilter
    mode: str = "enforce"


def build_filters(specs: list[Any], registry: dict) -> list[FilterStage]:
    """Resolve filter specs; a spec's ``mode`` key picks monitor or enforce (default enforce)."""
    stages = []
    for spec in specs or []:
        name, kwargs = split_spec(spec)
        mode = kwargs.pop("mode", "enforce")
        if mode not in MODES:
            raise SpecError(f"filter {name!r}: mode must be one of {', '.join(MODES)}, got {mode!r}")
        fn = resolve({"name": name, **kwargs} if kwargs else name, registry, "filters")
        stages.append(FilterStage(name.rsplit(":", 1)[-1], fn, mode))
    return stages


def apply_filters(stages: list[FilterStage], groups: list[RolloutGroup]) -> tuple[list[RolloutGroup], dict[str, float]]:
    """The groups every enforcing filter keeps, and ``filters/<name>/{checked,dropped}`` counts."""
    metrics: dict[str, float] = {}
    kept = []
    for group in groups:
        keep = True
        for stage in stages:
            ok = bool(stage.fn(group))
            metrics[f"filters/{stage.name}/checked"] = metrics.get(f"filters/{stage.name}/checked", 0) + 1
            metrics[f"filters/{stage.name}/dropped"] = metrics.get(f"filters/{stage.name}/dropped", 0) + (not ok)
            if not ok and stage.mode == "enforce":
                keep = False
        if keep:
            kept.append(group)
    return kept, metrics
