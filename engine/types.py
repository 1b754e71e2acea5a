"""The data that flows through the engine: tasks in, groups of scored rollouts out.

A *task* is one unlabeled test input. A *group* is the N_vote rollouts sampled for one task; rewards
are computed per group because a majority vote (TTRL, arXiv 2504.16084, §3) needs every sample of a
prompt at once. The three stage shapes below are Protocols, not base classes: any plain function or
callable object with the right signature is a stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Task:
    """One test input.

    ``label`` is the reference answer where the user has one. It is for evaluation only: the loop
    hands the reward and the update copies with ``label=None`` (see ``engine.loop``), so a pseudo-label
    can never be a leaked true label.
    """

    id: str
    question: str                    # the raw problem text, as loaded
    label: str | None = None         # reference answer, evaluation only
    prompt: str = ""                 # the text the model sees (template applied), see engine.data.prompts
    prompt_ids: tuple[int, ...] = ()  # tokenized ``prompt``

    def unlabeled(self) -> Task:
        """This task with its label removed: the only form training stages ever see."""
        from dataclasses import replace

        return replace(self, label=None)


@dataclass
class Rollout:
    """One sampled completion of a task's prompt."""

    text: str
    token_ids: list[int]
    logprobs: list[float] | None     # sampling log-probs, one per token, where the sampler gives them
    finish_reason: str               # "stop" (EOS or stop string) | "length" (hit the token budget)
    answer: str | None = None        # extracted answer, set by the reward stage
    reward: float | None = None


@dataclass
class RolloutGroup:
    """The N_vote rollouts of one task, with the group's pseudo-label and flat statistics."""

    task: Task
    rollouts: list[Rollout]
    label: str | None = None         # pseudo-label from the vote (never the task's true label)
    stats: dict[str, float] = field(default_factory=dict)  # "/"-namespaced, e.g. "vote/majority_ratio"

    @property
    def rewards(self) -> list[float]:
        return [r.reward if r.reward is not None else 0.0 for r in self.rollouts]


class Reward(Protocol):
    """Group-level reward: one float per rollout, in rollout order. May set rollout.answer,
    group.label and group.stats as side effects (the majority vote does)."""

    def __call__(self, group: RolloutGroup) -> list[float]: ...


class GroupFilter(Protocol):
    """True keeps the group (the sense of Python's ``filter``)."""

    def __call__(self, group: RolloutGroup) -> bool: ...


class RolloutSelector(Protocol):
    """Pick the indices of the ``k`` rollouts to train on out of the group's N_vote."""

    def __call__(self, group: RolloutGroup, k: int) -> list[int]: ...


@dataclass
class SamplingParams:
    """What a sampler needs to know per call."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    greedy: bool = False             # argmax decoding (evaluation); ignores temperature/top_p
    stop: tuple[str, ...] = ()


class Sampler(Protocol):
    """Anything that turns tasks into groups of rollouts and can take new policy weights.

    ``generate`` returns one group per task, in task order, ``params.n`` rollouts each (``desc`` labels its
    progress bar); sequential voting calls it once per round with a smaller ``n`` (engine.samplers.rounds).
    ``load_weights`` makes the sampler generate as ``model`` now would, and returns the metrics it measured
    (vLLM and the Ray pool: ``time/weight_sync_s``) or None (the transformers sampler shares the model).
    tests/test_layering.py checks that every sampler matches these signatures."""

    def generate(self, tasks: list[Task], params: SamplingParams, desc: str = "sample") -> list[RolloutGroup]: ...

    def load_weights(self, model) -> dict[str, float] | None: ...
