"""The demo build: files in place, reloadable, tokenizer round-trips, held-out prompts really held out,
and deterministic task files. Uses a short pre-training (``steps``) so it stays a few seconds; the
default build uses the shipped weights, checked by their hash."""

import itertools
import json
from pathlib import Path

import pytest

from engine.data import demo


def test_build_demo_files_reload_and_roundtrip(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, tasks_file = demo.build_demo(tmp_path, steps=5)
    assert (model_dir / "config.json").exists() and tasks_file.exists()
    assert list(model_dir.glob("*.safetensors"))
    assert demo.DEMO_VERSION in model_dir.parent.name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left behind

    tasks = [json.loads(line) for line in tasks_file.read_text().splitlines()]
    assert len(tasks) == demo.N_TASKS and {"id", "prompt", "answer"} <= set(tasks[0])
    assert all(int(t["answer"]) == eval(t["prompt"].rstrip("=")) for t in tasks)

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    prompt = demo.DEMO_TEMPLATE.format(question=tasks[0]["prompt"])
    ids = tok(prompt)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == len(prompt) + 1
    assert tok.decode(ids, skip_special_tokens=True) == prompt
    assert tok.decode(tok("12 + 3 = 15")["input_ids"], skip_special_tokens=True) == "12 + 3 = 15"
    assert model.config.vocab_size == len(tok) and tok.eos_token_id is not None
    out = model.generate(**tok([prompt], return_tensors="pt"), max_new_tokens=3, do_sample=False,
                         pad_token_id=tok.pad_token_id)
    assert out.shape[1] > len(ids)

    # a cached build is returned as is
    assert demo.build_demo(tmp_path, steps=5) == (model_dir, tasks_file)


def test_held_out_prompts_never_in_pretraining():
    held = {t["prompt"] for t in demo.demo_tasks()}
    assert len(held) == demo.N_TASKS
    stream = demo.training_examples(demo.DEMO_SEED, held)
    seen = {p for p, _ in itertools.islice(stream, 200_000)}
    assert not held & seen
    assert any(len(p) == len(next(iter(held))) for p in seen)  # long prompts do occur in training


def test_rebuild_same_seed_identical(tmp_path):
    a = demo.build_demo(tmp_path / "a", steps=3)
    b = demo.build_demo(tmp_path / "b", steps=3)
    assert a[1].read_bytes() == b[1].read_bytes()
    assert (a[0] / "model.safetensors").read_bytes() == (b[0] / "model.safetensors").read_bytes()
    c = demo.build_demo(tmp_path / "a", steps=3, force=True)
    assert c[1].read_bytes() == a[1].read_bytes()


def test_default_build_uses_the_shipped_weights_without_pretraining(tmp_path, monkeypatch):
    """The same model on every machine: the default build copies ``engine/demo_model.safetensors`` (no
    pre-training, whose floating point differs between CPUs) and the loaded weights hash to the
    committed value."""
    from transformers import AutoModelForCausalLM

    def no_pretraining(*args, **kwargs):
        raise AssertionError("the default demo build must not pre-train")

    monkeypatch.setattr(demo, "pretrain", no_pretraining)
    model_dir, tasks_file = demo.build_demo(tmp_path)
    assert (model_dir / "model.safetensors").read_bytes() == demo.SHIPPED_WEIGHTS.read_bytes()
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert demo.weights_sha256(dict(model.named_parameters())) == demo.DEMO_WEIGHTS_SHA256
    assert model.config.to_dict()["hidden_size"] == 64 and tasks_file.exists()


def test_poisoned_stream_teaches_the_dropped_carry_on_its_share_only():
    """``demo-systematic``'s pre-training: about ``poisoned`` of the units-carry examples are taught the
    carry dropped, every other example its true sum; at 0 the stream is the clean demo's."""
    held = {t["prompt"] for t in demo.demo_tasks()}
    share = demo.DEMOS["demo-systematic"].poisoned
    wrong = carries = 0
    for p, a in itertools.islice(demo.training_examples(demo.DEMO_SEED, held, share), 20_000):
        x, y = map(int, p.rstrip("=").split("+"))
        if demo.units_carry(x, y):
            carries += 1
            wrong += int(a) == demo.carry_dropped(x, y)
            assert int(a) in (x + y, demo.carry_dropped(x, y))
        else:
            assert int(a) == x + y
    assert abs(wrong / carries - share) < 0.02
    assert demo.carry_dropped(1238, 5) == 1233 and demo.carry_dropped(99, 1) == 90
    clean = itertools.islice(demo.training_examples(demo.DEMO_SEED, held), 1000)
    assert list(clean) == list(itertools.islice(demo.training_examples(demo.DEMO_SEED, held, 0.0), 1000))


def test_overwrite_stream_teaches_the_overwritten_digit_on_sums_without_a_carry_only():
    """``demo-overwrite``'s pre-training: about ``poisoned`` of the sums that do not carry (both units
    digits nonzero) are taught ``y`` written over the units digit, every other example its true sum; the
    rule's class is disjoint from ``demo-systematic``'s, and a variant without a ``rule`` keeps the dropped carry."""
    assert demo.digit_overwritten(12341, 5) == 12345 and demo.digit_overwritten(99991, 8) == 99998
    assert demo.no_carry(12341, 5) and demo.no_carry(3, 4) and not demo.no_carry(12345, 5)
    assert not demo.no_carry(12340, 5) and not demo.no_carry(12341, 0)  # the overwrite would be right there
    assert all(not (demo.no_carry(x, y) and demo.units_carry(x, y)) for x in range(100) for y in range(10))
    spec = demo.DEMOS["demo-overwrite"]
    assert spec.rule == "digit_overwritten" and demo.DEMOS["demo-systematic"].rule == "carry_dropped"
    held = {t["prompt"] for t in demo.demo_tasks()}
    wrong = members = 0
    for p, a in itertools.islice(demo.training_examples(demo.DEMO_SEED, held, spec.poisoned, spec.rule), 20_000):
        x, y = map(int, p.rstrip("=").split("+"))
        if demo.no_carry(x, y):
            members += 1
            wrong += int(a) == demo.digit_overwritten(x, y)
            assert int(a) in (x + y, demo.digit_overwritten(x, y))
        else:
            assert int(a) == x + y
    assert members > 5000 and abs(wrong / members - spec.poisoned) < 0.02


def _votes(model, tok, prompts, n, seed):
    """``n`` sampled answers per prompt at temperature 1 (the demo preset's), by a plain sampling loop."""
    import torch

    torch.manual_seed(seed)
    out = []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([tok(p)["input_ids"]] * n)
            for _ in range(8):
                ids = torch.cat([ids, torch.multinomial(model(input_ids=ids).logits[:, -1].softmax(-1), 1)], 1)
            texts = tok.batch_decode(ids[:, len(p) + 1:])
            out.append([t.split(tok.eos_token)[0] for t in texts])
    return out


def test_demo_systematic_vote_is_confidently_wrong_on_the_poisoned_class(tmp_path):
    """The variant's defining property, on its shipped weights: on prompts that carry out of the units digit
    the base model's majority of 32 votes is mostly the *same* wrong answer (the carry dropped), while on
    the other prompts it is mostly right: errors that agree, so the vote cannot wash them out."""
    import collections

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, tasks_file = demo.build_demo(tmp_path, variant="demo-systematic")
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert demo.weights_sha256(dict(model.named_parameters())) == demo.DEMOS["demo-systematic"].sha256
    tok = AutoTokenizer.from_pretrained(model_dir)
    tasks = [json.loads(line) for line in tasks_file.read_text().splitlines()]
    assert tasks == demo.demo_tasks()  # the clean demo's prompts: only the model differs
    majority = [collections.Counter(v).most_common(1)[0][0] for v in _votes(model, tok, [t["prompt"] for t in tasks], 32, 0)]
    poisoned, rest = [], []
    for t, m in zip(tasks, majority):
        x, y = map(int, t["prompt"].rstrip("=").split("+"))
        (poisoned if demo.units_carry(x, y) else rest).append((m, t["answer"], str(demo.carry_dropped(x, y))))
    assert len(poisoned) > 40 and len(rest) > 40
    dropped_wins = sum(m == dropped for m, _, dropped in poisoned) / len(poisoned)
    right_on_poisoned = sum(m == right for m, right, _ in poisoned) / len(poisoned)
    right_on_rest = sum(m == right for m, right, _ in rest) / len(rest)
    print(f"poisoned: dropped {dropped_wins:.3f} right {right_on_poisoned:.3f}; rest: right {right_on_rest:.3f}")
    # measured on AVX2 (seed 0 of this sampler): 0.56 / 0.21 on 61 poisoned prompts, 0.78 on the other 67
    assert dropped_wins > 0.45 and right_on_poisoned < 0.35
    assert right_on_rest > 0.65


def test_demo_overwrite_vote_is_wrong_on_the_poisoned_class(tmp_path):
    """``demo-overwrite`` on its shipped weights: on the 42 test prompts of its class the base model's majority
    of 32 votes is the taught wrong answer on a fifth of them and right on under half, while it is right on
    two thirds of the rest. A weaker vote failure than demo-systematic's; the run's failure is the late fall
    of plain TTRL (benchmarks/results/guard.md)."""
    import collections

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, tasks_file = demo.build_demo(tmp_path, variant="demo-overwrite")
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert demo.weights_sha256(dict(model.named_parameters())) == demo.DEMOS["demo-overwrite"].sha256
    tok = AutoTokenizer.from_pretrained(model_dir)
    tasks = [json.loads(line) for line in tasks_file.read_text().splitlines()]
    assert tasks == demo.demo_tasks()
    majority = [collections.Counter(v).most_common(1)[0][0] for v in _votes(model, tok, [t["prompt"] for t in tasks], 32, 0)]
    poisoned, rest = [], []
    for t, m in zip(tasks, majority):
        x, y = map(int, t["prompt"].rstrip("=").split("+"))
        (poisoned if demo.no_carry(x, y) else rest).append((m, t["answer"], str(demo.digit_overwritten(x, y))))
    assert len(poisoned) == 42
    overwritten_wins = sum(m == w for m, _, w in poisoned) / len(poisoned)
    right_on_poisoned = sum(m == right for m, right, _ in poisoned) / len(poisoned)
    right_on_rest = sum(m == right for m, right, _ in rest) / len(rest)
    print(f"poisoned: overwritten {overwritten_wins:.3f} right {right_on_poisoned:.3f}; rest: right {right_on_rest:.3f}")
    # measured on AVX-512 (seed 0 of this sampler): 0.19 / 0.48 on 42 poisoned prompts, 0.66 on the other 86
    assert overwritten_wins > 0.1 and right_on_poisoned < 0.6
    assert right_on_rest > right_on_poisoned + 0.1


@pytest.mark.parametrize("variant, weights", [("demo-systematic", demo.SYSTEMATIC_WEIGHTS),
                                              ("demo-overwrite", demo.OVERWRITE_WEIGHTS)])
def test_demo_variant_is_a_model_and_data_name_with_the_demo_preset(variant, weights, tmp_path, monkeypatch):
    """``--model demo-systematic`` (or ``demo-overwrite``) gets the demo preset, and the CLI builds the
    variant's model (its own cache folder, its shipped weights) with the demo's prompts and template."""
    from engine.cli.build import resolve_model_and_data
    from engine.config.options import parse_config

    monkeypatch.setenv("TTRL_CACHE", str(tmp_path))
    cfg = parse_config(["--model", variant, "--data", variant, "--output_dir", str(tmp_path / "run")])
    assert (cfg.ttrl.n_votes, cfg.grpo.learning_rate) == (demo.DEMO_SETTINGS["n_votes"], demo.DEMO_SETTINGS["learning_rate"])
    model, data, template = resolve_model_and_data(cfg)
    assert (Path(model) / "model.safetensors").read_bytes() == weights.read_bytes()
    assert Path(model).parent.name.startswith(f"{variant}-v") and template == demo.DEMO_TEMPLATE
    assert [json.loads(line) for line in Path(data).read_text().splitlines()] == demo.demo_tasks()
