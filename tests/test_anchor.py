"""``--anchor FILE``: a few labeled examples held out of the test prompts (LESS's setting, arXiv 2402.04333) —
their start-up refusals, the guard score that ranks snapshots by them, and short runs of the real loop on the
demo model: the ``anchor/*`` columns, the guard's choice, and the influence selector's labeled target."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from engine.cli.main import main
from engine.config.anchor import feeds_labeled_target, selector_spec
from engine.config.options import parse_config
from engine.errors import ConfigError
from engine.rundir.guard import RunGuard
from filters.guard import anchor_accuracy
from filters.vote_history import VoteHistory
from factories import run_in_process
from test_bad_input import fails, tiny_args, write_rows

TESTS = [{"id": f"t{i}", "question": f"{i}+{i}=", "answer": str(2 * i)} for i in range(4)]
ANCHORS = [{"id": f"a{i}", "question": f"{i}+1=", "answer": str(i + 1)} for i in range(3)]


# ---- start-up refusals: one line each, naming the anchor file or the option ----------------------------------


@pytest.mark.parametrize("rows, says", [
    (None, ["anchor: ", "missing.jsonl: file not found"]),
    ([{"id": "a0", "question": "5+1="}], ["anchor", "no example has a label", "answer, target", "--label_field"]),
    ([ANCHORS[0], {"id": "a9", "question": "9+1="}], ["1 of 2 examples have no label (ids a9)"]),
    ([ANCHORS[0], {"id": "a1", "question": "1+1=", "answer": "2"}],
     ["1 of 2 anchor questions are test prompts too", "anchor id a1 = test id t1 ('1+1=')", "held out of --data"]),
    ([ANCHORS[0], {"id": "a1", "text": "1+5="}], ["anchor: anchors.jsonl, line 2: no prompt field"]),
])
def test_bad_anchor_files_are_refused_before_the_model_loads(capsys, tiny_model, tmp_path, rows, says):
    data = write_rows(tmp_path / "tasks.jsonl", TESTS)
    anchor = tmp_path / ("missing.jsonl" if rows is None else "anchors.jsonl")
    if rows is not None:
        write_rows(anchor, rows)
    fails(capsys, *tiny_args(tiny_model, data, tmp_path / "run", "--anchor", anchor), says=says)


def test_training_on_more_anchors_than_the_file_holds_is_refused_before_the_model_loads(capsys, tiny_model, tmp_path):
    data, anchor = write_rows(tmp_path / "tests.jsonl", TESTS), write_rows(tmp_path / "anchors.jsonl", [ANCHORS[0], ANCHORS[2]])
    fails(capsys, *tiny_args(tiny_model, data, tmp_path / "run", "--anchor", anchor, "--anchor_train", "3"),
          says=["anchor_train 3: anchor", "anchors.jsonl has 2 examples"])


@pytest.mark.parametrize("args, message", [
    (["--selector", "{name: influence, target: labeled}"],
     "selector: target labeled needs labeled examples: --anchor FILE"),
    (["--guard", "watch", "--guard_snapshot_every", "2", "--guard_score", "anchor_accuracy"],
     "guard_score anchor_accuracy needs --anchor FILE"),
    (["--selector", "{name: influence, target: labeled"], "selector: '{name: influence, target: labeled' is not a YAML"),
    (["--anchor_train", "2"], "anchor_train 2 needs --anchor FILE"),
    (["--anchor", "a.jsonl", "--anchor_train", "-1"], "anchor_train must be 0 (off) or the number of anchors"),
])
def test_what_reads_the_anchors_is_refused_without_them(args, message, tmp_path):
    with pytest.raises(ConfigError) as err:
        parse_config(["--model", "m", "--data", "d.jsonl", "--output_dir", str(tmp_path), *args])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_labeled_target_takes_the_anchors_unless_its_spec_names_a_file(tmp_path):
    cfg = parse_config(["--model", "m", "--data", "d.jsonl", "--output_dir", str(tmp_path), "--anchor", "a.jsonl",
                        "--selector", "{name: influence, target: labeled}", "--gradient_checkpointing", "false"])
    assert cfg.ttrl.selector == {"name": "influence", "target": "labeled"} and cfg.ttrl.anchor == "a.jsonl"
    anchors = [SimpleNamespace(prompt_ids=(5, 6), label="7")]
    assert selector_spec(cfg.ttrl.selector, anchors)["labeled"] == [([5, 6], "7")]
    named = {"name": "influence", "target": "labeled", "labeled_path": "x.jsonl"}
    for spec in (named, "influence", {"name": "influence"}, {"name": "max_variance", "target": "labeled"}):
        assert not feeds_labeled_target(spec) and selector_spec(spec, anchors) is spec


def test_ttrl_eval_refuses_the_anchor_option(capsys, tmp_path):
    assert main(["eval", "--model", "m", "--data", "d.jsonl", "--anchor", "a.jsonl", "--output_dir",
                 str(tmp_path)]) == 2
    assert "anchor is an option of ttrl run" in capsys.readouterr().err


def test_labeled_examples_in_memory_are_the_same_target_as_the_file(tiny_model, tmp_path):
    from factories import make_tokenizer
    from filters.influence import InfluenceSelector
    from test_influence import fake_policy, group_of, load

    tok, model = make_tokenizer(), load(tiny_model, lora=True)
    path = write_rows(tmp_path / "target.jsonl", [{"prompt": "1+1=", "answer": "2"}])
    group = group_of(tok, ["75", "2"], [0.0, 1.0])
    alignments = []
    for options in ({"labeled_path": str(path)}, {"labeled": [(tok("1+1=")["input_ids"], "2")]}):
        sel = InfluenceSelector(target="labeled", stage="rollouts", **options)
        assert sel.select_batch([group], 1, fake_policy(model, tok)) == [[1]]
        alignments.append(sel.last_alignment[0])
    assert alignments[0] == pytest.approx(alignments[1], abs=1e-6)
    with pytest.raises(ValueError, match="needs labeled_path .* or labeled examples"):
        InfluenceSelector(target="labeled")


# ---- the guard score, on hand-built windows ---------------------------------------------------------------------


def test_anchor_accuracy_picks_the_snapshot_measured_best_on_the_anchors(tmp_path):
    assert anchor_accuracy([{"anchor/accuracy": 0.5}, {"vote/majority_ratio": 0.9}]) == 0.5
    assert math.isnan(anchor_accuracy([{"vote/majority_ratio": 0.9}])) and math.isnan(anchor_accuracy([]))
    torch.manual_seed(0)
    policy = SimpleNamespace(model=torch.nn.Linear(3, 2))
    guard = RunGuard("watch", score="anchor_accuracy", votes=VoteHistory(), out_dir=tmp_path, every=2, keep=2)
    assert guard.anchored
    # each snapshot's anchor accuracy as the loop measures it when the snapshot is taken; the votes say the opposite
    measured, consensus, weights = {0: 0.25, 2: 0.75, 4: 0.5, 6: 0.5}, {0: 0.95, 2: 0.5, 4: 0.9, 6: 0.99}, {}
    for step in range(7):
        if step:
            with torch.no_grad():
                policy.model.weight.add_(1.0)
        assert guard.due(step) == (step % 2 == 0)
        row = {"anchor/accuracy": measured.get(step, math.nan), "accuracy/greedy": 1.0, "label_accuracy": 1.0}
        guard.snapshot_if_due(step, policy, measured=row)
        if step % 2 == 0:
            weights[step] = policy.model.weight.detach().clone()
        guard.screen({"vote/majority_ratio": consensus[step - step % 2], "vote/locked_in": 0.0}, [], [])
    assert all(k.startswith(("anchor/", "vote/", "guard/")) for s in guard.snapshots for r in s["window"] for k in r)
    assert [s["step"] for s in guard.snapshots] == [2, 4, 6]          # keep 2 best (0.75, 0.5 later) + the latest
    summary = guard.finish(policy, SimpleNamespace(load_weights=lambda model: None), step=6)
    assert summary["chosen"] == {"step": 2, "score": 0.75} and summary["rolled_back"] and summary["score"] == "anchor_accuracy"
    assert torch.equal(policy.model.weight, weights[2])
    # The latest snapshot has its measurement, so a run that ends on its best weights keeps them.
    assert [s["score"] for s in summary["snapshots"]] == [0.75, 0.5, 0.5]
    # Under another score, a measurement never enters a window: stability reads votes alone.
    plain = RunGuard("watch", votes=VoteHistory(), out_dir=tmp_path / "plain", every=2)
    plain.snapshot_if_due(0, policy, measured={"anchor/accuracy": 1.0})
    assert not plain.anchored and plain.snapshots == [{"step": 0, "window": []}]


# ---- the real loop on the demo model ----------------------------------------------------------------------------


def demo_anchor_file(path, rows=range(120, 128)):
    """Eight demo prompts the runs below never see as test prompts (they use the first 8 or 12), with labels."""
    from engine.data.demo import build_demo

    lines = build_demo()[1].read_text().splitlines()
    path.write_text("".join(lines[i] + "\n" for i in rows), encoding="utf-8")
    return path, [json.loads(lines[i])["prompt"] for i in rows]


def demo_run(out, *extra, spy=None):
    def spying(generate):
        def wrapped(tasks_, params, desc="sample"):
            spy.append(([t.question for t in tasks_], params.n, params.greedy))
            return generate(tasks_, params, desc=desc)
        return wrapped

    args = ["--model", "demo", "--data", "demo", "--n_votes", "8", "--n_train", "4", "--prompts_per_step", "4",
            "--episodes", "1", "--eval_k", "2", "--eval_greedy", "false", "--output_dir", str(out), "--progress",
            "false", "--seed", "1", *extra]
    summary, _, _ = run_in_process(args, wrap_generate=spying if spy is not None else None)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, rows


@pytest.fixture(scope="module")
def anchored(tmp_path_factory):
    """One short demo run that reads its anchors every way: evaluated (eval_every 2), the guard's snapshot score
    (a snapshot every step) and the influence selector's labeled target; with spies on what the sampler was
    asked for and on the labeled examples the selector scored against."""
    from filters.influence import update_stage

    tmp = tmp_path_factory.mktemp("anchored")
    anchor, questions = demo_anchor_file(tmp / "anchors.jsonl")
    calls, seen = [], []
    examples = update_stage.labeled_examples

    def recording(path, labeled, tokenizer):
        seen.append((path, len(labeled)))
        return examples(path, labeled, tokenizer)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(update_stage, "labeled_examples", recording)
        summary, rows = demo_run(tmp / "run", "--limit", "12", "--anchor", str(anchor), "--eval_every", "2",
                                 "--learning_rate", "3e-3", "--selector", "{name: influence, target: labeled}",
                                 "--guard", "watch", "--guard_snapshot_every", "1", "--guard_score", "anchor_accuracy",
                                 "--guard_keep", "4", spy=calls)
    saved = json.loads((tmp / "run" / "summary.json").read_text())
    return SimpleNamespace(summary=summary, rows=rows, saved=saved, calls=calls, seen=seen, questions=questions,
                           report=(tmp / "run" / "report.md").read_text())


def test_a_run_evaluates_its_anchors_at_every_evaluation_and_never_trains_on_them(anchored):
    summary, rows, questions = anchored.summary, anchored.rows, anchored.questions
    for when in ("before", "after"):
        assert {"anchor/accuracy", "anchor/avg@2", "accuracy/avg@2"} <= set(summary[when])
        assert anchored.saved[when]["anchor/accuracy"] == summary[when]["anchor/accuracy"]
    assert "| anchor/accuracy |" in anchored.report
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert "anchor/avg@2" in rows[1] and "accuracy/avg@2" in rows[1]              # the eval_every row
    assert all("anchor/accuracy" in r for r in rows)                            # every snapshot is measured ...
    assert not any("anchor/avg@2" in r for r in (rows[0], rows[2]))             # ... greedy only
    # Anchors are evaluated (eval_k 2 samples, greedy), never sampled for training (n_votes 8).
    assert any(q in questions for qs, n, _ in anchored.calls if n == 2 for q in qs)
    assert not any(q in questions for qs, n, greedy in anchored.calls if n == 8 and not greedy for q in qs)


def test_the_guard_keeps_the_snapshot_measured_best_on_the_anchors(anchored):
    summary, g = anchored.summary, anchored.saved["guard"]
    measured = {0: summary["before"]["anchor/accuracy"], **{r["step"]: r["anchor/accuracy"] for r in anchored.rows}}
    assert g["score"] == "anchor_accuracy" and [s["step"] for s in g["snapshots"]] == [0, 1, 2, 3]
    assert all(s["score"] == measured[s["step"]] for s in g["snapshots"])
    best = max(g["snapshots"], key=lambda s: (s["score"], s["step"]))          # ties: the later
    assert g["chosen"] == {"step": best["step"], "score": best["score"]} and g["rolled_back"] == (best["step"] != 3)
    assert summary["after"]["anchor/accuracy"] == best["score"]                # the final evaluation is on those weights


def test_the_influence_selectors_labeled_target_is_the_anchors(anchored):
    assert all(r["groups/trained"] == 4 and 0 <= r["filters/influence/kept_fraction"] <= 1 for r in anchored.rows)
    assert anchored.seen and set(anchored.seen) == {(None, 8)}                  # every step scored against them


def test_anchor_train_mixes_the_anchors_into_every_step_rewarded_by_their_labels(tmp_path):
    """The control for anchored influence: ``--anchor_train 4`` of 8 anchors joins each of the two steps (4 test
    prompts each), sampled n_votes times, each rollout rewarded by its answer against the anchor's true label."""
    anchor, questions = demo_anchor_file(tmp_path / "anchors.jsonl")
    labels = {json.loads(line)["prompt"]: json.loads(line)["answer"] for line in anchor.read_text().splitlines()}
    calls = []

    def spying(generate):
        def wrapped(tasks_, params, desc="sample"):
            groups = generate(tasks_, params, desc=desc)
            calls.append((desc, params.n, groups))
            return groups
        return wrapped

    out = tmp_path / "run"
    args = ["--model", "demo", "--data", "demo", "--limit", "8", "--n_votes", "8", "--n_train", "4",
            "--prompts_per_step", "4", "--episodes", "1", "--eval_k", "2", "--eval_greedy", "false", "--output_dir",
            str(out), "--progress", "false", "--seed", "1", "--anchor", str(anchor), "--anchor_train", "4"]
    run_in_process(args, wrap_generate=spying)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    trained = [groups for desc, n, groups in calls if desc == "anchors"]
    assert [n for desc, n, _ in calls if desc == "anchors"] == [8, 8]
    # iteration i takes anchors 4i .. 4i+3 of the 8, mod 8: iterations 1 and 2 take the second half, then the first
    assert [[g.task.question for g in groups] for groups in trained] == [questions[4:], questions[:4]]
    assert all(g.task.label is None and g.label == labels[g.task.question] for groups in trained for g in groups)
    for groups in trained:
        for g in groups:
            assert [r.reward for r in g.rollouts] == [float(r.answer == g.label) for r in g.rollouts]
    assert [r["anchor_train/groups"] for r in rows] == [4, 4] and [r["groups/trained"] for r in rows] == [8, 8]
    assert [r["anchor_train/reward"] for r in rows] == [
        sum(r.reward for g in groups for r in g.rollouts) / 32 for groups in trained]
    sampled = [sum(len(r.token_ids) for g in groups for r in g.rollouts) for _, n, groups in calls if n == 8]
    assert sum(r["tokens/generated"] for r in rows) == sum(sampled)            # the anchors' tokens count
