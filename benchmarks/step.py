"""Benchmark: the anatomy of one TTRL step — where its seconds and its memory go, against an earlier commit.

One step, built as ``ttrl run`` builds it (``engine.cli.build.build``) and taken by hand in the loop's order:
sample the votes (the transformers sampler), score them (majority vote), keep each group's first ``n_train``
rollouts, one GRPO update (TRL, through ``engine.update.GRPOPolicy``), load the new weights into the sampler.
Inside the update, TRL's own methods are timed where they run (wrapped on the trainer instance, nothing in the
engine changed): ``_generate_and_score_completions``'s log-prob passes without gradient — the "old" log-probs
(only where TRL needs them: a sampler other than the trainer, or misaligned accumulation) and the reference
model's (beta > 0; under LoRA the base with the adapter disabled) — the policy's forward with gradient, the rest
of the loss, ``accelerator.backward`` and the optimizer step (clip, step, schedule).

Each phase's peak memory is the growth of the process's resident-set high-water mark over the phase (Linux:
``/proc/self/clear_refs`` resets it before the phase, ``VmHWM`` reads it after). The step is measured after one
warm-up step (first-call costs: allocator, TRL's lazy set-up), in a fresh process per measurement, one thread.

``--base REV`` measures the same cases on ``REV`` (a temporary ``git worktree``) in the same run, alternated
A/B/A/B, so the two commits share the machine's load; ratios are reported, not absolute times alone.
A plain forward + backward of the same rows (one ``model(...)`` with labels on the completion tokens, then
``backward``) is measured in the same process as the bound the update is compared with (issue 27: the update
within 1.4x of it).

Cases: ``demo`` (the demo preset's step: 32 prompts x 32 votes, 16 trained, full fine-tuning), ``smollm2_lora``
and ``smollm2_full`` (SmolLM2-135M-Instruct, ``benchmarks/real_model.py``'s recipe on the transformers sampler:
8 prompts x 16 votes, 4 trained = 32 rows, 64 completion tokens; LoRA r=16, or full weights). The SmolLM2 cases
need ``bash setup.sh --smollm2``.

Usage: ``python -m benchmarks.step [--cases demo smollm2_lora] [--base REV] [--repeats 2]``.
Writes benchmarks/results/step.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import provenance

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent
SMOLLM2 = ["--model", "smollm2-135m", "--suite", "arith-add-1d", "--sampler", "hf", "--n_votes", "16", "--n_train", "4",
           "--prompts_per_step", "8", "--temperature", "0.8", "--max_completion_length", "64", "--beta", "0.02"]
CASES: dict[str, list[str]] = {
    "demo": ["--model", "demo", "--data", "demo"],
    "smollm2_lora": SMOLLM2 + ["--lora", "true", "--lora_r", "16", "--learning_rate", "3e-4"],
    "smollm2_full": SMOLLM2 + ["--lora", "false", "--learning_rate", "1e-5"],
}
PHASES = ("sample", "reward", "old_logps", "reference_forward", "policy_forward", "loss", "backward", "optimizer",
          "weight_sync")
OTHER = "trl_other"  # the update's seconds outside the phases above: TRL's batching, advantages, bookkeeping


# ---- the child: one case, one process -----------------------------------------------------------------------


def rss_kb(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` of this process, in kB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class Phases:
    """Seconds and peak resident-memory growth per phase; a phase nested in another is subtracted from it."""

    def __init__(self):
        self.seconds = {p: 0.0 for p in PHASES}
        self.peak_mb = {p: 0.0 for p in PHASES}
        self.max_rss_mb = 0.0  # the highest resident set seen at any phase's end (its high-water mark)
        self._stack: list[list[float]] = []

    @contextlib.contextmanager
    def __call__(self, name: str):
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
        before = rss_kb("VmRSS")
        self._stack.append([0.0])
        start = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - start
            nested = self._stack.pop()[0]
            self.seconds[name] += spent - nested
            if self._stack:
                self._stack[-1][0] += spent
            high = rss_kb("VmHWM")
            self.peak_mb[name] = max(self.peak_mb[name], (high - before) / 1024)
            self.max_rss_mb = max(self.max_rss_mb, high / 1024)


def instrument(trainer, policy, phases: Phases) -> None:
    """Wrap TRL's methods on this trainer instance (and the policy's optimizer step) so each phase is timed."""
    scoring = {"calls": []}
    score, logps, compute_loss = (trainer._generate_and_score_completions, trainer._get_per_token_logps_and_entropies,
                                  trainer.compute_loss)
    backward, optimizer_step = trainer.accelerator.backward, policy._optimizer_step

    def scored(*args, **kwargs):
        scoring["calls"] = []
        return score(*args, **kwargs)

    def per_token_logps(*args, **kwargs):
        import torch

        if torch.is_grad_enabled():
            with phases("policy_forward"):
                return logps(*args, **kwargs)
        # without gradient, inside the scoring pass: TRL takes the "old" log-probs first (where it needs them),
        # then the reference's (beta > 0)
        scoring["calls"].append(1)
        name = "old_logps" if len(scoring["calls"]) == 1 and needs_old(trainer) else "reference_forward"
        with phases(name):
            return logps(*args, **kwargs)

    def loss(*args, **kwargs):
        with phases("loss"):
            return compute_loss(*args, **kwargs)

    def backwards(*args, **kwargs):
        with phases("backward"):
            return backward(*args, **kwargs)

    def step():
        with phases("optimizer"):
            return optimizer_step()

    trainer._generate_and_score_completions = scored
    trainer._get_per_token_logps_and_entropies = per_token_logps
    trainer.compute_loss = loss
    trainer.accelerator.backward = backwards
    policy._optimizer_step = step


def needs_old(trainer) -> bool:
    """Whether TRL computes "old" log-probs this step (its own condition, trl 1.16 ``_generate_and_score_completions``)."""
    generate_every = trainer.args.steps_per_generation * trainer.num_iterations
    return bool(trainer.args.gradient_accumulation_steps % generate_every
                or (trainer.use_vllm and trainer.vllm_importance_sampling_correction))


def plain_forward_backward(policy, batch) -> float:
    """Seconds of one forward + backward of the batch's rows with a cross-entropy on the completion tokens: the
    compute the update cannot avoid (the policy's own pass; no reference, no GRPO bookkeeping)."""
    import torch

    model = policy.trainer.model
    width = max(len(p) + len(c) for p, c in zip(batch.prompt_ids, batch.completion_ids))
    pad = policy.trainer.processing_class.pad_token_id or 0
    ids = torch.full((len(batch), width), pad)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100)
    for i, (p, c) in enumerate(zip(batch.prompt_ids, batch.completion_ids)):
        row = list(p) + list(c)
        ids[i, width - len(row):], mask[i, width - len(row):] = torch.tensor(row), 1
        labels[i, width - len(c):] = torch.tensor(c)
    start = time.perf_counter()
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return seconds


def measure_case(case: str, out_file: Path) -> None:
    """The child process: build the case's run, take a warm-up step, then the measured one; write its phases."""
    import random

    import torch

    from engine.cli.build import build
    from engine.config.options import parse_config
    from engine.loop import apply_reward
    from engine.types import SamplingParams
    from engine.update import Batch
    from rewards import build_reward

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = parse_config([*CASES[case], "--output_dir", tmp, "--progress", "false", "--save_every", "0",
                            "--seed", "0"])
        torch.manual_seed(0)
        random.seed(0)
        _, tasks, policy, sampler = build(cfg)
        g, t = cfg.grpo, cfg.ttrl
        params = SamplingParams(n=t.n_votes, temperature=g.temperature, top_p=g.top_p,
                                max_new_tokens=g.max_completion_length)
        reward = build_reward(t.reward, answer_type=t.answer_type)
        phases = Phases()
        rows = []
        for step in range(2):  # a warm-up step, then the measured one
            if step == 1:
                instrument(policy.trainer, policy, phases)
            prompts = [task.unlabeled() for task in tasks[step * t.prompts_per_step:(step + 1) * t.prompts_per_step]]
            with phases("sample"):
                groups = sampler.generate(prompts, params, desc="sample")
            with phases("reward"):
                for grp in groups:
                    apply_reward(reward, t.reward, grp)
            batch = Batch.from_groups(groups, [list(range(t.n_train))] * len(groups))
            start = time.perf_counter()
            policy.update(batch)
            update_s = time.perf_counter() - start
            with phases("weight_sync"):
                sampler.load_weights(policy.model)
            rows.append({"update_s": update_s, "rows": len(batch),
                         "tokens": sum(len(p) + len(c) for p, c in zip(batch.prompt_ids, batch.completion_ids))})
        plain_s = plain_forward_backward(policy, batch)
    measured = rows[-1]
    inside = ("old_logps", "reference_forward", "policy_forward", "loss", "backward", "optimizer")
    phases.seconds[OTHER] = measured["update_s"] - sum(phases.seconds[p] for p in inside)
    out_file.write_text(json.dumps({"case": case, "seconds": phases.seconds, "peak_mb": phases.peak_mb,
                                    "update_s": measured["update_s"], "plain_forward_backward_s": plain_s,
                                    "rows": measured["rows"], "tokens": measured["tokens"],
                                    "max_rss_mb": phases.max_rss_mb}))


# ---- the parent: cases x commits, alternated ------------------------------------------------------------------


def run_child(tree: Path, case: str, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    # this file runs the child in either tree (an earlier commit may not have it); PYTHONPATH picks the engine
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", case, "--out", str(out)],
                          cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{case} at {tree} failed:\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def summarize(measurements: list[dict]) -> dict:
    """Medians over the repeats of one case at one commit."""
    med = statistics.median
    return {"seconds": {p: med(m["seconds"][p] for m in measurements) for p in (*PHASES, OTHER)},
            "peak_mb": {p: med(m["peak_mb"][p] for m in measurements) for p in PHASES},
            "update_s": med(m["update_s"] for m in measurements),
            "plain_forward_backward_s": med(m["plain_forward_backward_s"] for m in measurements),
            "update_x_plain_forward_backward": med(m["update_s"] / m["plain_forward_backward_s"] for m in measurements),
            "max_rss_mb": med(m["max_rss_mb"] for m in measurements),
            "rows": measurements[0]["rows"], "tokens": measurements[0]["tokens"], "repeats": len(measurements)}


def markdown(table: dict, base: str | None) -> str:
    lines = []
    for case, arms in table.items():
        names = list(arms)
        lines += [f"### {case}: {arms[names[0]]['rows']} rows, {arms[names[0]]['tokens']:,} tokens; median of "
                  f"{arms[names[0]]['repeats']} fresh processes" + (f", alternated with {base}" if base else ""), "",
                  "| phase | " + " | ".join(f"{n} seconds | {n} peak MB" for n in names) + " |",
                  "|---|" + "---:|---:|" * len(names)]
        for p in PHASES:
            lines.append(f"| {p} | " + " | ".join(f"{arms[n]['seconds'][p]:.2f} | {arms[n]['peak_mb'][p]:.0f}"
                                                for n in names) + " |")
        lines.append(f"| {OTHER} (update, outside the phases) | " + " | ".join(f"{arms[n]['seconds'][OTHER]:.2f} | "
                                                                          for n in names) + " |")
        for key, label in (("update_s", "update (all of it)"), ("plain_forward_backward_s", "plain forward + backward")):
            lines.append(f"| {label} | " + " | ".join(f"{arms[n][key]:.2f} | " for n in names) + " |")
        lines.append("| the step's highest resident set (MB) | " + " | ".join(f" | {arms[n]['max_rss_mb']:.0f}"
                                                                            for n in names) + " |")
        lines.append("| update / plain forward + backward | " + " | ".join(
            f"{arms[n]['update_x_plain_forward_backward']:.2f}x | " for n in names) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--base", help="a git revision to measure beside this tree, alternated")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child", choices=list(CASES), help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        measure_case(args.child, Path(args.out))
        return
    record = provenance.collect(__file__, argv, threads_per_run=1, parallel_runs=1)
    trees = {"this": ROOT}
    with tempfile.TemporaryDirectory() as tmp:
        if args.base:
            base_tree = Path(tmp) / "base"
            subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), args.base], cwd=ROOT, check=True,
                           capture_output=True)
            trees["base"] = base_tree
        try:
            raw: dict[str, dict[str, list[dict]]] = {c: {n: [] for n in trees} for c in args.cases}
            for case in args.cases:
                for i in range(args.repeats):
                    for name, tree in (trees.items() if i % 2 == 0 else reversed(list(trees.items()))):
                        m = run_child(tree, case, Path(tmp) / f"{case}-{name}-{i}.json")
                        raw[case][name].append(m)
                        print(f"{case} {name} #{i}: update {m['update_s']:.2f} s, plain fwd+bwd "
                              f"{m['plain_forward_backward_s']:.2f} s", flush=True)
        finally:
            if args.base:
                subprocess.run(["git", "worktree", "remove", "--force", str(trees["base"])], cwd=ROOT,
                               capture_output=True)
    table = {case: {name: summarize(ms) for name, ms in arms.items()} for case, arms in raw.items()}
    base_commit = None
    if args.base:
        base_commit = subprocess.run(["git", "rev-parse", args.base], cwd=ROOT, capture_output=True,
                                     text=True).stdout.strip()
    result = {"provenance": provenance.finish(record), "base": base_commit, "cases": {c: CASES[c] for c in args.cases},
              "summary": table, "measurements": raw}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "step.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(table, base_commit[:10] if base_commit else None) + "\n" + provenance.footer(result["provenance"])
    (RESULTS / "step.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
