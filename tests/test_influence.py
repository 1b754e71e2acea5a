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
    return SimpleNamespace(model=model, trainer=SimpleNamespace(optimizer=optimizer, processing_class=tok),
                           args=SimpleNamespace(temperature=temperature, scale_rewards="group"))


def test_prefers_the_rollout_whose_gradient_agrees_with_a_labeled_target(tiny_model, tmp_path):
    tok = make_tokenizer()
    model = load(tiny_model, lora=True)
    target = tmp_path / "target.jsonl"
    target.write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n")
    group = group_of(tok, ["75", "2"], [0.0, 1.0])          # first_k would train on the wrong "75"
    aligned = {}
    for loss in ("pg", "nll"):
        sel = InfluenceSelector(target="labeled", labeled_path=str(target), loss=loss)
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
    settings = [{}, {"target": "leave_one_out"}, {"target": "agree", "keep": "top_fraction", "fraction": 0.3},
                {"project_dim": 16, "precondition": False}, {"loss": "nll", "max_rows_per_backward": 5}]
    for kwargs in settings:
        sel = resolve({"name": "influence", **kwargs}, SELECTORS, "selectors")
        for k in (1, 3, 6):
            picks = sel.select_batch(groups, k, policy)
            assert len(picks) == len(groups)
            assert all(len(p) == k and len(set(p)) == k and all(0 <= i < 6 for i in p) for p in picks)
        m = sel.last_metrics
        assert set(m) >= {f"filters/influence/{x}" for x in ("mean_alignment", "kept_fraction", "negative_fraction",
                                                              "filled_fraction", "time_s")}
        assert m["filters/influence/preconditioned"] == float(kwargs.get("precondition", True))
        if kwargs.get("loss", "pg") == "pg":
            assert sel.last_alignment[-1] == [0.0] * 6               # unanimous group: no influence
    assert all(p.grad is None for p in params)                       # the optimizer's grads untouched
    # fill="repeat": only survivors (alignment >= 0) are trained on, repeated to k.
    sel = InfluenceSelector(fill="repeat")
    for picks, align in zip(sel.select_batch(groups, 6, policy), sel.last_alignment):
        assert len(picks) == 6 and all(0 <= i < 6 for i in picks)
        if any(a >= 0 for a in align):
            assert all(align[i] >= 0 for i in picks)
    with pytest.raises(TypeError, match="select_batch"):
        sel(groups[0], 2)
    with pytest.raises(ValueError, match="target"):
        InfluenceSelector(target="nope")
