"""The wheel stands on its own: it installs engine, rewards and filters with their data files (never the
benchmark scripts or the tests), and ``ttrl run`` from a fresh virtual environment, outside the checkout,
trains the shipped demo model."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "rewards", "filters")
NOT_SHIPPED = ("benchmarks", "tests")
DATA = ("engine/data/*.safetensors", "engine/config/accelerate/*.yaml")  # pyproject's package-data
# One step of the default model (the shipped demo), as small as it goes: the run must start and finish.
RUN = ("--max_steps", "1", "--limit", "4", "--prompts_per_step", "2", "--n_votes", "4", "--n_train", "2",
       "--eval_k", "1", "--no_eval_greedy", "--no_progress")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything that would point Python at the checkout."""
    drop = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV"}
    return {**{k: v for k, v in os.environ.items() if k not in drop},
            "PYTHONNOUSERSITE": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "HF_HUB_OFFLINE": "1", **extra}


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, (f"{' '.join(map(str, cmd))} exited {done.returncode}:\n"
                                  f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done


def copy_sources(dest: Path) -> Path:
    """The checkout's project files as they are in the work tree, benchmarks and tests included (so their
    absence from the wheel is the package list's doing), without build leftovers. Built from a copy, the
    build's egg-info and build/ land there, not in the checkout."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    for name in (*PACKAGES, *NOT_SHIPPED):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore, symlinks=True)
    return dest


def build_wheel(src: Path, out: Path) -> Path:
    """``pip wheel`` of ``src``: with this environment's setuptools when it is new enough to build wheels
    by itself (70.1+: no download), else in pip's isolated build environment (fetches setuptools)."""
    try:
        setuptools = tuple(int(x) for x in re.findall(r"\d+", metadata.version("setuptools"))[:2])
    except metadata.PackageNotFoundError:
        setuptools = (0, 0)
    isolation = [] if setuptools < (70, 1) else ["--no-build-isolation"]
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", out, src], env=clean_env())
    (wheel,) = out.glob("ttrl_engine-*.whl")
    return wheel


def requires_dist(metadata_text: str) -> list[str]:
    """The Requires-Dist lines of a METADATA file's headers (read directly: ``Distribution.requires``
    parses the whole file as an email message, a tenth of a second apiece for large ones)."""
    headers = metadata_text.split("\n\n", 1)[0]
    return [line.partition(":")[2].strip() for line in headers.splitlines() if line.startswith("Requires-Dist:")]


def dependencies(requires: list[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions that ``requires`` (Requires-Dist lines) need, transitively, extras
    included where a requirement asks for them; optional extras of the project itself are not."""
    from packaging.requirements import Requirement

    found: dict[str, tuple[metadata.Distribution, set[str]]] = {}  # name -> (distribution, extras asked for)
    missing = []
    todo = [(line, frozenset()) for line in requires]
    while todo:
        line, extras = todo.pop()
        req = Requirement(line)
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in {"", *extras}):
            continue
        key = re.sub(r"[-_.]+", "-", req.name).lower()
        if key not in found:
            try:
                found[key] = (metadata.distribution(req.name), set())
            except metadata.PackageNotFoundError:
                missing.append(req.name)
                continue
            new = True
        else:
            new = not req.extras <= found[key][1]
        if new:
            dist, asked = found[key]
            asked |= req.extras
            todo += [(child, frozenset(asked)) for child in requires_dist(dist.read_text("METADATA") or "")]
    assert not missing, f"this environment lacks declared dependencies: {missing}"
    return {name: dist for name, (dist, _) in found.items()}


def link_dependencies(wheel: Path, site_packages: Path) -> list[str]:
    """Symlink into ``site_packages`` (a fresh environment's, the wheel installed there with --no-deps)
    the files of every distribution the wheel's metadata requires, as installed in this environment:
    no download, no copy. Only the declared dependencies: not this project (whose editable finder and
    ``.pth`` would put the checkout back on the path), nor optional extras such as vllm. Links inside
    ``site-packages``, not a folder on a ``.pth`` line: libraries that tell installed modules from user
    code by their path (dill, under datasets' fingerprints) must see them as installed. Returns the
    distributions linked."""
    with zipfile.ZipFile(wheel) as zf:
        (meta,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        requires = requires_dist(zf.read(meta).decode())
    own = {*PACKAGES, *NOT_SHIPPED}
    linked = []
    for name, dist in dependencies(requires).items():
        assert name != "ttrl-engine"
        home = Path(dist.locate_file(""))
        record = dist.read_text("RECORD") or ""  # read whole: dist.files is slow for torch's 20k files
        tops = {line.split(",")[0].split("/")[0] for line in record.splitlines() if line} - {"..", "__pycache__"}
        if getattr(dist, "_path", None) is not None:  # its dist-info folder, even without a RECORD
            tops.add(Path(str(dist._path)).name)
        for top in sorted(tops - own):
            if (home / top).exists() and not (site_packages / top).exists():
                (site_packages / top).symlink_to(home / top)
        linked.append(name)
    return linked


@pytest.mark.slow
def test_the_wheel_installs_the_library_alone_and_its_ttrl_run_works_outside_the_checkout(tmp_path):
    wheel = build_wheel(copy_sources(tmp_path / "src"), tmp_path / "wheel")

    names = set(zipfile.ZipFile(wheel).namelist())
    top = {name.split("/")[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == set(PACKAGES), f"top-level entries of the wheel: {top}"
    sources = {p.relative_to(ROOT).as_posix() for package in PACKAGES for p in (ROOT / package).rglob("*.py")
               if "__pycache__" not in p.parts}
    assert not sources - names, f"modules missing from the wheel: {sorted(sources - names)}"
    data = {p.relative_to(ROOT).as_posix() for pattern in DATA for p in ROOT.glob(pattern)}
    assert data and not data - names, f"data files missing from the wheel: {sorted(data - names)}"

    # A fresh environment with the wheel installed; its dependencies are this environment's, linked in
    # (no download, no copy), with this project's own files left out.
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel],
        env=clean_env())
    purelib = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                       env=clean_env()).stdout.strip())
    linked = link_dependencies(wheel, purelib)
    assert "torch" in linked and "trl" in linked, linked

    work = tmp_path / "elsewhere"  # an unrelated directory: nothing of the checkout on sys.path
    work.mkdir()
    env = clean_env(TTRL_CACHE=str(tmp_path / "cache"))  # an empty cache: the demo comes from the wheel's weights
    # Where `import NAME` would load each package from (its spec's origin is the module's __file__),
    # without paying for the imports: the run below imports them for real.
    probe = ("import importlib.util as u, json; print(json.dumps({'files': [u.find_spec(n).origin for n in "
             f"{PACKAGES!r}], 'absent': [n for n in {NOT_SHIPPED!r} if u.find_spec(n) is None]}}))")
    found = json.loads(run([python, "-c", probe], cwd=work, env=env).stdout)
    assert all(Path(f).is_relative_to(purelib) for f in found["files"]), found
    assert found["absent"] == list(NOT_SHIPPED), found

    run_dir = work / "run"
    done = run([venv / "bin" / "ttrl", "run", *RUN, "--output_dir", run_dir], cwd=work, env=env, timeout=600)
    assert "model demo" in done.stdout, done.stdout[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert summary["after"] and len(rows) == 1, (summary, rows)
