"""The label-free collapse guard: its policies on synthetic rows, its snapshots and rollback, a real run, resume."""

import json
import math
import os
import signal
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from factories import make_group, make_task, run_in_process
from engine.errors import ConfigError
from engine.config.options import parse_config
from engine.rundir.guard import RunGuard, label_free
from filters import GUARDS
from filters.guard import Verdict, flip_alarm, flip_collapse, none, pause_on_flips, skip_flipped, stability, ttrl_guard
from filters.vote_history import VoteHistory
from rewards import majority_vote


def voted(task_id: str, answers: list[str]):
    group = make_group(answers, make_task(task_id))
    majority_vote(group)
    return group


def history_of(*visits):
    """A VoteHistory that saw each visit's groups in turn; returns it and the last visit's groups."""
    votes = VoteHistory()
    for groups in visits:
        votes.observe(groups, {})
    return votes, visits[-1]


# ---- the policies, on synthetic rows -------------------------------------------------------------------------


def test_skip_flipped_skips_prompts_whose_majority_changed_and_polarised_ones():
    votes, groups = history_of([voted("a", ["1", "1", "2"]), voted("b", ["5", "5", "5"]), voted("c", ["7", "7", "7"])],
                               [voted("a", ["2", "2", "1"]), voted("b", ["5", "5", "5"]), voted("c", ["7", "8", "9"])])
    assert votes.flipped == {"a"} and votes.flips == {"a": 1, "b": 0, "c": 0}
    assert skip_flipped({}, groups, votes, []).skip == {"a"}
    # c's majority (7, one of three votes) is polarised below 0.5
    assert skip_flipped({}, groups, votes, [], min_majority=0.5).skip == {"a", "c"}


def test_pause_on_flips_pauses_then_stops_after_patience_and_on_lock_in():
    calm, stormy = {"vote/flip_rate": 0.1, "vote/locked_in": 0.0}, {"vote/flip_rate": 0.6, "vote/locked_in": 0.0}
    assert pause_on_flips(calm, [], VoteHistory(), []).action == "train"
    assert pause_on_flips({"vote/flip_rate": math.nan}, [], VoteHistory(), []).action == "train"  # episode 1
    assert pause_on_flips(stormy, [], VoteHistory(), []).action == "pause"
    paused = [{"guard/paused": 1.0}, {"guard/paused": 1.0}]
    assert pause_on_flips(stormy, [], VoteHistory(), paused, patience=3).action == "stop"
    assert pause_on_flips(stormy, [], VoteHistory(), [{"guard/paused": 0.0}] + paused[:1], patience=3).action == "pause"
    verdict = pause_on_flips({"vote/flip_rate": 0.0, "vote/locked_in": 0.25}, [], VoteHistory(), [])
    assert verdict.action == "stop" and "locked-in" in verdict.reason


def test_ttrl_guard_pauses_the_whole_step_first_else_skips_flipped_groups():
    votes, groups = history_of([voted("a", ["1", "1", "2"]), voted("b", ["5", "5", "5"])],
                               [voted("a", ["2", "2", "1"]), voted("b", ["5", "5", "5"])])
    assert ttrl_guard({"vote/flip_rate": 0.5}, groups, votes, []).skip == {"a"}
    assert ttrl_guard({"vote/flip_rate": 0.5}, groups, votes, [], max_flip_rate=0.4).action == "pause"
    with pytest.raises(ValueError, match="allowed"):
        Verdict("rollback")


def test_flip_alarm_stops_on_a_window_of_flips_and_asks_for_the_weights_before_it():
    rows = lambda *flips: [{"vote/flip_rate": f} for f in flips]   # noqa: E731
    # episode 1 (no revisits: NaN) never counts; three revisiting steps are not yet a window of four
    assert flip_alarm(rows(0.5)[0], [], VoteHistory(), rows(math.nan, math.nan, 0.5, 0.5)).action == "train"
    calm = flip_alarm({"vote/flip_rate": 0.1}, [], VoteHistory(), rows(math.nan, 0.1, 0.1, 0.1))
    assert calm.action == "train"                                   # mean 0.1 is not above 0.1
    alarm = flip_alarm({"vote/flip_rate": 0.2}, [], VoteHistory(), rows(math.nan, 0.0, 0.1, 0.1, 0.1))
    assert alarm.action == "stop" and alarm.rollback_steps == 4 and "0.125 > 0.1" in alarm.reason
    assert flip_alarm({"vote/flip_rate": 0.2}, [], VoteHistory(), rows(0.3), window=2, max_flip_rate=0.2).action == "stop"
    assert math.isnan(none([{"vote/majority_ratio": 1.0}]))


def test_flip_collapse_stops_when_flips_die_down_after_a_burst_and_rolls_back_to_before_it():
    row = lambda f, locked=0.05: {"vote/flip_rate": f, "vote/locked_in": locked}   # noqa: E731
    burst = [row(math.nan), row(math.nan), row(0.2), row(0.2), row(0.2), row(0.2)]   # peak window: rows 2-5, mean 0.2
    calm = [row(0.0), row(0.0), row(0.0)]
    # a burst that is still going is not a collapse (flip_alarm's sign, not this one)
    assert flip_collapse(row(0.2), [], VoteHistory(), burst).action == "train"
    # the latest window (0.2, 0, 0, 0: mean 0.05) is at most 0.35 x the peak 0.2 = 0.07: stop, back to row 2
    verdict = flip_collapse(row(0.0), [], VoteHistory(), burst + calm[:2])
    assert verdict.action == "stop" and verdict.rollback_steps == 9 - 2 and "0.050 <= 0.35 x its peak 0.200" in verdict.reason
    # the same fall without prompts locked in on new answers, or after a peak below the active level: no stop
    assert flip_collapse(row(0.0, locked=0.0), [], VoteHistory(), burst + calm[:2]).action == "train"
    quiet = [row(math.nan)] + [row(0.08)] * 4 + calm[:2]
    assert flip_collapse(row(0.0), [], VoteHistory(), quiet).action == "train"
    assert flip_collapse(row(0.0), [], VoteHistory(), quiet, active=0.08).action == "stop"
    # a slow decline stays above the fall: (0.2, 0.1, 0.1, 0.1) -> mean 0.125 > 0.07
    assert flip_collapse(row(0.1), [], VoteHistory(), burst + [row(0.1), row(0.1)]).action == "train"


def test_stability_score_by_hand():
    window = [{"vote/majority_ratio": 0.8, "vote/flip_rate": math.nan, "vote/locked_in": 0.0},
              {"vote/majority_ratio": 0.6, "vote/flip_rate": 0.2, "vote/locked_in": 0.1}]
    assert stability(window) == pytest.approx(0.7 - 0.2 - 2 * 0.1)
    assert math.isnan(stability([]))


# ---- the run-side guard: screening, snapshots, rollback (a real nn.Linear as the trainable model) -------------


class SpyPolicy:
    """A guard policy that records what it was shown and skips task "b"."""

    def __init__(self):
        self.seen = []

    def __call__(self, signals, groups, votes, history):
        self.seen.append(dict(signals))
        return Verdict(skip={"b"})


class FakeSampler:
    def __init__(self):
        self.model = None

    def load_weights(self, model):
        self.model = model


def test_screen_hands_the_policy_label_free_keys_only_and_skips_its_groups(tmp_path):
    guard = RunGuard("test_guard:SpyPolicy", votes=VoteHistory(), out_dir=tmp_path)   # a user's own, by spec
    spy = guard.policy
    row = {"step": 0, "vote/flip_rate": 0.1, "label/correct_to_wrong": 1.0, "label_accuracy": 0.5,
           "accuracy/avg@2": 0.3}
    groups = [voted("a", ["1"]), voted("b", ["2"])]
    assert [g.task.id for g in guard.screen(row, groups, groups)] == ["a"]
    assert spy.seen == [{"vote/flip_rate": 0.1}]
    assert row["guard/skipped_groups"] == 1.0 and row["guard/paused"] == 0.0
    assert label_free({"label/x": 1, "vote/y": 2, "guard/z": 3, "reward_accuracy": 4}) == {"vote/y": 2, "guard/z": 3}


def test_snapshots_are_bounded_and_the_rollback_loads_the_best_into_policy_and_sampler(tmp_path):
    torch.manual_seed(0)
    policy = SimpleNamespace(model=torch.nn.Linear(3, 2))
    guard = RunGuard("watch", votes=VoteHistory(), out_dir=tmp_path, every=2, keep=2)
    weights, ratios = {}, {0: 0.5, 2: 0.9, 4: 0.6, 6: 0.7, 8: 0.4}   # each snapshot's window: its consensus
    for step in range(0, 9):
        if step:
            with torch.no_grad():
                policy.model.weight.add_(1.0)                        # an "update"
        guard.snapshot_if_due(step, policy)
        if step % 2 == 0:
            weights[step] = policy.model.weight.detach().clone()
        if step < 8:
            guard.screen({"vote/majority_ratio": ratios[step - step % 2], "vote/locked_in": 0.0}, [], [])
    # best two scored (2: 0.9, 6: 0.7) plus the latest (8, no votes yet)
    assert [s["step"] for s in guard.snapshots] == [2, 6, 8]
    assert sorted(p.name for p in (tmp_path / "guard").iterdir()) == [f"step-{s:06d}.safetensors" for s in (2, 6, 8)]
    sampler = FakeSampler()
    summary = guard.finish(policy, sampler, step=8)
    assert summary["chosen"] == {"step": 2, "score": pytest.approx(0.9)} and summary["rolled_back"]
    assert "step 2" in summary["reason"]
    assert torch.equal(policy.model.weight, weights[2]) and sampler.model is policy.model
    assert [s["step"] for s in summary["snapshots"]] == [2, 6, 8] and math.isnan(summary["snapshots"][-1]["score"])


def test_an_alarm_rolls_back_to_the_weights_that_sampled_its_first_row_whatever_the_score(tmp_path):
    policy = SimpleNamespace(model=torch.nn.Linear(3, 2))
    guard = RunGuard("flip_alarm", score="none", votes=VoteHistory(), out_dir=tmp_path, every=2, keep=3)
    weights, flips = {}, [math.nan, math.nan, 0.0, 0.0, 0.12, 0.12, 0.12, 0.12]
    for step, flip in enumerate(flips):           # the row sampled with the weights after `step` updates
        guard.snapshot_if_due(step, policy)
        weights[step] = policy.model.weight.detach().clone()
        row = {"step": step, "vote/flip_rate": flip, "vote/majority_ratio": 0.9}
        guard.screen(row, [], [])
        if guard.stopped:
            break
        with torch.no_grad():
            policy.model.weight.add_(1.0)
    # rows 4-7 average 0.12 (the windows ending at steps 5 and 6 stay at or below 0.1): the alarm is raised at step 7, whose first alarming row was sampled at step 4
    assert step == 7 and row["guard/stop"] == 1.0 and guard.rollback_to == 4
    state = json.loads(json.dumps(guard.state_dict()))
    summary = guard.finish(policy, FakeSampler(), step=7)
    assert summary["chosen"] == {"step": 4, "score": None} and summary["rolled_back"]
    assert torch.equal(policy.model.weight, weights[4]) and "to step 4" in summary["reason"]
    assert "mean flip rate 0.120 > 0.1" in summary["reason"]
    resumed = RunGuard("flip_alarm", score="none", votes=VoteHistory(), out_dir=tmp_path, every=2, keep=3)
    resumed.load_state_dict(state)
    assert resumed.stopped and resumed.rollback_to == 4


def test_an_alarm_with_no_snapshot_before_it_keeps_the_final_weights_and_says_so(tmp_path):
    policy = SimpleNamespace(model=torch.nn.Linear(2, 1))
    guard = RunGuard("flip_alarm", score="none", votes=VoteHistory(), out_dir=tmp_path, every=0)
    for step, flip in enumerate([0.5, 0.5, 0.5, 0.5]):
        guard.screen({"step": step, "vote/flip_rate": flip}, [], [])
    before = policy.model.weight.detach().clone()
    summary = guard.finish(policy, FakeSampler(), step=3)
    assert guard.stopped and not summary["rolled_back"] and "chosen" not in summary
    assert "no snapshot at or before step 0" in summary["reason"] and torch.equal(policy.model.weight, before)


def test_a_file_a_checkpoint_names_survives_pruning_and_resume_deletes_later_ones(tmp_path):
    policy = SimpleNamespace(model=torch.nn.Linear(2, 1))
    guard = RunGuard("watch", votes=VoteHistory(), out_dir=tmp_path, every=1, keep=1)
    guard.snapshot_if_due(0, policy)
    guard.screen({"vote/majority_ratio": 0.2}, [], [])
    guard.snapshot_if_due(1, policy)
    state = json.loads(json.dumps(guard.state_dict()))              # a checkpoint names snapshots 0 and 1
    for step, ratio in ((2, 0.9), (3, 0.95)):
        guard.screen({"vote/majority_ratio": ratio}, [], [])
        guard.snapshot_if_due(step, policy)
    files = lambda: sorted(int(p.stem[5:]) for p in (tmp_path / "guard").iterdir())   # noqa: E731
    assert [s["step"] for s in guard.snapshots] == [2, 3] and files() == [0, 1, 2, 3]  # 0, 1: the checkpoint's
    resumed = RunGuard("watch", votes=VoteHistory(), out_dir=tmp_path, every=1, keep=1)
    resumed.load_state_dict(state)
    assert [s["step"] for s in resumed.snapshots] == [0, 1] and files() == [0, 1]


# ---- options ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--guard_snapshot_every", "2"], "needs --guard"),
    (["--guard", "nope"], "unknown guards 'nope'; valid names: watch"),
    (["--guard", "watch", "--guard_keep", "0"], "guard_keep must be >= 1"),
    (["--guard", "watch", "--guard_keep", "5"], "set guard_snapshot_every > 0"),
    (["--guard", "watch", "--guard_snapshot_every", "1", "--guard_score", "nope"], "guard_score: unknown"),
])
def test_guard_options_are_checked_at_start_up(args, message, tmp_path):
    from engine.config.options import validate

    with pytest.raises(ConfigError, match=message):
        validate(parse_config(["--model", "m", "--data", "d.jsonl", "--output_dir", str(tmp_path), *args]))


def test_every_registered_guard_returns_a_verdict():
    votes, groups = history_of([voted("a", ["1", "1"])], [voted("a", ["2", "2"])])
    for name, guard in GUARDS.items():
        assert isinstance(guard({"vote/flip_rate": 1.0, "vote/locked_in": 0.0}, groups, votes, []), Verdict), name


# ---- a real run on the tiny model, and its resume ----------------------------------------------------------------


def guarded_args(model, data, out, *extra):
    return ["--model", str(model), "--data", str(data), "--template", "{question}", "--n_votes", "4",
            "--n_train", "2", "--prompts_per_step", "2", "--episodes", "2", "--max_completion_length", "6",
            "--eval_k", "2", "--output_dir", str(out), "--learning_rate", "0.05", "--beta", "0.1",
            "--progress", "false", "--seed", "3", "--guard", "watch", "--guard_snapshot_every", "1",
            "--guard_keep", "2", "--save_every", "1", *extra]


def guarded_run(args, interrupt_at: str | None = None):
    """Build the parts and run the loop in this process; with ``interrupt_at`` (a sampling desc such as
    "step 3 sample"), Ctrl-C arrives while that step samples."""
    def interrupting(generate):
        def wrapped(tasks_, params, desc="sample"):
            if desc == interrupt_at:
                os.kill(os.getpid(), signal.SIGINT)
            return generate(tasks_, params, desc=desc)
        return wrapped

    return run_in_process(args, wrap_generate=interrupting if interrupt_at is not None else None)


def test_a_guarded_run_rolls_back_to_the_best_snapshot_in_policy_sampler_and_summary(tiny_model, tiny_data, tmp_path):
    out = tmp_path / "run"
    summary, policy, sampler = guarded_run(guarded_args(tiny_model, tiny_data, out))
    g = json.loads((out / "summary.json").read_text())["guard"]
    assert summary["compute"]["steps"] == 4 and g["policy"] == "watch" and g["score"] == "stability"
    steps = [s["step"] for s in g["snapshots"]]
    assert len(steps) <= 3 and steps[-1] == 4 and math.isnan(g["snapshots"][-1]["score"])  # keep 2 + latest
    scored = [s for s in g["snapshots"] if not math.isnan(s["score"])]
    best = max(scored, key=lambda s: (s["score"], s["step"]))
    assert g["chosen"] == {"step": best["step"], "score": best["score"]} and g["rolled_back"]
    assert f"to step {best['step']}" in g["reason"]
    snapshot = load_file(out / "guard" / f"step-{best['step']:06d}.safetensors")
    for model in (policy.model, sampler.model):                   # the sampler generates from the same weights
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        assert set(params) == set(snapshot) and all(torch.equal(params[n], snapshot[n]) for n in snapshot)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["guard/paused"] == 0.0 and r["guard/skipped_groups"] == 0.0 for r in rows)
    report = (out / "report.md").read_text()
    assert "## Guard" in report and f"rolled back from step 4 to step {best['step']}" in report

    # Resume: Ctrl-C while step 3 samples, then the same run again continues from the checkpoint; the
    # guard's snapshots, their scores and its choice are those of the uninterrupted run.
    again = tmp_path / "again"
    with pytest.raises(KeyboardInterrupt):
        guarded_run(guarded_args(tiny_model, tiny_data, again), interrupt_at="step 3 sample")
    assert not (again / "summary.json").exists()
    guarded_run(guarded_args(tiny_model, tiny_data, again))
    resumed = json.loads((again / "summary.json").read_text())["guard"]
    assert json.dumps(resumed, sort_keys=True) == json.dumps(g, sort_keys=True)
    assert sorted(p.name for p in (again / "guard").iterdir()) == sorted(p.name for p in (out / "guard").iterdir())
