"""What a run leaves for a person: ``report.md`` (before/after table, compute) and ``curves.png``."""

from __future__ import annotations

from pathlib import Path


def before_after_table(before: dict, after: dict) -> str:
    """A markdown table of every ``accuracy/*`` metric, before and after, with the change in points; then the
    ``anchor/*`` ones (``--anchor``'s labeled examples), under their own names."""
    keys = sorted(k for k in after if k.startswith("accuracy/")) + sorted(k for k in after if k.startswith("anchor/"))
    lines = ["| metric | before | after | change (points) |", "|---|---:|---:|---:|"]
    for k in keys:
        b, a = before.get(k, float("nan")), after[k]
        lines.append(f"| {k.removeprefix('accuracy/')} | {100 * b:.1f} | {100 * a:.1f} | {100 * (a - b):+.1f} |")
    return "\n".join(lines)


def write_report(out_dir: Path, summary: dict, history: list[dict]) -> None:
    c = summary["compute"]
    cfg = summary["config"]
    text = [
        f"# TTRL run: {cfg['model']} on {cfg['data']}",
        "",
        before_after_table(summary["before"], summary["after"]),
        "",
        f"Steps: {c['steps']} ({cfg['episodes']} episodes x {cfg['prompts_per_step']} prompts/step, "
        f"{cfg['n_votes']} votes, {cfg['n_train']} trained per prompt).",
        f"Tokens generated: {c['tokens/generated']:,}; tokens trained: {c['tokens/trained']:,}.",
        f"Time: {c['time/total_s']:.1f} s total — sampling {c['time/generate_s']:.1f} s, update {c['time/update_s']:.1f} s, "
        f"evaluation {c['time/eval_s']:.1f} s.",
        "",
        "![accuracy and reward curves](curves.png)",
        "",
    ]
    if "guard" in summary:
        text += guard_section(summary["guard"])
    (out_dir / "report.md").write_text("\n".join(text), encoding="utf-8")
    plot_curves(out_dir / "curves.png", history)


def guard_section(guard: dict) -> list[str]:
    """The collapse guard's part of the report: what it did, every snapshot's score, the rollback and why."""
    lines = ["## Guard", "",
             f"Policy `{guard['policy']}`: {guard['paused_steps']} steps paused, {guard['skipped_groups']} groups skipped"
             + (f"; stopped the run at {guard['stopped']}." if guard["stopped"] else "."), ""]
    if guard["snapshots"]:
        chosen = guard.get("chosen", {}).get("step")
        lines += [f"| snapshot step | {guard['score']} score | rows scored | chosen |", "|---:|---:|---:|:---:|"]
        lines += [f"| {s['step']} | {s['score']:.4f} | {s['rows']} | {'yes' if s['step'] == chosen else ''} |"
                  for s in guard["snapshots"]]
        lines.append("")
    lines += [f"Final weights: {guard['reason']}.", ""]
    return lines


def plot_curves(path: Path, history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_rew) = plt.subplots(1, 2, figsize=(10, 4))
    acc_keys = sorted({k for row in history for k in row if k.startswith("accuracy/")})
    for key in acc_keys:
        pts = [(row["step"], row[key]) for row in history if key in row]
        ax_acc.plot(*zip(*pts), marker="o", label=key.removeprefix("accuracy/"))
    ax_acc.set(title="accuracy (true labels)", xlabel="step", ylim=(0, 1))
    ax_acc.legend()
    for key in ("reward/mean", "vote/majority_ratio", "label_accuracy"):
        pts = [(row["step"], row[key]) for row in history if key in row]
        if pts:
            ax_rew.plot(*zip(*pts), label=key)
    ax_rew.set(title="training signal", xlabel="step", ylim=(0, 1))
    ax_rew.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
