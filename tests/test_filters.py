"""Group filters, monitor vs enforce, GRESO history skipping, and dynamic sampling in the loop."""

import json
import random

import pytest

from factories import make_group, make_task
from engine.types import Rollout, RolloutGroup, SamplingParams
from filters import FILTERS
from filters.degenerate import consensus, truncation, zero_variance
from filters.history import HistorySkip
from filters.stage import apply_filters, build_filters
from rewards import majority_vote


def voted(answers, task_id="0"):
    group = make_group(answers, task=make_task(int(task_id), label=None))
    majority_vote(group)
    return group


@pytest.mark.parametrize("answers, keep", [
    (["4", "4", "4", "4"], False),   # unanimous: every reward 1, no advantage
    (["4", "4", "4", "5"], True),    # one dissenter: rewards vary
    ([None, None, None], False),     # nobody answered: every reward 0
    (["4", "4.0", "4"], False),      # equivalent spellings are one answer
])
def test_zero_variance(answers, keep):
    assert zero_variance(voted(answers)) is keep


@pytest.mark.parametrize("answers, low, high, keep", [
    (["1", "2", "3", "4"], 0.375, 1.0, False),       # ratio 0.25 < 0.375: unreliable label
    (["1", "1", "2", "3"], 0.375, 1.0, True),        # ratio 0.5
    (["1", "1", "1", "1"], 0.375, 1.0, True),        # unanimous passes unless high < 1
    (["1", "1", "1", "1"], 0.375, 0.9, False),
    (["1", "1", "1", None], 0.8, 1.0, False),        # ratio counts non-answers: 3/4
])
def test_consensus_band(answers, low, high, keep):
    assert consensus(voted(answers), low=low, high=high) is keep


def test_truncation_counts_length_finishes():
    group = make_group(["1", "1", "1", "1"])
    for r in group.rollouts[:3]:
        r.finish_reason = "length"
    assert truncation(group) is False and truncation(group, max_fraction=0.75) is True


def test_monitor_counts_but_keeps_enforce_drops():
    groups = [voted(["4", "4"], "0"), voted(["4", "5"], "1"), voted(["1", "1"], "2")]
    monitor = build_filters([{"name": "zero_variance", "mode": "monitor"}], FILTERS)
    kept, metrics = apply_filters(monitor, groups)
    assert kept == groups and metrics == {"filters/zero_variance/checked": 3, "filters/zero_variance/dropped": 2}
    enforce = build_filters(["zero_variance", {"name": "consensus", "low": 0.6}], FILTERS)
    kept, metrics = apply_filters(enforce, groups)
    assert kept == [] and metrics["filters/consensus/dropped"] == 1  # ["4","5"]: ratio 0.5 < 0.6
    with pytest.raises(ValueError, match="mode must be one of"):
        build_filters([{"name": "zero_variance", "mode": "sometimes"}], FILTERS)


def test_history_skip_scripted_episodes():
    skip = HistorySkip(target=0.25, p=0.5, step=0.1)
    rng = random.Random(0)
    # Episode 1: task 0 degenerate, task 1 informative.
    assert skip(voted(["4", "4"], "0")) and skip(voted(["4", "5"], "1"))
    assert skip.skip_probability("0") == pytest.approx(0.5) and skip.skip_probability("1") == 0.0
    assert skip.end_step()["filters/history_skip/p"] == pytest.approx(0.4)  # share 0.5 > 0.25: skip more
    # Episode 2: task 0 degenerate again -> streak 2: skip with 1 - 0.4^2.
    skip(voted(["7", "7"], "0"))
    assert skip.skip_probability("0") == pytest.approx(1 - 0.4 ** 2)
    # The floor: after many degenerate visits the prompt is still explored 1% of the time.
    skip.streak["0"] = 50
    assert skip.skip_probability("0") == pytest.approx(0.99)
    assert sum(skip.skip("0", rng) for _ in range(2000)) in range(1940, 2000)
    # An informative visit resets the streak.
    skip(voted(["1", "2"], "0"))
    assert skip.skip_probability("0") == 0.0
    state = skip.state_dict()
    fresh = HistorySkip()
    fresh.load_state_dict(state)
    assert fresh.p == skip.p and fresh.streak == skip.streak


# ---- dynamic sampling inside the real loop, with a scripted sampler and a recording policy ----


class ScriptedSampler:
    """Answers by task id: ids in ``unanimous`` always answer "1"; others split "1"/"2"."""

    def __init__(self, unanimous):
        self.unanimous = unanimous
        self.sampled = []

    def generate(self, tasks, params: SamplingParams, desc=""):
        n = 1 if params.greedy else params.n
        if not params.greedy and n > 4:
            self.sampled += [t.id for t in tasks]
        out = []
        for t in tasks:
            answers = ["1"] * n if t.id in self.unanimous else [str(1 + i % 2) for i in range(n)]
            out.append(RolloutGroup(t, [Rollout(f"\\\\boxed{{{a}}}", [5, 2], [-0.1, -0.1], "stop") for a in answers]))
        return out

    def load_weights(self, model):
        pass


class RecordingPolicy:
    """The loop's policy contract (engine.update.GRPOPolicy's methods the loop calls), recording batch sizes."""

    model = None
    finished = False   # --max_steps never reached

    def __init__(self):
        self.batches = []

    def log(self, row):
        pass

    def close(self):
        pass

    def update(self, batch, grad_filter=None):
        self.batches.append(len(batch) // batch.n_per_group)
        return {"train/loss": 0.0}

    def save(self, path):
        path.mkdir(parents=True, exist_ok=True)

    def state_dict(self):
        return {"batches": list(self.batches)}

    def load_state_dict(self, state):
        self.batches = list(state["batches"])


def loop_run(tmp_path, unanimous, n_tasks, *options, filters=None, log=lambda s: None):
    """The real loop on ``n_tasks`` scripted tasks; ``filters`` (specs with modes) go through a YAML file."""
    import yaml

    from engine.config.options import parse_config
    from engine.loop import run

    config = []
    if filters is not None:
        (tmp_path / "filters.yaml").write_text(yaml.safe_dump({"filters": filters}))
        config = [str(tmp_path / "filters.yaml")]
    cfg = parse_config([*config, "--model", "m", "--data", "d.jsonl", "--output_dir", str(tmp_path), "--n_votes", "8",
                        "--n_train", "4", "--prompts_per_step", "2", "--eval_k", "2", "--progress", "false",
                        *options])
    tasks = [make_task(i, label="1") for i in range(n_tasks)]
    sampler, policy = ScriptedSampler(unanimous), RecordingPolicy()
    run(cfg, sampler=sampler, policy=policy, tasks=tasks, out_dir=tmp_path, log=log)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return sampler, policy, rows


def test_dynamic_sampling_refills_the_batch(tmp_path):
    # 6 tasks, 3 unanimous. Each step wants 2 informative groups and refills until it has them.
    sampler, policy, rows = loop_run(tmp_path, {"0", "1", "2"}, 6, "--filters", "zero_variance")
    assert policy.batches[:-1] == [2] * (len(policy.batches) - 1)   # every step but the last is full
    assert sum(policy.batches) == 3                                  # all 3 informative prompts trained
    assert sum(r["groups/dropped"] for r in rows) == 3 and sorted(sampler.sampled) == [str(i) for i in range(6)]
    assert all(r["filters/zero_variance/checked"] == r["prompts/sampled"] for r in rows)


def test_dynamic_sampling_stops_at_its_bound(tmp_path):
    # No refill rounds: a step that drew two unanimous prompts trains on nothing and the run goes on.
    sampler, policy, rows = loop_run(tmp_path, {str(i) for i in range(4)}, 6, "--filters", "zero_variance",
                                     "--max_refill_rounds", "0")
    assert all(r["sampling/rounds"] == 1 for r in rows)
    skipped = [r for r in rows if r["update/skipped"]]
    assert skipped and all(r["groups/trained"] == 0 for r in skipped)
    assert sum(policy.batches) == 2 and len(rows) == 3


def test_history_skip_saves_sampling_across_episodes(tmp_path):
    # 4 always-unanimous tasks over 8 episodes: GRESO skips most revisits before sampling them.
    sampler, policy, rows = loop_run(tmp_path, {str(i) for i in range(4)}, 4, "--filters", "zero_variance",
                                     "history_skip", "--episodes", "8", "--max_refill_rounds", "0")
    skipped = sum(r["prompts/skipped"] for r in rows)
    assert skipped + len(sampler.sampled) == 32 and skipped >= 12
    assert policy.batches == []  # nothing informative, nothing trained


def test_history_skip_in_monitor_mode_only_counts(tmp_path):
    # The same run as above with GRESO in monitor mode: every prompt is sampled, none skipped, and the
    # prompts it would have skipped are counted (the expected number, from its skip probabilities).
    sampler, policy, rows = loop_run(tmp_path, {str(i) for i in range(4)}, 4, "--episodes", "8",
                                     "--max_refill_rounds", "0",
                                     filters=["zero_variance", {"name": "history_skip", "mode": "monitor"}])
    assert sum(r["prompts/skipped"] for r in rows) == 0 and len(sampler.sampled) == 32
    assert sum(r["filters/history_skip/would_skip"] for r in rows) >= 12
    assert rows[-1]["filters/history_skip/p"] < 0.5      # it still learns its p from what it sees


def test_save_every_counts_optimizer_steps_not_metric_rows(tmp_path):
    # Every group is unanimous and dropped: 4 rows, no optimizer step. save_every 2 counts steps, so the
    # only checkpoint is the one at the episode's end (counting rows gave one at row 2 as well).
    _, policy, rows = loop_run(tmp_path, {str(i) for i in range(8)}, 8, "--filters", "zero_variance",
                               "--max_refill_rounds", "0", "--save_every", "2")
    assert len(rows) == 4 and policy.batches == []
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["checkpoints"]["count"] == 1
    # With an update every row, a checkpoint every 2 steps: rows 2 and 4 (row 4 also ends the episode).
    _, policy, rows = loop_run(tmp_path / "b", set(), 8, "--save_every", "2")
    assert policy.batches == [2, 2, 2, 2]
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["checkpoints"]["count"] == 2


def test_groups_cut_for_gradient_accumulation_are_reported_as_such(tmp_path):
    # 3 informative tasks, 2 per step of 4 trained rows each, gradient_accumulation_steps 8: the last step
    # has 1 group, 4 rows, which TRL cannot split into 8 micro-batches; it is left out, and the log says so
    # (not "every group was filtered out"). (With 2 micro-batches its 4 rows would split and it would train.)
    logged = []
    _, policy, rows = loop_run(tmp_path, set(), 3, "--gradient_accumulation_steps", "8", log=logged.append)
    assert policy.batches == [2] and rows[-1]["groups/cut_for_accumulation"] == 1
    assert rows[-1]["update/skipped"] == 1
    assert not any("filtered out" in line for line in logged)
    assert any("gradient_accumulation_steps=8" in line and "1 of the 1 groups" in line for line in logged)
    _, policy, _ = loop_run(tmp_path / "b", set(), 3, "--gradient_accumulation_steps", "2")
    assert policy.batches == [2, 1]
