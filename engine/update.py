"""The policy update: TRL's GRPO, fed with rollouts the engine already sampled, scored and selected.

Why this seam. TRL's ``GRPOTrainer`` owns the loss, the KL estimator against the reference (with
PEFT the reference is the base model with the adapter disabled, so the anchor costs no second copy),
the optimizer, scheduler, gradient accumulation and checkpointing — we reuse all of it and
re-implement none. What it does not have is a hook between scoring and the loss (TRL 1.16's
``trl/trainer/grpo_trainer.py``: https://github.com/huggingface/trl/blob/v1.16.0/trl/trainer/grpo_trainer.py).
Its experimental ``rollout_func`` is the narrowest door in: whatever it returns
replaces TRL's own generation, and extra fields reach the reward functions. So one engine step is:

  engine batch ──► rollout_func returns its prompt/completion ids and sampling log-probs
              ──► TRL's reward call returns the engine's rewards (``_engine_reward``)
              ──► TRL computes group advantages, reference log-probs, the loss, and backward
              ──► we step TRL's optimizer and scheduler (the ``Trainer.train`` loop would own the
                  outer loop; ``engine.loop`` must, so we drive ``training_step`` ourselves).

Per-token log-probs (policy and reference) come from TRL's fused LM head, which never holds a micro-batch's
whole logits; where it has no Triton kernel (CPU) its torch fallback costs more than the logits it avoids, so
``engine.chunked_logps`` takes that branch there (``--logps_chunk_tokens``; TRL's own loss is unchanged).

Rows reach TRL in group order, ``n_train`` rows per group, which is what its ``num_generations``
grouping of advantages assumes.

Under torchrun (N ranks) ``accelerator.prepare`` wraps the model in DDP, and each rank's batch is its
own contiguous share of whole groups, the same number of rows on every rank (``engine.loop``). TRL's
advantage computation all-gathers the rewards in rank order, normalises per ``num_generations`` rows and
takes this rank's slice back: with whole groups per rank and equal shares, each group is normalised
over its own rows only, exactly as in one process. Its loss divides by the global token count / N, and
DDP averages the gradients over the N ranks, so one optimizer step equals the one-process step on the
whole batch up to float summation order (``tests/test_distributed.py``).

Why the engine does ``Trainer.train()``'s set-up itself. ``train()`` would own the outer loop (a
dataloader, epochs, its own callbacks deciding when to stop), and TTRL's outer loop — sample, vote,
filter, refill, then update — is the engine's. But everything ``train()`` sets up before its loop is
what makes a GPU run correct, and skipping it broke bf16 full fine-tuning (a 5e-7 Adam step is below
bf16's spacing at |w| ~ 0.02, 1.2e-4, and rounds to nothing). So ``_prepare_like_train`` repeats those
steps with the Trainer's own pieces, in its order (transformers 5.19 ``Trainer._prepare_for_training``):

- trainable weights are float32 masters (full fine-tuning loads float32; PEFT upcasts LoRA weights);
  frozen weights — the LoRA base, the full fine-tune's KL reference — stay in the compute dtype;
- gradient checkpointing is switched on when ``gradient_checkpointing`` says so (TRL's flag);
- ``accelerator.prepare(model, optimizer)``: accelerate wraps ``forward`` in autocast (bf16, or fp16 on
  CUDA) and, for fp16, owns the GradScaler — ``accelerator.backward`` scales the loss, the prepared
  optimizer unscales and skips a step whose gradients overflowed, and the scheduler then does not step;
- the scheduler is created for the run's real number of optimizer steps (``optimizer_steps``);
- the trackers named in ``report_to`` (the Trainer's own integration callbacks) get every metrics row.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from engine import chunked_logps, distributed
from engine.errors import ConfigError
from engine.types import GradientFilter, RolloutGroup

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is experimental; we pin trl


@dataclass
class Batch:
    """Selected rollouts of several groups, flattened in group order (``n_per_group`` rows each)."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    logprobs: list[list[float]] | None
    rewards: list[float]
    n_per_group: int

    @classmethod
    def from_groups(cls, groups: list[RolloutGroup], selections: list[list[int]]) -> Batch:
        sizes = {len(s) for s in selections}
        if len(sizes) != 1:
            raise ValueError(f"every group must contribute the same number of rollouts; got sizes {sorted(sizes)}")
        prompt_ids, completion_ids, logprobs, rewards = [], [], [], []
        have_logprobs = True
        for group, picked in zip(groups, selections, strict=True):
            for i in picked:
                r = group.rollouts[i]
                prompt_ids.append(list(group.task.prompt_ids))
                completion_ids.append(list(r.token_ids))
                rewards.append(float(r.reward if r.reward is not None else 0.0))
                have_logprobs &= r.logprobs is not None
                logprobs.append(list(r.logprobs) if r.logprobs is not None else [])
        return cls(prompt_ids, completion_ids, logprobs if have_logprobs else None, rewards, sizes.pop())

    def __len__(self) -> int:
        return len(self.completion_ids)


def _engine_reward(prompts, completions, engine_reward, **_) -> list[float]:
    """The reward TRL sees: the engine's own, computed before TRL was called (a majority vote needs
    all N_vote rollouts of a group, TRL sees only the N_train selected ones)."""
    return list(engine_reward)


class _LoopSyncsWeights:
    """Stands where TRL expects its vLLM client: weight sync belongs to the engine's sampler."""

    def sync_weights(self) -> None:
        pass


class GRPOPolicy:
    """The model under adaptation plus the TRL trainer that updates it.

    ``grpo_args`` is a complete ``trl.GRPOConfig``: every TRL knob (learning rate, ``beta`` = the KL
    coefficient, ``loss_type``, ``scale_rewards``, ``max_grad_norm``, ``num_iterations``,
    ``gradient_accumulation_steps`` …) is the user's to set. ``lora`` is a ``peft.PeftConfig``
    (``engine.adapters``: LoRA, TinyLoRA, ShiRA, OSF) or None for full fine-tuning (then TRL loads a
    second copy of the model from ``model_path`` as reference). ``logps_chunk_tokens``: how the policy's
    and the reference's per-token log-probs are computed (``engine.chunked_logps``): positions per chunk,
    0 for TRL's own fused head, -1 (auto) for 512 where TRL's head has no Triton kernel (CPU), TRL's on CUDA.
    """

    def __init__(self, model_path: str, tokenizer, grpo_args, lora=None, total_steps: int = 1,
                 sampler_is_separate_engine: bool = False, logps_chunk_tokens: int = chunked_logps.AUTO):
        from datasets import Dataset
        from trl import GRPOTrainer

        self._pending: Batch | None = None
        # Full fine-tuning: the weights TRL loads are the trainable masters, so they load in float32;
        # under LoRA they are the frozen base, held in the compute dtype (PEFT makes the adapter float32).
        compute = "bfloat16" if grpo_args.bf16 else "float16" if grpo_args.fp16 else "float32"
        grpo_args.model_init_kwargs = {**(grpo_args.model_init_kwargs or {}),
                                       "dtype": compute if lora is not None else "float32"}
        placeholder = Dataset.from_dict({"prompt": ["(rows come from the engine)"]})
        self.trainer = GRPOTrainer(
            model=model_path,
            reward_funcs=[_engine_reward],
            args=grpo_args,
            train_dataset=placeholder,
            processing_class=tokenizer,
            peft_config=lora,
            rollout_func=self._rollout_func,
        )
        self.args = grpo_args
        if sampler_is_separate_engine:
            # Rollouts come from a separate inference engine (vLLM) whose log-probs can drift from the
            # trainer's. TRL applies its importance-sampling correction (and logs the mismatch,
            # sampling/sampling_logp_difference) only when it believes it drives vLLM itself; it then
            # asks that vLLM to sync — a no-op here, since the engine's loop syncs its own sampler.
            self.trainer.use_vllm = True
            self.trainer.vllm_generation = _LoopSyncsWeights()
            self.trainer._last_loaded_step = -1
        self.total_steps = max(1, total_steps)
        self._chunk_logps(logps_chunk_tokens)
        self._prepare_like_train(DTYPES[compute], lora)
        self.trainer.current_gradient_accumulation_steps = grpo_args.gradient_accumulation_steps
        self.trainer.model.train()
        self.trackers = self._tracker_callbacks()
        for tracker in self.trackers:
            tracker.on_train_begin(self.args, self.trainer.state, self.trainer.control, model=self.trainer.model)

    def _chunk_logps(self, setting: int) -> None:
        """Put ``engine.chunked_logps`` under TRL's fused head on the policy and the reference (under LoRA
        the reference is the same module, adapter off); refused where it cannot stand in for TRL's head and
        was asked for by number, left to TRL's head there under auto."""
        trainer = self.trainer
        if setting == 0:
            return
        policy = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
        why = "FSDP shards the output layer (TRL's fused head gathers it)" if self.sharded else chunked_logps.unsupported(policy)
        if why:
            if setting > 0:
                raise ConfigError(f"logps_chunk_tokens {setting}: the chunked log-prob path does not support {why}; "
                                  f"set --logps_chunk_tokens 0 (TRL's fused head) or -1 (auto)")
            return
        bonus = self.args.entropy_coef != 0 or self.args.use_adaptive_entropy  # the only entropy with a gradient
        for model, entropy in ((policy, True), (trainer.ref_model, False)):  # TRL asks entropies of the policy only
            if model is not None:
                chunked_logps.install(model, setting=setting, temperature=trainer.temperature, entropy=entropy,
                                      entropy_grad=entropy and bonus, cast_lm_head_to_fp32=self.args.cast_lm_head_to_fp32)

    def _prepare_like_train(self, compute_dtype: torch.dtype, lora) -> None:
        """What ``Trainer.train()`` sets up before its loop (module docstring), for the engine's own loop."""
        trainer, args = self.trainer, self.args
        model = trainer.model
        for param in model.parameters():      # float32 masters for whatever the optimizer updates
            if param.requires_grad and param.dtype != torch.float32:
                param.data = param.data.float()
        if trainer.ref_model is not None and not self.sharded:  # the frozen KL reference needs no float32 copy
            trainer.ref_model.to(compute_dtype)  # (under FSDP it is sharded, and its mixed precision casts it)
        dropout = next((f for f in ("lora_dropout", "tinylora_dropout") if getattr(lora, f, 0) > 0), None)
        if dropout:
            # TRL's disable_dropout ran after PEFT and zeroed the adapter's dropout too; the user asked for it.
            for name, module in model.named_modules():  # PEFT's ...lora_dropout.<adapter> Dropout modules
                if f".{dropout}." in name and isinstance(module, torch.nn.Dropout):
                    module.p = getattr(lora, dropout)
        if args.gradient_checkpointing:
            kwargs = dict(args.gradient_checkpointing_kwargs or {"use_reentrant": False})
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        trainer.create_optimizer()
        trainer.model_wrapped, trainer.optimizer = trainer.accelerator.prepare(model, trainer.optimizer)
        trainer.create_scheduler(num_training_steps=self.total_steps, optimizer=trainer.optimizer)
        trainer.state.max_steps = self.total_steps

    def _tracker_callbacks(self) -> list:
        """The Trainer's integration callbacks for ``report_to`` (TensorBoard, W&B, ...), which
        ``Trainer.__init__`` already built from the args; the engine calls them for every metrics row."""
        from transformers.integrations import get_reporting_integration_callbacks

        kinds = tuple(get_reporting_integration_callbacks(self.args.report_to))
        return [cb for cb in self.trainer.callback_handler.callbacks if kinds and isinstance(cb, kinds)]

    def log(self, row: dict[str, float]) -> None:
        """Send one metrics row to the ``report_to`` trackers, at the current optimizer step."""
        if not self.trackers:
            return
        logs = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for tracker in self.trackers:
            tracker.on_log(self.args, self.trainer.state, self.trainer.control, logs=logs)

    def close(self) -> None:
        """End of the run: trackers flush and close (TensorBoard's writer, a W&B run)."""
        for tracker in self.trackers:
            tracker.on_train_end(self.args, self.trainer.state, self.trainer.control, model=self.trainer.model)

    @property
    def sharded(self) -> bool:
        """FSDP (``accelerate launch`` with an FSDP config): each rank holds a shard of every weight, gradient
        and optimizer moment, so reading the whole model (checkpoints, the sampler's copy) is a collective."""
        return bool(self.trainer.is_fsdp_enabled)

    @property
    def optimizer_steps(self) -> int:
        """Optimizer steps taken so far (``num_iterations`` per update, GRPO's mu)."""
        return self.trainer.state.global_step

    @property
    def finished(self) -> bool:
        """``max_steps`` optimizer steps taken (when the user set it): the loop stops."""
        return self.args.max_steps > 0 and self.optimizer_steps >= self.args.max_steps

    @property
    def model(self):
        """The live policy module (PEFT-wrapped under LoRA): samplers generate from it directly."""
        return self.trainer.model

    # The rest of ``engine.types.GradientSource``: what a stage may read of TRL's trainer, named here
    # so that filters/ never reaches into it.

    @property
    def optimizer(self):
        """TRL's optimizer, as accelerate prepared it (the influence selector preconditions with its Adam state)."""
        return self.trainer.optimizer

    @property
    def tokenizer(self):
        """The tokenizer TRL was given (its ``processing_class``)."""
        return self.trainer.processing_class

    @property
    def temperature(self) -> float:
        """The temperature TRL divides the logits by before its log-probs (``GRPOConfig.temperature``)."""
        return self.args.temperature

    @property
    def scale_rewards(self) -> str | bool:
        """TRL's advantage scaling, ``group`` | ``batch`` | ``none`` (``GRPOConfig.scale_rewards``)."""
        return self.args.scale_rewards

    def _rollout_func(self, prompts, trainer) -> dict:
        batch = self._pending
        assert batch is not None and len(prompts) == len(batch), "rollout_func called outside update()"
        out = {
            "prompt_ids": batch.prompt_ids,
            "completion_ids": batch.completion_ids,
            "logprobs": batch.logprobs,
            "engine_reward": batch.rewards,
        }
        return out

    def update(self, batch: Batch, grad_filter: GradientFilter | None = None) -> dict[str, float]:
        """One optimizer step (or ``num_iterations`` of them, GRPO's μ) on ``batch``; TRL's metrics back.

        ``grad_filter`` (``engine.types.GradientFilter``: the influence selector's update stage) gets
        every optimizer step's per-row gradients, all its micro-batches together, after the last backward, and
        may take rows out of ``.grad`` before the optimizer steps; it reads the policy as a ``GradientSource``."""
        args, trainer = self.args, self.trainer
        # Fewer groups than configured is fine (filters may leave a short batch at the end of a run); TRL
        # computes advantages over whole groups, then splits the rows evenly over the accumulation steps.
        if len(batch) % args.steps_per_generation or batch.n_per_group != args.num_generations:
            raise ValueError(
                f"batch of {len(batch)} rows x {batch.n_per_group} per group does not fit the trainer: groups of "
                f"num_generations = {args.num_generations} rows, a multiple of steps_per_generation = "
                f"{args.steps_per_generation} rows in all"
            )
        self._pending = batch
        rows = [{"prompt": str(i)} for i in range(len(batch))]
        losses, steps = [], 0
        recorded: list[tuple] = []  # (per-row gradients, advantages, normaliser weights) per micro-batch
        model = trainer.model_wrapped
        try:
            micro_steps = args.steps_per_generation * args.num_iterations
            for micro in range(micro_steps):
                if self.finished:
                    break
                last = (micro + 1) % args.gradient_accumulation_steps == 0
                trainer.accelerator.gradient_state._set_sync_gradients(last)  # as Trainer's loop does
                with trainer.accelerator.no_sync(model) if not last else contextlib.nullcontext():
                    if grad_filter is None:
                        losses.append(trainer.training_step(model, rows, None).item())
                    else:
                        losses.append(self._filtered_step(rows, grad_filter, recorded).item())
                if last:
                    if grad_filter is not None:  # the whole step's rows, scored together (update_stage)
                        grad_filter.filter_gradients(*zip(*recorded), self)
                        recorded.clear()
                    self._optimizer_step()
                    steps += 1
        finally:
            self._pending = None
        metrics = {f"train/{k}": sum(v) / len(v) for k, v in trainer._metrics["train"].items() if v}
        trainer._metrics["train"].clear()
        # training_step returns each micro-batch's share of its optimizer step's loss (already divided by
        # gradient accumulation), so an optimizer step's loss is the sum of its micro-batches' returns.
        metrics["train/loss"] = sum(losses) / max(1, steps)
        metrics["train/lr"] = trainer.lr_scheduler.get_last_lr()[0]
        metrics["train/optimizer_steps"] = self.optimizer_steps
        if grad_filter is not None:
            metrics.update(grad_filter.last_metrics)
        return metrics

    def _filtered_step(self, rows, grad_filter: GradientFilter, recorded: list[tuple]):
        """One micro-step with per-row gradients recorded during TRL's own backward; appends them to
        ``recorded`` with the rows' advantages and normaliser weights (TRL shuffles rows between
        micro-batches, so both are read from its inputs). ``grad_filter.filter_gradients`` gets the whole
        optimizer step's rows after its last micro-step (``update``)."""
        trainer = self.trainer
        seen = {}
        compute_loss = trainer.compute_loss

        def reading_advantages(model, inputs, *args, **kwargs):
            seen["advantages"] = inputs["advantages"]
            seen["weights"] = normaliser_weights(self.args.loss_type, inputs["completion_mask"])
            return compute_loss(model, inputs, *args, **kwargs)

        trainer.compute_loss = reading_advantages
        try:
            with grad_filter.capture(trainer.model) as rec:
                loss = trainer.training_step(trainer.model_wrapped, rows, None)
        finally:
            del trainer.compute_loss                   # the class's own method again
        recorded.append((rec, seen["advantages"], seen["weights"]))
        return loss

    def _optimizer_step(self) -> None:
        """Clip, step, schedule — as ``Trainer.train()`` does: with fp16 the prepared optimizer unscales the
        gradients first and skips a step whose gradients overflowed; the scheduler then does not advance."""
        trainer = self.trainer
        if self.args.max_grad_norm and self.args.max_grad_norm > 0:
            norm = trainer.accelerator.clip_grad_norm_(trainer.model.parameters(), self.args.max_grad_norm)
            trainer._metrics["train"]["grad_norm"].append(float(norm))
        trainer.optimizer.step()
        if trainer.accelerator.optimizer_step_was_skipped:
            trainer._metrics["train"]["skipped_steps"].append(1.0)
        else:
            trainer.lr_scheduler.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.state.global_step += 1

    def save(self, path: str | Path) -> None:
        """The adapter (LoRA) or full weights, plus the tokenizer, loadable with ``from_pretrained``."""
        self.trainer.save_model(str(path))

    # The transformers TrainerState counters TRL's update reads or reports (``train/num_tokens``).
    _COUNTERS = ("global_step", "num_input_tokens_seen", "total_flos", "epoch")

    def state_dict(self) -> dict:
        """Everything an update depends on, for checkpoints: trainable weights (the frozen base stays on
        disk), TRL's optimizer and scheduler, and the trainer's counters.

        Under FSDP every rank must call it (gathering the shards is a collective) and rank 0 alone gets the
        whole weights and optimizer state, on CPU, keyed as in one process (torch's full-state-dict API)."""
        trainer = self.trainer
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                                 get_optimizer_state_dict)

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            full = get_model_state_dict(self.model, options=options)
            weights = {n: full[n] for n in names if n in full}
            optimizer = get_optimizer_state_dict(self.model, trainer.optimizer.optimizer, options=options)
        else:
            params = dict(self.model.named_parameters())
            weights = {n: params[n].detach().cpu() for n in names}
            optimizer = trainer.optimizer.state_dict()
        return {"weights": weights, "optimizer": optimizer, "scheduler": trainer.lr_scheduler.state_dict(),
                "counters": {k: getattr(trainer.state, k) for k in self._COUNTERS}, "micro_step": trainer._step}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` gave; under FSDP every rank passes the whole state and keeps its shard."""
        params = dict(self.model.named_parameters())
        unknown = sorted(set(state["weights"]) - set(params))
        if unknown:
            raise ValueError(f"the checkpoint holds weights this model does not have: {unknown[:5]}")
        trainer = self.trainer
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                                 set_optimizer_state_dict)

            options = StateDictOptions(full_state_dict=True, strict=False)  # strict: buffers are not saved
            set_model_state_dict(self.model, state["weights"], options=options)
            set_optimizer_state_dict(self.model, trainer.optimizer.optimizer, state["optimizer"], options=options)
        else:
            distributed.load_full_state(self.model, state["weights"])
            trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.lr_scheduler.load_state_dict(state["scheduler"])
        for key, value in state["counters"].items():
            setattr(trainer.state, key, value)
        trainer._step = state["micro_step"]


# TRL 1.16's loss types by what their normaliser counts (GRPOTrainer._compute_loss): completion tokens, or rows.
TOKEN_NORMALISED = ("dapo", "bnpo", "cispo", "vespo")
ROW_NORMALISED = ("grpo", "sapo", "dr_grpo", "luspo")


def normaliser_weights(loss_type: str, completion_mask: torch.Tensor) -> torch.Tensor:
    """(B,) each row's share of TRL's loss normaliser: its completion tokens where the loss divides by the
    tokens (``dapo``, ``bnpo``, ...), 1 where it averages rows (``grpo``, ``dr_grpo``, ...). The influence
    selector's update stage uses it to take a dropped row out of the normaliser as well as the gradient."""
    if loss_type in TOKEN_NORMALISED:
        return completion_mask.detach().float().sum(-1).cpu()
    if loss_type in ROW_NORMALISED:
        return torch.ones(completion_mask.shape[0])
    raise ValueError(f"loss_type {loss_type!r}: the influence selector does not know what its normaliser counts; "
                     f"known: {', '.join(TOKEN_NORMALISED + ROW_NORMALISED)}")


def accumulation_unit(gradient_accumulation_steps: int, n_train: int, ranks: int = 1) -> int:
    """Fewest groups an update can take: TRL splits each rank's rows into ``gradient_accumulation_steps``
    equal micro-batches (GA / gcd(GA, n_train) groups of ``n_train`` rows), and every rank takes an equal share.

    >>> accumulation_unit(32, 32), accumulation_unit(8, 2), accumulation_unit(8, 2, ranks=2)
    (1, 4, 8)
    """
    return ranks * (gradient_accumulation_steps // math.gcd(gradient_accumulation_steps, n_train))


def optimizer_steps_for(episodes: int, n_tasks: int, prompts_per_step: int, gradient_accumulation_steps: int = 1,
                        num_iterations: int = 1, max_steps: int = -1, n_train: int = 1, ranks: int = 1) -> int:
    """Optimizer steps a run takes when no group is filtered out: the length of its learning-rate schedule.

    The prompt stream crosses episode boundaries (``engine.loop.PromptStream``), so the run sees
    ``episodes * n_tasks`` prompts in updates of ``prompts_per_step``; a short last update keeps the groups
    whose ``n_train`` rows split evenly over ``gradient_accumulation_steps`` (none if too few are left); each update takes
    ``num_iterations`` optimizer steps (GRPO's mu); ``max_steps`` (> 0) caps the total. Under torchrun
    (``ranks`` > 1) the short last update keeps a multiple of ``ranks`` such units, one share per rank. Filters that drop
    groups refill them from the stream, which can only end the run in fewer steps than this.

    >>> optimizer_steps_for(episodes=2, n_tasks=30, prompts_per_step=8)    # 60 prompts: 7 full + 4 left
    8
    >>> optimizer_steps_for(episodes=2, n_tasks=30, prompts_per_step=8, gradient_accumulation_steps=8, num_iterations=2)
    14
    >>> optimizer_steps_for(episodes=2, n_tasks=30, prompts_per_step=8, gradient_accumulation_steps=8, n_train=2)
    8
    >>> optimizer_steps_for(episodes=80, n_tasks=30, prompts_per_step=8, max_steps=5)
    5
    """
    prompts = episodes * n_tasks
    last = prompts % prompts_per_step
    unit = accumulation_unit(gradient_accumulation_steps, n_train, ranks)
    updates = prompts // prompts_per_step + (1 if last - last % unit > 0 else 0)
    steps = updates * num_iterations
    return min(steps, max_steps) if max_steps > 0 else steps
