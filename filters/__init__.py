"""Group filters and rollout selectors, each in an explicit registry (see ``engine.registry``).

``FILTERS`` maps names to group filters ``(group) -> bool``; ``SELECTORS`` maps names to rollout
selectors ``(group, k) -> list[int]``. This package never imports vllm, trl or ray.
"""

from filters.selectors import first_k

FILTERS: dict = {}
SELECTORS = {"first_k": first_k}

__all__ = ["FILTERS", "SELECTORS", "first_k"]
