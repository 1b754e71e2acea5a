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
