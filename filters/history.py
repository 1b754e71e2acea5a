"""History-based prompt skipping (GRESO, arXiv 2506.02177): skip a prompt *before* sampling it.

TTRL runs many episodes over a small test set (80 over AIME's 30 prompts), and once the model has
settled on a prompt, every visit yields a unanimous group — all rewards 1, no gradient — at the full
price of sampling ``n_votes`` rollouts. GRESO's observation: a prompt that was degenerate on its recent
visits usually stays degenerate. So a prompt degenerate on its last ``k`` consecutive visits is skipped
with probability ``1 - max(p**k, 0.01)``: the floor keeps every prompt explored now and then, and
``p`` (the exploration probability) adapts each step toward a target share of degenerate groups —
more degenerate groups than the target means skip more (``p`` down), fewer means skip less.

Skipped prompts still count in evaluation; only training rollouts are saved.
"""

from __future__ import annotations

import random

from engine.types import RolloutGroup
from filters.degenerate import zero_variance


class HistorySkip:
    """A group filter that never drops a group itself but remembers which prompts were degenerate.

    As a filter it records each group's outcome (True always: dropping is for ``zero_variance``). It has
    three of the stage capabilities of ``engine.types``: a ``Skipper`` (the loop asks ``skip(task_id, rng)``
    before sampling a prompt, or sums ``skip_probability`` in monitor mode), ``EndOfStep`` (``end_step``
    adapts ``p``) and ``Stateful`` (its streaks and ``p`` are checkpointed).
    """

    def __init__(self, target: float = 0.25, p: float = 0.5, step: float = 0.05, p_min: float = 0.05,
                 tol: float = 1e-6):
        self.target, self.p, self.step, self.p_min, self.tol = target, p, step, p_min, tol
        self.streak: dict[str, int] = {}   # task id -> consecutive degenerate visits
        self._seen = self._degenerate = 0

    def __call__(self, group: RolloutGroup) -> bool:
        degenerate = not zero_variance(group, self.tol)
        self.streak[group.task.id] = self.streak.get(group.task.id, 0) + 1 if degenerate else 0
        self._seen += 1
        self._degenerate += degenerate
        return True

    def skip_probability(self, task_id: str) -> float:
        k = self.streak.get(task_id, 0)
        return 0.0 if k == 0 else 1.0 - max(self.p ** k, 0.01)

    def skip(self, task_id: str, rng: random.Random) -> bool:
        return rng.random() < self.skip_probability(task_id)

    def end_step(self) -> dict[str, float]:
        """Adapt ``p`` toward the target degenerate share observed this step; return metrics."""
        share = self._degenerate / self._seen if self._seen else 0.0
        if self._seen:
            self.p = min(1.0, max(self.p_min, self.p - self.step if share > self.target else self.p + self.step))
        self._seen = self._degenerate = 0
        return {"filters/history_skip/p": self.p, "filters/history_skip/degenerate_share": share}

    def state_dict(self) -> dict:
        return {"p": self.p, "streak": dict(self.streak)}

    def load_state_dict(self, state: dict) -> None:
        self.p, self.streak = state["p"], dict(state["streak"])
