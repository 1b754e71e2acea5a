"""``REWARDS``: the built-in group rewards by name, the explicit registry reward specs resolve against.

``rewards.build`` looks a spec's name up here (through ``engine.registry.load_target``) and the
package re-exports it as ``rewards.REWARDS``; the first entry is the default. It is a module of its
own so that ``build`` needs only the votes, not the package that re-exports ``build``.
"""

from __future__ import annotations

from collections.abc import Callable

from rewards.controls import constant_reward, random_reward
from rewards.vote import confident_vote, majority_vote, plain_majority, soft_vote

REWARDS: dict[str, Callable] = {
    "majority_vote": majority_vote,      # equivalence-clustered majority (TTRL), the default
    "plain_majority": plain_majority,    # normalized-string majority (TTRL's original counting)
    "confident_vote": confident_vote,    # SCRL's share/margin-gated majority
    "soft_vote": soft_vote,              # reward = share of the rollout's answer cluster
    "random": random_reward,             # control: 1 with probability p, whatever the answer (arXiv 2506.10947)
    "constant": constant_reward,         # control: one value for all, zero GRPO advantage
}
