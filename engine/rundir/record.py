"""The record of one TTRL run in its directory: metrics rows, compute spent, checkpoints, Ctrl-C, summary.

``engine.loop.run`` is the algorithm (TTRL, arXiv 2504.16084: sample, vote, filter, select, update);
everything a run leaves behind goes through its ``RunRecord``:

- ``metrics.jsonl``: one row per iteration after row 0 (the base model's accuracy, kept in
  ``history`` only), appended and flushed as each finishes and sent to the ``--report_to`` trackers
  (``policy.log``);
- the compute counters (tokens generated and trained, seconds per phase) that every row carries
  cumulatively and ``summary.json`` in total;
- checkpoints (``engine.rundir.checkpoint``) at each episode's end, every ``save_every`` optimizer
  steps and on Ctrl-C. Resuming puts the loop state back (history, step, compute, the prompt stream,
  the filters' own state such as GRESO's streaks) and cuts ``metrics.jsonl`` back to the rows the
  checkpoint covers: the rows after it are written again, identically;
- Ctrl-C: the first finishes the step in flight, checkpoints, then stops; a second stops at once;
- the end: the after-evaluation, ``summary.json``, ``report.md`` and the adapter.

Under torchrun every rank keeps the same record (the loop makes every row's numbers identical on every
rank), but rank 0 alone writes: ``metrics.jsonl``, the trackers, checkpoints (into which the other ranks'
RNG states are gathered), ``summary.json`` and the report. Ctrl-C seen by any rank stops every rank
after the same step (the flag is all-reduced at each commit).

The policy, sampler and prompt stream are taken as they come (duck-typed: ``state_dict`` and
``load_state_dict``), and a filter stage's state is checkpointed where it is ``engine.types.Stateful``
(GRESO's streaks), so this module imports nothing above the run directory.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from pathlib import Path

from engine import distributed
from engine.types import Stateful
from engine.rundir import checkpoint, report
from engine.rundir.metrics import cumulative, rss_mb, summarize_telemetry, truncate_jsonl

# The per-row counters the run sums up (``compute/...`` on every row, ``compute`` in summary.json).
COUNTED = ("tokens/generated", "tokens/trained", "time/generate_s", "time/reward_s", "time/update_s")


class RunRecord:
    """What one run writes under ``out_dir``, and the loop state its checkpoints hold."""

    def __init__(self, out_dir: Path, *, policy, rng: random.Random, stream, filters: list, save_every: int,
                 log, watchers: dict | None = None):
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir, self.policy, self.rng, self.stream, self.filters = out_dir, policy, rng, stream, filters
        self.watchers = watchers or {}  # telemetry with state across steps (the vote history), by name
        self.save_every, self.log = save_every, log
        self.writes = distributed.is_main()  # rank 0 alone writes the run directory
        self.compute = {"tokens/generated": 0, "tokens/trained": 0, "time/generate_s": 0.0, "time/reward_s": 0.0,
                        "time/update_s": 0.0, "time/eval_s": 0.0}
        self.saves = {"count": 0, "seconds": 0.0, "mb": 0.0}
        self.start = time.perf_counter()
        self.before: dict[str, float] = {}
        self.history: list[dict] = []   # row 0 (before), every metrics row, then the after row
        self.step = 0                   # optimizer steps taken
        self.interrupted = threading.Event()
        self.metrics_file = None
        self.previous_handler = None

    def resume(self, sampler) -> bool:
        """Continue from the checkpoint in ``out_dir``, if there is one: every piece of state back as it
        was after its step, the sampler given the restored weights. False where there is none."""
        found = checkpoint.find(self.out_dir)
        if found is None:
            return False
        state = checkpoint.load(found, policy=self.policy, rng=self.rng, rank=distributed.rank(),
                                world_size=distributed.world_size())
        self.before, self.history, self.step = state["before"], state["history"], state["step"]
        self.compute.update(state["compute"])
        self.saves.update(state["saves"])
        self.stream.load_state_dict(state["stream"])
        for stage in self.filters:
            if isinstance(stage.fn, Stateful):
                stage.fn.load_state_dict(state["filters"][stage.name])
        for name, watcher in self.watchers.items():
            if name in state.get("watchers", {}):  # checkpoints of earlier versions have none: start afresh
                watcher.load_state_dict(state["watchers"][name])
        self.start -= state["elapsed_s"]
        sampler.load_weights(self.policy.model)
        self.log(f"resumed from {found} after step {self.step} (episode {self.stream.episode}, "
                 f"{len(self.history) - 1} rows)")
        self._open()
        return True

    def begin(self, before: dict[str, float]) -> None:
        """Start afresh: row 0 holds the base model's accuracy."""
        self.before = before
        self.history = [{"step": 0, **before, **cumulative(self.compute)}]
        self._open()

    def _open(self) -> None:
        """Open ``metrics.jsonl`` for appending, cut back to the rows ``history`` holds (rank 0); catch Ctrl-C."""
        if self.writes:
            path = self.out_dir / "metrics.jsonl"
            truncate_jsonl(path, len(self.history) - 1)
            self.metrics_file = path.open("a", encoding="utf-8")
        if threading.current_thread() is threading.main_thread():
            self.previous_handler = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum, frame) -> None:
        if self.interrupted.is_set():
            raise KeyboardInterrupt
        self.interrupted.set()
        self.log("Ctrl-C: finishing this step, then saving a checkpoint (Ctrl-C again to stop at once)")

    def close(self) -> None:
        """Close ``metrics.jsonl`` and give Ctrl-C back to the handler it had."""
        if self.metrics_file is not None:
            self.metrics_file.close()
        if self.previous_handler is not None:
            signal.signal(signal.SIGINT, self.previous_handler)

    def new_row(self) -> dict:
        """A row's first keys. "step": optimizer steps taken once this row's work is done (a row whose
        groups were all filtered out takes none); "iteration": the row's own number."""
        return {"step": self.step, "iteration": len(self.history)}

    def account(self, row: dict, *, episode: int) -> None:
        """Add the row's episode and memory, its compute to the run's, and the run's so far to the row."""
        row["episode"] = episode
        row["memory/rss_mb"] = rss_mb()
        for key in COUNTED:
            self.compute[key] += row[key]
        row.update(cumulative(self.compute))

    def commit(self, row: dict, *, trained: bool, episode_ended: bool) -> None:
        """Write the row (``metrics.jsonl``, the trackers); checkpoint at an episode's end, every
        ``save_every`` optimizer steps and on Ctrl-C, which then stops the run."""
        self.history.append(row)
        if self.writes:
            self.metrics_file.write(json.dumps(row) + "\n")
            self.metrics_file.flush()
            self.policy.log(row)  # the --report_to trackers (TensorBoard, W&B, ...)
        if distributed.any_rank(self.interrupted.is_set()):  # every rank stops after the same step
            self.interrupted.set()
        if (self.interrupted.is_set() or episode_ended
                or (trained and self.save_every and self.step % self.save_every == 0)):
            self.save_checkpoint()
        if self.interrupted.is_set():
            raise KeyboardInterrupt(f"checkpoint saved after step {self.step}; continue with "
                                    f"`ttrl run --resume {self.out_dir}`")

    def save_checkpoint(self) -> None:
        """Every rank gives its RNG states; rank 0 writes the checkpoint while the others wait for it."""
        rngs = distributed.all_gather(checkpoint.rng_states(self.rng))
        # FSDP: the policy's state is in shards on every rank, and gathering it is a collective they all join.
        policy_state = self.policy.state_dict() if getattr(self.policy, "sharded", False) else None
        if not self.writes:
            distributed.barrier()
            return
        loop_state = {"before": self.before, "history": self.history, "step": self.step, "compute": self.compute,
                      "saves": self.saves, "stream": self.stream.state_dict(),
                      "elapsed_s": time.perf_counter() - self.start,
                      "filters": {s.name: s.fn.state_dict() for s in self.filters if isinstance(s.fn, Stateful)},
                      "watchers": {name: watcher.state_dict() for name, watcher in self.watchers.items()}}
        cost = checkpoint.save(self.out_dir, policy=self.policy, rng=self.rng, loop_state=loop_state,
                               other_ranks=rngs[1:], policy_state=policy_state)
        distributed.barrier()
        self.saves.update(count=self.saves["count"] + 1, seconds=self.saves["seconds"] + cost["checkpoint/seconds"],
                          mb=cost["checkpoint/mb"])

    def finish(self, after: dict[str, float], *, config: dict, guard: dict | None = None) -> dict:
        """Close the run: the after row, the trackers, the adapter, ``summary.json`` and the report.
        ``guard``: what the collapse guard did (``engine.rundir.guard``), the rollback's choice and why."""
        self.history.append({"step": self.step, **after})
        if self.writes:
            self.policy.log({f"after/{k}": v for k, v in after.items()})
        self.policy.close()
        self.compute["time/total_s"] = time.perf_counter() - self.start
        self.compute["steps"] = self.step
        self.policy.save(self.out_dir / "adapter")  # every rank calls it; TRL's Trainer writes on rank 0 only
        summary = {"before": self.before, "after": after, "compute": self.compute,
                   "telemetry": summarize_telemetry(self.history), "checkpoints": self.saves, "config": config}
        if guard is not None:
            summary["guard"] = guard
        if self.writes:
            (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
            report.write_report(self.out_dir, summary, self.history)
        return summary
