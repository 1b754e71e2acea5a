"""The data that flows through the engine: tasks in, groups of scored rollouts out; and the seams between
the engine and its stages, named.

A *task* is one unlabeled test input. A *group* is the N_vote rollouts sampled for one task; rewards
are computed per group because a majority vote (TTRL, arXiv 2504.16084, §3) needs every sample of a
prompt at once. The three stage shapes below are Protocols, not base classes: any plain function or
callable object with the right signature is a stage.

A few stages do more than their call, and the loop, the update and the run record ask for that through the
capability Protocols at the end of this module — never by probing for a method name. Each is the whole of
one capability (every method the engine calls for it), so ``isinstance(stage, Skipper)`` says the stage can
do all of it; a stage missing one member has not got the capability, rather than failing half-way through a
step. They are ``runtime_checkable`` for that check; ``isinstance`` looks at names only, so
``tests/test_layering.py`` checks the signatures of every registered stage against the Protocols it
implements, and pins which ones each implements (a renamed method fails the test instead of silently
dropping the capability).

=====================  ===============================  ==========================================
capability             who asks for it                  implemented by
=====================  ===============================  ==========================================
``Skipper``            ``engine.loop``, before sampling ``filters.history.HistorySkip`` (GRESO)
``EndOfStep``          ``engine.loop``, once per step   ``filters.history.HistorySkip``
``Stateful``           ``engine.rundir.record``         ``filters.history.HistorySkip``
``BatchSelector``      ``engine.loop``, to select       ``filters.influence.InfluenceSelector``
``ReportsMetrics``     ``engine.loop``, after selecting ``filters.influence.InfluenceSelector``
``FiltersGradients``   ``engine.loop``, to update       ``filters.influence.InfluenceSelector``
``GradientFilter``     ``engine.update.GRPOPolicy``     ``filters.influence.InfluenceSelector``
=====================  ===============================  ==========================================

``GradientSource`` goes the other way: what a batch selector or gradient filter may read of the policy
(``engine.update.GRPOPolicy`` has it), so a stage in ``filters/`` never reaches into TRL's trainer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch


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


class GradientSource(Protocol):
    """What a stage may read of the policy under adaptation, and nothing else of TRL's trainer.

    ``model``: the live module (PEFT-wrapped under LoRA), whose trainable Linear layers the influence
    selector hooks. ``optimizer``: the live optimizer, whose Adam moments precondition the features (LESS,
    arXiv 2402.04333), or None. ``tokenizer``: encodes labeled examples (the ``labeled`` target).
    ``temperature``: what the update divides logits by before its log-probs, so a stage's own log-probs
    are the update's. ``scale_rewards``: TRL's advantage scaling (``group`` | ``batch`` | ``none``), so a
    stage's advantages are the update's."""

    @property
    def model(self) -> Any: ...

    @property
    def optimizer(self) -> Any: ...

    @property
    def tokenizer(self) -> Any: ...

    @property
    def temperature(self) -> float: ...

    @property
    def scale_rewards(self) -> str | bool: ...


@runtime_checkable
class Skipper(Protocol):
    """A group filter that also skips prompts before they are sampled (GRESO, arXiv 2506.02177).

    In ``enforce`` mode the loop asks ``skip`` for each prompt it takes (drawing from the run's ``rng``); in
    ``monitor`` mode it sums ``skip_probability`` instead — the expected number skipped, with no draw, so the
    run's random stream is the same as without the filter."""

    def skip(self, task_id: str, rng: random.Random) -> bool: ...

    def skip_probability(self, task_id: str) -> float: ...


@runtime_checkable
class EndOfStep(Protocol):
    """A stage that acts once at the end of every step, after its groups were filtered (GRESO adapts its
    exploration probability there); returns metrics for the step's row."""

    def end_step(self) -> dict[str, float]: ...


@runtime_checkable
class Stateful(Protocol):
    """A stage with state a resumed run must get back (GRESO's streaks): saved in every checkpoint."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@runtime_checkable
class BatchSelector(Protocol):
    """A rollout selector that needs the whole batch and the policy at once (gradient influence scores
    rollouts against a batch-level direction): the loop calls it instead of the selector once per group."""

    def select_batch(self, groups: list[RolloutGroup], k: int, policy: GradientSource) -> list[list[int]]: ...


@runtime_checkable
class ReportsMetrics(Protocol):
    """A stage that leaves the metrics of its last call, ``/``-namespaced, for the step's row."""

    last_metrics: dict[str, float]


@runtime_checkable
class GradientFilter(Protocol):
    """What ``engine.update.GRPOPolicy.update`` hands each optimizer step's per-row gradients to.

    ``capture(model)`` is a context manager open around each micro-batch's forward and backward, recording
    the rows' gradients (what it yields is handed back in ``recorded``). After the step's last backward,
    ``filter_gradients`` gets one entry per micro-batch of the step in each of ``recorded``, ``advantages``
    and ``weights`` (each row's share of TRL's loss normaliser) and may take rows out of ``.grad`` before the
    optimizer steps; the update then merges ``last_metrics`` into its own."""

    last_metrics: dict[str, float]

    def capture(self, model: Any) -> Any: ...

    def filter_gradients(self, recorded: Sequence[Any], advantages: Sequence[torch.Tensor],
                         weights: Sequence[torch.Tensor], policy: GradientSource) -> None: ...


@runtime_checkable
class FiltersGradients(Protocol):
    """A selector whose choice goes on inside the update: ``grad_filter`` is the ``GradientFilter`` the loop
    hands ``policy.update``, or None where this configuration selects before the update only (the influence
    selector's ``rollouts`` stage)."""

    @property
    def grad_filter(self) -> GradientFilter | None: ...


# Every capability a stage may have, for the tests that pin who has which.
STAGE_CAPABILITIES = (Skipper, EndOfStep, Stateful, BatchSelector, ReportsMetrics, FiltersGradients, GradientFilter)
