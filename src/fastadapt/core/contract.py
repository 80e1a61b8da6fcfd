"""The typed contract between the engine and what plugs into it: algorithms and task sources.

The engine (training loop, evaluation, reports, the CLI) reads nothing else from an algorithm or a task source
than what the protocols here name (:class:`Algorithm`, :class:`TaskSource`, :class:`Predictor`); there is no
table of algorithm names outside the registry (:mod:`fastadapt.core.registry`). The checks at the bottom turn
a broken plug-in into a one-line :class:`~fastadapt.core.errors.ConfigError` naming what was expected and what
was found.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from torch import Tensor, nn

from fastadapt.core.episodes import EnvTasks, TaskBatch
from fastadapt.core.errors import ConfigError


@runtime_checkable
class Predictor(Protocol):
    """What ``Algorithm.adapt`` returns: one task's adapted state as a callable that keeps adapting.

    ``predictor(query_x [Q, *x]) -> outputs [Q, N]`` (``[Q, *y]`` for regression); ``update(x, y)`` learns from a
    labelled batch (test-then-train: predict ``x`` first); ``reset()`` goes back to what was meta-learnt, with
    nothing seen; ``configure(**options)`` sets the update policy (``window``, ``policy``, ``steps``, ``decay``,
    ... as the predictor documents) and returns the predictor. A user's predictor may implement
    ``explain(x)`` too (:class:`ExplainablePredictor`). The engine reads these with ``getattr``, so a predictor
    that only predicts still evaluates; online adaptation needs ``update`` and ``reset``.
    """

    def __call__(self, x: Tensor) -> Tensor: ...

    def update(self, x: Tensor, y: Tensor) -> None: ...

    def reset(self) -> None: ...

    def configure(self, **options: Any) -> Any: ...


@runtime_checkable
class ExplainablePredictor(Predictor, Protocol):
    """Optional: a predictor that explains its own outputs (``fastadapt.explain``, ``fastadapt explain RUN``).

    ``explain(x [Q, *x])`` returns a mapping of named parts (tensors, numbers, strings, lists: the
    predictor's evidence for its outputs on ``x``, e.g. ``distances [Q, N]``), or None for no explanation
    of its own (the generic one is given). Reserved keys: ``kind`` (a word naming the explanation;
    default ``"own"``), ``notes`` (sentences), ``layers`` (:class:`~fastadapt.algorithms.predictors.LayerChange`
    per parameter tensor) and ``attribute`` (bool, default True: add an input attribution when asked for
    ``"auto"``). Without ``explain`` a predictor gets the generic explanation (outputs, probabilities and
    an input attribution). ``grad_forward(x)``, optional too, is ``predictor(x)`` with a graph to ``x``
    for a predictor that runs under ``no_grad``.
    """

    def explain(self, x: Tensor) -> Mapping[str, Any] | None: ...


@dataclass(frozen=True)
class MetaOutput:
    """``loss``: differentiable scalar; ``metrics``: plain floats for logging."""

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Algorithm(Protocol):
    """What the engine calls on an algorithm: ``cls(model, **options)``, an ``nn.Module``.

    - ``meta_loss(batch) -> MetaOutput``: differentiable loss over the tasks of a
      :class:`~fastadapt.core.episodes.TaskBatch` and float metrics (``loss``; ``acc`` or ``mse``).
    - ``adapt(support_x, support_y) -> Predictor``: one task; a :class:`Predictor` that carries the adapted
      state and never changes the algorithm.
    - ``predict(batch) -> Tensor``: query outputs of every task after adaptation, ``[T, N*Q, N]``
      (classification) or shaped like ``query_y`` (regression); used by evaluation.
    - Class attribute ``needs_head`` (default False): the model must end in a ``ways``-way linear layer
      (gradient-based methods) rather than be an embedding (metric-based ones).
    - Attribute ``encodes_meta_batch`` (default False): ``meta_loss`` runs the model once over every image of
      the meta-batch, so BatchNorm statistics span tasks (kept equal under ``torchrun``).

    One optimizer update may call ``meta_loss`` several times, once per chunk of the step's tasks
    (``optim.task_chunk``, :mod:`fastadapt.training.accumulate`); the calls after the first run inside
    :func:`update_part` and :func:`continues_update` is then True: an algorithm that counts its meta-updates
    (MAML++'s schedules) reads its schedule as the first call did and does not count again.
    """

    needs_head: ClassVar[bool]

    def meta_loss(self, batch: TaskBatch) -> MetaOutput: ...

    def adapt(self, support_x: Tensor, support_y: Tensor) -> Predictor: ...

    def predict(self, batch: TaskBatch) -> Tensor: ...


@runtime_checkable
class TaskSource(Protocol):
    """What the engine calls on a source of tasks (EpisodeSampler, SinusoidTasks, a user's own).

    - ``ways``, ``shots``, ``queries``: ints; ``ways = 1`` for regression.
    - ``sample_tasks(step, start, count) -> TaskBatch``: a pure function of its arguments (or ``-> EnvTasks``:
      reinforcement-learning tasks given by parameters, whose trajectories the algorithm samples; ``shots`` /
      ``queries`` are then trajectories per task before / after adaptation).
    - ``fixed(num_episodes, batch_size) -> Iterator[TaskBatch]``: the same evaluation episodes every time.

    A registered task-source builder may instead return a :class:`~fastadapt.data.ClassDataset`; the engine
    then draws episodes from it with an :class:`~fastadapt.data.EpisodeSampler`.
    """

    ways: int
    shots: int
    queries: int

    def sample_tasks(self, step: int, start: int, num_tasks: int) -> TaskBatch: ...

    def fixed(self, num_episodes: int, batch_size: int = ...) -> Iterator[TaskBatch]: ...


@runtime_checkable
class LearntRates(Protocol):
    """Optional: an algorithm that learns its inner learning rates (plotted by ``fastadapt plot``)."""

    def learning_rates(self) -> dict[str, dict[str, float]]: ...


@runtime_checkable
class StepRates(Protocol):
    """Optional: inner rates that may be learnt per inner step (MAML++ LSLR); ``{}`` when they are not learnt
    (``fastadapt plot``)."""

    def step_rates(self) -> dict[str, list[float]]: ...


@runtime_checkable
class GateTracing(Protocol):
    """Optional: a learnt optimizer whose gates can be traced over inner steps (``fastadapt plot``)."""

    def gate_trace(self, support_x: Tensor, support_y: Tensor) -> Any: ...


def needs_head(cls: type) -> bool:
    """``cls.needs_head``, False when the class does not say."""
    value = getattr(cls, "needs_head", False)
    if not isinstance(value, bool):
        raise ConfigError(f"algorithm {cls.__qualname__}: needs_head must be True or False, found {value!r}")
    return value


def check_variable_ways(cls: type, name: str, registered: list[str], get: Any) -> None:
    """One-line error unless ``cls`` declares ``variable_ways = True``: it predicts an episode of any N, read from
    the support labels (``data.episodes = "variable"``), rather than through a fixed N-output head. ``registered``
    and ``get``: the algorithm registry's names and lookup (the error names the algorithms that can)."""
    value = getattr(cls, "variable_ways", False)
    if not isinstance(value, bool):
        raise ConfigError(f"algorithm {cls.__qualname__}: variable_ways must be True or False, found {value!r}")
    if not value:
        able = [n for n in registered if getattr(get(n), "variable_ways", False) is True]
        raise ConfigError(
            f"variable-way episodes need an algorithm that reads N from the support set; {name} has a fixed "
            f"N-output head or input (it does not declare variable_ways = True): use data.episodes=fixed, or one "
            f"of {', '.join(able) or 'none registered'}"
        )


def encodes_meta_batch(algo: nn.Module) -> bool:
    """Whether ``algo.meta_loss`` encodes the whole meta-batch at once (False when it does not say)."""
    return bool(getattr(algo, "encodes_meta_batch", False))


_UPDATE_PART: ContextVar[int] = ContextVar("fastadapt_update_part", default=0)


@contextmanager
def update_part(index: int) -> Iterator[None]:
    """The ``meta_loss`` calls inside are part ``index`` (0: the first) of one optimizer update."""
    token = _UPDATE_PART.set(index)
    try:
        yield
    finally:
        _UPDATE_PART.reset(token)


def continues_update() -> bool:
    """Whether the current ``meta_loss`` call continues an update an earlier call began (chunked accumulation)."""
    return _UPDATE_PART.get() > 0


def check_algorithm(algo: Any, name: str) -> None:
    """One-line error unless ``algo`` keeps the algorithm contract."""
    if not isinstance(algo, nn.Module):
        raise ConfigError(f"algorithm {name}: expected an nn.Module, found {type(algo).__name__}")
    missing = [m for m in ("meta_loss", "adapt", "predict") if not callable(getattr(algo, m, None))]
    if missing:
        raise ConfigError(
            f"algorithm {name}: expected methods meta_loss, adapt and predict; {type(algo).__name__} "
            f"lacks {', '.join(missing)}"
        )


def check_task_source(source: Any, name: str) -> None:
    """One-line error unless ``source`` keeps the task-source contract."""
    missing = [m for m in ("sample_tasks", "fixed") if not callable(getattr(source, m, None))]
    missing += [a for a in ("shots", "queries") if not isinstance(getattr(source, a, None), int)]
    if missing:
        raise ConfigError(
            f"task source {name}: expected sample_tasks, fixed, shots and queries; {type(source).__name__} "
            f"lacks {', '.join(missing)}"
        )


def check_task_batch(batch: Any, name: str, ways: int, shots: int, queries: int) -> None:
    """One-line error unless ``batch`` is a :class:`TaskBatch` of ``ways``-way ``shots``-shot ``queries``-query
    tasks."""
    if isinstance(batch, EnvTasks):  # reinforcement learning: tasks are environments, given by parameters
        check_env_tasks(batch, name)
        return
    if not isinstance(batch, TaskBatch):
        raise ConfigError(
            f"task source {name}: sample_tasks must return a TaskBatch (or EnvTasks), found {type(batch).__name__}"
        )
    t = batch.num_tasks
    classification = not batch.support_y.is_floating_point()
    n = ways if classification else 1
    expected = {"support_x": (t, n * shots), "query_x": (t, n * queries)}
    for key, want in expected.items():
        found = tuple(getattr(batch, key).shape[:2])
        if found != want:
            raise ConfigError(
                f"task source {name}: {key} has leading shape {list(found)}, expected {list(want)} "
                f"(tasks, {'ways*shots' if key == 'support_x' else 'ways*queries'}) for {ways}-way {shots}-shot "
                f"{queries}-query tasks"
            )
    if classification:
        for key in ("support_y", "query_y"):
            y = getattr(batch, key)
            if y.ndim != 2 or (y.numel() and (int(y.min()) < 0 or int(y.max()) >= ways)):
                raise ConfigError(
                    f"task source {name}: {key} must hold labels 0..{ways - 1} of shape [tasks, examples], "
                    f"found shape {list(y.shape)} with values "
                    f"{int(y.min()) if y.numel() else '-'}..{int(y.max()) if y.numel() else '-'}"
                )


def check_env_tasks(batch: EnvTasks, name: str) -> None:
    """One-line error unless ``batch`` holds at least one task with finite parameters, a family and model shapes."""
    if batch.num_tasks < 1 or not bool(batch.params.isfinite().all()):
        raise ConfigError(
            f"task source {name}: EnvTasks needs >= 1 task with finite parameters; found {batch.num_tasks} tasks, "
            f"params {batch.params.tolist()[:3]}"
        )
    if batch.family is None or not batch.observation_shape or batch.action_size < 1:
        raise ConfigError(
            f"task source {name}: EnvTasks needs a family, an observation shape and an action size >= 1; found "
            f"{type(batch.family).__name__}, {list(batch.observation_shape)}, {batch.action_size}"
        )


def model_input_shape(batch: Any) -> tuple[int, ...]:
    """One example's shape, the model's input: an observation (:class:`EnvTasks`) or a support input
    (:class:`TaskBatch`)."""
    return tuple(batch.observation_shape) if isinstance(batch, EnvTasks) else tuple(batch.support_x.shape[2:])


def check_model_output(output: Any, name: str, algorithm: str, expected_width: int | None, examples: int) -> None:
    """One-line error unless a model's output fits its algorithm.

    ``expected_width``: the classes of a head (``needs_head``) or the regression target's width;
    None for an embedding (any width, but one vector per example).
    """
    if not isinstance(output, Tensor):
        raise ConfigError(f"model {name} returned {type(output).__name__}; {algorithm} expects a tensor")
    if output.ndim != 2 or output.shape[0] != examples:
        raise ConfigError(
            f"model {name} returned shape {list(output.shape)} for {examples} inputs; {algorithm} expects [{examples}, "
            f"{expected_width if expected_width is not None else 'features'}]"
        )
    if expected_width is not None and output.shape[1] != expected_width:
        raise ConfigError(
            f"model {name} returned {output.shape[1]} outputs per input; {algorithm} expects {expected_width} "
            f"(a {expected_width}-way head{'' if expected_width > 1 else ' / one regression output'})"
        )
