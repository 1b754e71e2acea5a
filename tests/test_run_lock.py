"""One live run per run directory: a second `ttrl run` into it is refused, naming the owner; a run killed
with SIGKILL leaves no lock behind, so it can be resumed at once. Real `ttrl run` processes on the demo."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.rundir import checkpoint, lock as run_lock

SMALL = ["--limit", "32", "--prompts_per_step", "8", "--episodes", "1", "--eval_k", "4", "--save_every", "1",
         "--progress", "false"]


def ttrl(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "engine.cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_a_second_acquire_is_refused_naming_the_owner_until_released(tmp_path):
    lock = run_lock.acquire(tmp_path / "run")
    owner = json.loads((tmp_path / "run" / run_lock.LOCK_NAME).read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    with pytest.raises(run_lock.RunDirBusy, match=f"pid {os.getpid()} on host {socket.gethostname()}"):
        run_lock.acquire(tmp_path / "run")
    lock.release()
    run_lock.acquire(tmp_path / "run").release()   # free again, though the lock file stays


@pytest.mark.slow
def test_a_live_run_owns_its_directory_and_a_killed_one_can_be_resumed(tmp_path):
    run_dir = tmp_path / "run"
    first = ttrl("run", *SMALL, "--output_dir", str(run_dir))
    deadline = time.monotonic() + 600
    while checkpoint.find(run_dir) is None:     # a step done and checkpointed (save_every 1)
        assert first.poll() is None, first.communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first.send_signal(signal.SIGSTOP)          # alive (and holding the lock) however slow the second start is
    try:
        config = (run_dir / "config.yaml").read_text()
        second = ttrl("run", *SMALL, "--output_dir", str(run_dir))
        _, err = second.communicate(timeout=600)
        assert second.returncode == 2
        line = err.strip().splitlines()[-1]
        assert "is in use by a live run" in line and f"pid {first.pid} on host {socket.gethostname()}" in line
        assert "run --limit 32" in line and "Traceback" not in err   # its command
        assert (run_dir / "config.yaml").read_text() == config     # the refused run wrote nothing
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()

    # The killed owner's lock went with it: the run resumes (the lock file, with its stale pid, is still there).
    assert json.loads((run_dir / run_lock.LOCK_NAME).read_text())["pid"] == first.pid
    resumed = ttrl("run", "--resume", str(run_dir))
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert "resumed from" in out + err and (run_dir / "summary.json").exists()
