"""Benchmark suites: the registry loads every benchmark, user suite files, ``ttrl eval --completions``
grading with hand-computed metrics, and a resumable two-benchmark ``ttrl suite`` on the tiny model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from engine.data.completions import grade_completions, read_completions
from engine.errors import DataError
from engine.data.suites import SUITES, SuiteError, load_suite
from factories import SHARED_DATA
from test_cli import ttrl

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = SHARED_DATA
needs_data = pytest.mark.usefixtures("shared_data")  # skip without the data; fail if TTRL_REQUIRE_DATA=1
LOCAL = [name for name, s in SUITES.items() if s.source is not None]


@needs_data
@pytest.mark.parametrize("name", LOCAL)
def test_every_local_suite_loads_and_its_references_grade_perfectly(name):
    """Fields map (a prompt and a label on every row); the labels, fed back as completions, score 100%."""
    suite = SUITES[name]
    tasks = suite.load_tasks(DATA_DIR)
    assert len(tasks) > 0 and all(t.question.strip() and t.label for t in tasks)
    assert len({t.id for t in tasks}) == len(tasks)
    completions = {t.id: [f"Thus the answer is \\boxed{{{t.label}}}."] for t in tasks}
    scores = grade_completions(tasks, completions, suite.answer_type)
    assert scores["accuracy/avg@1"] == 1.0 and scores["accuracy/maj@1"] == 1.0 and scores["eval/missing"] == 0


def test_registry_covers_the_papers_benchmarks():
    expected = {"aime24", "aime25", "amc", "math500", "gpqa", "mawps-singleop", "mawps-addsub", "mawps-multiarith",
                "gsm8k", "demo", *[f"math500-l{i}" for i in range(1, 6)]}
    assert expected <= set(SUITES)
    assert SUITES["gpqa"].answer_type == "choice" and SUITES["mawps-addsub"].answer_type == "number"
    assert (SUITES["aime24"].episodes, SUITES["amc"].episodes, SUITES["math500"].episodes) == (80, 30, 10)


def test_gsm8k_is_hub_only_and_says_so_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reason = SUITES["gsm8k"].unavailable_reason()
    assert "hub-only" in reason and "openai/gsm8k" in reason and "HF_HUB_OFFLINE" in reason
    assert SUITES["gsm8k"].option_defaults()["data"] == "openai/gsm8k:main"
    assert SUITES["aime24"].unavailable_reason() is None


def test_unknown_suite_lists_the_valid_ones():
    with pytest.raises(SuiteError) as err:
        load_suite("aime2024")
    assert "unknown suite 'aime2024'" in str(err.value) and "aime24" in str(err.value) and "mawps-singleop" in str(err.value)


def test_missing_data_names_the_suite_the_path_and_data_dir(tmp_path):
    with pytest.raises(SuiteError) as err:
        SUITES["amc"].data_path(tmp_path)
    message = str(err.value)
    assert "'amc'" in message and str(tmp_path / "ttrl/AMC-TTT/test.json") in message and "--data_dir" in message


def test_user_suite_file(tmp_path):
    (tmp_path / "quiz.jsonl").write_text("".join(json.dumps({"key": f"q{i}", "q": f"{i}+1?", "a": i + 1}) + "\n"
                                                 for i in range(3)))
    path = tmp_path / "my-quiz.yaml"
    path.write_text(yaml.safe_dump({"source": "quiz.jsonl", "prompt_field": "q", "label_field": "a", "id_field": "key",
                                    "answer_type": "number", "eval_k": 4, "template": "{question} Answer:"}))
    suite = load_suite(str(path))
    assert suite.name == "my-quiz" and suite.eval_k == 4
    tasks = suite.load_tasks()
    assert [(t.id, t.question, t.label) for t in tasks][0] == ("q0", "0+1?", "1")
    defaults = suite.option_defaults()
    assert defaults["data"] == str(tmp_path / "quiz.jsonl") and defaults["template"] == "{question} Answer:"

    path.write_text(yaml.safe_dump({"source": "quiz.jsonl", "prompt": "q", "k": 4}))
    with pytest.raises(SuiteError, match=r"unknown keys \['k', 'prompt'\]"):
        load_suite(str(path))


@needs_data
def test_suite_fills_config_defaults_below_the_user(monkeypatch):
    from engine.config.options import parse_config

    monkeypatch.setenv("TTRL_DATA_DIR", str(DATA_DIR))
    cfg = parse_config(["--suite", "gpqa", "--eval_k", "4", "--output_dir", "unused"])
    assert cfg.ttrl.answer_type == "choice" and cfg.eval.eval_k == 4 and cfg.eval.eval_temperature == 0.6
    assert cfg.data.data == str(DATA_DIR / "ttrl/GPQA-TTT/test.json")
    cfg = parse_config(["--suite", "math500", "--data", "mine.jsonl", "--output_dir", "unused"])
    assert cfg.data.data == "mine.jsonl" and cfg.ttrl.prompts_per_step == 32  # the user's data, the suite's recipe


@needs_data
def test_every_benchmark_config_parses(monkeypatch):
    from engine.config.options import parse_config

    monkeypatch.setenv("TTRL_DATA_DIR", str(DATA_DIR))
    configs = sorted((ROOT / "benchmarks" / "configs").glob("*.yaml"))
    assert len(configs) >= 7
    for path in configs:
        text = path.read_text()
        assert "ttrl run benchmarks/configs/" + path.name in text, f"{path.name}: no run command in its header"
        cfg = parse_config([str(path), "--output_dir", "unused"])
        assert cfg.data.suite, path.name
        if "qwen" in path.name:
            assert (cfg.ttrl.n_votes, cfg.ttrl.n_train, cfg.grpo.learning_rate, cfg.grpo.beta) == (64, 32, 5e-7, 0.001)
            assert cfg.grpo.max_completion_length == 3072 and "--sampler vllm" in text


def _aime_completions(path: Path) -> None:
    """Task 0 (label 204): 2 of 4 right, majority right. Task 1 (label 025): 1 of 4 right, majority 5 (wrong)."""
    rows = [("0", "\\boxed{204}"), ("0", "so 204"), ("0", "\\boxed{17}"), ("0", "I don't know."),
            ("1", "\\boxed{25}"), ("1", "\\boxed{5}"), ("1", "\\boxed{5}"), ("1", "\\boxed{6}")]
    path.write_text("".join(json.dumps({"id": i, "completion": c}) + "\n" for i, c in rows))


@needs_data
def test_eval_grades_completions_with_hand_computed_metrics(tmp_path):
    _aime_completions(tmp_path / "c.jsonl")
    result = ttrl("eval", "--suite", "aime24", "--data_dir", str(DATA_DIR), "--completions", str(tmp_path / "c.jsonl"),
                  "--output_dir", str(tmp_path / "eval"))
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert scores["suite"] == "aime24" and scores["eval/labeled"] == 2 and scores["eval/missing"] == 28
    assert scores["accuracy/avg@4"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert scores["accuracy/maj@4"] == pytest.approx(0.5)
    assert scores["accuracy/pass@1"] == pytest.approx(0.375)
    assert scores["accuracy/pass@2"] == pytest.approx(((1 - 1 / 6) + (1 - 3 / 6)) / 2)  # 1 - C(n-c,2)/C(4,2)
    assert scores["accuracy/pass@4"] == pytest.approx(1.0)


def test_unknown_completion_id_names_the_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "0", "completion": "1"}\n\n{"id": "99", "completion": "2"}\n')
    with pytest.raises(DataError, match=r"c.jsonl, line 3: unknown task id '99'"):
        read_completions(path, {"0", "1"})
    path.write_text('{"id": "0", "text": "1"}\n')
    with pytest.raises(DataError, match="line 1"):
        read_completions(path, {"0"})


def suite_in_process(capfd, *args) -> tuple[int, str]:
    """``ttrl suite ARGS`` in this process (its runs are subprocesses of their own, engine/cli/suites.py): its exit
    status and everything it and its runs wrote to stdout. One interpreter start-up saved per call."""
    from engine.cli.main import main

    capfd.readouterr()
    code = main(list(args))
    return code, capfd.readouterr().out


def test_suite_command_runs_each_benchmark_once_and_resumes(tiny_model, tiny_data, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("alpha", "beta"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"source": str(tiny_data), "template": "{question}",
                                                               "answer_type": "number", "eval_k": 2}))
    args = ["suite", "alpha.yaml", "beta.yaml", "--model", str(tiny_model), "--n_votes", "4", "--n_train", "2",
            "--prompts_per_step", "2", "--max_completion_length", "6", "--progress", "false", "--output_dir", "out"]
    code, stdout = suite_in_process(capfd, *args)
    assert code == 0, stdout[-3000:]
    out = tmp_path / "out"
    for name in ("alpha", "beta"):
        assert (out / name / "summary.json").exists() and (out / name / "report.md").exists()
    for file in ("suite_summary.md", "suite_summary.json", "suite_summary.png"):
        assert (out / file).stat().st_size > 0
    summary = json.loads((out / "suite_summary.json").read_text())
    assert [r["suite"] for r in summary["runs"]] == ["alpha", "beta"]
    assert all(r["status"] == "done" and "accuracy/avg@2" in r["after"] for r in summary["runs"])
    assert "| alpha | 4 |" in stdout and "avg@2" in stdout

    start = time.perf_counter()
    code, again = suite_in_process(capfd, *args)
    assert code == 0 and time.perf_counter() - start < 60
    assert again.count("already finished") == 2 and "ttrl run --suite" not in again

    import shutil

    shutil.rmtree(out / "beta")  # a deleted benchmark is run again, the finished one is not
    code, resumed = suite_in_process(capfd, *args)
    assert code == 0, resumed[-3000:]
    assert "alpha: already finished" in resumed and "beta: ttrl run --suite beta.yaml" in resumed
    assert (out / "beta" / "summary.json").exists()
