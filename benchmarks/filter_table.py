"""One table of what each filter, selector and guard buys over plain TTRL, per regime, read from the committed results.

Issue 26 part 4. Nothing is run: the rows are computed from the per-seed runs of the results files that set a
configuration beside plain TTRL (``SOURCES``), each row against the plain runs of its own file and regime (its
own prompts, model, commit and machine). Regimes: the clean demo, the demo with 20% of the groups' rewards
inverted (``benchmarks.noise``), ``demo-systematic`` (the vote confidently wrong on one carry class), a second,
held-out systematic failure (``demo-overwrite``, ``guard.json``) and the real model (SmolLM2-135M on
``arith-add-1d``). Controls that are not a filter, selector or guard (``--reward random``) are left out, and so
are the plain arms on other seeds, which measure the noise instead.

Per row (configuration × regime × source):

- **Δ avg@k**: the configuration's final avg@16 (avg@8 on the real model) minus plain TTRL's final on the same
  seed of the same source, in points; mean ± standard error over the paired seeds. A guard's final is the
  evaluation of the weights it ended on (``benchmarks.collapse``: the evaluated step it chose).
- **the noise** (plain against plain): √2 × the pooled within-arm standard deviation of plain TTRL's final
  avg@k over the source's plain arms in that regime — ``plain`` and, where the source has them, ``plain_b`` /
  ``plain_h`` on other seeds. That is the standard deviation of the difference of two independent plain runs,
  the spread a configuration that changes nothing would show. Runs of one seed share a prompt order, so a
  paired Δ of a change that leaves the trajectory alone for a while (``flip_alarm`` until it stops) varies
  less than this: its consistency shows in "seeds > plain" and the standard error, not in the count.
- **seeds > noise**: seeds whose Δ exceeds the noise. Were the configuration plain TTRL, about one seed in six
  would (a normal difference above one standard deviation). A row **wins** when more than half its seeds do
  (by chance: 3% of 5-seed rows, 7% of 3-seed rows). A configuration wins a regime when every row of it there
  wins; it **never wins** when no row of it wins anywhere.
- **sampled tokens ×, trained tokens ×, wall time ×**: the configuration's mean over plain's mean, over the
  paired seeds, as the source recorded them (generated tokens; trained completion tokens; the wall clock of
  a run, or the real model's total minutes). Wall times come from shared 2-core machines: ``†`` marks a row
  whose runs and plain's were made in different invocations of the benchmark (the source's ``reused``
  flags; for the real model, plain runs identical to an earlier real-model file's), so under different loads.
  A figure the source does not hold is printed "—".

Writes benchmarks/results/filter_table.{json,md}; the block between the ``filter-table`` markers of the
markdown is copied into docs/filters.md and a one-row-per-configuration fold of it (between the
``filter-summary`` markers) into README.md, which must stay short; the script rewrites both blocks itself and
tests/test_docs.py checks they equal the markdown's. Rerun after any source changes (the anchor.json rerun,
guard.json): ``python -m benchmarks.filter_table`` from a clean committed tree, then commit the results and the
two pages together.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from benchmarks import provenance

RESULTS = Path(__file__).parent / "results"
BEGIN, END = "<!-- filter-table:begin -->", "<!-- filter-table:end -->"
SUMMARY_BEGIN, SUMMARY_END = "<!-- filter-summary:begin -->", "<!-- filter-summary:end -->"
REGIMES = {"clean": "clean demo", "flipped": "demo, 20% flipped", "systematic": "`demo-systematic`",
           "held_out": "`demo-overwrite` (held out)", "real_model": "real model"}
# each source's configuration names → one name per configuration across sources
CANONICAL = {
    "filters.json": {"max_variance": "max_variance", "best": "max_variance_16_8", "half_votes": "first_8_of_16",
                     "influence": "influence", "zero_variance": "zero_variance", "history_skip": "history_skip"},
    "collapse.json": {"filter": "max_variance", "flip_alarm": "flip_alarm", "flip_alarm_h": "flip_alarm",
                      "guard": "watch_guard"},
    "sequential.json": {"seq16": "seq16", "seq16_keep": "seq16_keep", "seq8": "seq8", "seq8_keep": "seq8_keep"},
    "anchor.json": {"influence": "influence_labeled", "anchor_guard": "anchor_guard", "anchor_train_4": "anchor_train_4",
                    "anchor_train_16": "anchor_train_16", "consensus": "consensus"},
    "guard.json": {"anchor_guard": "anchor_guard", "flip_alarm": "flip_alarm", "flip_collapse": "flip_collapse",
                   "ttrl_guard": "ttrl_guard"},
    "real_model_filter.json": {"max_variance": "max_variance"},
    "real_model_sequential.json": {"sequential": "seq16_keep"},  # n_train rows first, unanimous groups trained
    "real_model_anchor.json": {"influence_labeled": "influence_labeled", "anchor_train": "anchor_train_4"},
}
SEQ, KEEP = "`--sequential_vote enforce`", "`--sequential_vote enforce --vote_unanimous train`"
LABELS = {
    "max_variance": "`max_variance` (PODS)", "max_variance_16_8": "`max_variance`, 16 votes, train 8",
    "first_8_of_16": "first 8 of 16 votes (its control)", "influence": "`influence`, batch target",
    "influence_labeled": "`influence`, `labeled` target (anchors)", "zero_variance": "`zero_variance` (DAPO)",
    "history_skip": "`zero_variance` + `history_skip` (GRESO)", "consensus": "`consensus` (SCRL)",
    "flip_alarm": "`--guard flip_alarm`", "watch_guard": "`--guard watch` (stability score)",
    "anchor_guard": "`--guard_score anchor_accuracy`", "anchor_train_4": "`--anchor_train 4` (control)",
    "anchor_train_16": "`--anchor_train 16` (control)", "flip_collapse": "`--guard flip_collapse`",
    "ttrl_guard": "`--guard ttrl_guard`",
    "seq16": SEQ, "seq16_keep": KEEP, "seq8": SEQ + ", train 8", "seq8_keep": KEEP + ", train 8",
}
VARIANTS = {"flip_alarm_h": "held-out seeds"}
# where the generated blocks are copied: the full table beside the filters' prose, the folded one in the README
DOCS = {"table": RESULTS.parents[1] / "docs" / "filters.md", "summary": RESULTS.parents[1] / "README.md"}
PLAIN_ARMS = ("plain", "plain_b", "plain_h")
LEFT_OUT = ("random", "plain_b", "plain_h")


def flags(options: dict) -> str:
    """A source's option dict as ``ttrl run`` flags: the label of a configuration this script has no name for."""
    def value(v):
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k}: {value(x)}" for k, x in v.items()) + "}"
        return " ".join(map(str, v)) if isinstance(v, list) else str(v)
    return "`" + " ".join(f"--{k} {value(v)}" for k, v in options.items()) + "`"


def run_of(r: dict, target: str = "accuracy/avg@16") -> dict:
    """One run, reduced to what the table reads (None where the source did not record it)."""
    return {"seed": r["seed"], "final": r["final"][target], "sampled": r.get("tokens_generated"),
            "trained": r.get("tokens_trained"), "wall": r.get("wall_s"), "reused": r.get("reused")}


def blocks_of_runs(name: str, data: dict, runs: list[dict], regime_of: dict, paired: dict | None = None) -> list[dict]:
    """The (regime, source) blocks of a file whose runs are one list of records naming setting, config and seed
    (collapse, sequential, anchor, and the layout guard.json is expected to share)."""
    paired = paired or {}
    out = []
    for setting, regime in regime_of.items():
        rs = [r for r in runs if r.get("setting", setting) == setting]
        arms = {c: {r["seed"]: run_of(r) for r in rs if r["config"] == c} for c in dict.fromkeys(r["config"] for r in rs)}
        if not arms.get("plain"):
            continue
        rows = [{"config": CANONICAL.get(name, {}).get(c, c), "source_config": c, "variant": VARIANTS.get(c),
                 "label": None if c in CANONICAL.get(name, {}) else flags(data.get("configs", {}).get(c, {})),
                 "runs": runs_c, "plain": arms[paired.get(c, "plain")]}
                for c, runs_c in arms.items() if c not in ("plain", *LEFT_OUT) and paired.get(c, "plain") in arms]
        out.append({"regime": regime, "source": name, "k": 16, "plain": arms["plain"],
                    "noise_arms": {c: [r["final"] for r in arms[c].values()] for c in PLAIN_ARMS if arms.get(c)},
                    "rows": rows})
    return out


def read_filters(data: dict) -> list[dict]:
    """filters.json: the clean demo (``runs``) and the demo with 20% of the pseudo-labels flipped (``noisy_runs``)."""
    return (blocks_of_runs("filters.json", data, [{**r, "setting": "clean"} for r in data["runs"]], {"clean": "clean"})
            + blocks_of_runs("filters.json", data, [{**r, "setting": "flipped"} for r in data.get("noisy_runs", [])],
                             {"flipped": "flipped"}))


def read_collapse(data: dict) -> list[dict]:
    """collapse.json: the held-out alarm runs (``flip_alarm_h``) are paired with plain on the same held-out seeds."""
    return blocks_of_runs("collapse.json", data, data["runs"],
                          {"clean": "clean", "flipped": "flipped", "systematic": "systematic"}, {"flip_alarm_h": "plain_h"})


def read_sequential(data: dict) -> list[dict]:
    return blocks_of_runs("sequential.json", data, data["runs"], {"demo": "clean", "systematic": "systematic"})


def read_anchor(data: dict) -> list[dict]:
    return blocks_of_runs("anchor.json", data, data["runs"], {"demo": "clean", "flipped": "flipped", "systematic": "systematic"})


def read_guard(data: dict) -> list[dict]:
    """guard.json: its runs name setting, config and seed with the final avg@16 as ``final_avg16`` (the guard's
    chosen step's evaluation; no token counts: the replayed guards were not separate runs). ``overwrite``
    (``demo-overwrite``) is the held-out failure; a setting this reader cannot place stops the script."""
    regime_of = {"overwrite": "held_out", "systematic": "systematic", "clean": "clean"}
    unplaced = sorted({str(r.get("setting")) for r in data["runs"]} - set(regime_of))
    if unplaced:
        raise SystemExit(f"guard.json: settings {unplaced} have no regime; name them in read_guard")
    runs = [{"setting": r["setting"], "config": r["config"], "seed": r["seed"],
             "final": {"accuracy/avg@16": r["final_avg16"]}} for r in data["runs"]]
    return blocks_of_runs("guard.json", data, runs, regime_of)


def read_real_model(name: str, data: dict, earlier: list[dict]) -> list[dict]:
    """A real-model file: ``runs`` keyed ``ARM-sSEED``, plain TTRL is the ``ttrl`` arm, the final is avg@8 after.
    A file of new arms only (no ``ttrl`` runs) is paired with the plain runs of ``real_model.json``, the same
    recipe and seeds (its plain runs reproduced exactly in ``real_model_sequential.json``); they count as reused."""
    arms: dict[str, dict] = {}
    plain_runs = {} if any(k.startswith("ttrl-s") for k in data["runs"]) else {
        k: r for e in earlier for k, r in e["runs"].items() if k.startswith("ttrl-s")}
    for key, r in [*data["runs"].items(), *plain_runs.items()]:
        arm, seed = key.rsplit("-s", 1)
        # a plain run identical to one of an earlier file was read from that run's directory, not made beside the others
        reused = key in plain_runs or any(e["provenance"]["date_utc"] < data["provenance"]["date_utc"]
                                          and e["runs"].get(key) == r for e in earlier)
        arms.setdefault(arm, {})[int(seed)] = {
            "seed": int(seed), "final": r["after"]["avg@8"], "sampled": r.get("tokens_generated"), "trained": None,
            "wall": 60 * r["minutes"]["total"] if r.get("minutes") else None, "reused": reused}
    rows = [{"config": CANONICAL[name].get(a, a), "source_config": a, "variant": None,
             "label": None if a in CANONICAL[name] else flags({"arm": a}), "runs": rs, "plain": arms["ttrl"]}
            for a, rs in arms.items() if a not in ("ttrl", *LEFT_OUT)]
    return [{"regime": "real_model", "source": name, "k": 8, "plain": arms["ttrl"],
             "noise_arms": {"plain": [r["final"] for r in arms["ttrl"].values()]}, "rows": rows}]


def marked(text: str, begin: str, end: str) -> str:
    """The text between a page's ``begin`` and ``end`` markers (tests/test_docs.py compares the pages' with ours)."""
    return text.split(begin, 1)[1].split(end, 1)[0].strip("\n")


def splice(page: Path, begin: str, end: str, body: str) -> None:
    """Replace what stands between ``page``'s markers with ``body`` (the page's prose around them is left alone)."""
    text = page.read_text(encoding="utf-8")
    old = marked(text, begin, end)
    page.write_text(text.replace(f"{begin}\n{old}\n{end}" if old else f"{begin}\n{end}", f"{begin}\n{body}\n{end}", 1),
                    encoding="utf-8")


def noise_points(arms: dict[str, list[float]]) -> float | None:
    """√2 × the pooled within-arm standard deviation of plain's finals, in points (None: fewer than 2 runs in an arm)."""
    dof = sum(len(xs) - 1 for xs in arms.values() if len(xs) > 1)
    if not dof:
        return None
    ss = sum((x - statistics.mean(xs)) ** 2 for xs in arms.values() if len(xs) > 1 for x in xs)
    return 100 * math.sqrt(2 * ss / dof)


def ratio(rows: list[dict], plain: list[dict], key: str) -> float | None:
    if not rows or any(r[key] is None for r in rows + plain):
        return None
    return statistics.mean(r[key] for r in rows) / statistics.mean(p[key] for p in plain)


def row_figures(block: dict, row: dict, noise: float | None) -> dict:
    seeds = sorted(set(row["runs"]) & set(row["plain"]))
    cs, ps = [row["runs"][s] for s in seeds], [row["plain"][s] for s in seeds]
    deltas = [100 * (c["final"] - p["final"]) for c, p in zip(cs, ps)]
    beating = None if noise is None else sum(d > noise for d in deltas)
    return {
        "regime": block["regime"], "config": row["config"], "source_config": row["source_config"],
        "label": row["label"] or LABELS[row["config"]] + (f" ({row['variant']})" if row["variant"] else ""),
        "source": block["source"], "k": block["k"], "seeds": seeds, "deltas_points": deltas,
        "delta_points": statistics.mean(deltas) if deltas else None,
        "delta_se_points": statistics.stdev(deltas) / math.sqrt(len(deltas)) if len(deltas) > 1 else None,
        "seeds_above_plain": sum(d > 0 for d in deltas), "noise_points": noise, "seeds_beating_noise": beating,
        "wins": beating is not None and beating > len(deltas) / 2,
        "sampled_tokens_x": ratio(cs, ps, "sampled"), "trained_tokens_x": ratio(cs, ps, "trained"),
        "wall_x": ratio(cs, ps, "wall"),
        "wall_other_invocations": len({bool(r["reused"]) for r in cs + ps}) > 1,
    }


def verdicts(rows: list[dict]) -> dict:
    """Per configuration: the regimes it wins (every row there wins), and whether it never or always wins."""
    regimes = list(dict.fromkeys(r["regime"] for r in rows))
    by = {}
    for r in rows:
        by.setdefault(r["config"], {}).setdefault(r["regime"], []).append(r["wins"])
    won = {c: [g for g in regimes if g in rs and all(rs[g])] for c, rs in by.items()}
    return {"regimes": regimes, "wins_regimes": [{"config": c, "regimes": gs} for c, gs in won.items()],
            "never_wins": [c for c in by if not any(w for ws in by[c].values() for w in ws)],
            "wins_everywhere": [c for c in by if won[c] == regimes]}


def cell(x: float | None, fmt: str = "{:.2f}") -> str:
    """A figure as the docs print it (a minus sign, not a hyphen), or "—" where the source has none."""
    return "—" if x is None else fmt.format(x).replace("-", "−")


def table(rows: list[dict], verdict: dict, sources: list[dict]) -> str:
    commit = {s["file"]: s["git_commit"][:7] for s in sources}
    lines = [
        "Δ: final avg@16 (real model: avg@8) minus plain TTRL's on the same seed of the same source, in points, mean ±"
        " standard error. Noise: √2 × the pooled standard deviation of plain TTRL's finals over the source's plain"
        " arms in that regime (plain, and plain on other seeds where the source has them), the spread of a"
        " plain-vs-plain difference; a seed beats it when its Δ is larger (a plain run would one time in six), and a"
        " row wins (**bold**) when more than half its seeds do. Costs: the configuration's mean over plain's on the"
        " same seeds (wall time on shared 2-core machines; † runs made in different invocations, under different"
        " loads). —: not in the source. Generated by `python -m benchmarks.filter_table` from the files named.", "",
        "| regime | configuration | Δ avg@k vs plain | seeds > plain | seeds > noise (pts) | sampled tokens × |"
        " trained tokens × | wall time × | source |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        n = len(r["seeds"])
        delta = cell(r["delta_points"], "{:+.1f}") + ("" if r["delta_se_points"] is None else f" ± {r['delta_se_points']:.1f}")
        beat = "—" if r["seeds_beating_noise"] is None else f"{r['seeds_beating_noise']}/{n} (> {r['noise_points']:.1f})"
        wall = cell(r["wall_x"]) + ("†" if r["wall_x"] is not None and r["wall_other_invocations"] else "")
        lines.append(f"| {REGIMES[r['regime']]} | {r['label']} | {delta} | {r['seeds_above_plain']}/{n} | "
                     + (f"**{beat}**" if r["wins"] else beat)
                     + f" | {cell(r['sampled_tokens_x'])} | {cell(r['trained_tokens_x'])} | {wall} |"
                     f" {r['source'].removesuffix('.json')} {commit[r['source']]} |")
    label = {r["config"]: r["label"].removesuffix(" (held-out seeds)") for r in rows}
    names = lambda cs: "; ".join(label[c] for c in cs) or "none"  # noqa: E731
    won = [f"{REGIMES[g]}: {names([w['config'] for w in verdict['wins_regimes'] if g in w['regimes']])}"
           for g in verdict["regimes"]]
    lines += ["", "Wins, per regime — " + "; ".join(won) + ".",
              f"Never wins (no row with more than half its seeds above the noise): {names(verdict['never_wins'])}.",
              f"Wins in every regime ({len(verdict['regimes'])}): {names(verdict['wins_everywhere'])}."]
    return "\n".join(lines)


def summary_table(rows: list[dict], verdict: dict) -> str:
    """The table folded to one row per configuration (README.md's copy, which must stay short): per regime the Δ
    and the seeds beating the noise of each of its rows, the range of its sampled tokens × and its verdict."""
    configs = list(dict.fromkeys(r["config"] for r in rows))
    won = {w["config"]: w["regimes"] for w in verdict["wins_regimes"]}
    lines = ["Δ avg@k against plain TTRL of the same seed (seeds beating the plain-vs-plain noise / seeds), one entry per"
             " source; the full table, with costs, noise and sources, is in docs/filters.md. **Bold**: more than half"
             " the seeds beat the noise.", "",
             "| configuration | " + " | ".join(REGIMES[g] for g in verdict["regimes"]) + " | sampled tokens × | wins |",
             "|---|" + "---:|" * len(verdict["regimes"]) + "---:|---|"]
    for c in configs:
        rs = [r for r in rows if r["config"] == c]
        cells = []
        for g in verdict["regimes"]:
            here = [f"{cell(r['delta_points'], '{:+.1f}')} ({cell(r['seeds_beating_noise'], '{}')}/{len(r['seeds'])})"
                    for r in rs if r["regime"] == g]
            cells.append("; ".join(f"**{x}**" if r["wins"] else x for x, r in zip(here, [r for r in rs if r["regime"] == g]))
                         or "—")
        sampled = [r["sampled_tokens_x"] for r in rs if r["sampled_tokens_x"] is not None]
        cost = "—" if not sampled else (cell(min(sampled)) if cell(min(sampled)) == cell(max(sampled))
                                        else f"{cell(min(sampled))}–{cell(max(sampled))}")
        wins = ("every regime" if c in verdict["wins_everywhere"] else "never" if c in verdict["never_wins"]
                else ", ".join(REGIMES[g] for g in won[c]) or "in no regime on every source")
        label = rs[0]["label"].removesuffix(" (held-out seeds)")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {cost} | {wins} |")
    everywhere = ", ".join(next(r["label"] for r in rows if r["config"] == c) for c in verdict["wins_everywhere"])
    return "\n".join(lines + ["", f"Wins in every regime: {everywhere or 'none'}."])


def noise_table(blocks: list[dict]) -> str:
    lines = ["| regime | source | plain arms (runs) | plain final avg@k, pooled std (pts) | noise = √2 × std (pts) |"
             " plain on other seeds − plain |", "|---|---|---|---:|---:|---:|"]
    for b in blocks:
        noise = noise_points(b["noise_arms"])
        arms = ", ".join(f"{c} ({len(xs)})" for c, xs in b["noise_arms"].items())
        other = next((xs for c, xs in b["noise_arms"].items() if c != "plain"), None)
        plain = b["noise_arms"]["plain"]
        diff = "—" if other is None else (cell(100 * (statistics.mean(other) - statistics.mean(plain)), "{:+.1f}") + " ± "
                                          f"{100 * math.sqrt(statistics.variance(other) / len(other) + statistics.variance(plain) / len(plain)):.1f}")
        lines.append(f"| {REGIMES[b['regime']]} | {b['source'].removesuffix('.json')} | {arms} | "
                     f"{cell(None if noise is None else noise / math.sqrt(2), '{:.1f}')} | {cell(noise, '{:.1f}')} | {diff} |")
    return "\n".join(lines)


def main() -> None:
    record = provenance.collect(__file__)
    load = {p.name: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    readers = {"filters.json": read_filters, "collapse.json": read_collapse, "sequential.json": read_sequential,
               "anchor.json": read_anchor, "guard.json": read_guard}
    earlier = [load[n] for n in ("real_model.json",) if n in load]
    blocks = [b for name, read in readers.items() if name in load for b in read(load[name])]
    blocks += [b for name in ("real_model_filter.json", "real_model_sequential.json", "real_model_anchor.json") if name in load
               for b in read_real_model(name, load[name], earlier)]
    order = list(REGIMES)
    blocks.sort(key=lambda b: order.index(b["regime"]))  # stable: the sources' order within a regime
    rows = [row_figures(b, r, noise_points(b["noise_arms"])) for b in blocks for r in b["rows"]]
    used = list(dict.fromkeys(b["source"] for b in blocks)) + [n for n in ("real_model.json",) if n in load]
    sources = [{"file": n, "script": load[n]["provenance"]["script"], "git_commit": load[n]["provenance"]["git_commit"],
                "date_utc": load[n]["provenance"]["date_utc"]} for n in used]
    missing = [n for n in readers if n not in load]
    verdict = verdicts(rows)
    result = {"provenance": provenance.finish({**record, "sources": sources}), "rows": rows, "verdict": verdict,
              "missing_sources": missing,
              "noise": [{"regime": b["regime"], "source": b["source"], "plain_arms": b["noise_arms"],
                         "noise_points": noise_points(b["noise_arms"])} for b in blocks]}
    (RESULTS / "filter_table.json").write_text(json.dumps(result, indent=1) + "\n")
    md = ["### What each filter, selector and guard buys, per regime", "", BEGIN, table(rows, verdict, sources), END, "",
          "#### One row per configuration (README.md's copy)", "", SUMMARY_BEGIN, summary_table(rows, verdict), SUMMARY_END, "",
          "#### The noise each row is read against", "", noise_table(blocks), "",
          "Sources: " + "; ".join(f"`{s['file']}` ({s['script']} at {s['git_commit'][:10]}, {s['date_utc'][:10]})"
                                  for s in sources) + "."
          + (f" Not present at this commit: {', '.join(missing)}." if missing else ""), "",
          provenance.footer(result["provenance"]), ""]
    (RESULTS / "filter_table.md").write_text("\n".join(md))
    splice(DOCS["table"], BEGIN, END, table(rows, verdict, sources))
    splice(DOCS["summary"], SUMMARY_BEGIN, SUMMARY_END, summary_table(rows, verdict))
    print("\n".join(md))


if __name__ == "__main__":
    main()
