import json
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: one OpenMP thread each (and in the runs they start), set before torch is imported,
    # so neither spin-waits for a core the other holds.
    os.environ["OMP_NUM_THREADS"] = "1"
sys.path.insert(0, str(Path(__file__).parent))

from factories import make_model_dir, require_shared_data  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``-n 2 --dist loadgroup``, the README's test command): a test file runs whole on one
    worker, so its module fixtures (a vLLM engine, a two-rank run) are built once; every test that starts a
    Ray cluster (marker ``ray``) runs on one worker, one after another, so two clusters never compete for the
    ports and the two cores."""
    for item in items:
        group = "ray" if item.get_closest_marker("ray") else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture
def shared_data() -> Path:
    """The real benchmark data folder (skip without it, fail with TTRL_REQUIRE_DATA=1)."""
    return require_shared_data()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A real (random) tiny Llama with a character tokenizer, saved to disk once per session."""
    return make_model_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    path = tmp_path / "tasks.jsonl"
    with path.open("w") as f:
        for i in range(4):
            f.write(json.dumps({"id": f"t{i}", "question": f"{i}+{i}=", "answer": str(2 * i)}) + "\n")
    return path


@pytest.fixture(scope="session")
def two_ranks(tmp_path_factory) -> tuple[Path, Path, str]:
    """An uninterrupted two-rank torchrun demo run, guarded (tests/test_distributed.py's DEMO + GUARDED):
    (run directory, probe folder, output). Session-scoped: tests/test_distributed.py checks it and
    tests/test_ray_train.py compares Ray Train's run of the same options with it."""
    from test_distributed import DEMO, GUARDED, finish, ttrl_torchrun

    base = tmp_path_factory.mktemp("two-ranks")
    run_dir, probe = base / "run", base / "probe"
    out = finish(ttrl_torchrun(2, *DEMO, *GUARDED, "--output_dir", str(run_dir), probe=probe))
    assert (run_dir / "summary.json").exists(), out[-3000:]
    return run_dir, probe, out
