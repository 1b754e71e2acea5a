"""The run's collapse guard: screen each step with a label-free policy, keep weight snapshots, roll back at the end.

``filters.guard`` holds the rules (``GUARDS``) and the snapshot scores (``SCORES``); this module applies
them to a run (issue 17; TTRL-Guard, arXiv 2605.19444; rise-then-fall, arXiv 2603.08660):

- ``screen``: after a step's vote, the policy sees the row's label-free keys only (``vote/*`` and the
  guard's own ``guard/*``: never ``label/*`` or an accuracy), the sampled groups and the vote history,
  and may skip groups, pause the update, or stop the run. The row gets ``guard/skipped_groups``,
  ``guard/paused`` and ``guard/stop``.
- Snapshots (``guard_snapshot_every`` K > 0): the trainable weights alone (the LoRA adapter, or every
  weight under full fine-tuning; no optimizer state), written as safetensors under ``RUN_DIR/guard/``
  at the start (step 0, the base) and every K optimizer steps. Each snapshot is scored by the guard's
  score over its *window*: the label-free rows sampled from the snapshot's step until the next snapshot
  (the first of them exactly with its weights, the rest with the K-1 updates after it). At most
  ``guard_keep`` scored snapshots are kept (the best) plus the latest, whose window is still open.
  ``--guard_score anchor_accuracy`` reads a measurement instead of votes: the loop evaluates the snapshot's
  own weights on the user's labeled anchors (``--anchor``, greedy) as it is taken, and its ``anchor/*``
  keys open the window (``ANCHORED``) — the only labels a score sees, never the test labels.
- ``finish``: when the policy stopped the run with a rollback (``flip_alarm``), the latest snapshot at or
  before the step the alarming rows started from is loaded; otherwise the snapshot with the best score —
  into the policy and the sampler, before the final evaluation, unless it is the current weights; the
  summary gets the chosen step, its score, every snapshot's score and the reason. The last snapshot's
  window is empty when the run ends on it (no rows were sampled with its weights), so it cannot be chosen:
  the score needs votes (an anchor score's measurement needs none: there the latest may be chosen).

N ranks (torchrun, FSDP, Ray Train): the rows are the same on every rank, so every rank screens, scores and
chooses alike; rank 0 writes the snapshot files (under FSDP every rank joins the gather), and a rollback
loads the file on every rank (``restore``).

Resume: the guard's state (snapshots and their windows, the label-free history, a stop) travels in the
checkpoint's ``watchers``. Snapshot files named by a checkpoint are kept until a later checkpoint no longer
needs them (a checkpoint is swapped in atomically, so the previous one may still be the one a resume
finds until the next is written); on resume, files of steps after the checkpoint are deleted and written
again as the steps are replayed.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from engine import distributed
from engine.distributed import trainable_parameters
from engine.registry import resolve, spec_name
from filters import GUARD_SCORES, GUARDS

SIGNALS = ("vote/", "guard/")  # the only row keys a guard sees: label-free by construction
ANCHORED = ("anchor/",)        # a measurement's keys a snapshot's window may open with: the --anchor examples only
ANCHOR_SCORES = ("anchor_accuracy",)  # the scores that rank a snapshot by that measurement


def label_free(row: dict) -> dict:
    """The keys of ``row`` a guard may read (``vote/*``, ``guard/*``)."""
    return {k: v for k, v in row.items() if k.startswith(SIGNALS)}


class RunGuard:
    """``--guard`` applied to one run; a no-op (no row keys, no snapshots) when ``spec`` is None."""

    def __init__(self, spec, *, score="stability", votes, out_dir: Path, every: int = 0, keep: int = 3,
                 log=print, writes: bool = True):
        self.spec, self.score_spec = spec, score
        self.policy = resolve(spec, GUARDS, "guards") if spec is not None else None
        self.score = resolve(score, GUARD_SCORES, "guard scores")
        self.anchored = spec_name(score) in ANCHOR_SCORES  # each snapshot is measured on the anchors as taken
        self.votes, self.dir, self.every, self.keep, self.log, self.writes = votes, out_dir / "guard", every, keep, log, writes
        self.snapshots: list[dict] = []   # {"step": n, "window": [label-free rows]}, oldest first
        self.history: list[dict] = []     # every screened row's label-free keys
        self.stop_reason: str | None = None
        self.rollback_to: int | None = None  # a stopping policy's rollback: the latest snapshot at or before this step
        self.retired: set[int] = set()    # pruned snapshots whose file a checkpoint may still name
        self.named: list[set[int]] = []   # the snapshot steps of the last two checkpoints

    @property
    def stopped(self) -> bool:
        return self.stop_reason is not None

    # -- the loop's three calls --------------------------------------------------------------------------------

    def screen(self, row: dict, groups: list, kept: list) -> list:
        """The groups to train on this step, after the guard's verdict; adds the ``guard/*`` keys to ``row``."""
        if self.policy is None:
            return kept
        signals = label_free(row)
        if self.snapshots:
            self.snapshots[-1]["window"].append(signals)  # votes sampled since the latest snapshot
        verdict = self.policy(signals, groups, self.votes, self.history)
        train = [] if verdict.action != "train" else [g for g in kept if g.task.id not in verdict.skip]
        out = {"guard/skipped_groups": float(len(kept) - len(train)) if verdict.action == "train" else 0.0,
               "guard/paused": float(verdict.action != "train"), "guard/stop": float(verdict.action == "stop")}
        row.update(out)
        self.history.append({**signals, **out})
        if verdict.action == "stop":
            self.stop_reason = f"step {row.get('step')}: {verdict.reason}"
            if verdict.rollback_steps:  # row["step"]: the updates behind the weights that sampled this row
                self.rollback_to = int(row["step"]) - verdict.rollback_steps + 1
            self.log(f"guard {spec_name(self.spec)}: stopping the run ({verdict.reason})")
        elif verdict.action == "pause":
            self.log(f"guard {spec_name(self.spec)}: no update this step ({verdict.reason})")
        return train

    def due(self, step: int) -> bool:
        """Whether ``snapshot_if_due(step, ...)`` takes a snapshot: at step 0 and every ``every`` optimizer steps."""
        return bool(self.every) and not step % self.every and not any(s["step"] == step for s in self.snapshots)

    def snapshot_if_due(self, step: int, policy, measured: dict | None = None) -> None:
        """Take a snapshot at step 0 (the base weights) and every ``every`` optimizer steps. ``measured``: the
        metrics of these very weights (the before-evaluation, or the row of the step the snapshot ends); when
        the score is an anchor score its ``anchor/*`` keys open the snapshot's window."""
        if not self.due(step):
            return
        if self.writes or getattr(policy, "sharded", False):  # under FSDP the gather is a collective: every rank joins
            weights = trainable_parameters(policy.model, "cpu")
            if self.writes:
                self.dir.mkdir(parents=True, exist_ok=True)
                save_file({n: t.contiguous() for n, t in weights.items()}, self.path(step))
        opening = {k: v for k, v in (measured or {}).items() if k.startswith(ANCHORED)}
        self.snapshots.append({"step": step, "window": [opening] if self.anchored and opening else []})
        self.prune()

    def finish(self, policy, sampler, step: int) -> dict | None:
        """Roll back to the snapshot before a stopping policy's alarm, else to the best-scored snapshot
        (module docstring); the summary's ``guard`` entry."""
        if self.policy is None:
            return None
        scores = [{"step": s["step"], "score": self.score(s["window"]), "rows": len(s["window"])}
                  for s in self.snapshots]
        summary = {"policy": spec_name(self.spec), "score": spec_name(self.score_spec), "snapshots": scores,
                   "stopped": self.stop_reason, "paused_steps": int(sum(r["guard/paused"] for r in self.history)),
                   "skipped_groups": int(sum(r["guard/skipped_groups"] for r in self.history)), "rolled_back": False}
        if self.rollback_to is not None:
            return self.roll_back_before_alarm(policy, sampler, step, summary)
        ranked = [s for s in scores if not math.isnan(s["score"])]
        if not self.every:
            summary["reason"] = "no snapshots (guard_snapshot_every 0): the final weights are kept"
        elif not ranked:
            summary["reason"] = "no snapshot has a scored window (no rows were sampled after any): the final weights are kept"
        else:
            best = max(ranked, key=lambda s: (s["score"], s["step"]))  # ties: the later snapshot
            summary["chosen"] = {"step": best["step"], "score": best["score"]}
            if best["step"] == step:
                summary["reason"] = f"the final weights (step {step}) score best ({best['score']:.4f})"
            else:
                self.restore(best["step"], policy, sampler)
                summary["rolled_back"] = True
                summary["reason"] = (f"rolled back from step {step} to step {best['step']}: the best {self.score_name} "
                                     f"score of {len(ranked)} scored snapshots ({best['score']:.4f})")
            self.log(f"guard: {summary['reason']}")
        return summary

    def roll_back_before_alarm(self, policy, sampler, step: int, summary: dict) -> dict:
        """The policy stopped the run on an alarm raised by the rows sampled from step ``rollback_to`` on:
        load the latest snapshot taken at or before it (the weights the votes started moving from)."""
        before = [s["step"] for s in self.snapshots if s["step"] <= self.rollback_to]
        if not before:
            summary["reason"] = (f"{self.stop_reason}; no snapshot at or before step {self.rollback_to} is kept "
                                 f"(guard_snapshot_every {self.every}, guard_keep {self.keep}): the final weights are kept")
        else:
            chosen = max(before)
            summary["chosen"] = {"step": chosen, "score": None}
            if chosen != step:
                self.restore(chosen, policy, sampler)
                summary["rolled_back"] = True
            summary["reason"] = (f"rolled back from step {step} to step {chosen}" if chosen != step else
                                 f"kept the final weights (step {step})") + (
                                 f", the last snapshot before the steps that raised the alarm ({self.stop_reason})")
        self.log(f"guard: {summary['reason']}")
        return summary

    def restore(self, step: int, policy, sampler) -> None:
        """Load snapshot ``step`` into the policy, then the sampler from the policy (they generate alike).
        With N ranks every rank takes the same decision (their rows are the same, ``engine.loop``) and
        reads rank 0's file once rank 0 has written it (the run directory is shared, as for checkpoints);
        under FSDP each keeps its shard."""
        distributed.barrier()
        load_weights(policy.model, load_file(self.path(step)))
        sampler.load_weights(policy.model)

    # -- snapshots -------------------------------------------------------------------------------------------

    @property
    def score_name(self) -> str:
        return spec_name(self.score_spec)

    def path(self, step: int) -> Path:
        return self.dir / f"step-{step:06d}.safetensors"

    def prune(self) -> None:
        """Keep the ``keep`` best-scored snapshots and the latest; a dropped one's file goes now unless a
        checkpoint still names it."""
        *scored, latest = self.snapshots
        scored.sort(key=lambda s: (nan_last(self.score(s["window"])), s["step"]), reverse=True)
        for dropped in scored[self.keep:]:
            self.retired.add(dropped["step"])
        self.snapshots = sorted(scored[: self.keep], key=lambda s: s["step"]) + [latest]
        self.delete_retired()

    def delete_retired(self) -> None:
        needed = set().union(*self.named) if self.named else set()
        for step in sorted(self.retired - needed):
            if self.writes:
                self.path(step).unlink(missing_ok=True)
            self.retired.discard(step)

    # -- checkpoints (RunRecord's watchers) ----------------------------------------------------------------

    def state_dict(self) -> dict:
        """For the checkpoint being written now: it will name these snapshots (and the previous one may
        still be the checkpoint on disk until this one is swapped in)."""
        self.named = (self.named + [{s["step"] for s in self.snapshots}])[-2:]
        self.delete_retired()
        return {"snapshots": self.snapshots, "history": self.history, "stop_reason": self.stop_reason,
                "rollback_to": self.rollback_to}

    def load_state_dict(self, state: dict) -> None:
        self.snapshots, self.history = [dict(s) for s in state["snapshots"]], list(state["history"])
        self.stop_reason, self.rollback_to = state["stop_reason"], state.get("rollback_to")
        steps = {s["step"] for s in self.snapshots}
        self.named, self.retired = [steps], set()
        missing = [s for s in sorted(steps) if not self.path(s).exists()]
        if missing and self.writes:
            raise FileNotFoundError(f"the checkpoint's guard snapshots {missing} are missing from {self.dir}")
        if self.writes and self.dir.exists():  # steps after the checkpoint: replayed, and written again
            for path in self.dir.glob("step-*.safetensors"):
                if int(path.stem.removeprefix("step-")) not in steps:
                    path.unlink()


def nan_last(score: float) -> float:
    """A score for ranking: NaN (an empty window) below every number."""
    return -math.inf if math.isnan(score) else score


def load_weights(model, weights: dict[str, torch.Tensor]) -> None:
    """Copy a snapshot into the model's trainable parameters; every one must be there."""
    params = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) != params:
        raise ValueError(f"guard snapshot does not match the model's trainable parameters: "
                         f"missing {sorted(params - set(weights))[:5]}, unknown {sorted(set(weights) - params)[:5]}")
    distributed.load_full_state(model, weights)
