"""The architecture's import rules, checked on the source (docs/architecture.md holds the rules).

Every module of engine/, rewards/ and filters/ is read as an AST — imports at the top of a file and
inside functions alike, so a circle cannot hide in a function-level import — and three rules are
checked: an import goes down the layers of docs/architecture.md's table (or stays inside the same
wing); the import graph between modules has no cycle; no private name (``_x``) is imported from, or
read off, another module. The layer table is parsed from the architecture page itself, so the page
and the test cannot disagree.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "rewards", "filters")
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def layer_table() -> list[tuple[int, list[str]]]:
    """``(layer, [wing, ...])`` rows of the architecture page's table: ``| 0 | `engine.types`, ... | ... |``."""
    rows = []
    for line in ARCHITECTURE.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\|\s*(\d+)\s*\|([^|]*)\|", line)
        if m:
            rows.append((int(m.group(1)), re.findall(r"`([\w.]+)`", m.group(2))))
    return rows


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(path: Path, modules: dict[str, Path]) -> list[tuple[str, int, list[str]]]:
    """``(module imported, line, names taken from it)`` for every project import in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, []) for a in node.names if a.name.split(".")[0] in PACKAGES]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] in PACKAGES:
            for a in node.names:  # `from engine.rundir import checkpoint` imports the module engine.rundir.checkpoint
                sub = f"{node.module}.{a.name}"
                out.append((sub, node.lineno, []) if sub in modules else (node.module, node.lineno, [a.name]))
    return out


def private_attributes(path: Path, modules: dict[str, Path]) -> list[tuple[int, str]]:
    """``module._name`` reads where ``module`` is bound by an import of a project module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            bound |= {a.asname or a.name for a in node.names if f"{node.module}.{a.name}" in modules}
        elif isinstance(node, ast.Import):
            bound |= {a.asname for a in node.names if a.asname and a.name in modules}
    return [(n.lineno, f"{n.value.id}.{n.attr}") for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in bound
            and n.attr.startswith("_") and not n.attr.startswith("__")]


def wing_of(module: str, table: list[tuple[int, list[str]]]) -> tuple[int, str] | None:
    """The layer and wing of ``module``: the longest wing name it starts with."""
    found = [(layer, wing) for layer, wings in table for wing in wings if module == wing or module.startswith(wing + ".")]
    return max(found, key=lambda lw: len(lw[1])) if found else None


def test_the_architecture_page_has_a_layer_table():
    table = layer_table()
    assert [layer for layer, _ in table] == sorted(layer for layer, _ in table), "layers in order, bottom first"
    assert len(table) >= 5 and all(wings for _, wings in table)
    wings = [w for _, ws in table for w in ws]
    assert len(wings) == len(set(wings)), "a wing sits in one layer"


def test_every_module_belongs_to_a_wing():
    table = layer_table()
    homeless = [m for m in all_modules() if m != "engine" and wing_of(m, table) is None]
    assert not homeless, f"modules in no wing of docs/architecture.md: {homeless}"


def test_imports_go_down_the_layers():
    table, modules = layer_table(), all_modules()
    wrong = []
    for name, path in modules.items():
        here = wing_of(name, table)
        for target, line, _ in imports_of(path, modules):
            there = wing_of(target, table)
            if here is None or there is None or target == "engine":
                continue
            if there[1] != here[1] and there[0] >= here[0]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} {name} (layer {here[0]}) imports {target} (layer {there[0]})")
    assert not wrong, "imports that go up or sideways:\n" + "\n".join(wrong)


def test_no_import_cycles():
    modules = all_modules()
    graph = {name: sorted({t for t, _, _ in imports_of(path, modules) if t in modules and t != name})
             for name, path in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [node, nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_private_names_across_modules():
    modules = all_modules()
    found = []
    for name, path in modules.items():
        for target, line, names in imports_of(path, modules):
            found += [f"{path.relative_to(ROOT)}:{line} from {target} import {n}" for n in names
                      if n.startswith("_") and not n.startswith("__")]
        found += [f"{path.relative_to(ROOT)}:{line} {attr}" for line, attr in private_attributes(path, modules)]
    assert not found, "private names used across modules:\n" + "\n".join(found)


@pytest.mark.parametrize("package", ["rewards", "filters"])
def test_rewards_and_filters_stand_on_the_core_alone(package):
    """rewards/ and filters/ import nothing of the engine but its core (types, registry, errors)."""
    table, modules = layer_table(), all_modules()
    core = {w for layer, ws in table if layer == table[0][0] for w in ws}
    bad = [f"{path.relative_to(ROOT)}:{line} imports {target}" for name, path in modules.items()
           if name.split(".")[0] == package for target, line, _ in imports_of(path, modules)
           if target.startswith("engine") and target not in core]
    assert not bad, "\n".join(bad)


def test_every_sampler_matches_the_sampler_protocol():
    """The Protocol the loop is typed against says what the samplers really take and return: the same
    parameters, defaults and return annotations as ``engine.types.Sampler`` (a method may add optional ones)."""
    import inspect

    from engine.samplers.hf import HFSampler
    from engine.samplers.ray_pool import RayRolloutPool
    from engine.samplers.vllm import VLLMSampler
    from engine.types import Sampler

    for cls in (HFSampler, VLLMSampler, RayRolloutPool):
        for name in ("generate", "load_weights"):
            want, have = (inspect.signature(getattr(c, name)) for c in (Sampler, cls))
            for param in want.parameters.values():
                assert param.name in have.parameters, f"{cls.__name__}.{name} lacks {param.name}"
                assert have.parameters[param.name].default == param.default, f"{cls.__name__}.{name}({param.name})"
            extra = [p for n, p in have.parameters.items() if n not in want.parameters and p.default is p.empty]
            assert not extra, f"{cls.__name__}.{name} needs {extra}, which the Protocol does not pass"
            if name == "load_weights":
                assert have.return_annotation in ("None", "dict[str, float]", "dict[str, float] | None"), cls


def signature_drift(impl, protocol) -> list[str]:
    """How ``impl`` (a registered function, or an instance of a registered class) differs from ``protocol``.

    A method of the Protocol: the implementation takes its parameters first, in its order, of the same kind
    and with the same defaults; whatever it takes besides is optional; its return annotation is the
    Protocol's (unless that is ``Any``). A data member or property only has to be there (``hasattr``)."""
    import inspect

    drift = []
    annotated = vars(protocol).get("__annotations__", {})
    members = sorted({n for n in vars(protocol) if not n.startswith("_") or n == "__call__"} | set(annotated))
    for name in members:
        if name in annotated or isinstance(vars(protocol).get(name), property):
            if not hasattr(impl, name):
                drift.append(f"no {name}")
            continue
        target = impl if inspect.isfunction(impl) and name == "__call__" else getattr(impl, name, None)
        if target is None:
            drift.append(f"no {name}")
            continue
        want_sig, have_sig = inspect.signature(getattr(protocol, name)), inspect.signature(target)
        want, have = list(want_sig.parameters.values())[1:], list(have_sig.parameters.values())  # less self
        for i, p in enumerate(want):
            q = have[i] if i < len(have) else None
            if q is None or (q.name, q.kind, q.default) != (p.name, p.kind, p.default):
                drift.append(f"{name}: parameter {i} is {q}, the Protocol's {p}")
        drift += [f"{name}: needs {q}, which the Protocol does not pass" for q in have[len(want):]
                  if q.default is q.empty and q.kind not in (q.VAR_POSITIONAL, q.VAR_KEYWORD)]
        want_ret, have_ret = (a if isinstance(a, str) else inspect.formatannotation(a)  # strings: postponed annotations
                              for a in (want_sig.return_annotation, have_sig.return_annotation))
        if want_ret != "Any" and have_ret != want_ret:
            drift.append(f"{name}: returns {have_ret}, the Protocol {want_ret}")
    return drift


# What each registered stage can do beyond its call (engine.types); a stage not named here has none.
CAPABILITIES = {
    ("filters", "history_skip"): {"Skipper", "EndOfStep", "Stateful"},
    ("selectors", "influence"): {"BatchSelector", "ReportsMetrics", "FiltersGradients", "GradientFilter"},
}


def registered_stages():
    """``(kind, name, instance, the Protocol of its call)`` for every filter, selector, guard and snapshot
    score in the registries (a registered class built with its defaults, as a spec without options builds it)."""
    import inspect

    from engine.types import GroupFilter, RolloutSelector
    from filters import FILTERS, GUARD_SCORES, GUARDS, SELECTORS
    from filters.guard import Guard, SnapshotScore

    for kind, registry, shape in (("filters", FILTERS, GroupFilter), ("selectors", SELECTORS, RolloutSelector),
                                  ("guards", GUARDS, Guard), ("guard scores", GUARD_SCORES, SnapshotScore)):
        for name, impl in registry.items():
            yield kind, name, impl() if inspect.isclass(impl) else impl, shape


def test_every_registered_stage_matches_the_protocols_it_implements():
    """Every registered filter, selector, guard and snapshot score matches the Protocol of its call, and the
    capabilities of ``engine.types`` it has are the ones pinned in ``CAPABILITIES``, signatures
    included: a renamed or re-signed method fails here instead of silently dropping what the loop does."""
    from engine.types import STAGE_CAPABILITIES

    seen = set()
    for kind, name, impl, shape in registered_stages():
        has = {cap for cap in STAGE_CAPABILITIES if isinstance(impl, cap)}
        assert {cap.__name__ for cap in has} == CAPABILITIES.get((kind, name), set()), f"{kind} {name}"
        for protocol in (shape, *has):
            assert not signature_drift(impl, protocol), f"{kind} {name} vs {protocol.__name__}: " \
                                                        f"{signature_drift(impl, protocol)}"
        seen.add((kind, name))
    assert set(CAPABILITIES) <= seen, f"CAPABILITIES names stages no registry has: {set(CAPABILITIES) - seen}"


def test_a_drifted_stage_is_caught():
    """The check above is not vacuous: a skipper whose parameter was renamed, whose option lost its default or
    whose return changed is reported; one that lost a member is no ``Skipper`` at all."""
    from engine.types import Skipper

    class Drifted:
        def skip(self, task, rng):
            return False

        def skip_probability(self, task_id: str, floor: float) -> dict:
            return {}

    class Half:
        def skip(self, task_id, rng):
            return False

    drift = signature_drift(Drifted(), Skipper)
    assert isinstance(Drifted(), Skipper) and len(drift) == 4, drift  # task, returns x2, floor needed
    assert not isinstance(Half(), Skipper)


def test_the_policy_is_a_gradient_source():
    """``engine.update.GRPOPolicy`` has every member of ``GradientSource``, the only view of the policy a stage
    in filters/ reads (no stage reaches into TRL's trainer: checked on the source)."""
    import inspect

    from engine.types import GradientSource
    from engine.update import GRPOPolicy

    for name in [n for n, v in vars(GradientSource).items() if isinstance(v, property)]:
        assert isinstance(inspect.getattr_static(GRPOPolicy, name, None), property), f"GRPOPolicy.{name}"
    reach = [f"{path.relative_to(ROOT)}:{n.lineno}" for name, path in all_modules().items() if name.startswith("filters")
             for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(n, ast.Attribute) and n.attr == "trainer"
             or isinstance(n, ast.Constant) and n.value == "trainer"]
    assert not reach, f"filters/ reaching into the policy's trainer: {reach}"
