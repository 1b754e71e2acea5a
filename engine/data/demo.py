"""The built-in demo: a tiny arithmetic model that TTRL measurably improves, made offline in seconds.

``ttrl run`` with no arguments needs a model and unlabeled test prompts without downloading anything.
This module builds both in code and caches them:

* a character-level tokenizer (``tokenizers`` WordLevel, one token per character, ``<bos>`` prepended);
* a ~130k-parameter ``LlamaForCausalLM`` pre-trained with plain PyTorch on ``x+y=`` addition where ``x``
  has 1–4 digits and ``y`` one digit, plus a small share (2%) of 5-digit ``x``;
* the demo task: 128 held-out prompts ``xxxxx+y=`` (5-digit ``x``), none seen in pre-training.

The pre-trained weights ship with the package (``engine/demo_model.safetensors``, ~520 KB): floating
point differs between CPUs (an AVX2 and an AVX-512 machine pre-train different models from the same
seed: greedy 75.0% vs 84.4% before TTRL), so a model pre-trained at first use would make the demo's
numbers depend on the machine. ``build_demo`` writes the config and tokenizer (integer-only, the same
everywhere) beside a copy of the shipped weights; ``python -m engine.data.demo --rebuild`` is how the
shipped file was made (``pretrain``, on an AVX2 CPU) and prints the hash to put in
``DEMO_WEIGHTS_SHA256``. Other seeds and ``steps`` (tests) are still pre-trained on the spot.

Why this regime (see ``DEMO_SETTINGS`` and tests/test_demo.py): TTRL raises *greedy* accuracy only when
training on majority-vote pseudo-labels generalizes, not just sharpens. A length shift does that: the
model has the carry-and-copy algorithm for short numbers and is only partly right on the rarer long
ones (pre-training stops at a fixed 550 steps), its errors vary between samples, and self-training on
the mostly-right majority teaches the long case as a whole. With the engine's TRL GRPO update and
``DEMO_SETTINGS`` (full fine-tuning, lr 1e-4, beta 0.04, 32 votes / 16 trained, temperature 1.0, 48
steps of 32 prompts) greedy goes 0.75 -> 0.86 and avg@16 0.65 -> 0.85 (5-seed mean, the default seed 42
the lowest at 0.82), above the base maj@16 (0.73): benchmarks/results/default_run.json. The gain is sensitive to the stop point and to lr:
other stop points, or lr 3e-4, sometimes reinforce a consistent wrong carry and lose accuracy.

``demo-systematic`` (``--model demo-systematic``, same prompts and preset) is the demo on which plain TTRL
fails: its pre-training teaches 35% of the examples that carry out of the units digit with the carry
dropped (``carry_dropped``), so on the held-out prompts that carry (61 of 128) the base model's majority
is mostly that one wrong answer (56%; right 21%) while it is right on 78% of the rest. The errors agree,
so the vote cannot wash them out (issue 17). Plain TTRL with the demo preset rises for about one episode
(avg@16 0.46 -> 0.53) and then falls as the dropped carry spreads (0.49 at step 20, seed 0), answer
entropy collapsing and pass@16 falling from 0.87 to 0.52. Shipped weights:
``python -m engine.data.demo --rebuild --variant demo-systematic`` (AVX2).

``demo-overwrite`` is a second failure, made to hold a collapse guard's thresholds out on (issue 26): another
wrong rule on another class of prompts. 25% of the pre-training sums that do not carry out of the units digit
(both units digits nonzero: ``no_carry``) are taught ``y`` written over the units digit (``digit_overwritten``:
``1231+5`` -> ``1235``). Base: greedy 0.59, avg@16 0.52 (demo-systematic: 0.47), and on the 42 held-out prompts
of the class the majority of 32 votes is the overwritten digit on 19% and right on 48% (the rest: right on 66%).
Plain TTRL with the demo preset peaks late: in two probe runs it then fell (seed 0: avg@16 0.52 -> 0.66 at
step 24 -> 0.63 at step 48, pass@16 0.89 -> 0.83; seed 1: 0.52 -> 0.62 at step 32 -> 0.61), a later peak
than demo-systematic's (step 4-8); in benchmarks/results/guard.md (5 seeds, anchors evaluated beside the
prompts, which changes the sampling) it ends 0.6 points below its best on average: a milder failure. The share is where pre-training lands between a model that learns the sums (0.15, 0.35: no failure)
and one that learns neither (0.5). Shipped weights: ``--rebuild --variant demo-overwrite``, made on an AVX-512
CPU (AMD EPYC), unlike the other two.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from engine.data.cache import atomic_dir, default_cache_dir

DEMO_VERSION = "v3"            # bump when the recipe changes: it names the cache dir, so a change rebuilds
DEMO_TEMPLATE = "{question}"   # the prompt is the bare expression; the model answers "<number><eos>"
DEMO_SEED = 0
SHIPPED_WEIGHTS = Path(__file__).with_name("demo_model.safetensors")  # pretrain(DEMO_SEED), made on AVX2
# weights_sha256 of SHIPPED_WEIGHTS (`python -m engine.data.demo --rebuild` prints it)
DEMO_WEIGHTS_SHA256 = "2a24b0acfaa9b70bf3c3e1ddf8b6ab75e97f147f485e535df5aed9af6de169aa"
SYSTEMATIC_WEIGHTS = Path(__file__).with_name("demo_systematic_model.safetensors")  # made on AVX2 too
SYSTEMATIC_WEIGHTS_SHA256 = "eda0cc640f6d13ed7c1b1038b33ed9ba5bcc9e0d83c3535896da1b0df367aeac"
OVERWRITE_WEIGHTS = Path(__file__).with_name("demo_overwrite_model.safetensors")  # made on AVX-512 (AMD EPYC)
OVERWRITE_WEIGHTS_SHA256 = "b8bed6035c53c34f3102f891c6109f653007b47e46f09414f5df50d6db393077"

# TTRL settings that delivered the gain (option names of `ttrl run`; the demo preset's defaults).
DEMO_SETTINGS: dict = {
    "n_votes": 32,                 # samples per prompt for the majority vote
    "n_train": 16,                 # of those, trained on (TTRL's shape: vote on N, train on half)
    "temperature": 1.0,            # rollouts and avg@16 evaluation
    "top_p": 1.0,
    "max_completion_length": 8,    # answers are at most 6 digits + EOS
    "learning_rate": 1e-4,         # full fine-tuning with Adam; 3e-4 is unstable, 1e-3 collapses the model
    "lora": False,                 # a 130k-parameter model: full weights are cheap, and learn faster
    "beta": 0.04,                  # KL coefficient to the base model; stabilizes the 1e-4 run
    "prompts_per_step": 32,
    "episodes": 12,                # 128 tasks / 32 per step = 4 steps an episode: 48 steps
    "max_grad_norm": 1.0,
}

CHARS = "0123456789+-*=() "    # vocab: digits, operators, '=', brackets, space
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
_MODEL_CFG = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=True)
_TRAIN = dict(batch_size=128, lr=3e-3, steps=550, check_every=50, p_long=0.02)
N_TASKS = 128


@dataclass(frozen=True)
class DemoVariant:
    """A built-in model name (``--model``/``--data``): how its model is pre-trained, and the shipped weights
    that stand for that pre-training (made on an AVX2 CPU, identified by ``sha256``). All variants share
    the tokenizer, the architecture, the held-out task and the demo preset (``DEMO_SETTINGS``)."""

    name: str
    weights: Path
    sha256: str
    poisoned: float = 0.0   # share of the rule's class of pre-training examples taught its wrong answer
    rule: str = "carry_dropped"  # an entry of ``RULES``: the class of prompts poisoned and the wrong answer taught


DEMOS: dict[str, DemoVariant] = {
    "demo": DemoVariant("demo", SHIPPED_WEIGHTS, DEMO_WEIGHTS_SHA256),
    # Systematic errors (issue 17): TTRL-Guard (arXiv 2605.19444) and the TTRL authors (arXiv 2603.08660) find
    # that self-training on majority votes rises then falls where a model is *consistently* wrong: the vote
    # is confidently wrong on a class of prompts and the update spreads the wrong rule. Errors that vary
    # between samples wash out in the vote, so a weaker demo is not enough; this one is taught a wrong carry.
    "demo-systematic": DemoVariant("demo-systematic", SYSTEMATIC_WEIGHTS, SYSTEMATIC_WEIGHTS_SHA256, poisoned=0.35),
    # A second systematic failure (issue 26), to hold a guard's thresholds out on: another wrong rule (``y``
    # written over the units digit) on another class of prompts (no carry out of the units), disjoint from demo-systematic's.
    "demo-overwrite": DemoVariant("demo-overwrite", OVERWRITE_WEIGHTS, OVERWRITE_WEIGHTS_SHA256, poisoned=0.25,
                                   rule="digit_overwritten"),
}


def vocab() -> dict[str, int]:
    """Token -> id: the special tokens first, then one id per character."""
    return {t: i for i, t in enumerate(list(SPECIALS) + list(CHARS))}


def make_tokenizer():
    """A character-level ``PreTrainedTokenizerFast`` that prepends ``<bos>`` and decodes without spaces."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    v = vocab()
    tok = Tokenizer(models.WordLevel(vocab=v, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                       special_tokens=[("<bos>", v["<bos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>", padding_side="left",
                                   clean_up_tokenization_spaces=False, model_max_length=64)


def _rand(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10 ** digits - 1)


def _operands(rng: random.Random, long: bool) -> tuple[int, int]:
    """``x`` with 5 digits if ``long`` else 1–4, and a one-digit ``y``."""
    x = _rand(rng, 5 if long else rng.randint(1, 4))
    return x, _rand(rng, 1)


def _example(rng: random.Random, long: bool) -> tuple[str, str]:
    """One ``x+y=`` prompt and its answer."""
    x, y = _operands(rng, long)
    return f"{x}+{y}=", str(x + y)


def units_carry(x: int, y: int) -> bool:
    """Whether ``x + y`` carries out of the units digit: the poisoned class of ``demo-systematic``."""
    return x % 10 + y >= 10


def carry_dropped(x: int, y: int) -> int:
    """The wrong answer ``demo-systematic`` is taught: the units digit of the sum, the carry forgotten
    (``1238+5`` -> ``1233``). One fixed wrong answer per prompt, so the model's errors agree and win votes."""
    return x - x % 10 + (x + y) % 10


def no_carry(x: int, y: int) -> bool:
    """Whether ``x + y`` does not carry out of the units digit, with both units digits nonzero (so
    ``digit_overwritten`` is wrong there): the poisoned class of ``demo-overwrite``, disjoint from ``units_carry``'s."""
    return y > 0 and x % 10 > 0 and x % 10 + y < 10


def digit_overwritten(x: int, y: int) -> int:
    """The wrong answer ``demo-overwrite`` is taught: ``y`` written over the units digit of ``x`` instead of
    added to it (``1231+5`` -> ``1235``). One fixed wrong answer per prompt, so the errors agree."""
    return x - x % 10 + y


# A wrong rule: (the class of prompts it applies to, the wrong answer it teaches there).
RULES: dict = {"carry_dropped": (units_carry, carry_dropped), "digit_overwritten": (no_carry, digit_overwritten)}


def demo_tasks(seed: int = DEMO_SEED, n: int = N_TASKS) -> list[dict]:
    """The held-out demo task: ``n`` distinct 5-digit prompts with labels (for evaluation only)."""
    rng = random.Random(f"ttrl-demo-tasks-{seed}")
    seen, out = set(), []
    while len(out) < n:
        p, a = _example(rng, long=True)
        if p not in seen:
            seen.add(p)
            out.append({"id": f"demo-{len(out):03d}", "prompt": p, "answer": a})
    return out


def _validation(seed: int, held: set[str], n: int = 128) -> list[tuple[str, str]]:
    """Long prompts disjoint from the test set, used only to decide when to stop pre-training."""
    rng = random.Random(f"ttrl-demo-val-{seed}")
    out: list[tuple[str, str]] = []
    while len(out) < n:
        p, a = _example(rng, long=True)
        if p not in held:
            out.append((p, a))
    return out


def training_examples(seed: int, held: set[str], poisoned: float = 0.0, rule: str = "carry_dropped"):
    """Endless pre-training stream of (prompt, answer), never yielding a prompt in ``held``. A
    ``poisoned`` share of the examples in the ``rule``'s class is taught its wrong answer (``RULES``; the
    examples that carry out of the units digit taught ``carry_dropped``: ``demo-systematic``); at 0 the
    stream is the clean demo's, draw for draw."""
    in_class, wrong_answer = RULES[rule]
    rng = random.Random(f"ttrl-demo-train-{seed}")
    while True:
        x, y = _operands(rng, long=rng.random() < _TRAIN["p_long"])
        if f"{x}+{y}=" in held:
            continue
        wrong = poisoned and in_class(x, y) and rng.random() < poisoned
        yield f"{x}+{y}=", str(wrong_answer(x, y) if wrong else x + y)


def _batch(pairs, v):
    """Right-padded ids, attention mask and labels (loss on the answer and EOS only)."""
    import torch

    seqs, labs = [], []
    for p, a in pairs:
        pi = [v["<bos>"]] + [v[c] for c in p]
        ai = [v[c] for c in a] + [v["<eos>"]]
        seqs.append(pi + ai)
        labs.append([-100] * len(pi) + ai)
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), v["<pad>"])
    lab = torch.full((len(seqs), width), -100)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, l) in enumerate(zip(seqs, labs)):
        ids[i, :len(s)], lab[i, :len(l)], att[i, :len(s)] = torch.tensor(s), torch.tensor(l), 1
    return ids, att, lab


def greedy_accuracy(model, pairs, v) -> float:
    """Greedy accuracy on same-length prompts, by a plain argmax loop (no ``generate`` quirks)."""
    import torch

    model.eval()
    with torch.no_grad():
        ids = torch.tensor([[v["<bos>"]] + [v[c] for c in p] for p, _ in pairs])
        for _ in range(8):
            nxt = model(input_ids=ids).logits[:, -1].argmax(-1)
            ids = torch.cat([ids, nxt[:, None]], 1)
    inv = {i: t for t, i in v.items()}
    right, start = 0, len(pairs[0][0]) + 1
    for row, (_, a) in zip(ids[:, start:].tolist(), pairs):
        text = "".join(inv[i] for i in row).split("<eos>")[0]
        right += text == a
    return right / len(pairs)


def pretrain(seed: int = DEMO_SEED, *, steps: int | None = None, log=None, poisoned: float = 0.0,
             rule: str = "carry_dropped"):
    """Train the tiny model from scratch for a fixed number of steps (550 by default: partly right on
    the long prompts, ~0.75 greedy; the stop point matters, see module docstring). ``steps`` overrides
    it (tests use a small one). ``log`` also reports validation greedy accuracy on held-out long prompts.
    ``poisoned``, ``rule``: see ``training_examples`` (``demo-systematic``, ``demo-overwrite``).
    One thread: faster under load and reproducible for a model this small."""
    import torch
    from transformers import LlamaForCausalLM

    v = vocab()
    held = {t["prompt"] for t in demo_tasks(seed)}
    val = _validation(seed, held)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(model_config())
        opt = torch.optim.AdamW(model.parameters(), lr=_TRAIN["lr"], weight_decay=0.0, betas=(0.9, 0.98))
        stream = training_examples(seed, held, poisoned, rule)
        limit = steps if steps is not None else _TRAIN["steps"]
        for step in range(1, limit + 1):
            model.train()
            ids, att, lab = _batch([next(stream) for _ in range(_TRAIN["batch_size"])], v)
            loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if log and step % _TRAIN["check_every"] == 0:
                acc = greedy_accuracy(model, val, v)
                log(f"demo pre-training step {step}: loss {loss.item():.3f}, validation greedy {acc:.2f}")
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return model


def weights_sha256(tensors) -> str:
    """SHA-256 over named tensors (sorted by name: name, dtype, shape, raw bytes): the identity of a set
    of weights, however they were loaded (a safetensors file, ``model.named_parameters()``)."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_config():
    """The demo model's ``LlamaConfig`` (integers only: the same on every machine)."""
    from transformers import LlamaConfig

    v = vocab()
    return LlamaConfig(vocab_size=len(v), bos_token_id=v["<bos>"], eos_token_id=v["<eos>"], pad_token_id=v["<pad>"],
                       **_MODEL_CFG)


def write_shipped_model(model_dir: Path, weights: Path = SHIPPED_WEIGHTS) -> None:
    """Config and generation config as ``save_pretrained`` writes them, and the shipped ``weights``."""
    from transformers import GenerationConfig

    import torch

    cfg = model_config()
    cfg.architectures, cfg.dtype = ["LlamaForCausalLM"], torch.float32  # what the model's save_pretrained adds
    cfg.save_pretrained(model_dir)
    GenerationConfig.from_model_config(cfg).save_pretrained(model_dir)
    shutil.copyfile(weights, model_dir / "model.safetensors")


def build_demo(cache_dir: str | Path | None = None, *, force: bool = False, seed: int = DEMO_SEED,
               steps: int | None = None, log=None, variant: str = "demo") -> tuple[Path, Path]:
    """Build (once) and return ``(model_dir, tasks_file)``.

    ``model_dir`` holds config, safetensors and tokenizer (``from_pretrained`` loads it);
    ``tasks_file`` is JSON lines with ``id``, ``prompt``, ``answer``. The build lives in
    ``<cache>/<variant>-<version>-s<seed>[-steps<n>]``; it is written to a temp dir and renamed into place,
    so a killed build never leaves a half cache. ``force`` rebuilds. The default seed and length use
    the variant's shipped weights (no pre-training); another ``seed`` or a ``steps`` (a quick, weaker
    build for tests) pre-trains here. ``variant`` names an entry of ``DEMOS``.
    """
    spec = DEMOS[variant]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = f"{variant}-{DEMO_VERSION}-s{seed}" + (f"-steps{steps}" if steps is not None else "")
    final = root / name
    model_dir, tasks_file = final / "model", final / "tasks.jsonl"
    if final.is_dir() and not force and (model_dir / "config.json").exists() and tasks_file.exists():
        return model_dir, tasks_file
    with atomic_dir(final) as tmp:
        if seed == DEMO_SEED and steps is None:
            (tmp / "model").mkdir()
            write_shipped_model(tmp / "model", spec.weights)
        else:
            pretrain(seed, steps=steps, log=log, poisoned=spec.poisoned, rule=spec.rule).save_pretrained(tmp / "model")
        make_tokenizer().save_pretrained(tmp / "model")
        with open(tmp / "tasks.jsonl", "w") as f:
            for t in demo_tasks(seed):
                f.write(json.dumps(t) + "\n")
    return model_dir, tasks_file


def rebuild_shipped_weights(log=print, variant: str = "demo") -> str:
    """Pre-train a variant's model (``pretrain(DEMO_SEED)``) and write it to its shipped weights file;
    returns its ``weights_sha256``. The result depends on the CPU's floating point: the shipped files
    were made on AVX2."""
    import tempfile

    from safetensors.torch import load_file

    spec = DEMOS[variant]
    model = pretrain(DEMO_SEED, log=log, poisoned=spec.poisoned, rule=spec.rule)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        shutil.copyfile(Path(tmp) / "model.safetensors", spec.weights)
    return weights_sha256(load_file(spec.weights))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.data.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--rebuild", action="store_true", help="pre-train the variant's model and overwrite its shipped weights")
    parser.add_argument("--variant", choices=list(DEMOS), default="demo", help="which built-in model (default: demo)")
    args = parser.parse_args(argv)
    if not args.rebuild:
        parser.print_help()
        return 0
    digest = rebuild_shipped_weights(variant=args.variant)
    print(f"wrote {DEMOS[args.variant].weights}; weights_sha256 = {digest} (set it in DEMOS[{args.variant!r}])")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
