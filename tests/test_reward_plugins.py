"""Vote variants, answer types and pluggable rewards: build_reward's specs, combinations, the TRL
adapter, pickling, and custom reward modules used through the CLI end to end."""

from __future__ import annotations

import json
import math
import pickle
import textwrap

import pytest
import yaml

from engine.loop import RewardError, apply_reward
from engine.registry import SpecError
from engine.types import Rollout, RolloutGroup, Task
from rewards import REWARDS, PerCompletion, WeightedSum, build_reward, extract_answer, is_correct
from rewards.vote import boxed_group
from test_cli import ttrl


def H(*counts: int) -> float:
    """Entropy in nats of a distribution given as counts (hand formula for the expected values)."""
    total = sum(counts)
    return -sum(c / total * math.log(c / total) for c in counts)


def text_group(texts: list[str], question: str = "q") -> RolloutGroup:
    return RolloutGroup(Task("t", question), [Rollout(t, [7, 8], None, "stop") for t in texts])


# --- the four votes, hand-computed -------------------------------------------------------------

FRAC = r"\frac{1}{2}"
VOTE_CASES = [
    # (answers, variant, rewards, label, majority_ratio, distinct, entropy)
    # clear majority: "4.0" is "4" after normalisation, for every variant
    (["4", "4", "5", "4.0"], "majority_vote", [1, 1, 0, 1], "4", 0.75, 2, H(3, 1)),
    (["4", "4", "5", "4.0"], "plain_majority", [1, 1, 0, 1], "4", 0.75, 2, H(3, 1)),
    (["4", "4", "5", "4.0"], "confident_vote", [1, 1, 0, 1], "4", 0.75, 2, H(3, 1)),
    (["4", "4", "5", "4.0"], "soft_vote", [0.75, 0.75, 0.25, 0.75], "4", 0.75, 2, H(3, 1)),
    # equivalent spellings: one cluster of 3 for the clustered votes; plain counting splits it 1/1/1
    (["0.5", FRAC, "1/2", "3", "3"], "majority_vote", [1, 1, 1, 0, 0], "0.5", 0.6, 2, H(3, 2)),
    (["0.5", FRAC, "1/2", "3", "3"], "plain_majority", [0, 0, 0, 1, 1], "3", 0.4, 4, H(1, 1, 1, 2)),
    (["0.5", FRAC, "1/2", "3", "3"], "confident_vote", [1, 1, 1, 0, 0], "0.5", 0.6, 2, H(3, 2)),  # margin 0.2
    (["0.5", FRAC, "1/2", "3", "3"], "soft_vote", [0.6, 0.6, 0.6, 0.4, 0.4], "0.5", 0.6, 2, H(3, 2)),
    # tie 2-2-1: "4" sorts before "5" and wins; the confident vote abstains (margin 0)
    (["5", "4", "5", "4", "10"], "majority_vote", [0, 1, 0, 1, 0], "4", 0.4, 3, H(2, 2, 1)),
    (["5", "4", "5", "4", "10"], "plain_majority", [0, 1, 0, 1, 0], "4", 0.4, 3, H(2, 2, 1)),
    (["5", "4", "5", "4", "10"], "confident_vote", [0, 0, 0, 0, 0], None, 0.4, 3, H(2, 2, 1)),
    (["5", "4", "5", "4", "10"], "soft_vote", [0.4, 0.4, 0.4, 0.4, 0.2], "4", 0.4, 3, H(2, 2, 1)),
    # empty answers vote for nothing, get 0, and count in every share's denominator (2/6 < 0.375)
    ([None, None, None, "7", "8", "8"], "majority_vote", [0, 0, 0, 0, 1, 1], "8", 2 / 6, 2, H(1, 2)),
    ([None, None, None, "7", "8", "8"], "plain_majority", [0, 0, 0, 0, 1, 1], "8", 2 / 6, 2, H(1, 2)),
    ([None, None, None, "7", "8", "8"], "confident_vote", [0] * 6, None, 2 / 6, 2, H(1, 2)),
    ([None, None, None, "7", "8", "8"], "soft_vote", [0, 0, 0, 1 / 6, 2 / 6, 2 / 6], "8", 2 / 6, 2, H(1, 2)),
    # nobody answered: no label anywhere, entropy 0
    ([None, None], "majority_vote", [0, 0], None, 0.0, 0, 0.0),
    ([None, None], "plain_majority", [0, 0], None, 0.0, 0, 0.0),
    ([None, None], "confident_vote", [0, 0], None, 0.0, 0, 0.0),
    ([None, None], "soft_vote", [0, 0], None, 0.0, 0, 0.0),
    # SCRL's boundary: share 3/8 = 0.375 passes, but a margin of exactly 1/8 is not > 0.125
    (["7", "7", "7", "8", "8", "9", "9", None], "confident_vote", [0] * 8, None, 0.375, 3, H(3, 2, 2)),
    (["7", "7", "7", "8", "9", None, None, None], "confident_vote", [1, 1, 1, 0, 0, 0, 0, 0], "7", 0.375, 3, H(3, 1, 1)),
    # unanimous: entropy 0, every variant gives everyone 1
    (["2", "2.0", "02"], "soft_vote", [1, 1, 1], "2", 1.0, 1, 0.0),
]


@pytest.mark.parametrize("answers,variant,rewards,label,ratio,distinct,entropy", VOTE_CASES)
def test_vote_variants(answers, variant, rewards, label, ratio, distinct, entropy):
    group = boxed_group(answers)
    out = REWARDS[variant](group)
    assert out == pytest.approx(rewards)
    assert [r.reward for r in group.rollouts] == pytest.approx(rewards)
    assert group.label == label
    assert group.stats["vote/majority_ratio"] == pytest.approx(ratio)
    assert group.stats["vote/distinct_answers"] == distinct
    assert group.stats["vote/answer_entropy"] == pytest.approx(entropy)
    assert group.stats["vote/answered_ratio"] == pytest.approx(sum(a is not None for a in answers) / len(answers))
    if variant == "confident_vote":
        assert group.stats["vote/confident"] == float(label is not None)


@pytest.mark.parametrize("kwargs,answers,confident", [
    ({"min_share": 0.8}, ["4", "4", "4", "5"], False),                       # 0.75 < 0.8
    ({"min_share": 0.75}, ["4", "4", "4", "5"], True),                       # 0.75 >= 0.75
    ({"min_share": 0.3, "min_margin": 0.0}, ["4", "4", "5", "5"], False),     # tie: margin 0 is not > 0
    ({"min_share": 0.0, "min_margin": 0.4}, ["4", "4", "4", "5"], True),      # margin 0.5 > 0.4
    ({"min_share": 0.0, "min_margin": 0.5}, ["4", "4", "4", "5"], False),     # margin 0.5 is not > 0.5
])
def test_confident_vote_thresholds_are_kwargs(kwargs, answers, confident):
    group = boxed_group(answers)
    reward = build_reward({"name": "confident_vote", **kwargs})
    assert (max(reward(group)) == 1.0) is confident and (group.label is not None) is confident


def test_confident_vote_rejects_thresholds_out_of_range():
    with pytest.raises(ValueError, match="must be in"):
        REWARDS["confident_vote"](boxed_group(["1"]), min_share=1.5)


def test_every_builtin_reward_has_a_doctest_example():
    for name, fn in REWARDS.items():
        assert fn.__doc__ and ">>>" in fn.__doc__, name


# --- answer types ------------------------------------------------------------------------------

GPQA_QUESTION = textwrap.dedent("""\
    What is most likely to be observed with this absorption line in the Milky Way?

    A. Warm atomic interstellar medium.
    B. Cold molecular interstellar medium.
    C. Cold atomic interstellar medium.
    D. Warm molecular interstellar medium.""")
NUMERIC_OPTIONS = "By what factor?\n\nA. ~ 3.2\nB. ~ 4.4\nC. ~ 10.4\nD. ~ 33.4"

CHOICE_CASES = [
    (r"so \boxed{B}", GPQA_QUESTION, "B"),                                   # boxed letter
    (r"\boxed{(C)}", GPQA_QUESTION, "C"),                                     # boxed, parenthesised
    (r"\boxed{\text{D}}", GPQA_QUESTION, "D"),                                # boxed \text
    ("The answer is (b).", GPQA_QUESTION, "B"),                               # lower case in brackets
    ("Answer: a", GPQA_QUESTION, "A"),                                        # "answer: b" form
    ("The correct answer is B. Cold molecular interstellar medium.", GPQA_QUESTION, "B"),  # letter + text
    ("The answer is cold atomic interstellar medium.", GPQA_QUESTION, "C"),  # the option's text only
    (r"\boxed{Warm molecular interstellar medium}", GPQA_QUESTION, "D"),      # option text in a box
    ("Weighing both, I would go with option D", GPQA_QUESTION, "D"),         # "option X"
    ("hence the best fit is (A)", GPQA_QUESTION, "A"),                       # a trailing "(X)"
    ("The answer is ~4.4.", NUMERIC_OPTIONS, "B"),                            # numeric option text
    (r"\boxed{10.4}", NUMERIC_OPTIONS, "C"),                                  # boxed option value
    ("I cannot tell.", GPQA_QUESTION, None),                                  # nothing
    ("", GPQA_QUESTION, None),                                                # empty completion
    ("The answer is (B).", None, "B"),                                        # no question at hand
]


@pytest.mark.parametrize("text,question,expected", CHOICE_CASES)
def test_choice_extraction(text, question, expected):
    assert extract_answer(text, "choice", question=question) == expected


NUMBER_CASES = [
    ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),                        # GSM8K tail
    ("The answer is 18 apples.", "18"),                                      # unit words dropped
    (r"\boxed{18 \text{ dollars}}", "18"),                                   # boxed with a unit
    ("She pays $18.00 in total", "18"),                                      # currency, trailing zeros
    ("#### 1,234", "1234"),                                                  # thousands separator
    ("3 cats and -2.5 dogs", "-2.5"),                                        # last number
    (r"\boxed{x}", None),                                                    # no number in the answer
    ("no idea", None),                                                       # nothing at all
]


@pytest.mark.parametrize("text,expected", NUMBER_CASES)
def test_number_extraction(text, expected):
    assert extract_answer(text, "number") == expected


@pytest.mark.parametrize("a,b,answer_type,same", [
    ("14.0", "14", "number", True),                                          # float label
    ("025", "25", "number", True),                                           # AIME padding
    (FRAC, "0.5", "number", True),                                           # simple fraction
    ("3", "4", "number", False),
    (r"\sqrt{4}", "2", "number", False),                                     # number type: no algebra
    ("(c)", "C", "choice", True),
    ("B.", "b", "choice", True),
    ("B", "C", "choice", False),
])
def test_typed_equivalence(a, b, answer_type, same):
    assert is_correct(a, b, answer_type) is same


def test_custom_extractor_by_module_function(tmp_path, monkeypatch):
    (tmp_path / "my_extract.py").write_text("def last_word(text):\n    words = text.split()\n"
                                            "    return words[-1].strip('.') if words else None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    group = text_group(["it is blue.", "surely blue", "red", ""])
    rewards = build_reward("majority_vote", answer_type="my_extract:last_word")(group)
    assert rewards == [1.0, 1.0, 0.0, 0.0] and group.label == "blue"
    assert extract_answer("so: seven.", "my_extract:last_word") == "seven"


def test_answer_type_reaches_votes_and_spec_kwargs_win():
    texts = ["The answer is cold atomic interstellar medium.", r"\boxed{C}", "Answer: b"]
    group = text_group(texts, GPQA_QUESTION)
    assert build_reward("majority_vote", answer_type="choice")(group) == [1.0, 1.0, 0.0]
    assert group.label == "C"
    group = text_group(texts, GPQA_QUESTION)
    build_reward({"name": "majority_vote", "answer_type": "math"}, answer_type="choice")(group)
    assert group.rollouts[0].answer == "cold atomic interstellar medium"  # math reads the text as is


def test_unknown_answer_type_lists_valid_ones():
    with pytest.raises(SpecError, match="unknown answer_type 'letters'; valid: math, number, choice"):
        build_reward("majority_vote", answer_type="letters")


# --- build_reward: specs, errors, combinations -------------------------------------------------

def test_unknown_reward_and_option_fail_with_the_valid_ones():
    with pytest.raises(SpecError, match="valid names: majority_vote, plain_majority, confident_vote, soft_vote"):
        build_reward("majority")
    with pytest.raises(SpecError, match=r"unknown option\(s\) \['min_shar'\]; it accepts: min_share, min_margin"):
        build_reward({"name": "confident_vote", "min_shar": 0.5})
    with pytest.raises(SpecError, match="weight must be a finite number"):
        build_reward([{"name": "majority_vote", "weight": "heavy"}])
    with pytest.raises(SpecError, match="empty list"):
        build_reward([])


def test_weighted_combination_by_hand():
    # majority [1, 1, 0, 0] x 0.5 + soft [0.5, 0.5, 0.25, 0] x 2 (answers 4, 4, 5, none)
    group = boxed_group(["4", "4", "5", None])
    reward = build_reward([{"name": "majority_vote", "weight": 0.5}, {"name": "soft_vote", "weight": 2}])
    assert isinstance(reward, WeightedSum)
    assert reward(group) == [1.5, 1.5, 0.5, 0.0]
    assert group.stats["reward/majority_vote"] == 0.5 and group.stats["reward/soft_vote"] == 0.3125
    # weight defaults to 1; a single mapping with a weight is a one-part sum
    assert build_reward(["majority_vote", "soft_vote"])(boxed_group(["4", "4", "5", None])) == [1.5, 1.5, 0.25, 0.0]
    assert build_reward({"name": "soft_vote", "weight": -1})(boxed_group(["4", "5"])) == [-0.5, -0.5]


def nan_part(group):
    return [float("nan")] * len(group.rollouts)


def test_combination_names_the_failing_part():
    reward = build_reward(["majority_vote", "test_reward_plugins:nan_part"])
    with pytest.raises(ValueError, match=r"part 'test_reward_plugins:nan_part' returned nan for rollout 0"):
        reward(boxed_group(["1", "1"]))


def test_combination_through_apply_reward():
    spec = [{"name": "majority_vote", "weight": 1}, {"name": "test_reward_plugins:nan_part", "weight": 1}]
    with pytest.raises(RewardError, match="majority_vote \\+ test_reward_plugins:nan_part"):
        apply_reward(build_reward(spec), spec, boxed_group(["1", "1"]))


def test_entry_point_rewards(tmp_path, monkeypatch):
    (tmp_path / "fake_plugin_mod.py").write_text("def always_half(group):\n    return [0.5] * len(group.rollouts)\n")
    dist = tmp_path / "fake_ttrl_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-ttrl-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ttrl_engine.rewards]\nalways_half = fake_plugin_mod:always_half\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert build_reward("always_half")(boxed_group(["1", "2"])) == [0.5, 0.5]
    with pytest.raises(SpecError, match="soft_vote, random, constant, always_half, or 'module:function'"):
        build_reward("nope")


# --- TRL-style per-completion rewards ----------------------------------------------------------

def reward_len(completions, **kwargs):
    """In the style of TRL's docs: prefer completions of 20 characters."""
    return [-abs(20 - len(c)) for c in completions]


def skip_odd(prompts, completions, completion_ids, **kwargs):
    """Returns None (TRL: "does not apply") for every other completion; checks what it was handed."""
    assert prompts == ["2+2"] * len(completions) and completion_ids == [[7, 8]] * len(completions)
    return [None if i % 2 else 1.0 for i in range(len(completions))]


class Scaled:
    """A TRL-style callable class: per-completion reward scaled by a config option."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def __call__(self, prompts, completions, **kwargs):
        return [self.scale * len(c) for c in completions]


def test_trl_style_functions_through_the_adapter():
    group = text_group(["x" * 20, "x" * 25], question="2+2")
    assert isinstance(build_reward("test_reward_plugins:reward_len"), PerCompletion)
    assert build_reward("test_reward_plugins:reward_len")(group) == [0.0, -5.0]
    assert build_reward("test_reward_plugins:skip_odd")(text_group(["a", "b", "c"], "2+2")) == [1.0, 0.0, 1.0]
    assert build_reward({"name": "test_reward_plugins:Scaled", "scale": 0.5})(group) == [10.0, 12.5]
    with pytest.raises(SpecError, match="apply only to TRL-style"):
        build_reward({"name": "majority_vote", "conversational": True})


def test_trl_library_rewards_used_unchanged():
    pytest.importorskip("trl.rewards")
    # TRL's own accuracy_reward graded against the group's pseudo-label: the vote runs first (weight 0)
    # and sets group.label; the adapter passes it as `solution`, in TRL's conversational format.
    spec = [{"name": "majority_vote", "weight": 0.0},
            {"name": "trl.rewards:accuracy_reward", "conversational": True, "pseudo_label_as": "solution"}]
    group = boxed_group([r"\frac{1}{2}", "0.5", "7", None])
    assert build_reward(spec)(group) == [1.0, 1.0, 0.0, 0.0]
    # No pseudo-label (nobody answered): accuracy_reward returns None ("skip"), which becomes 0.0.
    assert build_reward(spec)(boxed_group([None, None])) == [0.0, 0.0]
    think = build_reward({"name": "trl.rewards:think_format_reward", "conversational": True})
    assert think(text_group(["<think>\nhm\n</think>\n4", "4"])) == [1.0, 0.0]


# --- pickling (Ray ships rewards to workers) ---------------------------------------------------

@pytest.mark.parametrize("spec", [
    "majority_vote",
    {"name": "confident_vote", "min_share": 0.5},
    [{"name": "majority_vote", "weight": 0.5}, {"name": "soft_vote", "weight": 2}],
    "test_reward_plugins:reward_len",
    {"name": "test_reward_plugins:Scaled", "scale": 2.0},
])
def test_built_rewards_pickle(spec):
    reward = build_reward(spec, answer_type="number")
    clone = pickle.loads(pickle.dumps(reward))
    answers = ["4", "4.0", "5", None]
    assert clone(boxed_group(answers)) == reward(boxed_group(answers))


# --- through the CLI: a custom reward module next to the config --------------------------------

CUSTOM_REWARDS = '''
from rewards import majority_vote

CALLS = 0


def vote_plus_bonus(group, *, bonus=0.5):
    """Majority vote plus a bonus for every rollout that stopped on its own."""
    group.stats["custom/called"] = 1.0
    votes = majority_vote(group, answer_type="number")
    return [v + (bonus if r.finish_reason == "stop" else 0.0) for v, r in zip(votes, group.rollouts)]


def nan_on_second_step(group):
    """Fine for the two groups of step 1, then NaN on the first group of step 2."""
    global CALLS
    CALLS += 1
    votes = majority_vote(group)
    if CALLS > 2:
        votes[0] = float("nan")
    return votes
'''


def write_config(tmp_path, tiny_model, tiny_data, reward) -> tuple:
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "my_rewards.py").write_text(CUSTOM_REWARDS)
    config = folder / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(tiny_model), "data": str(tiny_data), "template": "{question}", "n_votes": 4, "n_train": 2,
        "prompts_per_step": 2, "max_completion_length": 6, "eval_k": 2, "progress": False, "eval_greedy": False,
        "output_dir": str(tmp_path / "run"), "reward": reward, "answer_type": "number",
    }))
    return config, tmp_path / "run"


@pytest.mark.slow
def test_custom_reward_module_through_the_cli(tiny_model, tiny_data, tmp_path):
    # cwd is tmp_path, the module sits in tmp_path/cfg beside the config: found through the config's folder.
    config, run = write_config(tmp_path, tiny_model, tiny_data, {"name": "my_rewards:vote_plus_bonus", "bonus": 0.25})
    result = ttrl("run", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert row["custom/called"] == 1.0
        for key in ("vote/majority_ratio", "vote/answer_entropy", "vote/distinct_answers", "label_accuracy",
                    "reward_accuracy"):
            assert key in row


@pytest.mark.slow
def test_failing_reward_stops_the_run_loudly_and_keeps_written_metrics(tiny_model, tiny_data, tmp_path):
    config, run = write_config(tmp_path, tiny_model, tiny_data, "my_rewards:nan_on_second_step")
    result = ttrl("run", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert "reward 'my_rewards:nan_on_second_step' returned nan for rollout 0 of task" in result.stderr
    assert "Traceback" not in result.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1]  # step 1 is on disk; step 2 never finished


def test_bad_reward_option_fails_before_a_model_loads(tmp_path):
    result = ttrl("run", "--model", str(tmp_path / "no-model"), "--data", "x.jsonl",
                  "--reward", "confident_vote", "--answer_type", "letters")
    assert result.returncode == 2 and "unknown answer_type 'letters'" in result.stderr
