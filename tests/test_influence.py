"""Gradient-influence selection (filters.influence) and PODS's max-variance selector on a real tiny model."""

import json
import random
from types import SimpleNamespace

import pytest
import torch

from factories import make_task, make_tokenizer
from engine.registry import resolve
from engine.types import Rollout, RolloutGroup
from filters import SELECTORS
from filters.influence import InfluenceSelector, hooked_modules, sequence_gradients
from filters.selectors import max_variance


def load(path, lora: bool):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear"))
        with torch.no_grad():   # lora_B starts at zero, which would make every lora_A gradient zero
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
    return model


def one_at_a_time(model, layers, prompt, completion, temperature):
    """The reference: one unpadded row, one backward, the parameters' own .grad."""
    model.eval()
    model.zero_grad(set_to_none=True)
    ids = torch.tensor([prompt + completion])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1] / temperature
    logp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None]).mean()
    logp.backward()
    return torch.cat([m.weight.grad.flatten() for _, m in layers])


@pytest.mark.parametrize("lora, modules", [(True, None), (False, ["q_proj", "down_proj"])])
def test_batched_hook_features_equal_per_rollout_backward(tiny_model, lora, modules):
    model = load(tiny_model, lora)
    layers = hooked_modules(model, modules)
    assert all(".lora_" in n for n, _ in layers) if lora else {n.split(".")[-1] for n, _ in layers} == set(modules)
    rows = [([1, 5, 6, 17], [7, 8, 2]), ([1, 9], [10, 11, 12, 13, 14, 2]), ([1, 5, 6, 17, 20, 21], [15])]
    feats = sequence_gradients(model, rows, layers, temperature=0.7, max_rows=2)  # two chunks, padded
    assert feats.shape == (3, sum(m.weight.numel() for _, m in layers))
    for i, (prompt, completion) in enumerate(rows):
        ref = one_at_a_time(model, layers, prompt, completion, 0.7)
        assert ref.abs().max() > 0
        torch.testing.assert_close(feats[i], ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


def group_of(tok, texts, rewards, prompt="1+1="):
    task = make_task(0, prompt, None, tokenizer=tok)
    rollouts = [Rollout(t, list(tok(t, add_special_tokens=False)["input_ids"]) + [tok.eos_token_id], None, "stop",
                        answer=t, reward=r) for t, r in zip(texts, rewards)]
    return RolloutGroup(task, rollouts, label=texts[rewards.index(1.0)] if 1.0 in rewards else None)


def fake_policy(model, tok, optimizer=None, temperature=1.0):
    """A ``GradientSource`` (engine.types): all of the policy the influence selector may read."""
    return SimpleNamespace(model=model, optimizer=optimizer, tokenizer=tok, temperature=temperature,
                           scale_rewards="group")


def test_prefers_the_rollout_whose_gradient_agrees_with_a_labeled_target(tiny_model, tmp_path):
    tok = make_tokenizer()
    model = load(tiny_model, lora=True)
    target = tmp_path / "target.jsonl"
    target.write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n")
    group = group_of(tok, ["75", "2"], [0.0, 1.0])          # first_k would train on the wrong "75"
    aligned = {}
    for loss in ("pg", "nll"):
        sel = InfluenceSelector(target="labeled", labeled_path=str(target), loss=loss, stage="rollouts")
        assert sel.select_batch([group], 1, fake_policy(model, tok)) == [[1]]
        wrong, right = aligned[loss] = sel.last_alignment[0]
        assert right == pytest.approx(1.0, abs=1e-4)          # same sequence as the target: cosine 1
        assert right > wrong
    # The update pushes the negative-advantage rollout down: its PG feature is its NLL one, sign-flipped.
    assert aligned["pg"][0] == pytest.approx(-aligned["nll"][0], abs=1e-5)


def test_max_variance_exact_decisions():
    def grp(rewards):
        return RolloutGroup(make_task(0), [Rollout("", [], None, "stop", reward=r) for r in rewards])

    assert max_variance(grp([1, 1, 0, 0, 1]), 2) == [0, 2]
    assert max_variance(grp([1, 1, 0, 0, 1]), 3) == [0, 1, 2]   # 2 ones + 1 zero ties 1 + 2: lexicographic
    assert max_variance(grp([1, 1, 0, 0, 1]), 4) == [0, 1, 2, 3]
    assert max_variance(grp([1, 1, 1]), 2) == [0, 1]
    assert max_variance(grp([0, 0, 0, 1]), 2) == [0, 3]
    assert max_variance(grp([0.5, 0.0, 1.0, 0.2]), 2) == [1, 2]
    assert max_variance(grp([0.5, 0.0, 1.0, 0.2]), 3) == [1, 2, 3]  # var .187 beats {0,1,2}'s .167
    assert resolve("max_variance", SELECTORS, "selectors") is max_variance
    with pytest.raises(ValueError):
        max_variance(grp([1, 0]), 3)


def test_k_distinct_indices_in_range_for_every_setting(tiny_model, tmp_path):
    tok = make_tokenizer()
    model = load(tiny_model, lora=True)
    rng = random.Random(0)
    groups = [group_of(tok, ["".join(rng.choice("0123456789") for _ in range(rng.randint(1, 5))) for _ in range(6)],
                       [float(rng.random() < 0.5) for _ in range(5)] + [1.0], prompt=f"{i}+{i}=") for i in range(3)]
    groups.append(group_of(tok, ["4"] * 4 + ["5", "6"], [1.0] * 6))   # unanimous: zero advantage
    # Live Adam state, as after a first update: exercises the preconditioned path.
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    sum((p ** 2).sum() for p in params).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    policy = fake_policy(model, tok, optimizer=opt, temperature=0.8)
    settings = [{"precondition": True}, {"target": "leave_one_out"},
                {"target": "agree", "keep": "top_fraction", "fraction": 0.3, "precondition": True},
                {"project_dim": 16}, {"loss": "nll", "max_rows_per_backward": 5}]
    for kwargs in settings:
        sel = resolve({"name": "influence", "stage": "rollouts", **kwargs}, SELECTORS, "selectors")
        for k in (1, 3, 6):
            picks = sel.select_batch(groups, k, policy)
            assert len(picks) == len(groups)
            assert all(len(p) == k and len(set(p)) == k and all(0 <= i < 6 for i in p) for p in picks)
        m = sel.last_metrics
        assert set(m) >= {f"filters/influence/{x}" for x in ("mean_alignment", "kept_fraction", "negative_fraction",
                                                              "filled_fraction", "time_s")}
        assert m["filters/influence/preconditioned"] == float(kwargs.get("precondition", False))
        if kwargs.get("loss", "pg") == "pg":
            assert sel.last_alignment[-1] == [0.0] * 6               # unanimous group: no influence
    assert all(p.grad is None for p in params)                       # the optimizer's grads untouched
    # fill="repeat": only survivors (alignment >= 0) are trained on, repeated to k.
    sel = InfluenceSelector(fill="repeat", stage="rollouts")
    for picks, align in zip(sel.select_batch(groups, 6, policy), sel.last_alignment):
        assert len(picks) == 6 and all(0 <= i < 6 for i in picks)
        if any(a >= 0 for a in align):
            assert all(align[i] >= 0 for i in picks)
    with pytest.raises(TypeError, match="select_batch"):
        sel(groups[0], 2)
    with pytest.raises(ValueError, match="target"):
        InfluenceSelector(target="nope")


# ---- stage "update": per-row gradients from the update's own backward ------------------------------


@pytest.mark.parametrize("lora", [True, False])
def test_per_row_gradients_recorded_in_a_batched_backward_equal_one_row_at_a_time(tiny_model, lora):
    from filters.influence.per_row import LinearGradients

    model = load(tiny_model, lora)
    model.train(False)
    layers = hooked_modules(model, None)
    rows = [([1, 5, 6, 17], [7, 8, 2]), ([1, 9], [10, 11, 12, 13, 14, 2]), ([1, 5, 6, 17, 20, 21], [15])]
    weights = torch.tensor([0.7, -1.3, 2.0])                  # per-row loss coefficients, signs mixed
    from filters.influence.sequence import pad

    ids, attn, pos, C = pad(rows, 0)
    model.zero_grad(set_to_none=True)
    with LinearGradients(layers) as rec:
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, -C - 1:-1]
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, -C:, None])[..., 0]
        mask = attn[:, -C:].float()
        ((logp * mask).sum(1) / mask.sum(1) * weights).sum().backward()
    assert rec.rows() == 3 and rec.recorded == list(range(len(layers)))
    # Both representations: LoRA r=4 layers materialised per row, full 64-wide layers kept as factors.
    assert (bool(rec.dense) and not rec.factors) if lora else (bool(rec.factors) and not rec.dense)
    for j, (_, m) in enumerate(layers):                       # the rows add up to autograd's own .grad
        torch.testing.assert_close(rec.row_gradient(j).sum(0), m.weight.grad, rtol=1e-4, atol=1e-6)
    # Norms, weighted sums and dot products from either representation equal those of the explicit rows.
    from filters.influence.features import DenseFeatures

    js = rec.recorded
    feats, dense = rec.features(js), DenseFeatures([rec.row_gradient(j).flatten(1) for j in js])
    torch.testing.assert_close(feats.sq_norms(), dense.sq_norms(), rtol=1e-4, atol=1e-8)
    w = torch.tensor([0.5, -1.0, 2.0])
    for got, want in zip(feats.weighted_sum(w), dense.weighted_sum(w)):
        torch.testing.assert_close(got.flatten(), want, rtol=1e-4, atol=1e-7)
    t = [torch.randn(m.weight.shape, generator=torch.Generator().manual_seed(j)) for j, (_, m) in enumerate(layers)]
    torch.testing.assert_close(feats.dots(t), dense.dots(t), rtol=1e-4, atol=1e-6)
    for i, (prompt, completion) in enumerate(rows):
        ref = weights[i] * one_at_a_time(model, layers, prompt, completion, 1.0)
        got = torch.cat([rec.row_gradient(j)[i].flatten() for j in range(len(layers))])
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


class GradSpy:
    """Stands where GRPOPolicy.update expects a grad filter; records .grad before and after the filter."""

    def __init__(self, selector):
        self.selector, self.calls = selector, []

    def capture(self, model):
        return self.selector.capture(model)

    def filter_gradients(self, recorded, advantages, weights, policy):
        from filters.influence.step import StepGradients

        rec = StepGradients(list(recorded))
        grads = lambda: [m.weight.grad.clone() for _, m in rec.layers]   # noqa: E731
        before = grads()
        self.selector.filter_gradients(recorded, advantages, weights, policy)
        self.calls.append({"before": before, "after": grads(), "rec": rec, "adv": torch.cat(advantages).cpu(),
                           "weights": torch.cat(weights).cpu(), "keep": self.selector.last_keep.clone(),
                           "alignment": self.selector.last_alignment[0]})

    @property
    def last_metrics(self):
        return self.selector.last_metrics


def run_filtered_updates(tiny_model, tiny_data, tmp_path, *, lora=True, precondition=False, accumulation=1,
                         loss_type="dapo"):
    """Two real TRL updates with the influence selector's update stage spied on; returns (spy, metrics)."""
    from engine.cli.build import build
    from engine.config.options import parse_config
    from engine.update import Batch

    cfg = parse_config(["--model", str(tiny_model), "--data", str(tiny_data), "--template", "{question}",
                        "--n_votes", "4", "--n_train", "4", "--prompts_per_step", "4", "--lora", str(lora).lower(),
                        "--gradient_accumulation_steps", str(accumulation), "--output_dir", str(tmp_path / "o"),
                        "--progress", "false", "--max_completion_length", "6", "--learning_rate", "0.01",
                        "--loss_type", loss_type])
    torch.manual_seed(0)
    _, tasks, policy, _ = build(cfg)
    tok = policy.tokenizer
    # Two groups push "12" up and "7"/"305" down; a third, on the same prompt, pushes the other way: its
    # rows point against the batch's gradient. The fourth is unanimous (zero advantage).
    texts, q = ["12", "7", "12", "305"], tasks[0].question
    groups = [group_of(tok, texts, [1.0, 0.0, 1.0, 0.0], prompt=q), group_of(tok, texts, [1.0, 0.0, 1.0, 0.0], prompt=q),
              group_of(tok, texts, [0.0, 1.0, 0.0, 1.0], prompt=q),
              group_of(tok, ["9", "9", "9", "9"], [1.0] * 4, prompt=tasks[2].question)]
    sel = InfluenceSelector(precondition=precondition)
    picks = sel.select_batch(groups, 4, policy)
    assert picks == [[0, 1, 2, 3]] * 4 and sel.grad_filter is sel
    spy = GradSpy(sel)
    for _ in range(2):                              # the second update has Adam state to precondition with
        sel.select_batch(groups, 4, policy)
        metrics = policy.update(Batch.from_groups(groups, picks), grad_filter=spy)
    return spy, metrics


@pytest.mark.parametrize("lora, precondition", [(True, False), (False, False), (True, True)])
def test_update_stage_takes_dropped_rows_out_of_trls_gradient(tiny_model, tiny_data, tmp_path, lora, precondition):
    """Through the real TRL update: the recorded rows sum to TRL's .grad, and after the filter .grad is the
    kept rows' sum rescaled to their own normaliser (dapo: completion tokens); rows of negative alignment
    are the dropped ones, zero-advantage rows stay."""
    spy, metrics = run_filtered_updates(tiny_model, tiny_data, tmp_path, lora=lora, precondition=precondition)
    assert len(spy.calls) == 2
    for n, call in enumerate(spy.calls):
        rec, keep, a, w = call["rec"], call["keep"], torch.tensor(call["alignment"]), call["weights"]
        active = call["adv"] != 0
        assert int(active.sum()) == 12                               # the unanimous group has no advantage
        assert keep[~active].all()
        assert torch.equal(keep[active], a[active] >= 0)
        if n == 0:
            assert int((~keep).sum()) >= 4, "the contrary group's rows point against the batch; they are dropped"
        scale = float(w.sum() / w[keep].sum())
        assert w.min() >= 1 and (scale > 1) == bool((~keep).any())            # tokens per row
        for j in range(len(rec.layers)):
            torch.testing.assert_close(call["before"][j], rec.row_gradient(j).sum(0), rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(call["after"][j], scale * rec.row_gradient(j)[keep].sum(0), rtol=1e-4, atol=1e-6)
    assert lora or spy.calls[0]["rec"].factors       # full layers over short rows are kept as factors
    m = {k.split("/")[-1]: v for k, v in metrics.items() if k.startswith("filters/influence/")}
    assert m["kept_fraction"] == pytest.approx(float(keep[active].float().mean()))
    assert m["preconditioned"] == float(precondition)
    assert m["zero_advantage_fraction"] == pytest.approx(4 / 16)
    assert m["normaliser_scale"] == pytest.approx(scale)                     # the last update's step
    if lora:
        assert m["unfiltered_param_fraction"] == 0.0
    else:   # full fine-tuning: norms and the tied embedding are not Linear layers, reported as unfiltered
        assert 0 < m["unfiltered_param_fraction"] < 0.1


def test_update_stage_scores_the_whole_step_under_gradient_accumulation(tiny_model, tiny_data, tmp_path):
    """Issue 17 part 4 (1): with gradient_accumulation_steps=2 TRL runs two shuffled micro-batches per
    optimizer step; the filter sees both at once, and the target is the whole step's gradient."""
    from filters.influence.targets import cosines

    spy, _ = run_filtered_updates(tiny_model, tiny_data, tmp_path, accumulation=2, loss_type="grpo")
    assert len(spy.calls) == 2                                   # once per optimizer step, not per micro-batch
    for call in spy.calls:
        rec = call["rec"]
        assert [p.rows() for p in rec.parts] == [8, 8] and rec.rows() == 16
        js = rec.recorded
        step_sum = [rec.row_gradient(j).sum(0) for j in js]      # every row of both micro-batches
        for got, want in zip(call["before"], step_sum):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
        want = cosines(rec.features(js), "batch_mean", step_sum)
        torch.testing.assert_close(torch.tensor(call["alignment"]), want, rtol=1e-4, atol=1e-6)
        assert torch.equal(call["weights"], torch.ones(16))          # grpo averages rows: each counts once
        keep = call["keep"]
        for j, got in zip(js, call["after"]):
            torch.testing.assert_close(got, 16 / int(keep.sum()) * rec.row_gradient(j)[keep].sum(0),
                                       rtol=1e-4, atol=1e-6)


def linear_micro_batch(layer, xs, coefs, n_rows):
    """One micro-batch's backward through ``layer`` with per-row gradients recorded: row b's loss is
    ``coefs[b] * layer(x_b) / n_rows`` (a mean over the step's rows, as TRL's grpo loss / GA is)."""
    from filters.influence.per_row import LinearGradients

    with LinearGradients([("lin", layer)]) as rec:
        y = layer(torch.tensor(xs)[:, None, :])                                     # (B, 1, 1)
        (y[:, 0, 0] * torch.tensor(coefs)).sum().div(n_rows).backward()
    return rec


def test_a_row_that_agrees_with_its_micro_batch_but_not_with_the_step_is_dropped_and_leaves_the_normaliser():
    """Issue 17 part 4, both questions by hand. Micro-batch 1 holds rows a, b = (1, 0); micro-batch 2 rows
    c, d = (-3, 1). The step's gradient (sum/4) points along (-4, 2): a and b oppose it (though they agree
    with their own micro-batch's (2, 0), the old target) and are dropped. Removed, not zeroed: the update
    is then the mean gradient of the kept rows c, d — what TRL computes on a batch of c and d alone — not
    their sum over the original 4 rows (half of it)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(2, 1, bias=False)
    parts = [linear_micro_batch(layer, [[1.0, 0.0], [1.0, 0.0]], [1.0, 1.0], 4),
             linear_micro_batch(layer, [[-3.0, 1.0], [-3.0, 1.0]], [1.0, 1.0], 4)]
    sel = InfluenceSelector()
    sel.select_batch([], 1, None)
    sel.filter_gradients(parts, [torch.ones(2), torch.ones(2)], [torch.ones(2), torch.ones(2)],
                         fake_policy(layer, None))
    assert sel.last_keep.tolist() == [False, False, True, True]
    assert sel.last_metrics["filters/influence/normaliser_scale"] == 2.0
    torch.testing.assert_close(layer.weight.grad, torch.tensor([[-3.0, 1.0]]))      # mean of c and d
    # A row's share of the normaliser is what TRL divides by: with token weights (1, 1, 3, 1), dropping
    # a and b leaves 4 of 6 tokens, so the kept rows' gradient is scaled by 6/4.
    layer.weight.grad = None
    parts = [linear_micro_batch(layer, [[1.0, 0.0], [1.0, 0.0]], [1.0, 1.0], 6),
             linear_micro_batch(layer, [[-3.0, 1.0], [-3.0, 1.0]], [3.0, 1.0], 6)]
    sel.select_batch([], 1, None)
    sel.filter_gradients(parts, [torch.ones(2), torch.ones(2)], [torch.ones(2), torch.tensor([3.0, 1.0])],
                         fake_policy(layer, None))
    assert sel.last_keep.tolist() == [False, False, True, True]
    torch.testing.assert_close(layer.weight.grad, torch.tensor([[-3.0, 1.0]]) * 4 / 4)  # (3+1)/6 * 6/4 of (-3, 1)


def test_filters_and_the_influence_selector_compose_in_one_run(tiny_model, tiny_data, tmp_path):
    """The issue's composition, through `ttrl run` on a YAML config, as a user writes it."""
    import os
    import subprocess
    import sys

    import yaml

    config = tmp_path / "composed.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(tiny_model), "data": str(tiny_data), "template": "{question}", "n_votes": 6, "n_train": 3,
        "prompts_per_step": 2, "episodes": 2, "max_completion_length": 6, "eval_k": 2, "progress": False,
        "learning_rate": 0.01, "output_dir": str(tmp_path / "run"),
        "filters": ["zero_variance", {"name": "consensus", "low": 0.3, "mode": "monitor"}, "history_skip"],
        "selector": {"name": "influence", "pool": "max_variance"},
    }))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "engine.cli.main", "run", str(config)], capture_output=True,
                            text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if not r["update/skipped"]]
    assert trained, "some step must have trained"
    for r in trained:
        assert 0 <= r["filters/influence/kept_fraction"] <= 1 and r["filters/influence/time_s"] > 0
        assert r["filters/influence/unfiltered_param_fraction"] == 0.0          # LoRA: every row filtered exactly
    sampled = [r for r in rows if r["prompts/sampled"]]
    assert all(r["filters/consensus/checked"] == r["filters/zero_variance/checked"] for r in sampled)
    assert all("filters/history_skip/p" in r for r in rows)
