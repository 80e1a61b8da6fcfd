"""The copy and associative-recall tasks of the Neural Turing Machine paper (Graves, Wayne & Danihelka
2014, arXiv:1410.5401, sections 4.1 and 4.3) as task sources: one sequence a task, split where the
network starts to answer (layout in :class:`SequenceTasks`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError
from fastadapt.data.sampler import _mix, fixed_episodes

SequenceParts = tuple[Tensor, Tensor, Tensor, Tensor]  # support_x, support_y, query_x, query_y of one task


def copy_sequence(length: int, bits: int, generator: torch.Generator) -> SequenceParts:
    """One copy task: ``[L+1, bits+1]`` shown, ``[L, bits]`` vectors, ``[L, bits+1]`` zeros, ``[L, bits]`` answer.

    ``L`` random ``bits``-bit vectors, then a delimiter step (only channel ``bits`` on): ``C = bits + 1``,
    ``S = L + 1``, ``A = L``; the answer is the ``L`` vectors.
    """
    seq = torch.randint(0, 2, (length, bits), generator=generator).float()
    shown = torch.zeros(length + 1, bits + 1)
    shown[:length, :bits] = seq
    shown[length, bits] = 1
    return shown, seq, torch.zeros(length, bits + 1), seq.clone()


def recall_sequence(items: int, bits: int, item_length: int, generator: torch.Generator) -> SequenceParts:
    """One associative-recall task of ``items`` items.

    ``items`` items of ``item_length`` random ``bits``-bit vectors, each after an item delimiter (channel
    ``bits``); then a query delimiter (channel ``bits + 1``), one of the first ``items - 1`` items (uniform)
    and the query delimiter again; the answer is the item that followed the query item. ``C = bits + 2``,
    ``S = items (item_length + 1) + item_length + 2``, ``A = item_length``.
    """
    if items < 2:
        raise ConfigError(f"associative recall needs at least 2 items (a query item and the one after it), got {items}")
    data = torch.randint(0, 2, (items, item_length, bits), generator=generator).float()
    query = int(torch.randint(0, items - 1, (1,), generator=generator))
    c = bits + 2
    steps = []
    for i in range(items):
        delim = torch.zeros(1, c)
        delim[0, bits] = 1
        steps += [delim, torch.cat([data[i], torch.zeros(item_length, 2)], dim=1)]
    qdelim = torch.zeros(1, c)
    qdelim[0, bits + 1] = 1
    steps += [qdelim, torch.cat([data[query], torch.zeros(item_length, 2)], dim=1), qdelim.clone()]
    return (
        torch.cat(steps),
        data.reshape(items * item_length, bits),
        torch.zeros(item_length, c),
        data[query + 1].clone(),
    )


class SequenceTasks:
    """A seeded stream of sequence tasks (the :class:`~fastadapt.core.contract.TaskSource` protocol).

    A task is one sequence: the **support** is what the network is shown (the sequence up to and including
    the last delimiter: the network writes it into its memory, the "adaptation"); the **query** is the part
    it must answer (inputs are zero there, the targets are bits). As a
    :class:`~fastadapt.core.episodes.TaskBatch` (``ways = shots = queries = 1``, float targets, so the
    engine treats it as regression):

    ==========  ===================  ================================================================
    field       shape                meaning
    ==========  ===================  ================================================================
    support_x   ``[T, 1, S, C]``     the input sequence shown (``S`` steps, ``C`` channels)
    support_y   ``[T, 1, P, bits]``  the bit vectors shown, without delimiters (copy: the sequence;
                                     recall: all items in order); no algorithm here reads it
    query_x     ``[T, 1, A, C]``     zeros: the steps at which the network answers
    query_y     ``[T, 1, A, bits]``  the answer
    ==========  ===================  ================================================================

    Every task of one step has the same length, a pure function of ``(seed, step)``; the bits of task
    ``i`` are a pure function of ``(seed, step, i)``. The engine's test metric on these sources is ``mse``
    of the predicted bits (0/1) against the answer, i.e. the fraction of answer bits wrong; bits wrong per
    sequence is that times ``A * bits``.

    Args:
        make: ``make(size, generator) -> (support_x, support_y, query_x, query_y)`` of one task.
        sizes: ``(low, high)``: the size (length, items) of every task of a step is uniform in it.
        seed: the stream's seed.
        name: for messages.
    """

    ways, shots, queries = 1, 1, 1

    def __init__(
        self,
        make: Callable[[int, torch.Generator], SequenceParts],
        sizes: tuple[int, int],
        seed: int = 0,
        name: str = "sequence",
    ) -> None:
        lo, hi = sizes
        if not (isinstance(lo, int) and isinstance(hi, int)) or isinstance(lo, bool) or not 1 <= lo <= hi:
            raise ConfigError(f"{name} task sizes {lo!r}..{hi!r} are invalid; need integers 1 <= low <= high")
        self.make, self.sizes, self.seed, self.name = make, (lo, hi), int(seed), name

    def size(self, step: int) -> int:
        """The size (length or items) of every task of ``step``: a pure function of ``(seed, step)``."""
        g = torch.Generator().manual_seed(_mix(self.seed, step, -7))
        return int(torch.randint(self.sizes[0], self.sizes[1] + 1, (1,), generator=g))

    def sample_tasks(self, step: int, start: int, num_tasks: int) -> TaskBatch:
        if num_tasks < 1:
            raise ConfigError(f"num_tasks={num_tasks} is invalid; it must be a positive integer")
        size = self.size(step)
        g = torch.Generator()
        parts = []
        for i in range(num_tasks):
            g.manual_seed(_mix(self.seed, step, start + i))
            parts.append(self.make(size, g))
        sx, sy, qx, qy = (torch.stack([p[k] for p in parts]).unsqueeze(1) for k in range(4))
        return TaskBatch(sx, sy, qx, qy, None)

    def fixed(self, num_episodes: int, batch_size: int = 100) -> Iterator[TaskBatch]:
        return fixed_episodes(self, num_episodes, batch_size)


COPY_OPTIONS: dict[str, int | None] = {"bits": 8, "min_length": 1, "max_length": 20, "test_length": None}
RECALL_OPTIONS: dict[str, int | None] = {
    "bits": 6,
    "item_length": 3,
    "min_items": 2,
    "max_items": 6,
    "test_items": None,
}


def _options(request: Any, defaults: dict[str, int | None], task: str) -> dict[str, Any]:
    unknown = sorted(set(request.options) - set(defaults))
    if unknown:
        raise ConfigError(
            f"data.options.{unknown[0]}: the {task} task takes no option {unknown[0]!r}; it takes {', '.join(defaults)}"
        )
    out = {**defaults, **request.options}
    for k, v in out.items():
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ConfigError(f"data.options.{k}={v!r} is invalid for the {task} task; it must be a positive integer")
    return out


def _sizes(request: Any, lo: int, hi: int, test: int | None) -> tuple[int, int]:
    """Training: ``(lo, hi)``; validation and test: ``test`` (default ``hi``) alone."""
    if request.role == "train":
        return lo, hi
    n = hi if test is None else test
    return n, n


def copy_source(request: Any) -> SequenceTasks:
    """The copy task (Graves et al. 2014, sec. 4.1), ``data.dataset = "copy"``; ``data.options``: ``bits`` (8),
    ``min_length``/``max_length`` (1/20: training lengths, uniform), ``test_length`` (validation and test
    sequences; default ``max_length``)."""
    o = _options(request, COPY_OPTIONS, "copy")
    bits = o["bits"]
    return SequenceTasks(
        lambda n, g: copy_sequence(n, bits, g),
        _sizes(request, o["min_length"], o["max_length"], o["test_length"]),
        request.seed,
        "copy",
    )


def recall_source(request: Any) -> SequenceTasks:
    """Associative recall (Graves et al. 2014, sec. 4.3), ``data.dataset = "recall"``; ``data.options``:
    ``bits`` (6), ``item_length`` (3), ``min_items``/``max_items`` (2/6, as in the paper), ``test_items``
    (default ``max_items``)."""
    o = _options(request, RECALL_OPTIONS, "recall")
    bits, length = o["bits"], o["item_length"]
    if o["min_items"] < 2:
        raise ConfigError(
            f"data.options.min_items={o['min_items']} is invalid; associative recall needs at least 2 items"
        )
    return SequenceTasks(
        lambda n, g: recall_sequence(n, bits, length, g),
        _sizes(request, o["min_items"], o["max_items"], o["test_items"]),
        request.seed,
        "recall",
    )
