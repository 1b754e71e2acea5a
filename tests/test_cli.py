"""The ``ttrl`` command as a user runs it: a subprocess on a tiny config."""

import json
import os
import subprocess
import sys

import yaml


def ttrl(*args, cwd=None, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "engine.cli.main", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def test_ttrl_run_on_a_tiny_config(tiny_model, tiny_data, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(tiny_model), "data": str(tiny_data), "template": "{question}", "n_votes": 4, "n_train": 2,
        "prompts_per_step": 2, "max_completion_length": 6, "eval_k": 2, "progress": False,
        "output_dir": str(tmp_path / "run"),
    }))
    result = ttrl("run", str(config), "--learning_rate", "0.01")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| greedy |" in result.stdout and "| maj@2 |" in result.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["config"]["grpo"]["learning_rate"] == 0.01
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["n_votes"] == 4

    # `ttrl eval` scores the saved adapter without training, and writes eval.json.
    result = ttrl("eval", "--model", str(tiny_model), "--data", str(tiny_data), "--template", "{question}",
                  "--adapter", str(tmp_path / "run" / "adapter"), "--eval_k", "2", "--max_completion_length", "6",
                  "--progress", "false", "--output_dir", str(tmp_path / "eval"))
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert scores["adapter"].endswith("adapter") and 0.0 <= scores["accuracy/avg@2"] <= 1.0


def test_help_lists_options_with_defaults():
    result = ttrl("run", "--help")
    assert result.returncode == 0
    for option in ("--n_votes", "--n_train", "--beta", "--learning_rate", "--loss_type", "--eval_k"):
        assert option in result.stdout
    assert "(default: 64)" in result.stdout  # n_votes


def test_bad_value_fails_before_loading_a_model(tmp_path):
    result = ttrl("run", "--model", str(tmp_path / "no-such-model"), "--data", "x.jsonl", "--n_votes", "0")
    assert result.returncode == 2
    assert "n_votes must be >= 1, got 0" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_data_file_is_one_clear_line(tiny_model, tmp_path):
    result = ttrl("run", "--model", str(tiny_model), "--data", str(tmp_path / "missing.jsonl"),
                  "--output_dir", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "missing.jsonl" in result.stderr and "Traceback" not in result.stderr


def test_unknown_command_lists_valid_ones():
    result = ttrl("train")
    assert result.returncode == 2 and "valid commands: run, eval" in result.stderr


def test_default_run_builds_the_demo_and_improves_it(tmp_path):
    """`ttrl run` with no arguments, from an empty cache: the demo model is built from the shipped
    weights (no pre-training), adapted, and its sampled accuracy rises (the benchmark measures +20
    points on average; asserting a rise of 5 leaves room for other CPUs' floating point in the update)."""
    from engine.data.demo import SHIPPED_WEIGHTS

    import os as _os

    env_cache = {"TTRL_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "engine.cli.main", "run", "--output_dir", str(tmp_path / "run"),
                             "--progress", "false"], capture_output=True, text=True, timeout=900,
                            env={**_os.environ, "HF_HUB_OFFLINE": "1", **env_cache})
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["after"]["accuracy/avg@16"] >= summary["before"]["accuracy/avg@16"] + 0.05
    assert summary["compute"]["steps"] == 48
    assert "pre-training" not in result.stdout + result.stderr
    built = list((tmp_path / "cache").glob("demo-*/model/model.safetensors"))
    assert len(built) == 1 and built[0].read_bytes() == SHIPPED_WEIGHTS.read_bytes()
    assert summary["before"]["accuracy/greedy"] == 0.75    # the README's number, on every machine


def readme_block(starts_with: str) -> str:
    """The README's fenced code block whose first line starts with ``starts_with``."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    found = [b for b in blocks if b.startswith(starts_with)]
    assert len(found) == 1, f"no single README python block starting {starts_with!r}"
    return found[0]


def test_readme_custom_reward_through_the_ttrl_console_script(tmp_path):
    """The README's custom reward as a user runs it: ``my_rewards.py`` in the current directory and the
    installed ``ttrl`` script (not ``python -m``, which would put the cwd on sys.path by itself)."""
    from pathlib import Path

    script = Path(sys.executable).with_name("ttrl")
    assert script.exists(), f"the ttrl console script is not installed beside {sys.executable}"
    (tmp_path / "my_rewards.py").write_text(readme_block("# my_rewards.py"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([str(script), "run", "--reward", "my_rewards:short_and_agreeing", "--episodes", "1",
                             "--limit", "8", "--prompts_per_step", "4", "--n_votes", "4", "--n_train", "2",
                             "--eval_k", "2", "--progress", "false", "--output_dir", "run"],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:  # the length penalty makes every reward fractional: the custom reward ran
        total = row["reward/mean"] * row["prompts/sampled"] * 4
        assert abs(total - round(total)) > 1e-6


def test_ttrl_eval_adapter_of_a_full_finetuning_run(tiny_model, tiny_data, tmp_path):
    """A full fine-tuning run saves the whole model in RUN/adapter; `ttrl eval --adapter` evaluates it
    (it used to hand the folder to PEFT, which failed), and a folder that is neither says what it takes."""
    run = tmp_path / "run"
    result = ttrl("run", "--model", str(tiny_model), "--data", str(tiny_data), "--template", "{question}",
                  "--lora", "false", "--n_votes", "4", "--n_train", "2", "--prompts_per_step", "2",
                  "--max_completion_length", "6", "--eval_k", "2", "--progress", "false", "--output_dir", str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (run / "adapter" / "adapter_config.json").exists() and (run / "adapter" / "config.json").exists()
    common = ["--model", str(tiny_model), "--data", str(tiny_data), "--template", "{question}", "--eval_k", "2",
              "--max_completion_length", "6", "--progress", "false"]
    result = ttrl("eval", *common, "--adapter", str(run / "adapter"), "--output_dir", str(tmp_path / "eval"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "holds full model weights" in result.stdout
    scores = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert scores["weights"] == str(run / "adapter") and 0.0 <= scores["accuracy/avg@2"] <= 1.0

    result = ttrl("eval", *common, "--adapter", str(tmp_path), "--output_dir", str(tmp_path / "eval2"))
    assert result.returncode == 2 and "it takes a run's adapter/ folder" in result.stderr
    assert "Traceback" not in result.stderr
