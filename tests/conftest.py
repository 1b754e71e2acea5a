import json
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
sys.path.insert(0, str(Path(__file__).parent))

from factories import make_model_dir, require_shared_data  # noqa: E402


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
