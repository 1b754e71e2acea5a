"""Ray on one machine: a suite's jobs in parallel vs one after the other, and the rollout pool's scaling.

    python -m benchmarks.ray_bench            # the measurement (about 10 minutes on 2 cores); writes results/
    python -m benchmarks.ray_bench --quick    # a 2-minute check of the script; writes to --out (a temp dir)

1. **Suite fan-out.** Four `ttrl run --suite demo` jobs (seeds 0-3, the demo preset) as Ray tasks of
   1 CPU each (``OMP_NUM_THREADS=1``) on a 2-CPU local cluster, through ``engine.cluster.suites.run_on_ray``
   — the code path of ``ttrl suite --ray`` — against the same four commands run one after the other,
   each with 1 thread. Parallel efficiency = T_seq / (2 x T_ray): 1.0 is a perfect 2x; the bar is 0.8.
   T_ray includes the driver's per-job config check and Ray's worker start-up, not the cluster's own
   start (reported apart) nor the driver's one-time imports of transformers and TRL. Same seeds, same
   thread count: the two sides' accuracies must come out identical (``identical_results``).
2. **Rollout pool.** The demo model sampling the demo task (128 prompts x 32 samples x 8 tokens) with a
   pool of 1 actor and of 2 actors, 1 CPU each: generated tokens per second (best of the repeats after
   a warm-up) and the 2-vs-1 ratio; plus the weight broadcast's seconds.

Before both, a calibration: the same 1-thread matrix-multiply loop in 1 process, then in 2 at once. Its
speedup (2.0 = two free cores) says what parallelism the machine really had during the run; on a shared
host busy with other work it drops toward 1.0, and then no Ray figure here means anything.

Writes ``ray.json`` and ``ray.md`` into ``--out`` (default: benchmarks/results; with ``--quick``, a temp dir).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import provenance

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
RESULTS = Path(__file__).parent / "results"
BAR = 0.8


BURN = "import time, torch; torch.set_num_threads(1); a = torch.randn(256, 256); t = time.perf_counter()\n" \
       "for _ in range(3000): a @ a\nprint(time.perf_counter() - t)"


def machine_parallel_speedup() -> float:
    """Two 1-thread CPU loops at once vs one alone: 2.0 when two cores are free for this benchmark."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def burn(k: int) -> float:
        procs = [subprocess.Popen([sys.executable, "-c", BURN], env=env, stdout=subprocess.PIPE, text=True)
                 for _ in range(k)]
        return max(float(p.communicate()[0]) for p in procs)

    return 2 * burn(1) / burn(2)


def suite_jobs(seeds: list[int], work: Path, extra: list[str]) -> list[tuple[dict, list[str]]]:
    """``(row, ttrl run arguments)`` per seed, as ``engine.cli.suites.plan_suite`` makes them."""
    return [({"suite": f"demo-s{seed}", "model": None, "run_dir": str(work / f"s{seed}")},
             ["--suite", "demo", "--seed", str(seed), "--progress", "false", *extra,
              "--output_dir", str(work / f"s{seed}")])
            for seed in seeds]


def run_sequential(jobs) -> tuple[float, list[dict]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    for row, args in jobs:
        proc = subprocess.run([sys.executable, "-m", "engine.cli.main", "run", *args], env=env, capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{row['suite']} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start, [_after(row) for row, _ in jobs]


def run_on_cluster(jobs) -> tuple[float, list[dict]]:
    from engine.cluster.suites import run_on_ray

    start = time.perf_counter()
    run_on_ray(jobs, None)
    seconds = time.perf_counter() - start
    failed = [row["suite"] for row, _ in jobs if row.get("status") != "done"]
    if failed:
        raise SystemExit(f"Ray jobs failed: {failed}")
    return seconds, [_after(row) for row, _ in jobs]


def _after(row: dict) -> dict:
    summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
    return {k: v for k, v in summary["after"].items() if k.startswith("accuracy/")}


def pool_throughput(workers: int, n_prompts: int, n: int, repeats: int) -> dict:
    """Tokens per second of a ``workers``-actor pool on the demo model (best of ``repeats`` after a warm-up)."""
    from engine.cli.build import load_prepared_tasks
    from engine.data.models import load_tokenizer
    from engine.config.options import parse_config
    from engine.data.demo import DEMO_TEMPLATE, build_demo
    from engine.samplers.ray_pool import RayRolloutPool
    from engine.types import SamplingParams

    model_dir, tasks_file = build_demo()
    cfg = parse_config(["--data", str(tasks_file), "--limit", str(n_prompts), "--output_dir", "unused"])
    tasks = load_prepared_tasks(cfg, load_tokenizer(str(model_dir)), str(tasks_file), DEMO_TEMPLATE)
    params = SamplingParams(n=n, temperature=1.0, top_p=1.0, max_new_tokens=8)
    spec = {"model_path": str(model_dir), "sampler": "hf", "dtype": "float32", "batch_size": 256}
    pool = RayRolloutPool(spec, workers=workers, seed=0, num_cpus=1)
    try:
        pool.generate(tasks[:4], params)  # warm-up: actors started, model loaded
        best = None
        for _ in range(repeats):
            start = time.perf_counter()
            groups = pool.generate(tasks, params)
            seconds = time.perf_counter() - start
            tokens = sum(len(r.token_ids) for g in groups for r in g.rollouts)
            best = max(best or 0.0, tokens / seconds)
        from transformers import AutoModelForCausalLM

        sync = pool.load_weights(AutoModelForCausalLM.from_pretrained(model_dir))["time/weight_sync_s"]
    finally:
        pool.close()
    return {"workers": workers, "tokens_per_s": best, "weight_broadcast_s": sync,
            "work": f"{len(tasks)} prompts x {n} samples x 8 tokens"}


def markdown(result: dict) -> str:
    s, p = result["suite"], result["pool"]
    lines = ["# Ray on one machine", "", f"Machine: {result['machine']}. Command: `{result['command']}`.", "",
             "Calibration: two 1-thread CPU loops ran {:.2f}x / {:.2f}x as fast as one, before / after "
             "(2.00 = two free cores).".format(*result["machine_parallel_speedup"]), "",
             "| suite fan-out (4 demo jobs, 1 CPU each) | seconds |", "|---|---:|",
             f"| sequential, 1 thread each | {s['t_seq_s']:.1f} |",
             f"| Ray, 2-CPU local cluster | {s['t_ray_s']:.1f} |",
             f"| parallel efficiency T_seq / (2 x T_ray) | **{s['efficiency']:.2f}** (bar {BAR}) |",
             f"| cluster start (not in T_ray) | {s['cluster_start_s']:.1f} |", "",
             f"Same accuracies on both sides (same seeds, 1 thread): {s['identical_results']}.", "",
             "| rollout pool, demo model | tokens/s | weight broadcast (s) |", "|---|---:|---:|"]
    for row in p["runs"]:
        lines.append(f"| {row['workers']} actor(s), 1 CPU each ({row['work']}) | {row['tokens_per_s']:,.0f} | "
                     f"{row['weight_broadcast_s']:.3f} |")
    lines += [f"| 2 vs 1 actors | **{p['ratio']:.2f}x** | |", ""]
    if "provenance" in result:
        lines += [provenance.footer(result["provenance"]), ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny settings: checks the script, measures nothing")
    ap.add_argument("--out", type=Path, default=None, help="where ray.json and ray.md go")
    args = ap.parse_args(argv)
    record = provenance.collect(__file__, argv)
    out = args.out or (Path(tempfile.mkdtemp(prefix="ttrl-ray-bench-")) if args.quick else RESULTS)
    extra = ["--limit", "16", "--episodes", "1", "--eval_k", "4"] if args.quick else []
    pool_work = (32, 8, 1) if args.quick else (128, 32, 3)
    work = Path(tempfile.mkdtemp(prefix="ttrl-ray-bench-runs-"))
    from engine.data.demo import build_demo

    build_demo()  # cached once, outside every timing
    from engine.config.options import parse_config

    parse_config(["--suite", "demo", "--output_dir", str(work / "unused")])  # the driver's imports, outside T_ray
    import ray

    load = os.getloadavg()[0]
    calibration = machine_parallel_speedup()
    print(f"calibration: 2-process speedup {calibration:.2f} (2.00 = two free cores)", flush=True)
    ray_temp = tempfile.mkdtemp(prefix="ttrlb", dir="/tmp")  # short: Ray's socket paths live under it
    try:
        t_seq, seq = run_sequential(suite_jobs([0, 1, 2, 3], work / "seq", extra))
        print(f"sequential: {t_seq:.1f} s", flush=True)
        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=ray_temp)
        cluster_start = time.perf_counter() - start
        t_ray, par = run_on_cluster(suite_jobs([0, 1, 2, 3], work / "ray", extra))
        efficiency = t_seq / (2 * t_ray)
        print(f"ray: {t_ray:.1f} s; parallel efficiency {efficiency:.2f} (bar {BAR})", flush=True)
        pool = [pool_throughput(w, *pool_work) for w in (1, 2)]
        ratio = pool[1]["tokens_per_s"] / pool[0]["tokens_per_s"]
        print(f"pool: 1 actor {pool[0]['tokens_per_s']:,.0f} tok/s, 2 actors {pool[1]['tokens_per_s']:,.0f} tok/s "
              f"({ratio:.2f}x)", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ray_temp, ignore_errors=True)
    calibration = [calibration, machine_parallel_speedup()]  # before and after: did the machine stay free?
    result = {
        "provenance": provenance.finish(record),
        "command": "python -m benchmarks.ray_bench" + (" --quick" if args.quick else ""),
        "quick": args.quick,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, load average {load:.2f} at start",
        "machine_parallel_speedup": calibration,
        "suite": {"jobs": "ttrl run --suite demo --seed S, S = 0..3" + (f" {' '.join(extra)}" if extra else ""),
                  "t_seq_s": t_seq, "t_ray_s": t_ray, "cluster_start_s": cluster_start, "efficiency": efficiency,
                  "bar": BAR, "meets_bar": efficiency >= BAR, "identical_results": seq == par,
                  "after_sequential": seq, "after_ray": par},
        "pool": {"runs": pool, "ratio": ratio},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "ray.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    (out / "ray.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    print(f"written: {out / 'ray.json'}, {out / 'ray.md'}")


if __name__ == "__main__":
    main()
