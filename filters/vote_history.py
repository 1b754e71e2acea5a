"""Each prompt's majority answer across its visits: the label-free signals of TTRL going wrong.

Label-free rewards, the majority vote included, tend to *rise then fall* on long runs (the TTRL authors,
arXiv 2603.08660), and under TTRL more prompts go correct → wrong than wrong → correct once the vote
locks onto a wrong answer; the flip rate of majority answers warns of it early (TTRL-Guard, arXiv
2605.19444). A run sees every prompt once per episode, so it can watch, without labels:

- ``vote/flip_rate``: of this step's prompts seen before, the share whose majority answer changed since
  their previous visit (NaN when none was seen before: the first episode);
- ``vote/locked_in``: the share of prompts seen so far whose last vote was unanimous on an answer other
  than their first majority — the model has talked itself out of its first answer and into certainty.

Where test labels exist (evaluation only: the labels never reach a reward), ``label/correct_to_wrong``
and ``label/wrong_to_correct`` count this step's revisited prompts whose pseudo-label changed correctness,
so the label-free signals can be checked against what they are meant to predict. A prompt whose vote
abstained (no label) counts as a change when it had one before, and as wrong.
"""

from __future__ import annotations

from engine.types import RolloutGroup
from rewards import answers_equivalent, is_correct


class VoteHistory:
    """Per prompt: first and last majority answer, last correctness; ``observe`` returns a step's signals."""

    def __init__(self, answer_type: str = "math"):
        self.answer_type = answer_type
        self.first: dict[str, str | None] = {}
        self.last: dict[str, str | None] = {}
        self.correct: dict[str, bool] = {}
        self.locked: set[str] = set()
        self.flips: dict[str, int] = {}   # per prompt: visits on which its majority answer changed
        self.flipped: set[str] = set()    # prompts whose majority changed on their latest visit (the guard reads it)

    def same(self, a: str | None, b: str | None) -> bool:
        if a is None or b is None:
            return a is b
        return a == b or answers_equivalent(a, b, self.answer_type)

    def observe(self, groups: list[RolloutGroup], labels: dict[str, str | None]) -> dict[str, float]:
        revisited = flips = to_wrong = to_right = 0
        for group in groups:
            tid, answer = group.task.id, group.label
            if tid in self.last:
                revisited += 1
                changed = not self.same(answer, self.last[tid])
                flips += changed
                self.flips[tid] = self.flips.get(tid, 0) + changed
                if changed:
                    self.flipped.add(tid)
                else:
                    self.flipped.discard(tid)
            else:
                self.first[tid] = answer
            self.last[tid] = answer
            unanimous = group.stats.get("vote/majority_ratio") == 1.0
            if unanimous and answer is not None and not self.same(answer, self.first[tid]):
                self.locked.add(tid)
            else:
                self.locked.discard(tid)
            if labels.get(tid) is not None:
                ok = answer is not None and is_correct(answer, labels[tid], self.answer_type)
                if tid in self.correct:
                    to_wrong += self.correct[tid] and not ok
                    to_right += ok and not self.correct[tid]
                self.correct[tid] = ok
        out = {"vote/flip_rate": flips / revisited if revisited else float("nan"),
               "vote/locked_in": len(self.locked) / len(self.last) if self.last else 0.0}
        if any(labels.get(g.task.id) is not None for g in groups):
            out.update({"label/correct_to_wrong": float(to_wrong), "label/wrong_to_correct": float(to_right)})
        return out

    def state_dict(self) -> dict:
        return {"first": dict(self.first), "last": dict(self.last), "correct": dict(self.correct),
                "locked": sorted(self.locked), "flips": dict(self.flips), "flipped": sorted(self.flipped)}

    def load_state_dict(self, state: dict) -> None:
        self.first, self.last = dict(state["first"]), dict(state["last"])
        self.correct, self.locked = dict(state["correct"]), set(state["locked"])
        # checkpoints written before the guard have no per-prompt flips: they start afresh
        self.flips, self.flipped = dict(state.get("flips", {})), set(state.get("flipped", []))
