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
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

from tqdm.auto import tqdm

from engine.rundir import checkpoint
from engine.config.options import Config
from engine.evaluate import evaluate, grade
from engine.registry import resolve, spec_name
from engine.types import RolloutGroup, SamplingParams, Task
from engine.rundir.report import write_report
from engine.update import Batch
from filters import FILTERS, SELECTORS
from filters.stage import apply_filters, build_filters
from rewards import build_reward, is_correct


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
    compute = {"tokens/generated": 0, "tokens/trained": 0, "time/generate_s": 0.0, "time/reward_s": 0.0,
               "time/update_s": 0.0, "time/eval_s": 0.0}
    saves = {"count": 0, "seconds": 0.0, "mb": 0.0}
    run_start = time.perf_counter()

    def run_eval(tag: str) -> dict[str, float]:
        start = time.perf_counter()
        result = evaluate(sampler, tasks, k=cfg.eval.eval_k, params=eval_params, greedy=cfg.eval.eval_greedy,
                          answer_type=t.answer_type)
        compute["time/eval_s"] += time.perf_counter() - start
        log(f"[{tag}] " + "  ".join(f"{k}={v:.3f}" for k, v in result.items() if k.startswith("accuracy/")))
        return result

    filter_stages = build_filters(t.filters, FILTERS)
    # GRESO skips prompts before sampling them; in monitor mode it only counts what it would skip
    # (the expected number, from its skip_probability: no draw, so the run's random stream is untouched).
    skip_stages = [stage for stage in filter_stages if hasattr(stage.fn, "skip")]
    skippers = [stage.fn for stage in skip_stages if stage.mode == "enforce"]
    watchers = [stage for stage in skip_stages if stage.mode == "monitor"]
    stream = PromptStream(train_tasks, t.episodes, rng)

    # Resume: a checkpoint in out_dir puts every piece of state back as it was after its step, and
    # metrics.jsonl is cut back to that step (rows written after it are written again, identically).
    resumed = checkpoint.find(out_dir)
    if resumed is not None:
        state = checkpoint.load(resumed, policy=policy, rng=rng)
        before, history, step = state["before"], state["history"], state["step"]
        compute.update(state["compute"])
        saves.update(state["saves"])
        stream.load_state_dict(state["stream"])
        for stage in filter_stages:
            if hasattr(stage.fn, "load_state_dict"):
                stage.fn.load_state_dict(state["filters"][stage.name])
        run_start -= state["elapsed_s"]
        sampler.load_weights(policy.model)
        log(f"resumed from {resumed} after step {step} (episode {stream.episode}, {len(history) - 1} rows)")
    else:
        before = run_eval("before")
        history = [{"step": 0, **before, **cumulative(compute)}]
        step = 0
    _truncate_jsonl(out_dir / "metrics.jsonl", len(history) - 1)
    metrics_file = (out_dir / "metrics.jsonl").open("a", encoding="utf-8")

    def save_checkpoint() -> None:
        loop_state = {"before": before, "history": history, "step": step, "compute": compute, "saves": saves,
                      "stream": stream.state_dict(), "elapsed_s": time.perf_counter() - run_start,
                      "filters": {s.name: s.fn.state_dict() for s in filter_stages if hasattr(s.fn, "state_dict")}}
        cost = checkpoint.save(out_dir, policy=policy, rng=rng, loop_state=loop_state)
        saves.update(count=saves["count"] + 1, seconds=saves["seconds"] + cost["checkpoint/seconds"],
                     mb=cost["checkpoint/mb"])

    # Ctrl-C: finish the step in flight, checkpoint, then stop (a second Ctrl-C stops at once).
    interrupted = threading.Event()
    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        def on_sigint(signum, frame):
            if interrupted.is_set():
                raise KeyboardInterrupt
            interrupted.set()
            log("Ctrl-C: finishing this step, then saving a checkpoint (Ctrl-C again to stop at once)")
        previous_handler = signal.signal(signal.SIGINT, on_sigint)

    bar = tqdm(total=len(tasks) * t.episodes, initial=stream.prompts_taken, desc="TTRL prompts", unit="prompt",
               disable=not t.progress)
    try:
        while not stream.exhausted and not policy.finished:  # finished: --max_steps optimizer steps taken
            finished_at_start = stream.episodes_finished
            # "step": optimizer steps taken once this row's work is done (a row whose groups were all
            # filtered out takes none); "iteration": the row's own number.
            row: dict[str, float] = {"step": step, "iteration": len(history)}
            sampled: list[RolloutGroup] = []
            kept: list[RolloutGroup] = []
            counts: dict[str, float] = {"prompts/skipped": 0, "time/generate_s": 0.0, "time/reward_s": 0.0,
                                        "tokens/generated": 0, "sampling/rounds": 0}

            # 1-2. Sample n_votes rollouts per prompt, score them (majority vote), filter the groups.
            #      Dropped groups are replaced by fresh prompts (DAPO dynamic sampling), up to
            #      max_refill_rounds extra rounds, so they cost sampling but never a backward pass.
            for _ in range(1 + t.max_refill_rounds):
                batch_tasks, skipped = stream.take(
                    t.prompts_per_step - len(kept), skip=lambda task: any(s.skip(task.id, rng) for s in skippers))
                counts["prompts/skipped"] += skipped
                for stage in watchers:
                    key = f"filters/{stage.name}/would_skip"
                    counts[key] = counts.get(key, 0.0) + sum(stage.fn.skip_probability(task.id) for task in batch_tasks)
                bar.update(len(batch_tasks) + skipped)
                if not batch_tasks:
                    break
                start = time.perf_counter()
                groups = sampler.generate(batch_tasks, rollout_params, desc=f"step {step + 1} sample")
                counts["time/generate_s"] += time.perf_counter() - start
                counts["tokens/generated"] += sum(len(r.token_ids) for grp in groups for r in grp.rollouts)
                start = time.perf_counter()
                for grp in groups:
                    apply_reward(reward_fn, t.reward, grp)
                counts["time/reward_s"] += time.perf_counter() - start
                counts["sampling/rounds"] += 1
                sampled += groups
                survivors, filter_counts = apply_filters(filter_stages, groups)
                kept += survivors
                for key, value in filter_counts.items():
                    counts[key] = counts.get(key, 0) + value
                if len(kept) >= t.prompts_per_step:
                    break
            row.update(counts)
            if sampled:  # else the stream ended on prompts GRESO skipped: a row that records them
                row.update(telemetry(sampled, labels, t.answer_type))
            for stage in skip_stages:
                row.update(stage.fn.end_step())
            # TRL splits a batch's rows into gradient_accumulation_steps equal parts: train on whole groups
            # whose rows make a multiple (unit groups: GA / gcd(GA, n_train)).
            unit = g.gradient_accumulation_steps // math.gcd(g.gradient_accumulation_steps, t.n_train)
            survived = len(kept)
            kept = kept[: survived - survived % unit]
            row.update({"prompts/sampled": len(sampled), "groups/dropped": len(sampled) - len(kept),
                        "groups/trained": len(kept), "groups/cut_for_accumulation": survived - len(kept)})
            if survived > len(kept):
                log(f"iteration {len(history)}: {survived - len(kept)} of the {survived} groups that passed the "
                    f"filters left out: gradient_accumulation_steps={g.gradient_accumulation_steps} needs a "
                    f"multiple of {unit} groups of {t.n_train} rows" + ("; no update" if not kept else ""))
            if not kept:
                row.update({"tokens/trained": 0, "time/update_s": 0.0, "update/skipped": 1})
                if sampled and not survived:
                    log(f"iteration {len(history)}: every group was filtered out ({len(sampled)} sampled); no update")
            else:
                step += 1
                row["step"] = step
                # 3. Select the n_train rollouts of each group to train on.
                selections = select_rollouts(select, kept, t.n_train, policy)
                batch = Batch.from_groups(kept, selections)
                row["tokens/trained"] = sum(len(ids) for ids in batch.completion_ids)
                for key, value in getattr(select, "last_metrics", {}).items():
                    row[key] = value

                # 4. GRPO update (TRL), KL-anchored to the base model. The sampler then holds the
                #    updated weights, so the next batch is sampled from the adapted policy.
                start = time.perf_counter()
                row.update(policy.update(batch, grad_filter=getattr(select, "grad_filter", None)))
                row.update(sampler.load_weights(policy.model) or {})  # vLLM reports time/weight_sync_s
                row["time/update_s"] = time.perf_counter() - start
                row["update/skipped"] = 0
            row["episode"] = stream.episode - 1
            row["memory/rss_mb"] = rss_mb()
            for key in ("tokens/generated", "tokens/trained", "time/generate_s", "time/reward_s", "time/update_s"):
                compute[key] += row[key]
            row.update(cumulative(compute))
            if kept and cfg.eval.eval_every and step % cfg.eval.eval_every == 0:
                row.update(run_eval(f"step {step}"))
            history.append(row)
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()
            policy.log(row)  # the --report_to trackers (TensorBoard, W&B, ...)
            if (interrupted.is_set() or stream.episodes_finished > finished_at_start
                    or (kept and t.save_every and step % t.save_every == 0)):  # every save_every optimizer steps
                save_checkpoint()
            if interrupted.is_set():
                raise KeyboardInterrupt(f"checkpoint saved after step {step}; continue with "
                                        f"`ttrl run --resume {out_dir}`")
            if kept:
                log(f"step {step}: reward={row['reward/mean']:.3f} majority_ratio={row['vote/majority_ratio']:.3f}"
                    + (f" label_acc={row['label_accuracy']:.3f}" if "label_accuracy" in row else "")
                    + f" trained {len(kept)}/{len(sampled)} groups"
                    + f" kl={row.get('train/kl', float('nan')):.4f} loss={row['train/loss']:.4f}")
    finally:
        bar.close()
        metrics_file.close()
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)

    after = run_eval("after")
    history.append({"step": step, **after})
    policy.log({f"after/{k}": v for k, v in after.items()})
    policy.close()
    compute["time/total_s"] = time.perf_counter() - run_start
    compute["steps"] = step
    policy.save(out_dir / "adapter")
    summary = {"before": before, "after": after, "compute": compute, "telemetry": summarize_telemetry(history),
               "checkpoints": saves, "config": cfg.to_dict()}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    write_report(out_dir, summary, history)
    return summary


class PromptStream:
    """Test prompts in visiting order: each episode is a fresh shuffle of every task.

    ``take(n)`` hands out the next ``n`` prompts, crossing into the next episode when one runs out
    (so a refill round never stalls at an episode boundary); ``skip`` lets GRESO pass a prompt by.
    """

    def __init__(self, tasks: list[Task], episodes: int, rng: random.Random):
        self.tasks, self.episodes, self.rng = tasks, episodes, rng
        self.episode = 0          # episodes started so far
        self._order: list[Task] = []
        self._pos = 0

    @property
    def exhausted(self) -> bool:
        return self.episode >= self.episodes and self._pos >= len(self._order)

    @property
    def episodes_finished(self) -> int:
        """Episodes whose prompts have all been handed out."""
        return self.episode if self._pos >= len(self._order) else self.episode - 1

    @property
    def prompts_taken(self) -> int:
        return max(0, self.episode - 1) * len(self.tasks) + self._pos

    def state_dict(self) -> dict:
        return {"episode": self.episode, "order": [t.id for t in self._order], "pos": self._pos}

    def load_state_dict(self, state: dict) -> None:
        by_id = {t.id: t for t in self.tasks}
        unknown = [i for i in state["order"] if i not in by_id]
        if unknown:
            raise ValueError(f"the checkpoint's prompt order names tasks this data does not have: {unknown[:5]}")
        self.episode, self._order, self._pos = state["episode"], [by_id[i] for i in state["order"]], state["pos"]

    def take(self, n: int, skip=None) -> tuple[list[Task], int]:
        out: list[Task] = []
        skipped = 0
        while len(out) < n:
            if self._pos >= len(self._order):
                if self.episode >= self.episodes:
                    break
                self._order = self.tasks[:]
                self.rng.shuffle(self._order)
                self._pos = 0
                self.episode += 1
            task = self._order[self._pos]
            self._pos += 1
            if skip is not None and skip(task):
                skipped += 1
            else:
                out.append(task)
        return out, skipped


def rss_mb() -> float:
    """This process's resident memory in MiB (Linux /proc; elsewhere the peak, from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _truncate_jsonl(path: Path, rows: int) -> None:
    """Keep the first ``rows`` lines of ``path`` (the rows a checkpoint covers); no file, no rows: nothing."""
    if not path.exists():
        return
    with path.open("rb") as f:
        lines = f.readlines()
    if len(lines) != rows:
        with path.open("wb") as f:
            f.writelines(lines[:rows])


def cumulative(compute: dict[str, float]) -> dict[str, float]:
    """Compute spent so far, on every metrics row: what accuracy-versus-compute curves are drawn from."""
    return {f"compute/{k}": v for k, v in compute.items() if k != "time/eval_s"}


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
    name = spec_name(spec)
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


def summarize_telemetry(history: list[dict]) -> dict[str, dict[str, float]]:
    """First, last and mean of the training signal over the run, for ``summary.json``.

    Falling answer entropy with a flat ``label_accuracy`` is the collapse signal TTRL's follow-ups warn
    about ("rise then fall"); a rising ``label_accuracy`` is the model beating its own early votes.
    """
    keys = ("vote/majority_ratio", "vote/answer_entropy", "vote/distinct_answers", "vote/confident",
            "label_accuracy", "label_precision", "reward_accuracy", "reward/mean")
    out = {}
    for key in keys:
        values = [row[key] for row in history if key in row]
        if values:
            out[key] = {"first": values[0], "last": values[-1], "mean": sum(values) / len(values)}
    return out


def telemetry(groups: list[RolloutGroup], labels: dict[str, str | None], answer_type: str = "math") -> dict[str, float]:
    """Per-step vote statistics, and TTRL's label-quality numbers where true labels exist.

    Every ``group.stats`` key (``vote/majority_ratio``, ``vote/answer_entropy``, ``vote/distinct_answers``,
    ``vote/confident`` ...) is averaged over the step's groups. ``label_accuracy``: the pseudo-label
    equals the true label (a group without a pseudo-label counts as wrong). ``label_precision``: the
    same over the groups that got a pseudo-label (a confidence-gated vote abstains on the rest; NaN if
    none did). ``reward_accuracy``: a rollout's pseudo-reward equals the 0/1 reward the true label would
    give it (TTRL §4.3, "lucky hits": it stays high even when label accuracy is low, because wrong
    answers get 0 under both; a soft reward only matches where it is exactly 0 or 1).
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
        right = [is_correct(grp.label, labels[grp.task.id], answer_type) for grp in labeled]
        out["label_accuracy"] = sum(right) / len(labeled)
        with_label = [ok for ok, grp in zip(right, labeled) if grp.label is not None]
        out["label_precision"] = sum(with_label) / len(with_label) if with_label else float("nan")
        hits = [float(r.reward) == float(ok) for grp in labeled
                for r, ok in zip(grp.rollouts, grade(grp, labels[grp.task.id], answer_type))]
        out["reward_accuracy"] = sum(hits) / len(hits)
    return out
