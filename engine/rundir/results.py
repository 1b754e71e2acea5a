"""A finished run directory's results: what ``ttrl suite`` tables, whether it ran here or on Ray.

A run directory is finished when it holds ``summary.json`` (the loop writes it last); a job that exited
non-zero or left no summary is "failed", with where to look.
"""

from __future__ import annotations

import json
from pathlib import Path


def finish_job(row: dict, code: int, see: str = "see the output above") -> None:
    """Fill a job's row from its exit status: done only with status 0 and a ``summary.json``."""
    run_dir = Path(row["run_dir"])
    done = code == 0 and (run_dir / "summary.json").exists()
    row["status"] = "done" if done else "failed"
    if done:
        row.update(run_results(run_dir))
    else:
        row["reason"] = f"ttrl run exited with status {code}; {see}"


def run_results(run_dir: Path) -> dict:
    """A finished run's before/after accuracies, steps, time, model and data, from its ``summary.json``."""
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    acc = lambda d: {k: v for k, v in d.items() if k.startswith("accuracy/") or k == "eval/labeled"}  # noqa: E731
    cfg = summary.get("config", {})
    return {"before": acc(summary["before"]), "after": acc(summary["after"]),
            "steps": summary["compute"].get("steps"), "time_s": summary["compute"].get("time/total_s"),
            "model_path": cfg.get("model"), "data": cfg.get("data")}
