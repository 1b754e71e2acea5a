"""The TTRL loop, top to bottom: sample → vote → select → GRPO update, over episodes of test prompts.

Test-Time Reinforcement Learning (Zuo et al., 2025, arXiv 2504.16084) adapts a model to *unlabeled*
test inputs: for each prompt it samples ``n_votes`` rollouts, takes the majority answer as a
pseudo-label, rewards the rollouts that agree with it (1) and the rest (0), and runs a GRPO update on
``n_train`` of them with a small KL anchor to the base model. Labels, where the user has them, are
used for evaluation and telemetry only: training stages see ``task.unlabeled()`` copies.

This module never imports vllm or trl: it is handed a ``sampler`` (``engine.types.Sampler``) and a
``policy`` (``engine.update.GRPOPolicy``), so every backend runs the same loop.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

from tqdm.auto import tqdm

from engine.config import Config
from engine.evaluate import evaluate, grade
from engine.registry import resolve
from engine.types import RolloutGroup, SamplingParams, Task
from engine.update import Batch
from filters import SELECTORS
from rewards import build_reward


class RewardError(RuntimeError):
    """A reward function failed or returned something unusable; names the reward, task and value."""


def run(cfg: Config, *, sampler, policy, tasks: list[Task], out_dir: Path, log=tqdm.write) -> dict:
    """Adapt ``policy`` to ``tasks``; write metrics, summary, report and adapter under ``out_dir``."""
    g, t = cfg.grpo, cfg.ttrl
    reward_fn = build_reward(t.reward, answer_type=t.answer_type)
    select = resolve(t.selector, SELECTORS, "selectors")
    labels = {task.id: task.label for task in tasks}             # evaluation and telemetry only
    train_tasks = [task.unlabeled() for task in tasks]            # what the training stages see
    rollout_params = SamplingParams(n=t.n_votes, temperature=g.temperature, top_p=g.top_p,
                                    max_new_tokens=g.max_completion_length)
    eval_params = SamplingParams(n=cfg.eval.eval_k, temperature=cfg.eval.eval_temperature or g.temperature,
                                 top_p=g.top_p, max_new_tokens=cfg.eval.eval_max_tokens or g.max_completion_length)
    rng = random.Random(g.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_file = (out_dir / "metrics.jsonl").open("a", encoding="utf-8")
    compute = {"tokens/generated": 0, "tokens/trained": 0, "time/generate_s": 0.0, "time/reward_s": 0.0,
               "time/update_s": 0.0, "time/eval_s": 0.0}
    run_start = time.perf_counter()

    def run_eval(tag: str) -> dict[str, float]:
        start = time.perf_counter()
        result = evaluate(sampler, tasks, k=cfg.eval.eval_k, params=eval_params, greedy=cfg.eval.eval_greedy)
        compute["time/eval_s"] += time.perf_counter() - start
        log(f"[{tag}] " + "  ".join(f"{k}={v:.3f}" for k, v in result.items() if k.startswith("accuracy/")))
        return result

    before = run_eval("before")
    history = [{"step": 0, **before}]
    step = 0
    steps_per_episode = math.ceil(len(tasks) / t.prompts_per_step)
    bar = tqdm(total=t.episodes * steps_per_episode, desc="TTRL steps", disable=not t.progress)
    try:
        for episode in range(t.episodes):
            for batch_tasks in episode_batches(train_tasks, t.prompts_per_step, rng):
                step += 1
                row: dict[str, float] = {"step": step, "episode": episode}

                # 1. Sample n_votes rollouts per prompt.
                start = time.perf_counter()
                groups = sampler.generate(batch_tasks, rollout_params, desc=f"step {step} sample")
                row["time/generate_s"] = time.perf_counter() - start
                row["tokens/generated"] = sum(len(r.token_ids) for grp in groups for r in grp.rollouts)

                # 2. Reward: the majority vote's pseudo-label (or the user's reward).
                start = time.perf_counter()
                for grp in groups:
                    apply_reward(reward_fn, t.reward, grp)
                row["time/reward_s"] = time.perf_counter() - start
                row.update(telemetry(groups, labels))

                # 3. Select the n_train rollouts of each group to train on.
                selections = select_rollouts(select, groups, t.n_train, policy)
                batch = Batch.from_groups(groups, selections)
                row["tokens/trained"] = sum(len(ids) for ids in batch.completion_ids)

                # 4. GRPO update (TRL), KL-anchored to the base model. The sampler reads the same
                #    module, so the next batch is sampled from the updated weights.
                start = time.perf_counter()
                row.update(policy.update(batch))
                sampler.load_weights(policy.model)
                row["time/update_s"] = time.perf_counter() - start

                if cfg.eval.eval_every and step % cfg.eval.eval_every == 0:
                    row.update(run_eval(f"step {step}"))
                for key in ("tokens/generated", "tokens/trained", "time/generate_s", "time/reward_s", "time/update_s"):
                    compute[key] += row[key]
                history.append(row)
                metrics_file.write(json.dumps(row) + "\n")
                metrics_file.flush()
                bar.update(1)
                log(f"step {step}: reward={row['reward/mean']:.3f} majority_ratio={row['vote/majority_ratio']:.3f}"
                    + (f" label_acc={row['label_accuracy']:.3f}" if "label_accuracy" in row else "")
                    + f" kl={row.get('train/kl', float('nan')):.4f} loss={row['train/loss']:.4f}")
    finally:
        bar.close()
        metrics_file.close()

    after = run_eval("after")
    history.append({"step": step, **after})
    compute["time/total_s"] = time.perf_counter() - run_start
    compute["steps"] = step
    policy.save(out_dir / "adapter")
    summary = {"before": before, "after": after, "compute": compute, "config": cfg.to_dict()}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    from engine.report import write_report

    write_report(out_dir, summary, history)
    return summary


def episode_batches(tasks: list[Task], size: int, rng: random.Random):
    """One episode: every task once, in a fresh random order, ``size`` per step.

    A short last batch is topped up with the episode's first tasks, because the update's batch shape
    is fixed (TRL groups advantages by ``num_generations`` rows).
    """
    order = tasks[:]
    rng.shuffle(order)
    for start in range(0, len(order), size):
        batch = order[start : start + size]
        if len(batch) < size:
            batch += order[: size - len(batch)] * math.ceil(size / max(1, len(order)))
            batch = batch[:size]
        yield batch


def select_rollouts(select, groups: list[RolloutGroup], k: int, policy) -> list[list[int]]:
    """Indices of the ``k`` rollouts to train on, per group.

    A plain selector sees one group at a time. A selector that needs the whole batch and the policy
    (gradient influence scores rollouts against a batch-level direction) has ``select_batch``.
    """
    if hasattr(select, "select_batch"):
        return select.select_batch(groups, k, policy)
    return [select(grp, k) for grp in groups]


def apply_reward(reward_fn, spec, group: RolloutGroup) -> None:
    """Run the reward on one group; anything but one finite float per rollout stops the run."""
    name = spec if isinstance(spec, str) else spec.get("name")
    try:
        values = reward_fn(group)
    except Exception as err:
        raise RewardError(f"reward {name!r} raised on task {group.task.id!r}: {type(err).__name__}: {err}") from err
    values = list(values)
    if len(values) != len(group.rollouts):
        raise RewardError(f"reward {name!r} returned {len(values)} values for the {len(group.rollouts)} "
                          f"rollouts of task {group.task.id!r}")
    for i, v in enumerate(values):
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise RewardError(f"reward {name!r} returned {v!r} for rollout {i} of task {group.task.id!r}")
        group.rollouts[i].reward = float(v)


def telemetry(groups: list[RolloutGroup], labels: dict[str, str | None]) -> dict[str, float]:
    """Per-step vote statistics, and TTRL's label-quality numbers where true labels exist.

    ``label_accuracy``: the pseudo-label equals the true label. ``reward_accuracy``: a rollout's
    pseudo-reward equals the reward the true label would give it (TTRL §4.3, "lucky hits": it stays
    high even when label accuracy is low, because wrong answers get 0 under both).
    """
    rewards = [r for grp in groups for r in grp.rewards]
    mean = sum(rewards) / len(rewards)
    out = {"reward/mean": mean, "reward/std": math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))}
    for key in sorted({k for grp in groups for k in grp.stats}):
        vals = [grp.stats[key] for grp in groups if key in grp.stats]
        out[key] = sum(vals) / len(vals)
    out.setdefault("vote/majority_ratio", float("nan"))
    labeled = [grp for grp in groups if labels.get(grp.task.id) is not None]
    if labeled:
        from rewards import is_correct

        out["label_accuracy"] = sum(is_correct(grp.label, labels[grp.task.id]) for grp in labeled) / len(labeled)
        hits = [float(r.reward) == float(ok) for grp in labeled
                for r, ok in zip(grp.rollouts, grade(grp, labels[grp.task.id]))]
        out["reward_accuracy"] = sum(hits) / len(hits)
    return out
