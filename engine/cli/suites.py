"""``ttrl suite S1 S2 ... [--config C.yaml] [--models M1,M2] [--output_dir DIR] [--option value ...]``.

Runs ``ttrl run --suite S`` for each suite (and each model) in turn, each in its own run directory
``DIR/<suite>`` (``DIR/<model>/<suite>`` with several models), then writes one before/after table for
all of them: ``suite_summary.md``, ``suite_summary.json`` and ``suite_summary.png`` in ``DIR``.

Why one subprocess per run: every run then starts from a clean process (GPU memory, vLLM engines and
global seeds do not leak between benchmarks), and a failure in one benchmark is recorded without
stopping the others. Why resumable: benchmark runs take hours on real models; a run directory that
already holds ``summary.json`` is finished and is not run again, so re-issuing the same command (same
``--output_dir``) continues where it stopped. Delete a run directory to redo that benchmark.
Hub-only suites (gsm8k) are skipped with their reason while ``HF_HUB_OFFLINE`` is set.
``--ray [ADDRESS]`` (or ``ray_address`` in the config) runs the same jobs as Ray tasks on a cluster
instead of one after the other here: ``engine.cluster.suites``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from engine.errors import ConfigError
from engine.data.suites import load_suite
from engine.rundir.results import finish_job, run_results

METRICS = ("greedy", "avg", "maj", "pass")  # table columns, in order: accuracy/greedy, accuracy/avg@k, ...


def parse_suite_args(argv: list[str]) -> tuple[list[str], dict[str, str | None], list[str]]:
    """(suite names or files, the suite command's own options, options passed on to ``ttrl run``)."""
    names: list[str] = []
    i = 0
    while i < len(argv) and not argv[i].startswith("-"):
        names.append(argv[i])
        i += 1
    own: dict[str, str | None] = {"output_dir": None, "config": None, "models": None, "ray": None}
    rest: list[str] = []
    args = argv[i:]
    j = 0
    while j < len(args):
        key, _, value = args[j].removeprefix("--").partition("=")
        if args[j].startswith("--") and key in own:
            if key == "ray" and not value and (j + 1 >= len(args) or args[j + 1].startswith("--")):
                value = ""  # a bare --ray: the cluster Ray finds (RAY_ADDRESS, the last `ray start`) or a new local one
            elif not value:
                if j + 1 >= len(args):
                    raise ConfigError(f"--{key} needs a value")
                value, j = args[j + 1], j + 1
            own[key] = value
        else:
            rest.append(args[j])
        j += 1
    if any(a == "--suite" or a.startswith("--suite=") for a in rest):
        raise ConfigError("name the suites before the options, not with --suite")
    if not names:
        raise ConfigError("name at least one suite, e.g. `ttrl suite mawps-singleop demo --model M`; "
                          "registered suites are listed in `ttrl run --help` under --suite")
    return names, own, rest


def run_suites(argv: list[str]) -> int:
    """Run every (model, suite) not finished yet, then write and print the summary; 1 if any failed."""
    names, own, rest = parse_suite_args(argv)
    out, rows, todo = plan_suite(names, own, rest)
    from engine.cluster.suites import requested_address

    address = requested_address(own, rest)
    if address is not None:
        from engine.cluster.suites import run_on_ray

        run_on_ray(todo, address)
    else:
        for row, args in todo:
            cmd = [sys.executable, "-m", "engine.cli.main", "run", *args]
            print(f"==> {row['suite']}: ttrl {' '.join(cmd[3:])}", flush=True)
            start = time.perf_counter()
            finish_job(row, subprocess.run(cmd).returncode)
            print(f"==> {row['suite']}: {row['status']} in {time.perf_counter() - start:.0f} s", flush=True)
    write_summary(out, rows, argv)
    return 1 if any(r["status"] == "failed" for r in rows) else 0


def plan_suite(names: list[str], own: dict, rest: list[str]) -> tuple[Path, list[dict], list[tuple[dict, list[str]]]]:
    """The output folder, one summary row per (model, suite) in order, and the jobs still to run as
    ``(row, ttrl run arguments)``; finished and unavailable ones have their row filled here."""
    suites = [load_suite(n) for n in names]  # unknown names fail here, before anything runs
    seen = [s.name for s in suites]
    if len(set(seen)) != len(seen):
        raise ConfigError(f"suite names repeat ({', '.join(seen)}); each needs its own run directory")
    models = [m for m in (own["models"] or "").split(",") if m] or [None]
    out = Path(own["output_dir"] or Path("runs") / f"suite-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    print(f"ttrl suite: {len(suites)} suites x {len(models)} model(s) -> {out} (re-run with --output_dir {out} to resume)")
    rows, todo = [], []
    for model in models:
        for spec, suite in zip(names, suites):
            run_dir = out / suite.name if len(models) == 1 else out / _stem(model) / suite.name
            row = {"suite": suite.name, "model": model, "run_dir": str(run_dir)}
            reason = suite.unavailable_reason()
            if (run_dir / "summary.json").exists():
                row["status"] = "done"
                row.update(run_results(run_dir))
                print(f"==> {suite.name}: already finished in {run_dir}, skipped")
            elif reason:
                row.update(status="unavailable", reason=reason)
                print(f"==> {suite.name}: skipped: {reason}")
            else:
                todo.append((row, [*([own["config"]] if own["config"] else []), "--suite", spec,
                                   *(["--model", model] if model else []), *rest, "--output_dir", str(run_dir)]))
            rows.append(row)
    return out, rows, todo


def _stem(model: str | None) -> str:
    return Path(model).name if model else "model"


def _metric_key(scores: dict, kind: str) -> str | None:
    if kind == "greedy":
        return "accuracy/greedy" if "accuracy/greedy" in scores else None
    return next((k for k in sorted(scores) if k.startswith(f"accuracy/{kind}@")), None)


def summary_table(rows: list[dict]) -> str:
    """Markdown: one row per run, each metric as ``before → after (change in points)``."""
    kinds = [kind for kind in METRICS if any(_metric_key(r.get("after", {}), kind) for r in rows)]
    names = {kind: next((_metric_key(r["after"], kind).removeprefix("accuracy/") for r in rows
                         if _metric_key(r.get("after", {}), kind)), kind) for kind in kinds}
    several = len({r["model"] for r in rows}) > 1
    head = (["model"] if several else []) + ["suite", "tasks", *[names[k] for k in kinds], "steps", "time", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [_stem(r["model"])] if several else []
        cells += [r["suite"], str(int(r["before"].get("eval/labeled", 0))) if "before" in r else "-"]
        for kind in kinds:
            key = _metric_key(r.get("after", {}), kind)
            if key is None:
                cells.append("-")
                continue
            b, a = 100 * r["before"].get(key, float("nan")), 100 * r["after"][key]
            label = "" if key.removeprefix("accuracy/") == names[kind] else f" ({key.removeprefix('accuracy/')})"
            cells.append(f"{b:.1f} → {a:.1f} ({a - b:+.1f}){label}")
        cells += [str(r.get("steps", "-")), f"{r['time_s']:.1f} s" if r.get("time_s") is not None else "-",
                  r["status"] + (f": {r['reason']}" if r.get("reason") else "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_summary(out: Path, rows: list[dict], argv: list[str]) -> None:
    """``suite_summary.{md,json,png}`` in ``out``; the table is printed too."""
    table = summary_table(rows)
    text = ["# TTRL suite: before → after (accuracy, %; change in points)", "",
            f"Command: `ttrl suite {' '.join(argv)}`", "", table, "",
            "Each cell is before → after TTRL on that benchmark's own test prompts (labels used only for "
            "scoring). Per-run details: `<run_dir>/report.md`.", "", "![before/after](suite_summary.png)", ""]
    (out / "suite_summary.md").write_text("\n".join(text), encoding="utf-8")
    (out / "suite_summary.json").write_text(json.dumps({"command": ["ttrl", "suite", *argv], "runs": rows},
                                                       indent=2, default=str), encoding="utf-8")
    plot_summary(out / "suite_summary.png", rows)
    print()
    print(table)
    print(f"\nsummary: {out / 'suite_summary.md'}")


def plot_summary(path: Path, rows: list[dict]) -> None:
    """One panel per metric (greedy, avg@k, maj@k): before and after bars for each benchmark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["status"] == "done"]
    kinds = [k for k in METRICS[:3] if any(_metric_key(r["after"], k) for r in done)] or ["avg"]
    fig, axes = plt.subplots(1, len(kinds), figsize=(max(5, 1.2 * len(done) + 2) * len(kinds), 4), squeeze=False)
    labels = [r["suite"] if len({x["model"] for x in done}) <= 1 else f"{_stem(r['model'])}\n{r['suite']}" for r in done]
    for ax, kind in zip(axes[0], kinds):
        keys = [_metric_key(r["after"], kind) for r in done]
        before = [100 * r["before"].get(k, 0.0) if k else 0.0 for r, k in zip(done, keys)]
        after = [100 * r["after"][k] if k else 0.0 for r, k in zip(done, keys)]
        xs = range(len(done))
        ax.bar([x - 0.2 for x in xs], before, width=0.4, label="before", color="#9aa5b1")
        ax.bar([x + 0.2 for x in xs], after, width=0.4, label="after TTRL", color="#2f6fdf")
        name = next((k.removeprefix("accuracy/") for k in keys if k), kind)
        ax.set(title=name, ylabel="accuracy (%)", ylim=(0, 100), xticks=list(xs), xticklabels=labels)
        ax.legend()
        if not done:
            ax.text(0.5, 0.5, "no finished runs", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
