"""Helpers for a run's metrics rows: compute spent so far, resident memory, the summary of the signal.

Every row of ``metrics.jsonl`` carries the compute spent up to it (``compute/...``), so accuracy can be
drawn against compute, and the process's resident memory. ``summarize_telemetry`` condenses TTRL's
training signal (vote agreement, answer entropy, label accuracy; arXiv 2504.16084) for
``summary.json``. ``truncate_jsonl`` cuts ``metrics.jsonl`` back to the rows a checkpoint covers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def cumulative(compute: dict[str, float]) -> dict[str, float]:
    """Compute spent so far, on every metrics row: what accuracy-versus-compute curves are drawn from."""
    return {f"compute/{k}": v for k, v in compute.items() if k != "time/eval_s"}


def rss_mb() -> float:
    """This process's resident memory in MiB (Linux /proc; elsewhere the peak, from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def truncate_jsonl(path: Path, rows: int) -> None:
    """Keep the first ``rows`` lines of ``path`` (the rows a checkpoint covers); no file, no rows: nothing."""
    if not path.exists():
        return
    with path.open("rb") as f:
        lines = f.readlines()
    if len(lines) != rows:
        with path.open("wb") as f:
            f.writelines(lines[:rows])


def summarize_telemetry(history: list[dict]) -> dict[str, dict[str, float]]:
    """First, last and mean of the training signal over the run, for ``summary.json``.

    Falling answer entropy with a flat ``label_accuracy`` is the collapse signal TTRL's follow-ups warn
    about ("rise then fall"); a rising ``label_accuracy`` is the model beating its own early votes.
    """
    keys = ("vote/majority_ratio", "vote/answer_entropy", "vote/distinct_answers", "vote/confident",
            "label_accuracy", "label_precision", "reward_accuracy", "reward/mean", "vote/flip_rate",
            "vote/locked_in", "label/correct_to_wrong", "label/wrong_to_correct")
    out = {}
    for key in keys:
        values = [row[key] for row in history if key in row and row[key] == row[key]]  # NaN: not measured
        if values:
            out[key] = {"first": values[0], "last": values[-1], "mean": sum(values) / len(values)}
    return out
