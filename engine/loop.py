"""The TTRL loop, top to bottom: sample → vote → select → GRPO update, over episodes of test prompts.

Test-Time Reinforcement Learning (Zuo et al., 2025, arXiv 2504.16084) adapts a model to *unlabeled*
test inputs: for each prompt it samples ``n_votes`` rollouts, takes the majority answer as a
pseudo-label, rewards the rollouts that agree with it (1) and the rest (0), and runs a GRPO update on
``n_train`` of them with a small KL anchor to the base model. Labels, where the user has them, are
used for evaluation and telemetry only: training stages see ``task.unlabeled()`` copies. The ``--anchor``
examples (``cfg.anchors``: a few labeled ones held out of the test prompts) are evaluated beside the test
prompts (``anchor/*``) and may be the influence selector's labeled target (LESS, arXiv 2402.04333) and the
guard's snapshot score (``anchor_accuracy``); they are sampled for training only with ``--anchor_train``, the
control that trains on them directly with their true labels (``sample_anchors``).

This module never imports vllm or trl: it is handed a ``sampler`` (``engine.types.Sampler``) and a
``policy`` (``engine.update.GRPOPolicy``), so every backend runs the same loop. What a run writes
(metrics rows, checkpoints and resume, Ctrl-C, summary and report) is kept by
``engine.rundir.record.RunRecord``, so ``run`` reads as the algorithm.

Under ``torchrun --nproc_per_node N`` every rank runs this same loop, consistent by construction: every
rank walks the same prompt stream (one seed), takes the same global prompts each sampling round,
samples and scores its contiguous share of them (a group never spans ranks), and all-gathers the
scored groups (``engine.distributed``), so the filters, GRESO's history, refill decisions and telemetry
see the identical global list on every rank. The kept groups are cut to a multiple of N x the
accumulation unit and each rank trains on its own equal contiguous share through accelerate's DDP,
so every rank takes the same optimizer steps (none when nothing was kept).
"""

from __future__ import annotations

import math
import random
import time
from functools import partial
from pathlib import Path

from tqdm.auto import tqdm

from engine import distributed
from engine.config.anchor import selector_spec
from engine.config.options import Config
from engine.drift import start_drift
from engine.errors import ConfigError
from engine.evaluate import evaluate, grade
from engine.registry import resolve, spec_name
from engine.rundir.guard import RunGuard
from engine.rundir.record import RunRecord
from engine.samplers.rounds import UNANIMOUS, sample_groups, vote_counts
from engine.types import (BatchSelector, EndOfStep, FiltersGradients, ReportsMetrics, RolloutGroup, SamplingParams,
                          Skipper, Task)
from engine.update import Batch, accumulation_unit
from filters import FILTERS, SELECTORS
from filters.stage import apply_filters, build_filters
from filters.vote_history import VoteHistory
from rewards import build_reward, is_correct
from rewards.sequential import SequentialVote


class RewardError(RuntimeError):
    """A reward function failed or returned something unusable; names the reward, task and value."""


def run(cfg: Config, *, sampler, policy, tasks: list[Task], out_dir: Path, log=tqdm.write) -> dict:
    """Adapt ``policy`` to ``tasks``; write metrics, summary, report and adapter under ``out_dir``."""
    g, t = cfg.grpo, cfg.ttrl
    if not distributed.is_main():  # one log: rank 0's
        log = quiet
    if t.anchor is not None and not cfg.anchors:
        raise ConfigError(f"anchor {t.anchor}: its examples were not loaded; build the run with "
                          "engine.cli.build.build, which reads them into cfg.anchors")
    score = partial(apply_reward, build_reward(t.reward, answer_type=t.answer_type), t.reward)
    select = resolve(selector_spec(t.selector, cfg.anchors), SELECTORS, "selectors")  # --anchor: a labeled target
    labels = {task.id: task.label for task in tasks}             # evaluation and telemetry only
    params = SamplingParams(n=t.n_votes, temperature=g.temperature, top_p=g.top_p,
                            max_new_tokens=g.max_completion_length)
    # --sequential_vote: round 1 samples the n_train training rows (or vote_round), later rounds vote_round more
    rule = SequentialVote(total=t.n_votes, first=min(t.n_votes, max(t.n_train, t.vote_round)), round_size=t.vote_round,
                          error=t.vote_error, seed=g.seed, answer_type=t.answer_type)
    rng = random.Random(g.seed)
    # drift/*: the last drift_prompts tasks are held out (never trained on), the base's completions decoded now
    tasks, drift = start_drift(tasks, cfg.eval.drift_prompts, sampler, policy.model, g.max_completion_length)
    stages = build_filters(t.filters, FILTERS)
    stream = PromptStream([task.unlabeled() for task in tasks], t.episodes, rng)  # what the training stages see
    votes = VoteHistory(t.answer_type)  # each prompt's majority answer across visits: flip rate, lock-in
    guard = RunGuard(t.guard, score=t.guard_score, votes=votes, out_dir=out_dir, every=t.guard_snapshot_every,
                     keep=t.guard_keep, log=log, writes=distributed.is_main())  # label-free; off without --guard
    record = RunRecord(out_dir, policy=policy, rng=rng, stream=stream, filters=stages, save_every=t.save_every,
                       log=log, watchers={"votes": votes, "guard": guard})
    if not record.resume(sampler):  # a checkpoint in out_dir: continue after its step, as if never stopped
        before = accuracy(cfg, sampler, tasks, record, "before")
        record.begin(before=before)
        guard.snapshot_if_due(0, policy, measured=before)  # the base weights: a rollback may choose them
    bar = tqdm(total=len(tasks) * t.episodes, initial=stream.prompts_taken, desc="TTRL prompts", unit="prompt",
               disable=not t.progress or not distributed.is_main())
    try:
        while not stream.exhausted and not policy.finished and not guard.stopped:  # finished: --max_steps taken
            episodes_finished = stream.episodes_finished
            row = record.new_row()
            # 1-2. Sample n_votes rollouts per prompt (or until the vote is decided), score them (majority vote),
            # filter; refill (DAPO).
            sampled, kept, counts = collect_groups(stream, sampler, params, score, stages, rng, want=t.prompts_per_step,
                                                   rounds=1 + t.max_refill_rounds, progress=bar.update,
                                                   desc=f"step {record.step + 1} sample", votes=t.sequential_vote,
                                                   rule=rule, iteration=row["iteration"],
                                                   drop_unanimous=t.vote_unanimous == "drop")
            row.update(counts)
            if sampled:  # else the stream ended on prompts GRESO skipped: a row that records them
                row.update(telemetry(sampled, labels, t.answer_type))
                row.update(votes.observe(sampled, labels))
                kept = guard.screen(row, sampled, kept)  # skip risky groups, pause this update, or stop the run
            for stage in stages:
                if isinstance(stage.fn, EndOfStep):  # GRESO adapts its skip probability once per step
                    row.update(stage.fn.end_step())
            anchored = []
            if t.anchor_train and kept:  # --anchor_train: labeled anchors join a step that trains, rewarded by their labels
                anchored, anchor_counts = sample_anchors(sampler, cfg.anchors, params, t.anchor_train, row["iteration"],
                                                         t.answer_type)
                for key, value in anchor_counts.items():
                    row[key] = row.get(key, 0) + value
            # TRL splits each rank's batch into gradient_accumulation_steps equal parts: train on whole groups
            # that fit, the same number on every rank (the anchors' groups, last, are the first left out).
            kept, group_counts = fit_to_accumulation(sampled + anchored, kept + anchored, g.gradient_accumulation_steps, t.n_train,
                                                     iteration=row["iteration"], log=log,
                                                     ranks=distributed.world_size())
            row.update(group_counts)
            if kept:
                record.step += 1
                row["step"] = record.step
                # 3-4. Select n_train rollouts per group; GRPO update, KL-anchored to the base model.
                row.update(update(policy, sampler, select, distributed.shard(kept), t.n_train))
                if guard.anchored and guard.due(record.step):  # --guard_score anchor_accuracy: the snapshot's weights
                    row.update(anchor_accuracy(cfg, sampler, record, f"step {record.step} snapshot", sample=False))
                guard.snapshot_if_due(record.step, policy, measured=row)
                row.update(drift(policy.model))
            else:
                row.update({"tokens/trained": 0, "time/update_s": 0.0, "update/skipped": 1})
            record.account(row, episode=stream.episode - 1)
            if kept and cfg.eval.eval_every and record.step % cfg.eval.eval_every == 0:
                row.update(accuracy(cfg, sampler, tasks, record, f"step {record.step}"))
            record.commit(row, trained=bool(kept), episode_ended=stream.episodes_finished > episodes_finished)
            if kept:
                log(step_line(record.step, row, trained=len(kept), sampled=len(sampled)))
    finally:
        bar.close()
        record.close()
    rollback = guard.finish(policy, sampler, record.step)  # to the best snapshot by its label-free score, if any
    return record.finish(accuracy(cfg, sampler, tasks, record, "after"), config=cfg.to_dict(), guard=rollback)


def collect_groups(stream: PromptStream, sampler, params: SamplingParams, score, stages, rng: random.Random, *,
                   want: int, rounds: int, progress, desc: str, votes: str = "off", rule: SequentialVote | None = None,
                   iteration: int = 0, drop_unanimous: bool = True) -> tuple[list[RolloutGroup], list[RolloutGroup], dict]:
    """Steps 1-2 of a TTRL step: sample, score and filter up to ``want`` groups, in at most ``rounds`` rounds.

    Each round takes fresh prompts from ``stream``, samples ``params.n`` (n_votes) rollouts for each and
    scores them (``score``: the majority-vote pseudo-reward); the filters then drop groups, and the next
    round replaces them (DAPO dynamic sampling, arXiv 2503.14476), so a dropped group costs sampling but
    never a backward pass. Under torchrun each rank samples and scores its share of a round's prompts and
    the scored groups are all-gathered, so what follows sees the same global list on every rank (the
    reward time then includes waiting for the slowest rank). GRESO skips prompts before sampling them; in monitor mode it only counts what
    it would skip (the expected number, from its skip_probability: no draw, so the run's random stream is
    untouched). With ``votes`` (``--sequential_vote``) ``enforce`` each prompt is sampled in rounds until
    ``rule`` finds its vote decided (``engine.samplers.rounds``; the draws seeded by ``iteration``), and a group
    unanimous after round 1 is dropped, after the filters have seen it (GRESO's history learns it was
    degenerate), and refilled (``sampling/unanimous_dropped``, in ``groups/dropped``) — or, without
    ``drop_unanimous`` (``--vote_unanimous train``), trained on as plain TTRL would; ``monitor`` samples
    all n_votes and counts what the rule would have done. Returns every group sampled, the groups kept, and
    the row's sampling counts.
    """
    skippers = [stage.fn for stage in stages if isinstance(stage.fn, Skipper) and stage.mode == "enforce"]
    watchers = [stage for stage in stages if isinstance(stage.fn, Skipper) and stage.mode == "monitor"]
    sampled: list[RolloutGroup] = []
    kept: list[RolloutGroup] = []
    counts: dict[str, float] = {"prompts/skipped": 0, "time/generate_s": 0.0, "time/reward_s": 0.0,
                                "tokens/generated": 0, "sampling/rounds": 0}
    for _ in range(rounds):
        batch_tasks, skipped = stream.take(want - len(kept),
                                           skip=lambda task: any(s.skip(task.id, rng) for s in skippers))
        counts["prompts/skipped"] += skipped
        for stage in watchers:
            key = f"filters/{stage.name}/would_skip"
            counts[key] = counts.get(key, 0.0) + sum(stage.fn.skip_probability(task.id) for task in batch_tasks)
        progress(len(batch_tasks) + skipped)
        if not batch_tasks:
            break
        start = time.perf_counter()
        groups, rule_s = sample_groups(sampler, distributed.shard(batch_tasks), params, mode=votes, rule=rule,
                                       step=iteration, desc=desc)  # this rank's share (its own rounds, no collective)
        counts["time/generate_s"] += time.perf_counter() - start
        if votes != "off":
            counts["time/vote_rule_s"] = counts.get("time/vote_rule_s", 0.0) + rule_s  # inside time/generate_s
        start = time.perf_counter()
        for grp in groups:
            score(grp)
        groups = distributed.gather_lists(groups)  # every rank's scored groups, in prompt order
        counts["time/reward_s"] += time.perf_counter() - start
        counts["tokens/generated"] += sum(len(r.token_ids) for grp in groups for r in grp.rollouts)
        counts["sampling/rounds"] += 1
        sampled += groups
        survivors, filter_counts = apply_filters(stages, groups)  # every group: GRESO learns the unanimous ones too
        kept += [grp for grp in survivors if not (drop_unanimous and grp.stats.get(UNANIMOUS))]  # no advantage
        for key, value in filter_counts.items():
            counts[key] = counts.get(key, 0) + value
        if len(kept) >= want:
            break
    if votes != "off":
        counts.update(vote_counts(sampled, rule, votes, dropped=drop_unanimous))
    return sampled, kept, counts


def sample_anchors(sampler, anchors: list[Task], params: SamplingParams, n: int, iteration: int,
                   answer_type: str) -> tuple[list[RolloutGroup], dict[str, float]]:
    """``--anchor_train``: ``n`` of the labeled anchors as training groups, rewarded by their true labels.

    The control a user would try before gradient selection: train on the small dev set directly, mixed into
    every step with a correctness reward (1 where the rollout's answer equals the label, ``engine.evaluate.grade``;
    the vote stays on the test prompts). Iteration ``i`` takes anchors ``i*n .. i*n+n-1`` (mod their number), so
    every anchor comes round equally often and a resumed run takes the same ones. Each is sampled ``params.n``
    times like a test prompt; the groups carry the label as their ``label`` and the training stages see the
    task unlabeled. Under torchrun each rank samples and grades its share and the groups are all-gathered (as
    ``collect_groups`` does). Returns the groups and their counts: tokens and seconds added to the step's
    sampling, and ``anchor_train/groups`` and ``anchor_train/reward`` (the share of rollouts right)."""
    start = time.perf_counter()
    chosen = [anchors[(iteration * n + i) % len(anchors)] for i in range(n)]
    mine = distributed.shard(chosen)
    groups = sampler.generate([a.unlabeled() for a in mine], params, desc="anchors")
    for grp, anchor in zip(groups, mine, strict=True):
        for rollout, right in zip(grp.rollouts, grade(grp, anchor.label, answer_type), strict=True):
            rollout.reward = float(right)
        grp.label = anchor.label
    groups = distributed.gather_lists(groups)
    rewards = [r.reward for grp in groups for r in grp.rollouts]
    return groups, {"time/generate_s": time.perf_counter() - start, "anchor_train/groups": len(groups),
                    "tokens/generated": sum(len(r.token_ids) for grp in groups for r in grp.rollouts),
                    "anchor_train/reward": sum(rewards) / len(rewards)}


def fit_to_accumulation(sampled: list[RolloutGroup], kept: list[RolloutGroup], accumulation: int, n_train: int, *,
                        iteration: int, log, ranks: int = 1) -> tuple[list[RolloutGroup], dict[str, int]]:
    """The groups to train on, and the row's group counts; says what was left out.

    TRL splits a batch's rows into gradient_accumulation_steps equal parts: train on whole groups whose
    rows make a multiple (unit groups: GA / gcd(GA, n_train)). With ``ranks`` data-parallel ranks each
    rank trains on an equal share, so the groups kept are a multiple of ``ranks`` units.
    """
    unit = accumulation_unit(accumulation, n_train, ranks)
    survived = len(kept)
    kept = kept[: survived - survived % unit]
    if survived > len(kept):
        log(f"iteration {iteration}: {survived - len(kept)} of the {survived} groups that passed the "
            f"filters left out: gradient_accumulation_steps={accumulation} needs a "
            f"multiple of {unit} groups of {n_train} rows" + (f" over {ranks} ranks" if ranks > 1 else "")
            + ("; no update" if not kept else ""))
    if sampled and not survived:
        log(f"iteration {iteration}: every group was filtered out ({len(sampled)} sampled); no update")
    return kept, {"prompts/sampled": len(sampled), "groups/dropped": len(sampled) - len(kept),
                  "groups/trained": len(kept), "groups/cut_for_accumulation": survived - len(kept)}


def update(policy, sampler, select, groups: list[RolloutGroup], n_train: int) -> dict[str, float]:
    """Steps 3-4: select the ``n_train`` rollouts of each group to train on, then one GRPO update (TRL),
    KL-anchored to the base model. The sampler then holds the updated weights, so the next batch is
    sampled from the adapted policy. Returns the row's update metrics: under torchrun ``groups`` is this
    rank's share, tokens are summed and TRL's train metrics averaged over the ranks, times are this rank's."""
    row: dict[str, float] = {}
    selections = select_rollouts(select, groups, n_train, policy)
    batch = Batch.from_groups(groups, selections)
    row["tokens/trained"] = sum(len(ids) for ids in batch.completion_ids)
    if isinstance(select, ReportsMetrics):
        row.update(select.last_metrics)
    row["tokens/trained"] = distributed.sum_across(row["tokens/trained"])  # every rank's share
    grad_filter = select.grad_filter if isinstance(select, FiltersGradients) else None
    start = time.perf_counter()
    row.update(distributed.mean_across(policy.update(batch, grad_filter=grad_filter)))
    row.update(sampler.load_weights(policy.model) or {})  # vLLM reports time/weight_sync_s
    row["time/update_s"] = time.perf_counter() - start
    row["update/skipped"] = 0
    return row


def accuracy(cfg: Config, sampler, tasks: list[Task], record: RunRecord, tag: str) -> dict[str, float]:
    """Evaluate the current policy on the labeled tasks (``engine.evaluate``), and on the ``--anchor``
    examples where there are any; logs the accuracies under ``tag`` and counts the time as evaluation."""
    e = cfg.eval
    start = time.perf_counter()
    result = evaluate(sampler, tasks, k=e.eval_k, params=eval_params(cfg), greedy=e.eval_greedy,
                      answer_type=cfg.ttrl.answer_type)
    record.compute["time/eval_s"] += time.perf_counter() - start
    if cfg.anchors:
        result.update(anchor_accuracy(cfg, sampler, record, tag, log=False))
    record.log(f"[{tag}] " + "  ".join(f"{k}={v:.3f}" for k, v in result.items() if k.startswith(("accuracy/", "anchor/"))))
    return result


def anchor_accuracy(cfg: Config, sampler, record: RunRecord, tag: str, *, sample: bool = True,
                    log: bool = True) -> dict[str, float]:
    """The current policy on the ``--anchor`` examples, a few labeled ones held out of the test prompts:
    ``anchor/accuracy`` (greedy) and, with ``sample``, ``anchor/avg@k`` (the evaluation's k and temperature;
    its samples draw from the run's random stream, as the evaluation's do). ``sample=False`` is the guard's
    snapshot measurement: greedy only, so measuring leaves the run's random stream untouched."""
    k = cfg.eval.eval_k
    start = time.perf_counter()
    result = evaluate(sampler, cfg.anchors, k=k, params=eval_params(cfg), greedy=True, answer_type=cfg.ttrl.answer_type,
                      sample=sample)
    record.compute["time/eval_s"] += time.perf_counter() - start
    out = {"anchor/accuracy": result["accuracy/greedy"]}
    if sample:
        out[f"anchor/avg@{k}"] = result[f"accuracy/avg@{k}"]
    if log:
        record.log(f"[{tag}] " + "  ".join(f"{key}={v:.3f}" for key, v in out.items()))
    return out


def eval_params(cfg: Config) -> SamplingParams:
    """The evaluation's sampling: eval_k samples at eval_temperature (else the rollouts'), eval_max_tokens."""
    g, e = cfg.grpo, cfg.eval
    return SamplingParams(n=e.eval_k, temperature=e.eval_temperature or g.temperature, top_p=g.top_p,
                          max_new_tokens=e.eval_max_tokens or g.max_completion_length)


def quiet(*_args, **_kwargs) -> None:
    """The log of a rank other than 0: rank 0 says it once."""


def step_line(step: int, row: dict, *, trained: int, sampled: int) -> str:
    """The log line of a step that trained."""
    return (f"step {step}: reward={row['reward/mean']:.3f} majority_ratio={row['vote/majority_ratio']:.3f}"
            + (f" label_acc={row['label_accuracy']:.3f}" if "label_accuracy" in row else "")
            + f" trained {trained}/{sampled} groups"
            + f" kl={row.get('train/kl', float('nan')):.4f} loss={row['train/loss']:.4f}")


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


def select_rollouts(select, groups: list[RolloutGroup], k: int, policy) -> list[list[int]]:
    """Indices of the ``k`` rollouts to train on, per group.

    A plain selector sees one group at a time. A selector that needs the whole batch and the policy
    (gradient influence scores rollouts against a batch-level direction) is a ``BatchSelector``.
    """
    if isinstance(select, BatchSelector):
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
