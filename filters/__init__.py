"""Group filters and rollout selectors, each in an explicit registry (see ``engine.registry``).

``FILTERS`` maps names to group filters ``(group) -> bool``; ``SELECTORS`` maps names to rollout
selectors ``(group, k) -> list[int]``; ``GUARDS`` maps names to label-free collapse guards and ``GUARD_SCORES``
to the scores that rank weight snapshots for a rollback (``filters.guard``). This package never imports
vllm, trl or ray.
"""

from filters.degenerate import consensus, truncation, zero_variance
from filters.guard import GUARDS, SCORES as GUARD_SCORES
from filters.history import HistorySkip
from filters.influence import InfluenceSelector
from filters.selectors import first_k, max_variance

FILTERS: dict = {
    "zero_variance": zero_variance,
    "consensus": consensus,
    "truncation": truncation,
    "history_skip": HistorySkip,
}
SELECTORS = {"first_k": first_k, "max_variance": max_variance, "influence": InfluenceSelector}

__all__ = ["FILTERS", "GUARDS", "GUARD_SCORES", "SELECTORS", "InfluenceSelector", "first_k", "max_variance"]
