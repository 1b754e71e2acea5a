"""The ``ttrl`` command: ``ttrl run [CONFIG.yaml] [--option value ...]`` and ``ttrl eval ...``.

Errors a user can fix (a bad option, an unreadable data file, a reward that fails) print one paragraph
and exit with status 2; ``--debug`` shows the traceback as well.

``ttrl run`` under ``torchrun --nproc_per_node N -m engine.cli.main run ...`` (or ``accelerate launch``)
runs as N ranks (``engine.distributed``): rank 0 alone checks and owns the run directory (its lock,
``config.yaml``), the others wait for it at a barrier and never write there. Every rank seeds with
``--seed`` before the model is built (identical initial weights); then rank r reseeds with seed + r, so
the ranks' samplers draw different random streams (one process keeps the single seed, as before).

``ttrl run --num_workers N`` starts the same N ranks through Ray Train instead (``engine.cluster.train``):
this process becomes the driver, and each Ray Train worker runs ``ttrl run`` in-process as one rank of
the process group Ray set up (``ray_train_worker``).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import time
from pathlib import Path

USAGE = """usage: ttrl {run,eval,suite,submit,status,logs} [CONFIG.yaml] [--option value ...] [--debug]

  ttrl run            adapt the demo model to the demo task (built on first use, no download)
  ttrl run CONFIG     adapt the model and data named in CONFIG.yaml; flags override it
  ttrl run --suite S  adapt to a registered benchmark (aime24, amc, math500, gpqa, mawps-singleop, ...)
  ttrl run --resume RUN_DIR
                      continue a stopped run from its last checkpoint (so does re-running into RUN_DIR)
  ttrl eval ...       score a model (or --adapter RUN_DIR/adapter) on labeled tasks, no training
  ttrl eval --suite S --completions FILE.jsonl
                      grade completions made elsewhere ({"id": ..., "completion": ...} per line)
  ttrl suite S1 S2 ... [--config CONFIG.yaml] [--output_dir DIR] [--option value ...]
                      `ttrl run` on each suite in turn (resumable), then one before/after table
  ttrl suite S1 S2 ... --ray [ADDRESS]
                      the same, every job a Ray task on a cluster (auto, host:port, ray://host:port;
                      none: RAY_ADDRESS, the last `ray start`, or a new local one), retried if its worker dies
  ttrl submit CONFIG [--address URL] [--option value ...]
  ttrl submit suite S1 S2 ... [--address URL] [--option value ...]
                      send a run or a suite to a Ray cluster (Jobs API), the config's folder shipped
                      with it; `ttrl submit --help` lists submit's own options
  ttrl status [JOB_ID]  a submitted job's state (or every job's)
  ttrl logs JOB_ID [--follow]
                      a submitted job's output

`ttrl run --help` lists every option with its default."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from engine.errors import ConfigError
    from engine.errors import DataError
    from engine.loop import RewardError
    from engine.registry import SpecError

    return ConfigError, DataError, RewardError, SpecError, FileNotFoundError


DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def disk_error(err: OSError) -> str:
    """One paragraph for a disk error mid-run (a full disk, a quota, a file system turned read-only): what
    failed, and that what was written before it stays."""
    what = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
            errno.EFBIG: "file too large for the file system"}.get(err.errno, err.strerror or str(err))
    where = f" ({err.filename})" if err.filename else ""
    return (f"{what}{where}. Files already written to the run directory (config.yaml, metrics.jsonl, "
            "checkpoints) are kept; free some space or fix the permissions, then run the same command again, "
            "or choose another --output_dir")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    commands = {"run": cmd_run, "eval": cmd_eval, "suite": cmd_suite, "submit": cmd_submit, "status": cmd_status,
                "logs": cmd_logs}
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
    except OSError as err:  # a full disk or a directory that stopped being writable, mid-run
        if debug or err.errno not in DISK_ERRNOS:
            raise
        print(f"ttrl {command}: error: {disk_error(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"ttrl {command}: interrupted; metrics written so far are kept" + (f"; {err}" if str(err) else ""),
              file=sys.stderr)
        return 130


def cmd_run(argv: list[str]) -> int:
    import contextlib

    from engine import distributed
    from engine.rundir import lock
    from engine.errors import ConfigError
    from engine.config.options import check_output_dir, parse_config, saved_options, split_options

    own, argv = split_options(argv, ("resume",))
    resume = own["resume"][-1] if own else None
    if resume is not None:
        if argv and not argv[0].startswith("-"):
            raise ConfigError(f"--resume {resume} takes the run's own config; drop the config file {argv[0]}")
        cfg = parse_config([*argv, "--output_dir", resume], base=saved_options(resume))
    else:
        cfg = parse_config(argv)
    out_dir = Path(cfg.grpo.output_dir)
    if cfg.ttrl.num_workers > 1:  # this process is the driver; Ray Train's workers run the ranks
        return run_with_ray_train(cfg, argv, resume)
    distributed.init(cpu=cfg.grpo.use_cpu, mixed_precision=cfg.grpo.mixed_precision)  # torchrun: the process group, through accelerate, before any wait
    if (out_dir / "summary.json").exists():
        if distributed.is_main():
            print(f"ttrl run: {out_dir} holds a finished run (summary.json); nothing to do. "
                  "Choose another --output_dir to run again.")
        return 0
    if distributed.is_main():
        check_output_dir(out_dir)  # before any model loads
    # Rank 0 owns the run directory until the run ends; a second run into out_dir is refused.
    with lock.acquire(out_dir) if distributed.is_main() else contextlib.nullcontext():
        return run_in(cfg, out_dir, resume)


def run_in(cfg, out_dir: Path, resume: str | None) -> int:
    """``ttrl run`` in a run directory this process owns."""
    import yaml

    from engine import distributed
    from engine.cli.build import build
    from engine.loop import run
    from engine.rundir.report import before_after_table

    if distributed.is_main():  # the others wait below, and never write into out_dir
        if check_resumable(cfg, out_dir, distributed.world_size()) is None and resume is not None:
            print(f"ttrl run: no checkpoint in {out_dir} yet; starting the run from its beginning")
        (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
    distributed.barrier()
    from transformers import set_seed

    set_seed(cfg.grpo.seed)
    start = time.perf_counter()
    _, tasks, policy, sampler = build(cfg)
    if distributed.launched():  # the same initial weights everywhere, then a random stream of each rank's own
        set_seed(cfg.grpo.seed + distributed.rank())
    if not distributed.is_main():
        run(cfg, sampler=sampler, policy=policy, tasks=tasks, out_dir=out_dir)
        return 0
    print(f"ttrl run: {len(tasks)} tasks, model {cfg.model.model}, output {out_dir} (setup {time.perf_counter() - start:.1f} s)"
          + (f", {distributed.world_size()} processes" if distributed.launched() else ""))
    summary = run(cfg, sampler=sampler, policy=policy, tasks=tasks, out_dir=out_dir)
    print()
    print(before_after_table(summary["before"], summary["after"]))
    print(f"\n{summary['compute']['steps']} steps in {time.perf_counter() - start:.0f} s; report: {out_dir / 'report.md'}")
    return 0


def check_resumable(cfg, out_dir: Path, world_size: int) -> Path | None:
    """The checkpoint a run into ``out_dir`` continues from (None: it starts afresh), checked before any
    model loads: re-running into a run directory continues it only with the options it was started with
    (``config.yaml``) and on the world size that wrote the checkpoint."""
    import yaml

    from engine.rundir import checkpoint
    from engine.errors import ConfigError
    from engine.config.options import config_differences

    saved = out_dir / "config.yaml"
    found = checkpoint.find(out_dir)
    if found is not None and saved.exists():
        changed = config_differences(yaml.safe_load(saved.read_text(encoding="utf-8")), cfg.to_dict())
        if changed:
            raise ConfigError(f"{out_dir} holds a checkpoint of a run with different options ({', '.join(changed)}); "
                              f"continue it with `ttrl run --resume {out_dir}` or choose another --output_dir")
    if found is not None:
        checkpoint.check_world_size(found, world_size)
    return found


def run_with_ray_train(cfg, argv: list[str], resume: str | None) -> int:
    """``ttrl run --num_workers N``: this process is the driver of a Ray Train run (``engine.cluster.train``)
    whose N workers each run ``ray_train_worker``, the rank-aware ``ttrl run`` of the module docstring.

    The driver checks what it can before any worker starts (a finished run, a writable run directory, a
    checkpoint it may continue), and pins down what every worker must agree on: the run directory as an
    absolute path (its default name holds the time, which would differ per worker) and this process's
    working directory, which a worker moves into where it exists (the same relative paths as here, on this
    machine or a shared file system; under `ttrl submit` each node has its own copy of the job's folder)."""
    from engine.cluster.train import fit
    from engine.config.options import check_output_dir

    out_dir = Path(cfg.grpo.output_dir).resolve()
    if (out_dir / "summary.json").exists():
        print(f"ttrl run: {out_dir} holds a finished run (summary.json); nothing to do. "
              "Choose another --output_dir to run again.")
        return 0
    check_output_dir(out_dir)
    n = cfg.ttrl.num_workers
    if check_resumable(cfg, out_dir, n) is not None:
        print(f"ttrl run: {out_dir} holds a checkpoint; the workers continue from it")
    # Every worker: the same options, the run directory pinned, and num_workers 1 (it is a rank, not a driver).
    where = ["--resume", str(out_dir)] if resume is not None else ["--output_dir", str(out_dir)]
    worker_argv = [*argv, *where, "--num_workers", "1"]
    print(f"ttrl run: {n} Ray Train workers, output {out_dir}")
    t = cfg.ttrl
    fit(ray_train_worker, {"argv": worker_argv, "cwd": os.getcwd()}, num_workers=n, address=t.ray_address,
        cpus_per_worker=t.ray_cpus, gpus_per_worker=t.ray_gpus, max_failures=t.ray_max_retries,
        storage_path=out_dir, name="ray_train")
    print(f"ttrl run: finished on {n} Ray Train workers; report: {out_dir / 'report.md'}")
    return 0


def ray_train_worker(config: dict) -> None:
    """One Ray Train worker of ``ttrl run --num_workers N``: ``ttrl run`` as one rank of the process group
    Ray Train set up (``config``: the worker's ``argv`` and the driver's working directory ``cwd``). A
    worker group restarted after a worker died runs this again and continues from the run's checkpoint."""
    if Path(config["cwd"]).is_dir():
        os.chdir(config["cwd"])
    cmd_run(config["argv"])


def cmd_eval(argv: list[str]) -> int:
    """Evaluate without training: the base model, base + a saved LoRA adapter, or a full fine-tuning run's
    weights (``--adapter`` on its ``adapter/`` folder), sampled by transformers or vLLM (``--sampler``)."""
    import torch
    from transformers import AutoModelForCausalLM, set_seed

    from engine.cli.build import load_prepared_tasks, resolve_model_and_data
    from engine.data.models import load_tokenizer, torch_dtype
    from engine.config.options import check_output_dir, parse_config
    from engine.evaluate import evaluate
    from engine.samplers.hf import HFSampler
    from engine.types import SamplingParams

    cfg = parse_config(argv)
    if cfg.ttrl.anchor is not None:
        from engine.errors import ConfigError

        raise ConfigError("anchor is an option of ttrl run (labeled examples measured during adaptation); "
                          "to score a model on them, run ttrl eval --data on the anchor file")
    check_output_dir(cfg.grpo.output_dir)  # before the evaluation, whose result it must hold
    if cfg.eval.completions:
        return eval_completions(cfg)
    set_seed(cfg.grpo.seed)
    model_path, data, template = resolve_model_and_data(cfg)
    tokenizer = load_tokenizer(model_path)
    tasks = load_prepared_tasks(cfg, tokenizer, data, template)
    lora = None
    if cfg.model.adapter:
        if adapter_kind(cfg.model.adapter) == "full":  # a full fine-tuning run saves all weights there
            print(f"ttrl eval: {cfg.model.adapter} holds full model weights (a full fine-tuning run); "
                  "evaluating them in place of the model")
            model_path = cfg.model.adapter
        else:
            lora = cfg.model.adapter
    dtype = getattr(torch, torch_dtype(cfg.model.dtype, cfg.grpo.use_cpu))
    model = None
    if cfg.ttrl.sampler == "hf" or lora:  # vLLM loads the model itself; a LoRA adapter is merged into it
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    if lora:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, lora)
    if cfg.ttrl.sampler == "vllm":
        from engine.samplers.vllm import make_vllm_sampler

        sampler = make_vllm_sampler(cfg, model_path, tokenizer, model)
    else:
        sampler = HFSampler(model, tokenizer, batch_size=cfg.ttrl.sampler_batch_size, progress=cfg.ttrl.progress)
    g = cfg.grpo
    params = SamplingParams(n=cfg.eval.eval_k, temperature=cfg.eval.eval_temperature or g.temperature, top_p=g.top_p,
                            max_new_tokens=cfg.eval.eval_max_tokens or g.max_completion_length)
    result = evaluate(sampler, tasks, k=cfg.eval.eval_k, params=params, greedy=cfg.eval.eval_greedy,
                      answer_type=cfg.ttrl.answer_type)
    out_dir = Path(g.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps({"model": cfg.model.model, "adapter": cfg.model.adapter,
                                                   "weights": model_path, "sampler": cfg.ttrl.sampler,
                                                   "data": cfg.data.data, **result}, indent=2), encoding="utf-8")
    for k, v in result.items():
        print(f"{k}: {v:.4f}")
    return 0


def adapter_kind(path: str) -> str:
    """What a run's ``adapter/`` folder holds: ``"lora"`` (a PEFT adapter, ``adapter_config.json``) or
    ``"full"`` (a full fine-tuning run's whole model: ``config.json`` and weights); anything else is an
    error saying what ``--adapter`` takes."""
    from engine.errors import ConfigError

    folder = Path(path)
    if (folder / "adapter_config.json").exists():
        return "lora"
    if (folder / "config.json").exists() and (any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))):
        return "full"
    what = f"holds {', '.join(sorted(p.name for p in folder.iterdir())[:8]) or 'nothing'}" if folder.is_dir() else "does not exist"
    raise ConfigError(f"--adapter {path} {what}: it takes a run's adapter/ folder, either a LoRA adapter "
                      "(adapter_config.json) or a full fine-tuning run's weights (config.json and *.safetensors)")


def eval_completions(cfg) -> int:
    """``ttrl eval --completions FILE``: grade saved completions against the data's labels; no model."""
    from engine.data.completions import grade_completions, read_completions
    from engine.data.tasks import load_tasks

    d = cfg.data
    data = d.data
    from engine.data.demo import DEMOS, build_demo

    if data in DEMOS:
        data = str(build_demo(log=print, variant=data)[1])
    from engine.data.arithmetic import generated_path

    tasks = load_tasks(generated_path(data), prompt_field=d.prompt_field, label_field=d.label_field, id_field=d.id_field,
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


def cmd_submit(argv: list[str]) -> int:
    from engine.cluster import jobs

    if argv[:1] in (["-h"], ["--help"]):
        print(jobs.__doc__)
        return 0
    return jobs.submit(argv)


def cmd_status(argv: list[str]) -> int:
    from engine.cluster import jobs

    return jobs.status(argv)


def cmd_logs(argv: list[str]) -> int:
    from engine.cluster import jobs

    return jobs.logs(argv)


def cmd_suite(argv: list[str]) -> int:
    from engine.cli.suites import run_suites

    return run_suites(argv)


if __name__ == "__main__":
    sys.exit(main())
