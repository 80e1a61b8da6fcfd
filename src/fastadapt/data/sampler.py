"""Seeded N-way K-shot Q-query episodes from a :class:`ClassDataset`.

Every task is identified by ``(seed, step, index)`` and drawn from its own generator, so a task is
the same whatever batch size, process count or order it is drawn in: a run can resume mid-way, be
split across ranks, or be compared with another algorithm on exactly the same episodes.
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import DataError
from fastadapt.data.classes import ClassDataset

_MASK64 = (1 << 64) - 1
EVAL_STEP = -1  # the step index reserved for fixed evaluation episodes
DRAWERS = ("random", "paired")  # EpisodeSampler(drawers=...): how a task picks the examples of its classes


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 finaliser over the sequence)."""
    z = 0x9E3779B97F4A7C15
    for v in values:
        z = (z ^ (v & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _MASK64
        z ^= z >> 31
    return z & ((1 << 63) - 1)


def check_episode_shape(dataset: ClassDataset, ways: int, shots: int, queries: int, strict: bool = False) -> None:
    """Raise :class:`DataError` unless ``dataset`` can supply ``ways``-way ``shots``+``queries`` tasks.

    ``strict``: also when any class holds fewer than ``shots + queries`` examples (named, with its count),
    instead of leaving it out of every task.
    """
    for label, v in (("ways", ways), ("shots", shots), ("queries", queries)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise DataError(f"{label}={v!r} is invalid; it must be a positive integer")
    if ways > dataset.num_classes:
        raise DataError(
            f"ways={ways} exceeds the {dataset.num_classes} classes of {dataset.name}; "
            f"use ways <= {dataset.num_classes}"
        )
    need = shots + queries
    counts = dataset.counts
    enough = int((counts >= need).sum())
    if enough < ways or (strict and enough < dataset.num_classes):
        small = int(torch.argmin(counts))
        raise DataError(
            f"class {dataset.names[small]!r} of {dataset.name} has {int(counts[small])} examples, "
            f"fewer than shots + queries = {need} "
            f"({enough} of {dataset.num_classes} classes have enough); lower shots or queries, or add examples"
        )


def class_groups(dataset: ClassDataset, scope: str) -> list[str] | None:
    """The group of every class for ``scope``: ``"dataset"`` -> None (one group), ``"alphabet"`` -> the
    part of each class name before the first ``/`` (Omniglot's alphabet), ``"domain"`` -> the part before the
    first ``:`` (the domain of a class of the ``domains`` task source)."""
    if scope == "dataset":
        return None
    if scope == "alphabet":
        return [n.split("/", 1)[0] for n in dataset.names]
    if scope == "domain":  # the "domains" task source names classes <domain>:<class>; other data is one domain
        return [n.split(":", 1)[0] if ":" in n else "" for n in dataset.names]
    raise DataError(f"episode scope {scope!r} is not supported; choose dataset, alphabet or domain")


def fixed_episodes(source, num_episodes: int, batch_size: int = 100) -> Iterator[TaskBatch]:
    """Tasks ``0 .. num_episodes-1`` of the evaluation step of ``source`` (any task source), in batches of
    ``batch_size``: the same episodes for the same seed, whatever the batch size. A source whose tasks differ in
    shape (``one_task_per_batch = True``: :class:`~fastadapt.data.variable.VariableEpisodeSampler`) gives batches
    of one task."""
    if getattr(source, "one_task_per_batch", False):
        batch_size = 1
    for start in range(0, num_episodes, batch_size):
        yield source.sample_tasks(EVAL_STEP, start, min(batch_size, num_episodes - start))


def next_tasks(source, num_tasks: int) -> TaskBatch:
    """The next ``num_tasks`` tasks of a stateful task source: tasks ``0..num_tasks-1`` of its current
    ``step``, which then advances by one."""
    batch = source.sample_tasks(source.step, 0, num_tasks)
    source.step += 1
    return batch


class SeededSteps:
    """What a seeded task stream keeps as state: its ``seed`` and its ``step`` (``state_dict`` /
    ``load_state_dict``, for checkpoints); a sampler with another seed refuses the state."""

    seed: int
    step: int

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state["seed"]) != self.seed:
            raise DataError(
                f"sampler state has seed {state['seed']}, this sampler has {self.seed}; build it with the same seed"
            )
        self.step = int(state["step"])


class EpisodeSampler(SeededSteps):
    """Draws :class:`TaskBatch` es of ``ways``-way ``shots``-shot ``queries``-query tasks.

    Args:
        dataset: the classes to draw from.
        ways, shots, queries: N, K, Q.
        seed: the seed of the whole task stream.

    ``sample(T)`` returns the next T tasks of the stream (stateful: the step counter advances);
    ``sample_tasks(step, start, T)`` returns tasks ``start..start+T-1`` of ``step`` (pure);
    ``fixed(n)`` returns the same ``n`` evaluation tasks every time for a seed.

    Classes with fewer than ``shots + queries`` examples are never drawn (``strict=True``: an error
    naming the class). ``groups`` (one label per class, e.g. :func:`class_groups` for Omniglot's
    alphabets): every task draws its ``ways`` classes from one group, chosen uniformly among the groups
    with at least ``ways`` classes.

    ``drawers``: ``"random"`` (default) draws each class's examples independently; ``"paired"`` draws
    ``shots + queries`` distinct example indices once per task and takes the same indices from every class
    (support: the first ``shots``, queries: the rest). In Omniglot example ``j`` of every character is drawer
    ``j + 1`` (file ``<id>_<j+1>.png``), so a paired 1-shot 1-query task has all its support drawings by one
    drawer and all its queries by another: the trials of Lake et al. (2015).
    """

    def __init__(
        self,
        dataset: ClassDataset,
        ways: int,
        shots: int,
        queries: int,
        seed: int = 0,
        strict: bool = False,
        groups: list[str] | None = None,
        drawers: str = "random",
    ) -> None:
        check_episode_shape(dataset, ways, shots, queries, strict)
        if drawers not in DRAWERS:
            raise DataError(f"drawers={drawers!r} is not supported; choose one of {', '.join(DRAWERS)}")
        self.drawers = drawers
        self.dataset, self.ways, self.shots, self.queries, self.seed = dataset, ways, shots, queries, int(seed)
        need = shots + queries
        self._eligible = torch.nonzero(dataset.counts >= need).flatten()
        self._counts = dataset.counts[self._eligible]
        self._starts = dataset.offsets[:-1][self._eligible]
        self._eligible_list: list[int] = self._eligible.tolist()
        self._counts_list: list[int] = self._counts.tolist()
        self._starts_list: list[int] = self._starts.tolist()
        self._common = min(self._counts_list)  # example indices every eligible class holds (paired drawers)
        self._groups: list[list[int]] | None = None  # positions in the eligible list, per usable group
        if groups is not None:
            if len(groups) != dataset.num_classes:
                raise DataError(
                    f"{len(groups)} group labels for the {dataset.num_classes} classes of {dataset.name}; "
                    "give one per class"
                )
            members: dict[str, list[int]] = {}
            for pos, c in enumerate(self._eligible_list):
                members.setdefault(groups[c], []).append(pos)
            self._groups = [m for m in members.values() if len(m) >= ways]
            if not self._groups:
                raise DataError(
                    f"no group of {dataset.name} has {ways} classes with >= {need} examples (largest: "
                    f"{max(map(len, members.values()), default=0)}); lower ways or widen the episode scope"
                )
        self.step = 0

    def _task_indices(self, step: int, index: int) -> tuple[list[int], list[int]]:
        """Rows of ``dataset.data`` for one task (``N*(K+Q)``, class-major) and its ``N`` class ids.

        ``random.Random`` with Floyd-style ``sample`` costs a few microseconds per task and is
        reproducible across Python versions and platforms for the same integer seed.
        """
        rng = random.Random(_mix(self.seed, step, index))
        if self._groups is None:
            pick = rng.sample(range(len(self._eligible_list)), self.ways)
        else:
            pick = rng.sample(self._groups[rng.randrange(len(self._groups))], self.ways)
        need = self.shots + self.queries
        rows: list[int] = []
        if self.drawers == "paired":  # the same example indices (Omniglot: the same drawers) in every class
            same = rng.sample(range(self._common), need)
            for p in pick:
                rows.extend([self._starts_list[p] + j for j in same])
            return rows, [self._eligible_list[p] for p in pick]
        key = rng.random
        for p in pick:
            start = self._starts_list[p]
            order = sorted(range(self._counts_list[p]), key=lambda _: key())  # a uniform permutation
            rows.extend([start + j for j in order[:need]])
        return rows, [self._eligible_list[p] for p in pick]

    def sample_tasks(self, step: int, start: int, num_tasks: int) -> TaskBatch:
        """Tasks ``start .. start+num_tasks-1`` of ``step``: the same for the same seed, always."""
        if num_tasks < 1:
            raise DataError(f"num_tasks={num_tasks} is invalid; it must be a positive integer")
        k, need = self.shots, self.shots + self.queries
        support_rows: list[int] = []
        query_rows: list[int] = []
        classes: list[int] = []
        for i in range(num_tasks):
            r, c = self._task_indices(step, start + i)
            for j in range(self.ways):
                support_rows += r[j * need : j * need + k]
                query_rows += r[j * need + k : (j + 1) * need]
            classes += c
        rows = torch.frombuffer(array("q", support_rows + query_rows), dtype=torch.int64)
        return self._gather(
            rows, num_tasks, torch.frombuffer(array("q", classes), dtype=torch.int64).view(num_tasks, -1)
        )

    def sample(self, num_tasks: int) -> TaskBatch:
        """The next ``num_tasks`` tasks of the stream (advances :attr:`step`)."""
        return next_tasks(self, num_tasks)

    def fixed(self, num_episodes: int, batch_size: int = 100) -> Iterator[TaskBatch]:
        """``num_episodes`` fixed evaluation tasks in batches of ``batch_size`` (same for the same seed)."""
        return fixed_episodes(self, num_episodes, batch_size)

    def _gather(self, rows: Tensor, t: int, classes: Tensor) -> TaskBatch:
        """One gather for the whole batch; ``rows`` holds all support rows, then all query rows."""
        n, k, q = self.ways, self.shots, self.queries
        x = self.dataset.data.index_select(0, rows)
        if x.dtype == torch.uint8:
            x = x.to(torch.float32).div_(255.0)
        shape = x.shape[1:]
        support_x = x[: t * n * k].view(t, n * k, *shape)
        query_x = x[t * n * k :].view(t, n * q, *shape)
        labels = torch.arange(n)
        support_y = labels.repeat_interleave(k).repeat(t, 1)
        query_y = labels.repeat_interleave(q).repeat(t, 1)
        return TaskBatch(support_x, support_y, query_x, query_y, classes)


class EpisodeDataset(IterableDataset):
    """Training tasks as a ``torch.utils.data.IterableDataset``: one item per step, the :class:`TaskBatch` of
    that step's ``tasks_per_step`` tasks (``[tasks_per_step, N*K, ...]``), for steps
    ``start_step .. start_step + steps - 1``.

    ``sampler`` is an :class:`EpisodeSampler` or any task source with ``sample_tasks(step, start, count)``.
    Item ``s`` is ``sampler.sample_tasks(start_step + s, 0, tasks_per_step)``: a pure function of (seed,
    step, index), so DataLoader workers (each takes every ``num_workers``-th step) give the same items in
    the same order as no workers:
    ``DataLoader(EpisodeDataset(sampler, 1000, 32), batch_size=None, num_workers=2)``. To join steps, pass
    ``collate_fn=fastadapt.core.episodes.collate_tasks`` with ``batch_size=B`` (with workers, a worker joins
    its own steps).
    """

    def __init__(self, sampler: EpisodeSampler, steps: int, tasks_per_step: int, start_step: int = 0) -> None:
        for label, v in (("steps", steps), ("tasks_per_step", tasks_per_step)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise DataError(f"{label}={v!r} is invalid; it must be a positive integer")
        super().__init__()
        self.sampler, self.steps, self.tasks_per_step, self.start_step = sampler, steps, tasks_per_step, int(start_step)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[TaskBatch]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for s in range(worker, self.steps, workers):
            yield self.sampler.sample_tasks(self.start_step + s, 0, self.tasks_per_step)
