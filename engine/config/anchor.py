"""What ``--anchor FILE`` feeds besides the evaluation, and the start-up refusals of what would need it.

The anchors (``engine.data.anchors``: a handful of labeled examples held out of the test prompts; LESS's
setting, arXiv 2402.04333) feed two stages beside the ``anchor/*`` evaluation columns:

- the influence selector's ``labeled`` target, when its spec names no ``labeled_path``: ``selector_spec``
  hands the selector the anchors as in-memory examples (prompt token ids as the sampler sees them, the label
  as the reference answer), so ``filters/`` reads no file format of the engine's;
- ``--guard_score anchor_accuracy`` (``filters.guard``): each snapshot ranked by its greedy accuracy on them;
- ``--anchor_train N``: N of them trained on every step with a correctness reward (``engine.loop``), the control
  for the two above.

Any of them without ``--anchor`` has nothing to read: ``check_anchor`` refuses it at start-up, naming the option.
"""

from __future__ import annotations

from collections.abc import Mapping

from engine.errors import ConfigError
from engine.registry import SpecError, accepts, load_target, spec_name, split_spec
from engine.types import Task
from filters import SELECTORS


def feeds_labeled_target(spec) -> bool:
    """Whether the selector ``spec`` asks for labeled examples it does not name: target ``labeled``, neither
    ``labeled_path`` nor ``labeled`` given, and a selector that takes ``labeled`` (the influence selector)."""
    if not isinstance(spec, Mapping) or spec.get("target") != "labeled" or spec.get("labeled_path") \
            or spec.get("labeled") is not None:
        return False
    try:
        name, _ = split_spec(spec)
        return accepts(load_target(name, SELECTORS, "selectors"), "labeled")
    except SpecError:
        return False  # validate() reports the spec itself


def selector_spec(spec, anchors: list[Task]):
    """``spec`` with the anchors as its ``labeled`` examples where it asks for them (``feeds_labeled_target``);
    otherwise ``spec`` unchanged. Each example is (prompt token ids, reference answer): the anchor's prompt as
    the test prompts are templated, its label as the completion whose gradient is the target (LESS)."""
    if not feeds_labeled_target(spec):
        return spec
    return {**spec, "labeled": [(list(a.prompt_ids), a.label) for a in anchors]}


def check_anchor(t) -> None:
    """``--anchor`` is what a ``labeled`` influence target without ``labeled_path``, ``--guard_score
    anchor_accuracy`` and ``--anchor_train`` read: each without it is refused (``t``: the run's ``TTRLArgs``)."""
    if t.anchor_train < 0:
        raise ConfigError(f"anchor_train must be 0 (off) or the number of anchors trained on each step, got {t.anchor_train}")
    if t.anchor_train and t.anchor is None:
        raise ConfigError(f"anchor_train {t.anchor_train} needs --anchor FILE: the labeled examples to train on")
    if t.anchor is not None and not str(t.anchor).strip():
        raise ConfigError("anchor must name a file of labeled examples (.json, .jsonl or .parquet), got ''")
    if t.anchor is not None:
        return
    if feeds_labeled_target(t.selector):
        raise ConfigError("selector: target labeled needs labeled examples: --anchor FILE (a few labeled examples, "
                          "read as --data is) or labeled_path in the selector spec (a JSONL of {prompt, answer})")
    if t.guard is not None and spec_name(t.guard_score) == "anchor_accuracy":
        raise ConfigError("guard_score anchor_accuracy needs --anchor FILE: the labeled examples each snapshot's "
                          "accuracy is measured on")
