"""Task sources on seeded streams: episodes for the common loop, and the streams for online runs."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import DataError
from fastadapt.data.classes import conform_images
from fastadapt.data.omniglot import SPLITS, load_omniglot
from fastadapt.data.sampler import _mix, fixed_episodes, next_tasks
from fastadapt.data.streams.classes import ClassStream, load_phase_folder
from fastadapt.data.streams.protocol import STREAM_TAG, TaskStream, positive, stream_window
from fastadapt.data.streams.sinusoid import SinusoidStream


class StreamTasks:
    """Episodes drawn from seeded streams (the :class:`~fastadapt.core.contract.TaskSource` contract, so the
    common loop meta-trains on them) and the streams themselves (``stream(i)``, for online runs).

    Regression episodes are windows: the support set is the ``shots`` points before a step ``t`` in time
    order, the query set the ``queries`` points from ``t`` on (the episodes of Nagabandi et al. 2019);
    classification episodes are N-way K-shot tasks over the classes active at ``t``, at ``t``'s rotation.

    Args:
        make: ``seed -> TaskStream``.
        ways, shots, queries: episode shape (``ways = 1`` for a regression stream, whose episodes are
            windows: ``shots`` points before a step, ``queries`` points from it on).
        seed: seed of this source: task ``i`` of ``step`` comes from stream ``_mix(seed, step, i)`` at a
            step drawn from the same seed; ``stream(i)`` is the ``i``-th evaluation stream.
        name: for messages.
    """

    def __init__(
        self, make: Callable[[int], Any], ways: int, shots: int, queries: int, seed: int = 0, name: str = "stream"
    ) -> None:
        self.make, self.seed, self.name = make, int(seed), name
        self.shots, self.queries = positive("shots", shots), positive("queries", queries)
        probe = make(self.seed)
        if not isinstance(probe, TaskStream):
            raise DataError(
                f"{name}: make(seed) returned {type(probe).__name__}, not a TaskStream "
                f"(length, change_points, step, probe)"
            )
        self.classification = bool(probe.classification)
        self.ways = positive("ways", ways) if self.classification else 1
        if not self.classification:
            points = getattr(probe, "points", 1)
            if -(-shots // points) + -(-queries // points) > probe.length:
                raise DataError(
                    f"{name}: windows of {shots} + {queries} points do not fit in a stream of {probe.length} steps "
                    f"of {points} points"
                )
        self.step = 0

    def stream(self, i: int) -> Any:
        """The ``i``-th stream of this source (seeded by the source's seed and ``i``)."""
        return self.make(_mix(self.seed, STREAM_TAG, i))

    def streams(self, n: int) -> list[Any]:
        return [self.stream(i) for i in range(n)]

    def _task(self, step: int, index: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        s = _mix(self.seed, step, index)
        stream = self.make(s)
        rng = random.Random(s)
        if not self.classification:
            points = getattr(stream, "points", 1)
            back, ahead = -(-self.shots // points), -(-self.queries // points)
            t = rng.randrange(back, stream.length - ahead + 1)
            sx, sy, qx, qy = stream_window(stream, t, self.shots, self.queries)
            return sx, sy, qx, qy, None
        t = rng.randrange(stream.length)
        sx, qx, classes = stream.episode(t, self.ways, self.shots, self.queries, rng)
        labels = torch.arange(self.ways)
        return sx, labels.repeat_interleave(self.shots), qx, labels.repeat_interleave(self.queries), classes

    def sample_tasks(self, step: int, start: int, num_tasks: int) -> TaskBatch:
        """Tasks ``start .. start+num_tasks-1`` of ``step``: pure in ``(seed, step, index)``."""
        positive("num_tasks", num_tasks)
        tasks = [self._task(step, start + i) for i in range(num_tasks)]
        sx, sy, qx, qy, classes = zip(*tasks)
        return TaskBatch(
            torch.stack(sx),
            torch.stack(sy),
            torch.stack(qx),
            torch.stack(qy),
            None if classes[0] is None else torch.stack(classes),
        )  # type: ignore[arg-type]

    def sample(self, num_tasks: int) -> TaskBatch:
        """The next ``num_tasks`` tasks (advances :attr:`step`)."""
        return next_tasks(self, num_tasks)

    def fixed(self, num_episodes: int, batch_size: int = 100) -> Iterator[TaskBatch]:
        """``num_episodes`` fixed evaluation episodes (the same every time for a seed)."""
        return fixed_episodes(self, num_episodes, batch_size)


# --- registered builders ------------------------------------------------------------------------


def _options(given: Mapping[str, Any], allowed: Mapping[str, Any], source: str) -> dict[str, Any]:
    unknown = [k for k in given if k not in allowed]
    if unknown:
        raise DataError(f"data.options.{unknown[0]} is not an option of {source}; it takes {', '.join(allowed)}")
    return {**allowed, **given}


SINUSOID_OPTIONS = {
    "length": 400,
    "phase_length": 100,
    "points": 1,
    "amplitude_drift": 0.005,
    "phase_drift": 0.005,
    "noise": 0.0,
    "probe_points": 50,
}
CLASS_OPTIONS = {
    "length": 500,
    "phase_length": 50,
    "replace": 2,
    "active": 0,
    "rotation": 0.1,
    "per_class": 1,
    "holdout": 5,
    "labels": "class",
}
FOLDER_OPTIONS = {"phase_length": 50, "lengths": [], "rotation": 0.0, "per_class": 1, "holdout": 0, "labels": "class"}


def sinusoid_stream(request: Any) -> StreamTasks:
    """Drifting, switching sinusoid streams (:class:`SinusoidStream`); episodes are windows of
    ``shots`` points and the ``queries`` points after them. ``data.options``: length, phase_length,
    points, amplitude_drift, phase_drift, noise, probe_points."""
    opts = _options(request.options, SINUSOID_OPTIONS, "sinusoid-stream")
    SinusoidStream(0, **opts)  # checks the options once, here
    return StreamTasks(
        lambda s: SinusoidStream(s, **opts), 1, request.shots, request.queries, request.seed, "sinusoid-stream"
    )


def omniglot_stream(request: Any) -> StreamTasks:
    """Omniglot character streams of ``data.split``'s part (no 90-degree rotation classes): ``active``
    characters at a time (0: ``data.ways``), ``replace`` of them replaced by new characters every
    ``phase_length`` steps, images rotated by ``rotation`` degrees per step; each step one drawing of
    every active character (``per_class``), the last ``holdout`` drawings kept for probes. Episodes:
    ``data.ways``-way tasks of the characters active at a random step, at its rotation."""
    if request.split not in SPLITS:
        raise DataError(f"data.split={request.split!r} is not an Omniglot split; choose one of {', '.join(SPLITS)}")
    opts = _options(request.options, CLASS_OPTIONS, "omniglot-stream")
    active = opts.pop("active") or request.ways
    data = conform_images(
        load_omniglot(request.split, request.part, rotations=False), request.image_size, request.channels
    )
    ClassStream.replacing(data, 0, ways=active, **opts)  # checks the options once, here
    return StreamTasks(
        lambda s: ClassStream.replacing(data, s, ways=active, **opts),
        request.ways,
        request.shots,
        request.queries,
        request.seed,
        "omniglot-stream",
    )


def folder_stream(request: Any) -> StreamTasks:
    """``stream-folder:<path>``: ``<path>/<part>/<phase>/<class>/<image>`` (``<path>/<phase>/...`` when
    there is no ``<part>`` folder), phases in folder order, ``phase_length`` steps each (or ``lengths``
    per phase); other options as :class:`ClassStream`."""
    if not request.argument:
        raise DataError(
            "data.dataset='stream-folder:' names no folder; write stream-folder:<path>, a folder of phase folders "
            "of class folders"
        )
    root = Path(request.argument)
    path = root / request.part if request.part and (root / request.part).is_dir() else root
    opts = _options(request.options, FOLDER_OPTIONS, "stream-folder")
    data, phases = load_phase_folder(path, size=(request.image_size, request.image_size))
    data = conform_images(data, request.image_size, request.channels)
    lengths = list(opts.pop("lengths")) or [opts["phase_length"]] * len(phases)
    opts.pop("phase_length")
    ClassStream.phased(data, lengths, phases, 0, **opts)
    return StreamTasks(
        lambda s: ClassStream.phased(data, lengths, phases, s, **opts),
        request.ways,
        request.shots,
        request.queries,
        request.seed,
        f"stream-folder:{root}",
    )
