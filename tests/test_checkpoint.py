"""Checkpoints and resume: a run killed at any moment continues to the result it would have had.

The integration tests run the real `ttrl run` on the demo model and task (a small slice: 64 prompts,
2 episodes = 8 steps) in subprocesses, kill them with SIGKILL or Ctrl-C mid-run, resume, and compare
every metric except wall-clock times with an uninterrupted run. On CPU the comparison is exact: the
checkpoint restores every RNG the run draws from, so the resumed process takes the same random draws.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine.rundir import checkpoint
from engine.cli.main import main
from engine.rundir.metrics import truncate_jsonl

SMALL = ["--limit", "64", "--prompts_per_step", "16", "--episodes", "2", "--eval_k", "4", "--save_every", "3",
         "--progress", "false"]


def ttrl(*args, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "engine.cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def finish(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def rows_written(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def wait_for_rows(proc, run_dir: Path, n: int, timeout=600) -> None:
    deadline = time.monotonic() + timeout
    while rows_written(run_dir) < n:
        assert proc.poll() is None, f"the run ended before writing {n} rows: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.05)


def without_times(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock fields (``time/...``, ``.../time_s``, TRL's step_time) and
    the resident memory, which vary from run to run by nature."""
    return [{k: v for k, v in json.loads(line).items() if "time" not in k and not k.startswith("memory/")}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final_scores(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {k: v for k, v in summary["after"].items() if k.startswith("accuracy/")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    code, _, err = finish(ttrl("run", *SMALL, "--output_dir", str(run_dir)))
    assert code == 0, err[-3000:]
    return run_dir


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_ends_where_an_uninterrupted_run_ends(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    proc = ttrl("run", *SMALL, "--output_dir", str(run_dir))
    wait_for_rows(proc, run_dir, 5)           # killed somewhere inside step 6
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "summary.json").exists() and checkpoint.find(run_dir) is not None

    code, out, err = finish(ttrl("run", "--resume", str(run_dir)))
    assert code == 0, err[-3000:]
    assert "resumed from" in out + err
    # Same seed, same machine: identical metrics, row by row (the first rows also show that two fresh
    # runs agree), and the same final accuracies.
    assert without_times(run_dir) == without_times(uninterrupted)
    assert len(without_times(run_dir)) == 8
    assert final_scores(run_dir) == final_scores(uninterrupted)


@pytest.mark.slow
def test_ctrl_c_checkpoints_then_exits_and_the_run_continues(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    proc = ttrl("run", *SMALL, "--output_dir", str(run_dir))
    wait_for_rows(proc, run_dir, 2)
    proc.send_signal(signal.SIGINT)
    code, _, err = finish(proc)
    assert code == 130
    assert "checkpoint saved after step" in err and f"ttrl run --resume {run_dir}" in err
    assert "Traceback" not in err
    state = json.loads((checkpoint.find(run_dir) / "loop.json").read_text())
    assert state["step"] == rows_written(run_dir) >= 2   # the checkpoint covers every row written

    # Re-running into the directory with other options is refused, naming them ...
    assert main(["run", *SMALL, "--episodes", "3", "--output_dir", str(run_dir)]) == 2
    # ... with the same options it continues, like --resume.
    code, _, err = finish(ttrl("run", *SMALL, "--output_dir", str(run_dir)))
    assert code == 0, err[-3000:]
    assert without_times(run_dir) == without_times(uninterrupted)
    # A finished run is not run again.
    assert main(["run", "--resume", str(run_dir)]) == 0


def test_rerun_with_other_options_names_them(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("n_votes: 8\n")
    (run_dir / "checkpoint").mkdir()
    for name in checkpoint.FILES:
        (run_dir / "checkpoint" / name).write_text("")
    assert main(["run", "--output_dir", str(run_dir), "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert "holds a checkpoint of a run with different options" in err and "n_votes" in err


def test_resume_of_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "no config.yaml there" in capsys.readouterr().err


# --- the checkpoint files on their own: atomic writes (a small real model and optimizer) ---------

class Policy:
    """What ``checkpoint`` asks of a policy: ``state_dict`` and ``load_state_dict`` (a real module and optimizer)."""

    def __init__(self):
        self.model = torch.nn.Linear(4, 2)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=0.1)
        self.steps = 0

    def train_step(self):
        self.model(torch.randn(3, 4)).sum().backward()
        self.optimizer.step()
        self.steps += 1

    def state_dict(self):
        return {"model": {k: v.clone() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "steps": self.steps}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = state["steps"]


def test_a_kill_during_a_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    import random

    policy, rng = Policy(), random.Random(0)
    policy.train_step()
    checkpoint.save(tmp_path, policy=policy, rng=rng, loop_state={"step": 1})
    saved = policy.model.weight.detach().clone()
    policy.train_step()

    def dies_half_way(path, data):
        path.write_bytes(data[: len(data) // 2])
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(checkpoint, "write_synced", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, policy=policy, rng=rng, loop_state={"step": 2})
    monkeypatch.undo()
    assert checkpoint.load(checkpoint.find(tmp_path), policy=policy, rng=rng) == {"step": 1}
    assert torch.equal(policy.model.weight, saved) and policy.steps == 1

    # Killed between the two renames: only checkpoint.old is complete, and it is the one loaded.
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.old")
    assert checkpoint.find(tmp_path) == tmp_path / "checkpoint.old"
    # The next save cleans up and writes a fresh `checkpoint`.
    checkpoint.save(tmp_path, policy=policy, rng=rng, loop_state={"step": 3})
    assert checkpoint.find(tmp_path) == tmp_path / "checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_rng_states_come_back(tmp_path):
    import random

    policy, rng = Policy(), random.Random(5)
    checkpoint.save(tmp_path, policy=policy, rng=rng, loop_state={})
    expected = (rng.random(), random.random(), torch.rand(1).item())
    rng.random(), random.random(), torch.rand(3)
    checkpoint.load(checkpoint.find(tmp_path), policy=policy, rng=rng)
    assert (rng.random(), random.random(), torch.rand(1).item()) == expected


def test_truncate_jsonl_keeps_the_rows_a_checkpoint_covers(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n')
    truncate_jsonl(path, 2)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    truncate_jsonl(tmp_path / "none.jsonl", 0)
    assert not (tmp_path / "none.jsonl").exists()
    truncate_jsonl(path, 0)
    assert path.read_text() == ""


# --- no pickles: a checkpoint is safetensors and JSON, and loading one runs no code from it ------

def test_a_checkpoint_holds_no_pickle_and_round_trips_exactly(tmp_path):
    import random

    from safetensors.torch import load_file

    policy, rng = Policy(), random.Random(3)
    for _ in range(2):
        policy.train_step()
    checkpoint.save(tmp_path, policy=policy, rng=rng, loop_state={"step": 2})
    path = checkpoint.find(tmp_path)
    assert sorted(p.name for p in path.iterdir()) == sorted(checkpoint.FILES)
    json.loads((path / "state.json").read_text())            # plain JSON ...
    tensors = load_file(path / "state.safetensors")          # ... and plain tensors
    assert "policy/optimizer/state/0/exp_avg" in tensors and "rng/torch" in tensors
    for p in path.iterdir():                                 # no pickle (protocol 2+ starts 0x80; torch.save is a zip)
        assert p.read_bytes()[:1] != b"\x80" and p.read_bytes()[:2] != b"PK", p.name

    want = policy.state_dict()
    other = Policy()
    checkpoint.load(path, policy=other, rng=random.Random(0))
    got = other.state_dict()
    assert all(torch.equal(got["model"][k], want["model"][k]) for k in want["model"]) and got["steps"] == 2
    assert got["optimizer"]["param_groups"] == want["optimizer"]["param_groups"]   # betas stay a tuple, ids ints
    for pid, slots in want["optimizer"]["state"].items():
        assert all(torch.equal(got["optimizer"]["state"][pid][k], v) for k, v in slots.items())


def test_loading_never_unpickles(tmp_path):
    """A malicious pickle put in a checkpoint (as ``state.pt``, the earlier format) is never executed:
    beside a real checkpoint it is ignored; alone it is refused with a clear error."""
    import pickle
    import random

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    policy = Policy()
    checkpoint.save(run_dir, policy=policy, rng=random.Random(0), loop_state={"step": 1})
    (run_dir / "checkpoint" / checkpoint.LEGACY).write_bytes(pickle.dumps(Exploit()))
    checkpoint.load(checkpoint.find(run_dir), policy=policy, rng=random.Random(0))
    assert not marker.exists()

    for name in checkpoint.FILES:
        (run_dir / "checkpoint" / name).unlink()
    with pytest.raises(checkpoint.CheckpointError, match="old pickle format"):
        checkpoint.find(run_dir)
    assert not marker.exists()


def test_resume_keeps_explicit_values_equal_to_the_parser_defaults(tmp_path):
    """A run's options come back whole on resume, though the demo or suite preset is applied again:
    an explicit value equal to the parser's default but not to the preset's stays (it used to be
    dropped from the saved options, so the preset's came back and the resume was refused)."""
    import yaml

    from engine.config.options import config_differences, parse_config, saved_options

    data = tmp_path / "tasks.jsonl"
    data.write_text('{"id": "a", "question": "1+1=", "answer": "2"}\n')
    suite = tmp_path / "mine.yaml"
    suite.write_text(yaml.safe_dump({"source": str(data), "eval_k": 4, "episodes": 3}))
    cases = [["--n_votes", "64", "--n_train", "16"],            # demo preset: 32 votes; parser default 64
             ["--learning_rate", "1e-5"],                        # demo preset 1e-4; engine default 1e-5
             ["--model", str(tmp_path), "--suite", str(suite), "--eval_k", "16", "--episodes", "1"]]
    for i, args in enumerate(cases):
        run_dir = tmp_path / f"run{i}"
        run_dir.mkdir()
        cfg = parse_config([*args, "--output_dir", str(run_dir)])
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        resumed = parse_config(["--output_dir", str(run_dir)], base=saved_options(run_dir))
        assert config_differences(cfg.to_dict(), resumed.to_dict()) == [], args
