"""The demo build: files in place, reloadable, tokenizer round-trips, held-out prompts really held out,
and deterministic task files. Uses a short pre-training (``steps``) so it stays a few seconds; the
default build uses the shipped weights, checked by their hash."""

import itertools
import json

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
