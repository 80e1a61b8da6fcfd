"""Seeded variable-way, variable-shot, class-imbalanced episodes (Meta-Dataset's), one task per batch."""

from __future__ import annotations

import math
import random
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import DataError
from fastadapt.data.classes import ClassDataset
from fastadapt.data.sampler import SeededSteps, _mix, fixed_episodes, next_tasks

MIN_EXAMPLES = 2  # a class needs one query and one support example


@dataclass(frozen=True)
class EpisodeShape:
    """What one variable episode drew: its ``N`` class positions, ``q`` queries per class, the support size
    ``|S|`` asked for and the shots ``K_c`` of each class (``sum(shots) <= support_size``)."""

    picks: tuple[int, ...]
    queries: int
    support_size: int
    shots: tuple[int, ...]


def episode_shape(
    rng: random.Random,
    counts: list[int],
    members: list[int],
    min_ways: int,
    max_ways: int,
    max_support: int,
    max_query: int,
    max_support_per_class: int,
) -> EpisodeShape:
    """Meta-Dataset's rules (Triantafillou et al. 2020, "Meta-Dataset", ICLR, sec. 3.2 and appendix) for one
    episode over the classes at ``members`` (positions into ``counts``, the examples ``|Im(c)|`` of each class):

    - ways ``N ~ U{min_ways, ..., min(max_ways, len(members))}``, then ``N`` classes uniformly without
      replacement;
    - queries per class ``q = min(max_query, min_c floor(|Im(c)| / 2))``;
    - support size ``|S| = min(max_support, sum_c ceil(beta * min(max_support_per_class, |Im(c)| - q)))`` with
      ``beta ~ U(0, 1]``;
    - shots ``K_c = min(floor(R_c (|S| - N)) + 1, |Im(c)| - q)`` with
      ``R_c = exp(alpha_c) |Im(c)| / sum_c' exp(alpha_c') |Im(c')|`` and ``alpha_c ~ U[log 0.5, log 2)``: the
      larger class gets more shots on average, perturbed by a factor in [0.5, 2) per class.

    Every class keeps ``K_c >= 1`` and ``K_c + q <= |Im(c)|``, and ``sum_c K_c <= |S|`` (as ``sum_c R_c = 1``).
    """
    ways = rng.randint(min_ways, min(max_ways, len(members)))
    picks = rng.sample(members, ways)
    sizes = [counts[p] for p in picks]
    q = min(max_query, min(s // 2 for s in sizes))
    beta = 1.0 - rng.random()  # (0, 1]
    support = min(max_support, sum(math.ceil(beta * min(max_support_per_class, s - q)) for s in sizes))
    weights = [math.exp(rng.uniform(math.log(0.5), math.log(2.0))) * s for s in sizes]
    total = sum(weights)
    shots = tuple(min(math.floor(w / total * (support - ways)) + 1, s - q) for w, s in zip(weights, sizes))
    return EpisodeShape(tuple(picks), q, support, shots)


class VariableEpisodeSampler(SeededSteps):
    """Draws variable-way, variable-shot, class-imbalanced episodes (Meta-Dataset's; :func:`episode_shape` gives
    the rules and the paper) as :class:`TaskBatch` es of one task.

    An episode is a ``TaskBatch`` with ``T = 1``: ``support_x [1, sum_c K_c, *x]`` class-major with labels
    ``0..N-1`` in unequal counts, ``query_x [1, N*q, *x]`` with ``q`` queries per class, ``classes [1, N]``.
    Tasks of different shapes cannot stack, so ``sample_tasks`` draws one task at a time (more is a
    :class:`DataError`) and ``fixed(n, batch_size)`` (as :func:`~fastadapt.data.sampler.fixed_episodes` on this
    source, by ``one_task_per_batch``) yields ``n`` batches of one episode whatever ``batch_size``: every evaluation
    then scores one episode per batch. Accuracy over an episode is
    the mean over its queries, which is class-balanced as every class has ``q`` of them.

    Args:
        dataset: the classes to draw from; uint8 examples are scaled to [0, 1] floats.
        seed: the seed of the task stream; task ``index`` of ``step`` is drawn from ``_mix(seed, step, index)``
            as :class:`~fastadapt.data.EpisodeSampler` draws it, so it is the same whatever the order.
        min_ways, max_ways: the bounds of ``N`` (5 and 50); ``max_ways`` is clamped to the classes of the task's
            group.
        max_support: the most support examples of an episode (500).
        max_query: the most query examples per class (10).
        max_support_per_class: the most a class adds to ``|S|`` (100).
        strict: a class with fewer than 2 examples is an error naming it (else it is never drawn).
        groups: one label per class (:func:`~fastadapt.data.class_groups`, ``data.episode_scope``): every episode
            draws its classes from one group, chosen uniformly among the groups with at least ``min_ways`` classes.

    ``ways``, ``shots`` and ``queries`` are 0: they vary per episode (:meth:`describe` gives the bounds).
    """

    one_task_per_batch = True  # fixed_episodes draws one task a batch: tasks of different shapes cannot stack
    ways = 0  # varies per episode
    shots = 0
    queries = 0

    def __init__(
        self,
        dataset: ClassDataset,
        seed: int = 0,
        min_ways: int = 5,
        max_ways: int = 50,
        max_support: int = 500,
        max_query: int = 10,
        max_support_per_class: int = 100,
        strict: bool = False,
        groups: list[str] | None = None,
    ) -> None:
        bounds = {
            "min_ways": min_ways,
            "max_ways": max_ways,
            "max_support": max_support,
            "max_query": max_query,
            "max_support_per_class": max_support_per_class,
        }
        for label, v in bounds.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise DataError(f"{label}={v!r} is invalid; it must be a positive integer")
        if min_ways > max_ways or max_support < max_ways:
            raise DataError(
                f"min_ways={min_ways}, max_ways={max_ways}, max_support={max_support}: need min_ways <= max_ways "
                "<= max_support (every class has at least one shot)"
            )
        counts: list[int] = dataset.counts.tolist()
        small = [c for c, n in enumerate(counts) if n < MIN_EXAMPLES]
        if strict and small:
            raise DataError(
                f"class {dataset.names[small[0]]!r} of {dataset.name} has {counts[small[0]]} example(s); a variable "
                f"episode needs >= {MIN_EXAMPLES} per class (one query, one shot); add examples or drop the class"
            )
        self.dataset, self.seed, self.bounds = dataset, int(seed), bounds
        self.min_ways, self.max_ways, self.max_support, self.max_query = min_ways, max_ways, max_support, max_query
        self.max_support_per_class = max_support_per_class
        self._eligible: list[int] = [c for c, n in enumerate(counts) if n >= MIN_EXAMPLES]
        self._counts: list[int] = [counts[c] for c in self._eligible]
        self._starts: list[int] = [int(dataset.offsets[c]) for c in self._eligible]
        labels = [""] * dataset.num_classes if groups is None else groups
        if len(labels) != dataset.num_classes:
            raise DataError(
                f"{len(labels)} group labels for the {dataset.num_classes} classes of {dataset.name}; "
                "give one per class"
            )
        members: dict[str, list[int]] = {}
        for pos, c in enumerate(self._eligible):
            members.setdefault(labels[c], []).append(pos)
        self._groups = [m for m in members.values() if len(m) >= min_ways]  # positions in the eligible list
        if not self._groups:
            raise DataError(
                f"no group of {dataset.name} has {min_ways} classes with >= {MIN_EXAMPLES} examples (largest: "
                f"{max(map(len, members.values()), default=0)}); lower min_ways or widen the episode scope"
            )
        self.step = 0

    def describe(self) -> dict[str, int | str]:
        """The rules and bounds, for the settings written beside a score."""
        return {"rules": "meta-dataset", **self.bounds}

    def shape(self, step: int, index: int) -> EpisodeShape:
        """The ways, classes (positions among the classes with >= 2 examples), queries and shots of task ``index``
        of ``step``."""
        rng = random.Random(_mix(self.seed, step, index))
        return episode_shape(
            rng,
            self._counts,
            self._groups[rng.randrange(len(self._groups))],
            self.min_ways,
            self.max_ways,
            self.max_support,
            self.max_query,
            self.max_support_per_class,
        )

    def _rows(self, step: int, index: int) -> tuple[list[int], list[int], EpisodeShape]:
        """Support rows (class-major), query rows (class-major) of ``dataset.data`` and the episode's shape."""
        shape = self.shape(step, index)
        rng = random.Random(_mix(self.seed, step, index, 1))  # the examples: a stream apart from the shape's
        support: list[int] = []
        query: list[int] = []
        for p, k in zip(shape.picks, shape.shots):
            start = self._starts[p]
            chosen = rng.sample(range(self._counts[p]), k + shape.queries)  # distinct examples, in random order
            support += [start + j for j in chosen[:k]]
            query += [start + j for j in chosen[k:]]
        return support, query, shape

    def sample_tasks(self, step: int, start: int, num_tasks: int) -> TaskBatch:
        """Task ``start`` of ``step`` as a batch of one: the same for the same seed, always.

        ``num_tasks`` must be 1: episodes of different ways and shots cannot share a batch.
        """
        if num_tasks != 1:
            raise DataError(
                f"num_tasks={num_tasks}: variable-way episodes are drawn one per batch (their shapes differ); ask for 1"
            )
        support, query, shape = self._rows(step, start)
        rows = torch.frombuffer(array("q", support + query), dtype=torch.int64)
        x = self.dataset.data.index_select(0, rows)
        if x.dtype == torch.uint8:
            x = x.to(torch.float32).div_(255.0)
        n, s = len(shape.picks), len(support)
        labels = torch.arange(n)
        classes = torch.tensor([self._eligible[p] for p in shape.picks], dtype=torch.int64)
        return TaskBatch(
            x[:s].unsqueeze(0),
            labels.repeat_interleave(torch.tensor(shape.shots)).unsqueeze(0),
            x[s:].unsqueeze(0),
            labels.repeat_interleave(shape.queries).unsqueeze(0),
            classes.unsqueeze(0),
        )

    def sample(self, num_tasks: int = 1) -> TaskBatch:
        """The next task of the stream (advances :attr:`step`); ``num_tasks`` must be 1."""
        return next_tasks(self, num_tasks)

    def fixed(self, num_episodes: int, batch_size: int = 1) -> Iterator[TaskBatch]:
        """``num_episodes`` fixed evaluation episodes, one a batch (``batch_size`` is ignored), the same for a seed."""
        return fixed_episodes(self, num_episodes, batch_size)


__all__ = ["EpisodeShape", "VariableEpisodeSampler", "episode_shape"]
