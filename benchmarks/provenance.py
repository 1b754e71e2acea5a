"""Where a benchmark result came from: command, commit, date, CPU, threads, package versions.

Timings on a shared 2-core machine only mean something next to the machine that produced them, so
every results file records this block (the house rule for ``benchmarks/results/``).
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu() -> dict:
    """CPU model and its AVX-family flags, from /proc/cpuinfo (empty fields where it is absent)."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = sorted(f for f in value.split() if f.startswith("avx"))
    except OSError:
        pass
    return {"model": model, "avx_flags": flags, "cores": os.cpu_count()}


def git_commit() -> str:
    """HEAD of the checkout the benchmark ran from, ``+dirty`` if tracked files (results aside) were modified."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return git("rev-parse", "HEAD") + ("+dirty" if git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results") else "")
    except (OSError, subprocess.CalledProcessError) as err:
        return f"unknown ({err})"


def provenance(command: str, packages: tuple[str, ...] = ()) -> dict:
    """The provenance block of a results file.

    >>> sorted(provenance("python -m x", ("pytest",)))
    ['command', 'cpu', 'date', 'git_commit', 'packages', 'python', 'threads']
    """
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"command": command, "git_commit": git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpu": cpu(), "threads": len(os.sched_getaffinity(0)), "python": sys.version.split()[0], "packages": versions}
