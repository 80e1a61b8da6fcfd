"""Typed episodes: :class:`TaskBatch` (T tasks given by examples) and :class:`EnvTasks` (T environments).

An *episode* (a task) is an N-way K-shot Q-query problem: a support set of K labelled examples of
each of N classes, and a query set of Q examples of each class to predict. Labels inside a task are
0..N-1; ``classes`` maps them back to the dataset's class ids.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class Episode:
    """One task; the fields of :class:`TaskBatch` without the leading task dimension."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    classes: Tensor | None = None


@dataclass(frozen=True)
class TaskBatch:
    """T independent tasks stacked along a leading dimension:

    ============  =====================  ==========================================
    field         shape                  meaning
    ============  =====================  ==========================================
    support_x     ``[T, N*K, *x_shape]``  support inputs, grouped by class (class-major)
    support_y     ``[T, N*K]`` (int64)    labels 0..N-1 (regression: ``[T, K, *y_shape]``, float)
    query_x       ``[T, N*Q, *x_shape]``  query inputs
    query_y       ``[T, N*Q]`` (int64)    labels 0..N-1 (regression: float targets)
    classes       ``[T, N]`` (int64)      dataset class id of each label, or ``None`` (regression)
    ============  =====================  ==========================================
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    classes: Tensor | None = None

    def __post_init__(self) -> None:
        t = self.support_x.shape[0]
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None and v.shape[0] != t:
                raise ValueError(
                    f"TaskBatch.{f.name} has {v.shape[0]} tasks, support_x has {t}; all fields need the same T"
                )
        if self.support_x.shape[1] != self.support_y.shape[1] or self.query_x.shape[1] != self.query_y.shape[1]:
            raise ValueError("TaskBatch: x and y disagree on the number of examples per task")

    def __len__(self) -> int:
        return self.support_x.shape[0]

    @property
    def num_tasks(self) -> int:
        return self.support_x.shape[0]

    @property
    def ways(self) -> int:
        """N (classification); 1 for regression batches."""
        return 1 if self.classes is None else self.classes.shape[1]

    @property
    def shots(self) -> int:
        return self.support_x.shape[1] // self.ways

    @property
    def queries(self) -> int:
        return self.query_x.shape[1] // self.ways

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TaskBatch:
        """Move to a device; ``dtype`` applies to the inputs (and float targets) only."""

        def move(v: Tensor | None, is_x: bool) -> Tensor | None:
            if v is None:
                return None
            cast = dtype if (is_x or v.is_floating_point()) else None
            return v.to(device=device, dtype=cast)

        return TaskBatch(
            move(self.support_x, True),
            move(self.support_y, False),  # type: ignore[arg-type]
            move(self.query_x, True),
            move(self.query_y, False),  # type: ignore[arg-type]
            move(self.classes, False),
        )

    def task(self, i: int) -> Episode:
        """Task ``i`` as an :class:`Episode`."""
        return Episode(
            self.support_x[i],
            self.support_y[i],
            self.query_x[i],
            self.query_y[i],
            None if self.classes is None else self.classes[i],
        )

    def select(self, index: slice | Tensor) -> TaskBatch:
        """The tasks picked by ``index`` (a slice or an index tensor) as a new batch."""
        return replace(
            self,
            support_x=self.support_x[index],
            support_y=self.support_y[index],
            query_x=self.query_x[index],
            query_y=self.query_y[index],
            classes=None if self.classes is None else self.classes[index],
        )

    @staticmethod
    def cat(batches: list[TaskBatch]) -> TaskBatch:
        """Concatenate batches along the task dimension."""
        if not batches:
            raise ValueError("TaskBatch.cat needs at least one batch")
        cls = batches[0].classes
        return TaskBatch(
            torch.cat([b.support_x for b in batches]),
            torch.cat([b.support_y for b in batches]),
            torch.cat([b.query_x for b in batches]),
            torch.cat([b.query_y for b in batches]),
            None if cls is None else torch.cat([b.classes for b in batches]),  # type: ignore[misc]
        )


def collate_tasks(batches: list[TaskBatch]) -> TaskBatch:
    """The ``collate_fn`` of a ``DataLoader`` whose items are :class:`TaskBatch` es: one batch of all their tasks.

    ``[T_1, ...] + [T_2, ...] + ... -> [T_1 + T_2 + ..., ...]`` for every field, in order (:meth:`TaskBatch.cat`);
    the batches must agree on N, K, Q and the input shape.
    ``DataLoader(dataset, batch_size=B, collate_fn=collate_tasks)``: torch's default collation does not know a
    :class:`TaskBatch`. See :class:`fastadapt.data.sampler.EpisodeDataset` for training tasks as an
    ``IterableDataset``.
    """
    if not all(isinstance(b, TaskBatch) for b in batches):
        kinds = sorted({type(b).__name__ for b in batches})
        raise TypeError(f"collate_tasks joins TaskBatch items, got {', '.join(kinds)}")
    return TaskBatch.cat(list(batches))


@dataclass(frozen=True)
class EnvTasks:
    """T reinforcement-learning tasks, given by their parameters rather than by examples.

    A task is an environment to act in: its data (trajectories) is sampled by the algorithm with the
    policy it is adapting, so what travels from a task source to an algorithm is the recipe.

    =================  ==================  ==============================================================
    field              shape               meaning
    =================  ==================  ==============================================================
    params             ``[T, P]`` float64  each task's parameters (a goal; a mass and a length), in the
                                           order of ``family.param_names``
    seeds              ``[T]`` int64       each task's seed (environment resets and action noise)
    observation_shape  tuple               one observation: the policy's input
    action_size        int                 one action's width: the policy's output
    family             object or None      the :class:`fastadapt.rl.EnvFamily` that makes each task's
                                           environment; None for a batch that only describes shapes
                                           (a run rebuilt from its folder)
    shots              int                 trajectories per task for each adaptation step (K)
    queries            int                 trajectories per task that score the adapted policy
    =================  ==================  ==============================================================

    Environments run on the CPU, so ``to`` leaves the batch where it is; the policy's device is the
    algorithm's.
    """

    params: Tensor
    seeds: Tensor
    observation_shape: tuple[int, ...]
    action_size: int
    family: object | None = None
    shots: int = 1
    queries: int = 1

    def __post_init__(self) -> None:
        if self.params.ndim != 2 or self.seeds.shape != (self.params.shape[0],):
            raise ValueError(
                f"EnvTasks: params must be [T, P] and seeds [T]; "
                f"found {list(self.params.shape)} and {list(self.seeds.shape)}"
            )

    def __len__(self) -> int:
        return self.params.shape[0]

    @property
    def num_tasks(self) -> int:
        return self.params.shape[0]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> EnvTasks:
        """The batch itself: environments and their parameters stay on the CPU."""
        return self

    def select(self, index: slice | Tensor) -> EnvTasks:
        """The tasks picked by ``index`` as a new batch."""
        return replace(self, params=self.params[index], seeds=self.seeds[index])
