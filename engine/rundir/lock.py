"""One owner per run directory: an OS lock held by the ``ttrl run`` process for its whole life.

Two runs writing into one directory corrupt it (interleaved ``metrics.jsonl`` rows, one checkpoint
swapped under the other's feet). ``acquire`` takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on
``RUN_DIR/run.lock`` and keeps the file open; the kernel drops the lock when the process exits in any
way — SIGKILL, out of memory, a lost node's worker — so a killed run never leaves a lock that blocks
its own resume, and no pid file has to be guessed stale. The owner writes its pid, host, start time
and command into the file, so a second run is refused with a line naming the live one. (flock on NFS
is emulated with POSIX locks by Linux and works across clients; on other network file systems it may
not lock at all.)
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from engine.errors import ConfigError

LOCK_NAME = "run.lock"


class RunDirBusy(ConfigError):
    """The run directory is owned by another live ``ttrl run``."""


class RunLock:
    """The held lock; ``release`` (or the process's end) gives it up."""

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(run_dir: str | Path) -> RunLock:
    """Own ``run_dir`` (created if missing) until released or this process ends; ``RunDirBusy`` naming the
    owner if a live process holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = read_owner(fd)
        os.close(fd)
        raise RunDirBusy(f"{run_dir} is in use by a live run: {describe(owner)}; wait for it to finish "
                         "(or stop it), or choose another --output_dir") from None
    except BaseException:
        os.close(fd)
        raise
    owner = {"pid": os.getpid(), "host": socket.gethostname(),
             "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": " ".join(sys.argv)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(owner) + "\n").encode("utf-8"), 0)
    os.fsync(fd)
    return RunLock(path, fd)


def read_owner(fd: int) -> dict:
    """What the lock's holder wrote about itself ({} if it has not written yet)."""
    raw = os.pread(fd, 65536, 0).decode("utf-8", errors="replace").strip()
    try:
        owner = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return {"raw": raw[:200]}
    return owner if isinstance(owner, dict) else {"raw": raw[:200]}


def describe(owner: dict) -> str:
    if not owner:
        return "a process that has just started (no owner details written yet)"
    if "raw" in owner:
        return f"owner details: {owner['raw']!r}"
    return (f"pid {owner.get('pid')} on host {owner.get('host')}, started {owner.get('started')}, "
            f"command `{owner.get('command')}`")
