"""Every accepted option takes effect or is refused at start-up: the table of TRL options the engine cannot
honour, walked; trackers named in report_to; the sampler and precision the engine chooses."""

import dataclasses
import json

import pytest
import yaml

from engine.errors import ConfigError
from engine.config.options import choose_sampler, make_parser, parse_config
from engine.config.trl_options import REFUSED

# A value other than the default for options whose default is None or text.
NON_DEFAULT = {
    "vllm_server_base_url": "http://head:8000", "vllm_structured_outputs_regex": "[0-9]+", "min_p": 0.1,
    "generation_kwargs": {"top_k": 5}, "cache_implementation": "static", "transformers_continuous_batching_config": {"a": 1},
    "max_tool_calling_iterations": 2, "num_generations_eval": 2, "chat_template_kwargs": {"enable_thinking": True},
    "reward_weights": [1.0], "log_completions_hub_repo": "me/completions", "num_completions_to_print": 2,
    "steps_per_generation": 2, "generation_batch_size": 16, "torch_compile_backend": "inductor",
    "torch_compile_mode": "default", "save_total_limit": 2, "resume_from_checkpoint": "runs/x/checkpoint-1",
    "eval_steps": 5, "eval_accumulation_steps": 2, "metric_for_best_model": "loss", "greater_is_better": True,
    "dataloader_prefetch_factor": 2, "data_seed": 1, "hub_model_id": "me/model", "hub_private_repo": True,
    "hub_revision": "main", "neftune_noise_alpha": 5.0, "deepspeed": "ds_config.json", "fsdp": "full_shard",
    "fsdp_config": {"min_num_params": 1}, "parallelism_config": {"dp_shard_size": 2}, "vllm_mode": "server",
    "vllm_server_host": "127.0.0.1", "multi_objective_aggregation": "normalize_then_sum", "save_strategy": "steps",
    "eval_strategy": "steps", "logging_strategy": "epoch", "train_sampling_strategy": "sequential",
    "hub_strategy": "end",
}


def other_value(name, default):
    if name in NON_DEFAULT:
        return NON_DEFAULT[name]
    if isinstance(default, bool):
        return not default
    if isinstance(default, (int, float)):
        return default + 1
    raise AssertionError(f"no non-default value for {name} (default {default!r}): add one to NON_DEFAULT")


def test_every_refused_option_is_a_trl_option():
    from trl import GRPOConfig

    fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    assert set(REFUSED) <= fields, sorted(set(REFUSED) - fields)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_an_option_without_effect_is_refused_at_start_up_with_its_reason(name, tmp_path):
    defaults = vars(make_parser().parse_args([]))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({name: other_value(name, defaults[name])}))
    with pytest.raises(ConfigError, match=rf"^{name} has no effect in this engine \(.+\)"):
        parse_config([str(config), "--output_dir", str(tmp_path / "o")])


def test_refused_options_at_their_defaults_are_accepted(tmp_path):
    defaults = vars(make_parser().parse_args([]))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({name: defaults[name] for name in ("use_vllm", "torch_compile", "top_k",
                                                                      "num_train_epochs", "save_strategy")}))
    parse_config([str(config), "--output_dir", str(tmp_path / "o")])


def test_a_missing_tracker_fails_before_any_model_loads(tmp_path):
    pytest.importorskip("transformers")
    import importlib.util

    assert importlib.util.find_spec("wandb") is None, "this test needs an environment without wandb"
    with pytest.raises(ConfigError, match=r"report_to: tracker 'wandb' is not installed .*pip install wandb"):
        parse_config(["--report_to", "wandb", "--output_dir", str(tmp_path / "o")])
    with pytest.raises(ConfigError, match=r"report_to: unknown tracker 'tensorbored'"):
        parse_config(["--report_to", "tensorbored", "--output_dir", str(tmp_path / "o")])


def test_report_to_tensorboard_gets_every_metrics_row(tiny_model, tiny_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from engine.cli.build import build
    from engine.loop import run

    out = tmp_path / "run"
    cfg = parse_config(["--model", str(tiny_model), "--data", str(tiny_data), "--template", "{question}",
                        "--n_votes", "4", "--n_train", "2", "--prompts_per_step", "2", "--max_completion_length", "6",
                        "--eval_k", "2", "--output_dir", str(out), "--progress", "false", "--report_to", "tensorboard"])
    _, tasks, policy, sampler = build(cfg)
    run(cfg, sampler=sampler, policy=policy, tasks=tasks, out_dir=out, log=lambda s: None)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = list(out.rglob("events.out.tfevents.*"))   # RUN_DIR/runs/<date_host>/, as the Trainer writes it
    assert events, "no TensorBoard event file written"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    reward = [t for t in tags if t.endswith("reward/mean")]
    assert reward and [round(e.value, 6) for e in acc.Scalars(reward[0])] == [round(r["reward/mean"], 6) for r in rows]
    assert any(t.endswith("after/accuracy/greedy") for t in tags)


def test_sampler_auto_is_transformers_without_cuda_and_says_why(tmp_path):
    cfg = parse_config(["--output_dir", str(tmp_path / "o")])
    assert cfg.ttrl.sampler == "hf"
    assert any(n.startswith("sampler: hf (no CUDA device") for n in cfg.notes)
    assert choose_sampler(cuda=False)[0] == "hf"
    assert choose_sampler(cuda=True)[0] == ("vllm" if _has_vllm() else "hf")


def _has_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def test_precision_follows_dtype_and_refuses_what_cannot_run_here(tmp_path):
    out = ["--output_dir", str(tmp_path / "o")]
    cfg = parse_config(out)
    assert (cfg.model.dtype, cfg.grpo.bf16, cfg.grpo.fp16) == ("float32", False, False)
    cfg = parse_config([*out, "--dtype", "bfloat16"])
    assert (cfg.model.dtype, cfg.grpo.bf16, cfg.grpo.fp16) == ("bfloat16", True, False)
    cfg = parse_config([*out, "--bf16", "true"])                  # TRL's flag picks the dtype when it is auto
    assert cfg.model.dtype == "bfloat16"
    with pytest.raises(ConfigError, match="dtype float16 needs a CUDA device"):
        parse_config([*out, "--dtype", "float16"])
    with pytest.raises(ConfigError, match="contradicts --bf16"):
        parse_config([*out, "--dtype", "float32", "--bf16", "true"])


def test_gradient_checkpointing_with_the_influence_selector_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="gradient_checkpointing cannot be combined with the influence selector"):
        parse_config(["--selector", "influence", "--gradient_checkpointing", "true", "--output_dir", str(tmp_path)])
