"""The ``ttrl`` command: ``ttrl run [CONFIG.yaml] [--option value ...]`` and ``ttrl eval ...``.

Errors a user can fix (a bad option, an unreadable data file, a reward that fails) print one paragraph
and exit with status 2; ``--debug`` shows the traceback as well.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

USAGE = """usage: ttrl {run,eval,suite} [CONFIG.yaml] [--option value ...] [--debug]

  ttrl run            adapt the demo model to the demo task (built on first use, no download)
  ttrl run CONFIG     adapt the model and data named in CONFIG.yaml; flags override it
  ttrl run --suite S  adapt to a registered benchmark (aime24, amc, math500, gpqa, mawps-singleop, ...)
  ttrl eval ...       score a model (or --adapter RUN_DIR/adapter) on labeled tasks, no training
  ttrl eval --suite S --completions FILE.jsonl
                      grade completions made elsewhere ({"id": ..., "completion": ...} per line)
  ttrl suite S1 S2 ... [--config CONFIG.yaml] [--output_dir DIR] [--option value ...]
                      `ttrl run` on each suite in turn (resumable), then one before/after table

`ttrl run --help` lists every option with its default."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from engine.config import ConfigError
    from engine.data import DataError
    from engine.loop import RewardError
    from engine.registry import SpecError

    return ConfigError, DataError, RewardError, SpecError, FileNotFoundError


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    commands = {"run": cmd_run, "eval": cmd_eval, "suite": cmd_suite}
    if command not in commands:
        print(f"ttrl: unknown command {command!r}; valid commands: {', '.join(commands)}\n\n{USAGE}", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return commands[command](rest)
    except _user_errors() as err:
        if debug:
            raise
        print(f"ttrl {command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ttrl {command}: interrupted; metrics written so far are kept", file=sys.stderr)
        return 130


def cmd_run(argv: list[str]) -> int:
    from engine.build import build
    from engine.config import parse_config
    from engine.loop import run
    from engine.report import before_after_table

    cfg = parse_config(argv)
    out_dir = Path(cfg.grpo.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    import yaml

    (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
    from transformers import set_seed

    set_seed(cfg.grpo.seed)
    start = time.perf_counter()
    _, tasks, policy, sampler = build(cfg)
    print(f"ttrl run: {len(tasks)} tasks, model {cfg.model.model}, output {out_dir} (setup {time.perf_counter() - start:.1f} s)")
    summary = run(cfg, sampler=sampler, policy=policy, tasks=tasks, out_dir=out_dir)
    print()
    print(before_after_table(summary["before"], summary["after"]))
    print(f"\n{summary['compute']['steps']} steps in {time.perf_counter() - start:.0f} s; report: {out_dir / 'report.md'}")
    return 0


def cmd_eval(argv: list[str]) -> int:
    """Evaluate without training: the base model, or base + a saved adapter."""
    import torch
    from transformers import AutoModelForCausalLM, set_seed

    from engine.build import load_prepared_tasks, load_tokenizer, resolve_model_and_data, torch_dtype
    from engine.config import parse_config
    from engine.evaluate import evaluate
    from engine.sampler_hf import HFSampler
    from engine.types import SamplingParams

    cfg = parse_config(argv)
    if cfg.eval.completions:
        return eval_completions(cfg)
    set_seed(cfg.grpo.seed)
    model_path, data, template = resolve_model_and_data(cfg)
    tokenizer = load_tokenizer(model_path)
    tasks = load_prepared_tasks(cfg, tokenizer, data, template)
    dtype = getattr(torch, torch_dtype(cfg.model.dtype, cfg.grpo.use_cpu))
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    if cfg.model.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, cfg.model.adapter)
    sampler = HFSampler(model, tokenizer, batch_size=cfg.ttrl.sampler_batch_size, progress=cfg.ttrl.progress)
    g = cfg.grpo
    params = SamplingParams(n=cfg.eval.eval_k, temperature=cfg.eval.eval_temperature or g.temperature, top_p=g.top_p,
                            max_new_tokens=cfg.eval.eval_max_tokens or g.max_completion_length)
    result = evaluate(sampler, tasks, k=cfg.eval.eval_k, params=params, greedy=cfg.eval.eval_greedy,
                      answer_type=cfg.ttrl.answer_type)
    out_dir = Path(g.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps({"model": cfg.model.model, "adapter": cfg.model.adapter,
                                                   "data": cfg.data.data, **result}, indent=2), encoding="utf-8")
    for k, v in result.items():
        print(f"{k}: {v:.4f}")
    return 0


def eval_completions(cfg) -> int:
    """``ttrl eval --completions FILE``: grade saved completions against the data's labels; no model."""
    from engine.completions import grade_completions, read_completions
    from engine.data import load_tasks

    d = cfg.data
    data = d.data
    if data == "demo":
        from engine.demo import build_demo

        data = str(build_demo(log=print)[1])
    tasks = load_tasks(data, prompt_field=d.prompt_field, label_field=d.label_field, id_field=d.id_field,
                       split=d.split, limit=d.limit, data_dir=d.data_dir)
    completions = read_completions(cfg.eval.completions, {t.id for t in tasks})
    result = grade_completions(tasks, completions, answer_type=cfg.ttrl.answer_type)
    out_dir = Path(cfg.grpo.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps({"model": None, "adapter": None, "completions": cfg.eval.completions,
                                                   "suite": d.suite, "data": d.data, **result}, indent=2), encoding="utf-8")
    if result.get("eval/missing"):
        print(f"note: {int(result['eval/missing'])} labeled tasks have no completions and are not graded")
    for k, v in result.items():
        print(f"{k}: {v:.4f}")
    print(f"written: {out_dir / 'eval.json'}")
    return 0


def cmd_suite(argv: list[str]) -> int:
    from engine.suite_cmd import run_suites

    return run_suites(argv)


if __name__ == "__main__":
    sys.exit(main())
