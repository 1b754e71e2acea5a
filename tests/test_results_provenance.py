"""Every results file is written whole by its script, and says where and how it was measured.

For each ``benchmarks/results/*.json``, without exception: a ``provenance`` record
(benchmarks/provenance.py) naming the script, command, git commit (40 hex digits), date, CPU and
packages; and no key the script cannot write. A result that cannot name the commit that made it is
deleted, not excused. A key counts as writable when it is a string literal in the script's source or in benchmarks/provenance.py (its
``ast`` constants, list elements and dict keys included) or a keyword argument's name there. Only identifier-like keys are checked
(``plain_quiet_estimate_s``, ``note``); keys with other characters are data the script copies or
indexes by (seed numbers, metric names such as ``accuracy/avg@16``, package names). A field added by
hand after the run is therefore caught, as long as it is named like a field.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from benchmarks import provenance

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PROVENANCE_SOURCE = ROOT / "benchmarks" / "provenance.py"
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def string_literals(path: Path) -> set[str]:
    """Every string constant in a Python source file, and its keyword-argument names (``collect(x=...)``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return ({node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
            | {node.arg for node in ast.walk(tree) if isinstance(node, ast.keyword) and node.arg})


def unknown_keys(obj, allowed: set[str], where: str = "") -> list[str]:
    """Paths of identifier-like dict keys in ``obj`` (recursively) that are not in ``allowed``."""
    found = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if IDENTIFIER.fullmatch(key) and key not in allowed:
                found.append(f"{where}/{key}")
            found += unknown_keys(value, allowed, f"{where}/{key}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            found += unknown_keys(value, allowed, f"{where}[{i}]")
    return found


def results_files() -> list[Path]:
    return sorted(RESULTS.glob("*.json"))


def check_result(name: str, data) -> None:
    """Fail unless ``data`` (results file ``name``) has a full provenance record with a 40-hex commit and
    no identifier-like key its script does not write."""
    assert isinstance(data, dict) and isinstance(data.get("provenance"), dict), (
        f"{name}: no provenance record (benchmarks/provenance.py collect())")
    prov = data["provenance"]
    missing = [k for k in provenance.REQUIRED if k not in prov]
    assert not missing, f"{name}: provenance lacks {missing}"
    script = ROOT / prov["script"]
    assert script.is_file(), f"{name}: provenance names {prov['script']}, which does not exist"
    commit = prov["git_commit"]
    assert isinstance(commit, str) and re.fullmatch(r"[0-9a-f]{40}", commit), f"{name}: git_commit {commit!r}"
    allowed = string_literals(script) | string_literals(PROVENANCE_SOURCE)
    extra = unknown_keys(data, allowed)
    assert not extra, f"{name}: keys {prov['script']} does not write (added by hand?): {extra}"


@pytest.mark.parametrize("path", results_files(), ids=lambda p: p.name)
def test_results_file_has_provenance_and_only_keys_its_script_writes(path: Path):
    check_result(path.name, json.loads(path.read_text()))


@pytest.mark.parametrize("commit", [None, "", "fb08663", "not-a-commit" * 4])
def test_a_result_without_a_full_commit_fails(commit):
    record = provenance.collect(str(ROOT / "benchmarks" / "default_run.py"), [])
    check_result("default_run.json", {"provenance": record})  # the record as collected passes
    if commit is None:
        del record["git_commit"]
    else:
        record["git_commit"] = commit
    with pytest.raises(AssertionError, match="git_commit"):
        check_result("default_run.json", {"provenance": record})


def test_every_markdown_result_has_its_json():
    orphans = [p.name for p in RESULTS.glob("*.md") if not p.with_suffix(".json").exists()]
    assert not orphans, f"results written by no script's JSON (no provenance): {orphans}"


def test_unknown_keys_catches_a_hand_added_field():
    script = ROOT / "benchmarks" / "filtering_smollm2.py"
    written = {"config": "x.yaml", "plain": {"steps": 16, "wall_s": 2918.0},
               "filtered_over_plain": {"tokens": 0.75, "wall_s": 0.26}}
    allowed = string_literals(script) | string_literals(PROVENANCE_SOURCE)
    assert unknown_keys(written, allowed) == []
    by_hand = {**written, "plain": {**written["plain"], "plain_quiet_estimate_s": 1625}, "note": "quiet machine"}
    assert unknown_keys(by_hand, allowed) == ["/plain/plain_quiet_estimate_s", "/note"]


def test_unknown_keys_leaves_data_keys_alone():
    data = {"seeds": {"42": {"accuracy/avg@16": 0.8}}, "packages": {"math-verify": "0.8"}}
    assert unknown_keys(data, {"seeds", "packages"}) == []


def test_provenance_record_describes_this_checkout():
    record = provenance.finish(provenance.collect(str(ROOT / "benchmarks" / "default_run.py"), ["--seeds", "42"]))
    assert record["script"] == "benchmarks/default_run.py"
    assert record["command"] == "python -m benchmarks.default_run --seeds 42"
    assert record["git_commit"] == provenance.git("rev-parse", "HEAD")
    assert record["cpu_count"] >= 1 and record["cpu_model"]
    assert record["packages"]["torch"] and record["packages"]["numpy"]
    assert set(provenance.REQUIRED) <= set(record) and "load_average_end" in record
    assert provenance.footer(record).startswith("Provenance: `python -m benchmarks.default_run --seeds 42`")
