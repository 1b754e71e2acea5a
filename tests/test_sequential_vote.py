"""Sequential voting (``--sequential_vote``): the stopping rule on hand-made counts, sampling in rounds over
a scripted sampler, the start-up refusals, and runs of the real loop on the demo model."""

import json
import os
import random
import signal
from functools import partial

import numpy as np
import pytest

from factories import make_group, make_task, run_in_process
from engine.config.options import parse_config
from engine.errors import ConfigError
from engine.loop import PromptStream, apply_reward, collect_groups
from engine.samplers.rounds import UNANIMOUS, sample_in_rounds, vote_counts
from engine.types import SamplingParams
from filters import FILTERS
from filters.stage import build_filters
from rewards import majority_vote
from rewards.sequential import SequentialVote, class_counts, leader, leader_change_probability, rule_rng, verdict


def rng():
    return np.random.default_rng(0)


# ---- the rule ------------------------------------------------------------------------------------


def test_a_unanimous_first_round_stops_but_a_missing_answer_is_no_unanimity():
    assert verdict([3] * 8, 64, error=0.05, rng=rng()) == "unanimous"
    # a rollout without an answer gets reward 0 under the vote: the group still has an advantage
    assert verdict([3] * 7 + [None], 64, error=0.05, rng=rng()) != "unanimous"
    assert verdict([None] * 8, 64, error=0.05, rng=rng()) is None


def test_a_lead_larger_than_the_votes_to_come_is_certain_and_an_equal_one_is_not():
    # 36 of 40 against 2, 24 to come: even all 24 for the runner-up leave it behind
    assert verdict([0] * 38 + [1] * 2, 64, error=0.05, rng=rng()) == "certain"
    # lead 12, 12 to come: the runner-up could still tie, so only the probability can stop it
    assert verdict([0] * 20 + [1] * 8, 40, error=0.05, rng=rng()) != "certain"
    assert verdict([0] * 21 + [1] * 8, 40, error=0.05, rng=rng()) == "certain"  # lead 13 > 11


def test_a_close_early_vote_is_undecided():
    ids = [0] * 5 + [1] * 3                                # 5-3 of 8, 56 to come
    assert verdict(ids, 64, error=0.05, rng=rng()) is None
    assert leader_change_probability([5, 3], 0, 56, rng=rng()) > 0.15


def test_a_clear_vote_is_decided_by_probability_before_it_is_certain():
    ids = [0] * 30 + [1] * 2                               # 30-2 of 32, 32 to come: lead 28 is not > 32
    assert verdict(ids, 64, error=0.05, rng=rng()) == "probable"
    assert leader_change_probability([30, 2], 0, 32, rng=rng()) < 0.01


def test_draws_are_fixed_by_seed_task_step_and_round():
    p = [leader_change_probability([9, 6], 1, 40, rng=rule_rng(7, "task-3", 2, r)) for r in (1, 1, 2)]
    assert p[0] == p[1] and 0 < p[0] < 1
    assert rule_rng(7, "task-3", 2, 1).random() != rule_rng(7, "task-3", 2, 2).random()
    assert rule_rng(7, "task-3", 2, 1).random() != rule_rng(7, "task-4", 2, 1).random()


def test_a_tie_counts_as_a_different_final_majority():
    assert leader_change_probability([3, 3], 0, 0, rng=rng()) == 1.0   # no votes to come, still tied
    assert leader_change_probability([4, 3], 0, 0, rng=rng()) == 0.0
    assert leader_change_probability([4, 4], 0, 10, rng=rng()) > 0.4
    assert verdict([0, 0, 0, 1, 1, 1], 6, error=0.05, rng=rng()) is None
    assert leader([1, 0, 1, 0, None]) == 0                                  # the vote's tie order: smallest class


def test_missing_answers_cast_no_vote():
    assert class_counts([0, None, 1, 0, None]) == ([2, 1], 2)
    assert leader_change_probability([], 8, 56, rng=rng()) == 1.0           # no answer yet: no leader
    assert leader([None, None]) is None
    # Rollouts that answer nothing are no votes for a rival either: beside 12 silences the leader's 4 votes
    # are safer than alone (the silences predict that fewer of the votes to come will be cast).
    assert leader_change_probability([4], 12, 56, rng=rng()) < leader_change_probability([4], 0, 56, rng=rng())


def test_replay_finds_where_the_rule_would_stop_and_whether_it_was_wrong():
    rule = SequentialVote(total=16, first=4, round_size=4, error=0.05, seed=0)
    unanimous = make_group(["7"] * 4 + ["8"] * 12)
    assert rule.replay(unanimous, step=1).why == "unanimous"
    assert rule.replay(unanimous, step=1).votes == 4 and rule.replay(unanimous, step=1).differs  # 8 wins in full
    split = make_group(["7", "8"] * 8)
    seen = rule.replay(split, step=1)
    assert (seen.votes, seen.why, seen.differs) == (16, None, False)            # sampled to the end: the full vote
    loose = SequentialVote(total=16, first=4, round_size=4, error=0.9, seed=0)  # accepts a 90 percent risk
    seen = loose.replay(make_group(["7", "7", "7", "8"] + ["8"] * 12), step=1)
    assert seen.votes == 4 and seen.why == "probable" and seen.differs


# ---- sampling in rounds ---------------------------------------------------------------------------


class ScriptedSampler:
    """Answers each task from its script, in order; records every call's tasks and ``n``."""

    def __init__(self, script: dict[str, list]):
        self.script = {k: list(v) for k, v in script.items()}
        self.calls = []

    def generate(self, tasks, params, desc="sample"):
        self.calls.append(([t.id for t in tasks], params.n))
        return [make_group([self.script[t.id].pop(0) for _ in range(params.n)], task=t) for t in tasks]


def test_rounds_sample_the_undecided_prompts_only_until_each_is_decided_or_full():
    tasks = [make_task(i) for i in range(3)]
    sampler = ScriptedSampler({"0": ["5"] * 4,                           # unanimous after round 1
                               "1": ["5", "6"] + ["5"] * 6,              # decided (certain) after round 2
                               "2": ["5", "6"] * 6})                     # never decided: all 12
    rule = SequentialVote(total=12, first=4, round_size=4, error=0.01, seed=0)
    groups, seconds = sample_in_rounds(sampler, tasks, SamplingParams(n=12), first=4, round_size=4,
                                       decide=lambda g: rule.decide(rule.classes(g), task_id=g.task.id, step=1))
    assert sampler.calls == [(["0", "1", "2"], 4), (["1", "2"], 4), (["2"], 4)]
    assert [len(g.rollouts) for g in groups] == [4, 8, 12] and seconds > 0
    assert [g.stats[UNANIMOUS] for g in groups] == [1.0, 0.0, 0.0]
    assert [r.text for r in groups[1].rollouts][:3] == ["so \\boxed{5}", "so \\boxed{6}", "so \\boxed{5}"]  # in order
    counts = vote_counts(groups, rule, "enforce")
    assert counts == {"sampling/votes_mean": 8.0, "sampling/votes_std": pytest.approx((32 / 3) ** 0.5),
                      "sampling/vote_rounds": 3, "sampling/unanimous_dropped": 1, "sampling/decided_early": 1}
    assert all(UNANIMOUS not in g.stats for g in groups)  # taken out: the telemetry does not average it again


def test_collect_groups_drops_unanimous_groups_and_refills_after_the_filters_saw_them():
    tasks = [make_task(i) for i in range(4)]
    order = tasks[:]
    random.Random(0).shuffle(order)  # the stream's visiting order: the first two are unanimous
    sampler = ScriptedSampler({order[0].id: ["5"] * 4, order[1].id: ["7"] * 4,
                               order[2].id: ["5", "6"] * 6, order[3].id: ["5", "6"] * 6})
    rule = SequentialVote(total=12, first=4, round_size=4, error=0.01, seed=0)
    stream = PromptStream(tasks, 1, random.Random(0))
    score = partial(apply_reward, majority_vote, "majority_vote")
    greso = build_filters(["history_skip"], FILTERS)
    sampled, kept, counts = collect_groups(stream, sampler, SamplingParams(n=12), score, greso, random.Random(0),
                                           want=2, rounds=3, progress=lambda n: None, desc="s", votes="enforce",
                                           rule=rule, iteration=1)
    assert len(sampled) == 4 and kept == sampled[2:]   # two unanimous groups dropped, refilled with the other two
    assert counts["sampling/unanimous_dropped"] == 2 and counts["sampling/rounds"] == 2
    assert counts["tokens/generated"] == 3 * (4 + 4 + 12 + 12)  # every sampled rollout, in whatever round
    assert counts["sampling/decided_early"] == 0 and counts["sampling/votes_mean"] == 8.0
    assert counts["filters/history_skip/checked"] == 4                # GRESO saw the unanimous groups ...
    assert greso[0].fn.streak == {order[0].id: 1, order[1].id: 1, order[2].id: 0, order[3].id: 0}  # ... as degenerate


# ---- options ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--sequential_vote", "enforce", "--vote_round", "0"], "vote_round must be >= 1, got 0"),
    (["--sequential_vote", "enforce", "--vote_error", "0"], "vote_error must be in (0, 1), got 0.0"),
    (["--sequential_vote", "monitor", "--vote_error", "1.5"], "vote_error must be in (0, 1), got 1.5"),
    (["--vote_round", "4"], "vote_round needs --sequential_vote enforce"),
    (["--sequential_vote", "enforce", "--n_votes", "32", "--n_train", "32"],
     "sequential_vote enforce cannot save any vote: its first round samples max(n_train, vote_round) = max(32, 8)"),
    (["--sequential_vote", "monitor", "--vote_unanimous", "train"], "vote_unanimous train needs --sequential_vote enforce"),
    (["--sequential_vote", "monitor", "--vote_round", "64"],
     "= max(32, 64) = 64 rollouts per prompt, and n_votes is 64"),
])
def test_sequential_vote_options_that_cannot_take_effect_are_refused(args, message, tmp_path):
    with pytest.raises(ConfigError) as err:
        parse_config(["--model", "m", "--data", "d.jsonl", "--output_dir", str(tmp_path), *args])
    assert message in str(err.value)


# ---- the real loop on the demo model ---------------------------------------------------------------


def demo_args(out, *extra):
    return ["--model", "demo", "--data", "demo", "--limit", "12", "--n_votes", "32", "--n_train", "8",
            "--prompts_per_step", "4", "--episodes", "1", "--eval_k", "2", "--eval_greedy", "false",
            "--output_dir", str(out), "--progress", "false", "--seed", "1", *extra]


def demo_run(out, *extra, log=lambda s: None):
    return run_in_process(demo_args(out, *extra), log=log)[0]


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def enforced(tmp_path_factory):
    out = tmp_path_factory.mktemp("enforce") / "run"
    demo_run(out, "--sequential_vote", "enforce")
    return out


def test_an_enforced_run_samples_fewer_votes_and_still_trains(enforced, tmp_path):
    rows = metrics(enforced)
    assert rows and sum(r["groups/trained"] for r in rows) > 0
    for row in rows:
        for key in ("sampling/votes_mean", "sampling/votes_std", "sampling/decided_early", "sampling/unanimous_dropped",
                    "sampling/vote_rounds", "time/vote_rule_s"):
            assert key in row, key
        assert 8 <= row["sampling/votes_mean"] <= 32 and row["time/vote_rule_s"] <= row["time/generate_s"]
        assert row["groups/dropped"] >= row["sampling/unanimous_dropped"]
    assert sum(r["sampling/votes_mean"] for r in rows) < 32 * len(rows)
    assert max(r["sampling/vote_rounds"] for r in rows) > 1

    monitored = tmp_path / "monitor"
    demo_run(monitored, "--sequential_vote", "monitor")
    for row in metrics(monitored):
        assert row["sampling/votes_mean"] == 32 and row["sampling/vote_rounds"] == 1
        assert 8 <= row["sampling/would_sample_mean"] <= 32 and 0 <= row["sampling/decision_differs"] <= 1
        assert {"sampling/would_decide_early", "sampling/would_drop_unanimous"} <= set(row)
        assert "sampling/would_sample" not in row  # the per-group notes are not averaged into the row


def test_unanimous_groups_stop_sampling_but_train_with_vote_unanimous_train(enforced, tmp_path):
    """``--vote_unanimous train``: the unanimous groups still stop after round 1, but they are trained on, as
    plain TTRL trains them, so every prompt of the step is trained and nothing is refilled."""
    out = tmp_path / "train"
    demo_run(out, "--sequential_vote", "enforce", "--vote_unanimous", "train")
    rows = metrics(out)
    assert sum(r["sampling/unanimous_trained"] for r in rows) > 0 and "sampling/unanimous_dropped" not in rows[0]
    assert all(r["groups/trained"] == r["prompts/sampled"] == 4 for r in rows)
    assert len(rows) == 3 > len(metrics(enforced))  # 12 prompts, 4 a step; dropping refills, so fewer steps
    assert all(r["sampling/votes_mean"] < 32 for r in rows)


def test_an_enforced_run_resumes_to_the_rows_it_would_have_written(enforced, tmp_path):
    out = tmp_path / "run"

    def interrupt_after_step_1(line):  # as Ctrl-C would: the next step ends with a checkpoint, then stops
        if line.startswith("step 1:"):
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt, match="checkpoint saved after step"):
        demo_run(out, "--sequential_vote", "enforce", log=interrupt_after_step_1)
    said = []
    demo_run(out, "--sequential_vote", "enforce", log=said.append)
    assert said[0].startswith("resumed from") and "after step 2" in said[0]  # the rule's draws need no state

    def no_times(rows):
        return [{k: v for k, v in r.items() if "time" not in k and not k.startswith("memory/")} for r in rows]

    assert no_times(metrics(out)) == no_times(metrics(enforced))
