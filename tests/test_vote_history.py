"""Label-free telemetry across visits (filters/vote_history.py): flip rate, lock-in, label transitions."""

import math

from factories import make_group, make_task
from filters.vote_history import VoteHistory
from rewards import majority_vote


def voted(task_id: str, answers: list[str | None]):
    group = make_group(answers, task=make_task(task_id))
    majority_vote(group)
    return group


def test_flip_rate_counts_revisited_prompts_whose_majority_changed():
    history = VoteHistory()
    labels = {"a": "4", "b": "7"}
    first = history.observe([voted("a", ["4", "4", "5"]), voted("b", ["7", "1", "7"])], labels)
    assert math.isnan(first["vote/flip_rate"])  # nothing revisited yet
    assert first["label/correct_to_wrong"] == 0 and first["label/wrong_to_correct"] == 0
    # "a" flips 4 -> 5 (right to wrong); "b" stays on 7, spelled 7.0 (equivalent: no flip).
    second = history.observe([voted("a", ["5", "5", "4"]), voted("b", ["7.0", "7.0", "1"])], labels)
    assert second["vote/flip_rate"] == 0.5
    assert second["label/correct_to_wrong"] == 1 and second["label/wrong_to_correct"] == 0
    third = history.observe([voted("a", ["4", "4", "4"])], labels)
    assert third["vote/flip_rate"] == 1.0 and third["label/wrong_to_correct"] == 1


def test_lock_in_is_unanimity_on_an_answer_other_than_the_first():
    history = VoteHistory()
    history.observe([voted("a", ["4", "4", "5"]), voted("b", ["1", "1", "2"])], {})
    out = history.observe([voted("a", ["5", "5", "5"]), voted("b", ["1", "1", "1"])], {})
    assert out["vote/locked_in"] == 0.5  # "a" unanimous on 5, first said 4; "b" unanimous on its first answer
    assert "label/correct_to_wrong" not in out  # no labels: no label telemetry
    out = history.observe([voted("a", ["4", "5", "5"])], {})
    assert out["vote/locked_in"] == 0.0  # no longer unanimous: released


def test_state_round_trips():
    history = VoteHistory()
    history.observe([voted("a", ["4", "4", "5"])], {"a": "4"})
    history.observe([voted("a", ["5", "5", "5"])], {"a": "4"})
    restored = VoteHistory()
    restored.load_state_dict(history.state_dict())
    step = [voted("a", ["4", "4", "4"])]
    assert restored.observe(step, {"a": "4"}) == history.observe([voted("a", ["4", "4", "4"])], {"a": "4"})


def test_a_run_logs_the_vote_history(tiny_model, tiny_data, tmp_path):
    """Through the loop: flip rate unmeasured in the first episode, measured in the second; label
    transitions counted where the tasks have labels; the summary keeps them."""
    import json

    import torch

    from engine.cli.build import build
    from engine.config.options import parse_config
    from engine.loop import run

    out = tmp_path / "run"
    cfg = parse_config(["--model", str(tiny_model), "--data", str(tiny_data), "--template", "{question}",
                        "--n_votes", "4", "--n_train", "2", "--prompts_per_step", "4", "--episodes", "2",
                        "--max_completion_length", "4", "--eval_k", "2", "--output_dir", str(out),
                        "--progress", "false", "--seed", "3"])
    torch.manual_seed(3)
    _, tasks, policy, sampler = build(cfg)
    summary = run(cfg, sampler=sampler, policy=policy, tasks=tasks, out_dir=out, log=lambda s: None)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and math.isnan(rows[0]["vote/flip_rate"]) and 0.0 <= rows[1]["vote/flip_rate"] <= 1.0
    assert rows[1]["label/correct_to_wrong"] + rows[1]["label/wrong_to_correct"] <= 4
    assert summary["telemetry"]["vote/flip_rate"]["mean"] == rows[1]["vote/flip_rate"]
