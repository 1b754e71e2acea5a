"""Bad input through `ttrl run`'s own path (``engine.cli.main.main``, in-process): each case exits non-zero
with one paragraph naming the problem (file, line, field; the valid choices), no traceback unless
``--debug``, and never loses what was already written. Two subprocess runs check the real command."""

from __future__ import annotations

import errno
import json
import math
import pathlib

import pytest
import yaml

from engine.cli.main import main
from test_cli import ttrl

# --- plugins the runs below load by 'test_bad_input:Name', as a user's module would be ------------


class FailingReward:
    """Majority vote until call ``after`` (1-based, one call per group), then it fails ``how``."""

    def __init__(self, how: str = "raise", after: int = 1):
        self.how, self.after, self.calls = how, after, 0

    def __call__(self, group):
        from rewards import majority_vote

        self.calls += 1
        votes = majority_vote(group)
        if self.calls < self.after:
            return votes
        if self.how == "raise":
            raise KeyError("no such answer")
        if self.how == "nan":
            return [math.nan] + votes[1:]
        return votes[:-1]  # "count": one value short


class DropFirst:
    """A group filter that drops the first ``n`` groups it sees and keeps every later one."""

    def __init__(self, n: int = 2):
        self.n, self.seen = n, 0

    def __call__(self, group) -> bool:
        self.seen += 1
        return self.seen > self.n


# --- helpers -------------------------------------------------------------------------------------


def write_rows(path: pathlib.Path, rows: list) -> pathlib.Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def tiny_args(model, data, out, *extra) -> list[str]:
    return ["--model", str(model), "--data", str(data), "--template", "{question}", "--n_votes", "4",
            "--n_train", "2", "--prompts_per_step", "2", "--max_completion_length", "6", "--eval_k", "2",
            "--eval_greedy", "false", "--progress", "false", "--max_refill_rounds", "0", "--seed", "0",
            "--output_dir", str(out), *extra]


def ttrl_run(capsys, *args) -> tuple[int, str, str]:
    code = main(["run", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def fails(capsys, *args, says: list[str]) -> str:
    """Run ``ttrl run ARGS`` in-process; assert exit status 2, one paragraph on stderr saying all of ``says``."""
    code, _, err = ttrl_run(capsys, *args)
    assert code == 2, err
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert message.startswith("ttrl run: error: "), err
    for part in says:
        assert part in message, f"{part!r} not in {message!r}"
    return message


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


ROWS = [{"id": f"t{i}", "question": f"{i}+{i}=", "answer": str(2 * i)} for i in range(4)]


# --- the data file -------------------------------------------------------------------------------


def test_missing_data_file(capsys, tiny_model, tmp_path):
    fails(capsys, *tiny_args(tiny_model, tmp_path / "missing.jsonl", tmp_path / "run"),
          says=["missing.jsonl: file not found", "expected a .json, .jsonl"])


@pytest.mark.parametrize("name, content", [("tasks.jsonl", ""), ("tasks.jsonl", "\n  \n"), ("tasks.json", "")])
def test_empty_data_file(capsys, tiny_model, tmp_path, name, content):
    (tmp_path / name).write_text(content, encoding="utf-8")
    fails(capsys, *tiny_args(tiny_model, tmp_path / name, tmp_path / "run"), says=[f"{name}: file is empty"])


def test_unreadable_data_file(capsys, tiny_model, tmp_path, monkeypatch):
    # Root reads any file whatever its mode, so the refusal is the OS error a user would get.
    data = write_rows(tmp_path / "tasks.jsonl", ROWS)
    read_bytes = pathlib.Path.read_bytes

    def refuse(self):
        if self == data:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(pathlib.Path, "read_bytes", refuse)
    fails(capsys, *tiny_args(tiny_model, data, tmp_path / "run"),
          says=[str(data), "cannot read the file (Permission denied)"])


def test_malformed_json_line(capsys, tiny_model, tmp_path):
    data = tmp_path / "tasks.jsonl"
    data.write_text(json.dumps(ROWS[0]) + "\n" + '{"question": "1+1=", "answer": }\n', encoding="utf-8")
    fails(capsys, *tiny_args(tiny_model, data, tmp_path / "run"),
          says=["tasks.jsonl, line 2: malformed JSON", "Expecting value"])


def test_rows_missing_the_prompt_field(capsys, tiny_model, tmp_path):
    data = write_rows(tmp_path / "tasks.jsonl", [ROWS[0], {"id": "x", "text": "2+2=", "answer": "4"}])
    fails(capsys, *tiny_args(tiny_model, data, tmp_path / "run"),
          says=["tasks.jsonl, line 2: no prompt field", "prompt, problem, question", "['answer', 'id', 'text']"])
    # A prompt field named by the user must be in every row.
    fails(capsys, *tiny_args(tiny_model, data, tmp_path / "run2", "--prompt_field", "q"),
          says=["tasks.jsonl, line 1: prompt field 'q' is missing"])


def test_non_utf8_bytes(capsys, tiny_model, tmp_path):
    data = tmp_path / "tasks.jsonl"
    first = (json.dumps(ROWS[0]) + "\n").encode()
    data.write_bytes(first + b'{"question": "caf\xe9"}\n')
    offset = len(first) + len(b'{"question": "caf')  # where the bad byte sits
    fails(capsys, *tiny_args(tiny_model, data, tmp_path / "run"),
          says=[f"tasks.jsonl, line 2 (byte offset {offset}): not valid UTF-8"])


def test_duplicate_task_ids(capsys, tiny_model, tmp_path):
    data = write_rows(tmp_path / "tasks.jsonl", [*ROWS, {**ROWS[1], "question": "9+9="}])
    fails(capsys, *tiny_args(tiny_model, data, tmp_path / "run"),
          says=["tasks.jsonl, line 5: duplicate id 't1' in field 'id', already used at tasks.jsonl, line 2"])


# --- prompts longer than the model's context ----------------------------------------------------

LONG = {"id": "long", "question": "1+" * 130 + "1="}  # 262 tokens with <s>: over the tiny model's 256


def test_long_prompt_is_skipped_and_counted_by_default(capsys, caplog, tiny_model, tmp_path):
    data = write_rows(tmp_path / "tasks.jsonl", [ROWS[0], LONG, *ROWS[1:]])
    code, out, err = ttrl_run(capsys, *tiny_args(tiny_model, data, tmp_path / "run", "--episodes", "1"))
    assert code == 0, err
    assert "ttrl run: 4 tasks" in out
    # context 256 positions (max_position_embeddings) minus the 6-token completion budget
    assert ("1 of 5 prompts are longer than the model's context (256 positions) minus the completion budget "
            "(6 tokens) = 250 tokens (first: task 'long' has 262 tokens); left out (on_too_long: skip), ids: long"
            ) in caplog.text
    assert [row["step"] for row in metrics(tmp_path / "run")] == [1, 2]


def test_long_prompt_is_an_error_when_configured(capsys, tiny_model, tmp_path):
    data = write_rows(tmp_path / "tasks.jsonl", [ROWS[0], LONG])
    fails(capsys, *tiny_args(tiny_model, data, tmp_path / "run", "--on_too_long", "error"),
          says=["1 of 2 prompts are longer than the model's context (256 positions) minus the completion budget",
                "task 'long' has 262 tokens", "on_too_long: skip"])
    # A budget that leaves no room for any prompt is an error either way.
    fails(capsys, *tiny_args(tiny_model, data, tmp_path / "run2", "--eval_max_tokens", "300"),
          says=["context holds 256 tokens and the completion budget is 300", "lower max_completion_length"])


# --- names that name nothing -----------------------------------------------------------------------


def test_unknown_model(capsys, tiny_data, tmp_path):
    fails(capsys, *tiny_args("no-such-model", tiny_data, tmp_path / "run"),
          says=["model 'no-such-model' is neither a built-in name (demo, demo-systematic, demo-overwrite, smollm2-135m) nor a local directory"])
    (tmp_path / "empty-model").mkdir()
    (tmp_path / "empty-model" / "notes.txt").write_text("not a model")
    fails(capsys, *tiny_args(tmp_path / "empty-model", tiny_data, tmp_path / "run2"),
          says=[f"model directory {tmp_path / 'empty-model'} holds no loadable tokenizer and config (files: notes.txt)"])


@pytest.mark.parametrize("option, value, says", [
    ("--reward", "majority", "reward: unknown rewards 'majority'; valid names: majority_vote, plain_majority, "
                             "confident_vote, soft_vote"),
    ("--filters", "zero_var", "filters: unknown filters 'zero_var'; valid names: zero_variance, consensus, "
                              "truncation, history_skip"),
    ("--selector", "best", "selector: unknown selectors 'best'; valid names: first_k, max_variance, influence"),
    ("--suite", "aime2024", "unknown suite 'aime2024'; registered suites: aime24, aime25, amc, math500"),
    ("--answer_type", "letters", "unknown answer_type 'letters'; valid: math, number, choice"),
    ("--sampler", "sglang", "argument --sampler: invalid choice: 'sglang'"),
])
def test_unknown_stage_names_list_the_valid_ones(capsys, tiny_model, tiny_data, tmp_path, option, value, says):
    fails(capsys, *tiny_args(tiny_model, tiny_data, tmp_path / "run", option, value), says=[says])
    assert not (tmp_path / "run").exists()  # failed before anything was written


def test_bad_filter_spec_in_yaml(capsys, tiny_model, tiny_data, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"filters": [{"name": "consensus", "mode": "shadow"}]}))
    fails(capsys, config, *tiny_args(tiny_model, tiny_data, tmp_path / "run"),
          says=["filters: filter 'consensus': mode must be one of enforce, monitor, got 'shadow'"])
    config.write_text(yaml.safe_dump({"filters": [{"name": "consensus", "lo": 0.3}]}))
    fails(capsys, config, *tiny_args(tiny_model, tiny_data, tmp_path / "run"),
          says=["filters 'consensus': unknown option(s) ['lo']; it accepts: low, high"])


# --- the config ------------------------------------------------------------------------------------


def test_unknown_config_keys(capsys, tiny_model, tiny_data, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("n_votes: 4\nvotes: 8\nlearning_rte: 0.1\n")
    fails(capsys, config, *tiny_args(tiny_model, tiny_data, tmp_path / "run"),
          says=[f"config file {config}: unknown keys ['learning_rte', 'votes']", "ttrl run --help"])


def test_unknown_command_line_option_is_one_line_with_a_suggestion(capsys, tiny_model, tiny_data, tmp_path):
    code, _, err = ttrl_run(capsys, *tiny_args(tiny_model, tiny_data, tmp_path / "run", "--lerning_rate", "0.1"))
    assert code == 2
    # One line, not argparse's usage of every TRL option before it.
    assert err.strip().splitlines() == ["ttrl run: error: unrecognized arguments: --lerning_rate 0.1; did you mean "
                                        "--learning_rate? (see `ttrl run --help` for every option)"]


@pytest.mark.parametrize("args, says", [
    (["--n_votes", "4", "--n_train", "8"], "n_train (8) must be <= n_votes (4)"),
    (["--learning_rate=-1e-5"], "learning_rate must be > 0, got -1e-05"),
    (["--learning_rate", "-1e-5"], "--learning_rate/--learning-rate: expected one argument; a value that starts "
                                   "with '-' is written --option=VALUE"),
    (["--temperature", "0"], "temperature must be > 0, got 0.0"),
    (["--temperature", "-0.5"], "temperature must be > 0, got -0.5"),
    (["--episodes", "0"], "episodes must be >= 1, got 0"),
    (["--n_votes", "0"], "n_votes must be >= 1, got 0"),
    (["--gradient_accumulation_steps", "0"], "gradient_accumulation_steps must be >= 1, got 0"),
    (["--max_refill_rounds", "-1"], "max_refill_rounds must be >= 0, got -1"),
    (["--top_p", "1.5"], "top_p must be in (0, 1], got 1.5"),
    (["--beta", "-0.1"], "beta must be >= 0, got -0.1"),
    (["--eval_temperature", "0"], "eval_temperature must be > 0"),
    (["--max_prompt_tokens", "0"], "max_prompt_tokens must be >= 1"),
    (["--limit", "0"], "limit must be >= 1"),
    (["--lora_dropout", "1"], "lora_dropout must be in [0, 1), got 1.0"),
    (["--n_votes", "four"], "argument --n_votes/--n-votes: invalid int value: 'four'"),
])
def test_values_out_of_range_name_the_option(capsys, tiny_model, tiny_data, tmp_path, args, says):
    fails(capsys, *tiny_args(tiny_model, tiny_data, tmp_path / "run"), *args, says=[says])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key, value, says", [
    ("lora_r", [4, 8], "lora_r must be an integer, got [4, 8] (list)"),
    ("lora_r", 4.5, "lora_r must be an integer, got 4.5 (float)"),
    ("learning_rate", {"peak": 1}, "learning_rate must be a number, got {'peak': 1} (dict)"),
    ("lora", "maybe", "--lora: Truthy value expected"),
    ("temperature", "hot", "argument --temperature: invalid float value: 'hot'"),
    ("max_prompt_tokens", True, "max_prompt_tokens must be an integer (or null), got True (bool)"),
])
def test_yaml_values_of_the_wrong_type(capsys, tiny_model, tiny_data, tmp_path, key, value, says):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({key: value}))
    fails(capsys, config, *tiny_args(tiny_model, tiny_data, tmp_path / "run"), says=[says])


# --- rewards that fail, and steps whose every group is filtered out -----------------------------


@pytest.mark.parametrize("how, after, says", [
    ("raise", 1, "reward 'test_bad_input:FailingReward' raised on task 't"),
    ("count", 1, "reward 'test_bad_input:FailingReward' returned 3 values for the 4 rollouts of task 't"),
    ("nan", 3, "reward 'test_bad_input:FailingReward' returned nan for rollout 0 of task 't"),
])
def test_failing_reward_stops_the_run_and_keeps_written_metrics(capsys, tiny_model, tiny_data, tmp_path, how, after,
                                                                 says):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"reward": {"name": "test_bad_input:FailingReward", "how": how,
                                                 "after": after}}))
    out = tmp_path / "run"
    message = fails(capsys, config, *tiny_args(tiny_model, tiny_data, out), says=[says])
    if how == "raise":
        assert "KeyError: 'no such answer'" in message
    assert (out / "config.yaml").exists()
    # Two groups a step: call 3 is the first group of step 2, so step 1's row is on disk.
    assert [row["step"] for row in metrics(out)] == ([1] if after == 3 else [])


def test_step_with_every_group_filtered_out_is_skipped_and_the_run_goes_on(capsys, tiny_model, tiny_data, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"filters": [{"name": "test_bad_input:DropFirst", "n": 2}]}))
    out = tmp_path / "run"
    code, stdout, err = ttrl_run(capsys, config, *tiny_args(tiny_model, tiny_data, out, "--episodes", "2"))
    assert code == 0, err
    assert "iteration 1: every group was filtered out (2 sampled); no update" in stdout
    rows = metrics(out)
    # "step" counts optimizer steps (none in the first row), "iteration" counts rows.
    assert [row["step"] for row in rows] == [0, 1, 2, 3] and [row["iteration"] for row in rows] == [1, 2, 3, 4]
    # 4 tasks x 2 episodes, 2 a step: 4 rows; the first trained nothing, the other three did.
    assert [row["update/skipped"] for row in rows] == [1, 0, 0, 0]
    assert [row["groups/trained"] for row in rows] == [0, 2, 2, 2]
    assert rows[0]["filters/DropFirst/dropped"] == 2 and rows[0]["tokens/trained"] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["compute"]["steps"] == 3


def test_run_whose_every_step_is_filtered_out_finishes_with_no_update(capsys, tiny_model, tiny_data, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"filters": [{"name": "test_bad_input:DropFirst", "n": 100}]}))
    out = tmp_path / "run"
    code, stdout, err = ttrl_run(capsys, config, *tiny_args(tiny_model, tiny_data, out))
    assert code == 0, err
    assert [row["update/skipped"] for row in metrics(out)] == [1, 1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["compute"]["steps"] == 0 and summary["compute"]["tokens/trained"] == 0
    assert "0 steps in" in stdout and (out / "report.md").exists()


# --- the output directory and the disk -----------------------------------------------------------


def test_output_dir_that_cannot_be_a_directory(capsys, tiny_model, tiny_data, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    fails(capsys, *tiny_args(tiny_model, tiny_data, blocker / "run"),
          says=[f"output_dir {blocker / 'run'} is not writable: Not a directory", "choose another --output_dir"])


def test_unwritable_output_dir_fails_before_the_model_loads(capsys, tiny_model, tiny_data, tmp_path, monkeypatch):
    # As root no permission bit stops a write, so the refusal is the OS error a user would get.
    write_bytes = pathlib.Path.write_bytes
    out = tmp_path / "readonly"

    def refuse(self, data):
        if self.parent == out:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return write_bytes(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", refuse)
    loaded = []
    monkeypatch.setattr("engine.cli.build.build", lambda cfg: loaded.append(cfg))
    fails(capsys, *tiny_args(tiny_model, tiny_data, out),
          says=[f"output_dir {out} is not writable: Permission denied", "choose another --output_dir"])
    assert loaded == []


def test_disk_full_mid_run_is_a_clear_error_and_keeps_what_was_written(capsys, tiny_model, tiny_data, tmp_path,
                                                                       monkeypatch):
    out = tmp_path / "run"

    def disk_full(out_dir, summary, history):
        raise OSError(errno.ENOSPC, "No space left on device", str(out_dir / "curves.png"))

    monkeypatch.setattr("engine.rundir.report.write_report", disk_full)
    fails(capsys, *tiny_args(tiny_model, tiny_data, out),
          says=[f"no space left on the device ({out / 'curves.png'})", "metrics.jsonl", "are kept",
                "run the same command again"])
    assert [row["step"] for row in metrics(out)] == [1, 2]
    assert json.loads((out / "summary.json").read_text())["compute"]["steps"] == 2
    # --debug shows the OSError itself.
    with pytest.raises(OSError, match="No space left on device"):
        main(["run", *tiny_args(tiny_model, tiny_data, tmp_path / "run2"), "--debug"])


# --- the real command: no traceback by default, the traceback with --debug -----------------------


def test_traceback_only_with_debug(tmp_path):
    args = ["run", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "tasks.jsonl"), "--n_votes", "2",
            "--n_train", "4", "--output_dir", str(tmp_path / "run")]
    plain = ttrl(*args)
    assert plain.returncode == 2
    assert plain.stderr.strip() == "ttrl run: error: n_train (4) must be <= n_votes (2): training rollouts are " \
                                   "chosen from the voting ones"
    debug = ttrl(*args, "--debug")
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "engine.errors.ConfigError: n_train (4) must be <= n_votes (2)" in debug.stderr
