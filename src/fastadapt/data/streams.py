"""Task streams that change over time, and task sources that meta-train on them.

A *stream* is a sequence of ``length`` steps; each step brings a small labelled batch. The task the
data comes from drifts gradually and switches abruptly at the stream's ``change_points`` (the steps
where a new phase starts). Every step is a pure function of ``(seed, t)``: the same seed gives the
same stream, in any order it is read.

:class:`TaskStream` (the protocol)
    ``length``, ``change_points`` (increasing, each in ``1..length-1``: no phase is empty),
    ``classification``, ``step(t) -> (x, y)`` the data arriving at step ``t`` (``x [B, *x_shape]``,
    ``y [B]`` int64 labels or ``[B, 1]`` float targets), and ``probe(t) -> (x, y)``: held-out data of
    the task at step ``t`` (never given by ``step``), to measure the current error without noise.

Streams here:

* :class:`SinusoidStream`: ``y = A(t) sin(x - phi(t))``; within a phase amplitude and phase drift
  linearly (amplitude reflected into [0.1, 5]), at a change point both are drawn anew (MAML's ranges).
* :class:`ClassStream`: labelled examples of the classes active in the current phase, one phase after
  another, optionally rotated by an angle that grows with ``t`` (gradual drift).
  :meth:`ClassStream.replacing` makes Omniglot's stream (new characters appear, old ones retire),
  :meth:`ClassStream.phased` a user's dataset split into phases, :func:`load_phase_folder` reads
  ``<root>/<phase>/<class>/<image>``.

:class:`StreamTasks` keeps the episodic :class:`~fastadapt.core.contract.TaskSource` contract on top of
seeded streams (so the common loop meta-trains on them) and hands out the streams themselves
(``stream(i)``) for online runs. Regression episodes are windows: the support set is the ``shots``
points before a step ``t`` in time order, the query set the ``queries`` points from ``t`` on (the
episodes of Nagabandi et al. 2019); classification episodes are N-way K-shot tasks over the classes
active at ``t``, at ``t``'s rotation. The registered builders are :func:`sinusoid_stream`,
:func:`omniglot_stream` and :func:`folder_stream`.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import DataError
from fastadapt.data.classes import ClassDataset, conform_images
from fastadapt.data.omniglot import SPLITS, load_omniglot
from fastadapt.data.sampler import _mix, fixed_episodes

AMPLITUDE = (0.1, 5.0)  # the MAML paper's ranges (Finn et al. 2017, sec. 5.1)
PHASE = (0.0, math.pi)
X_RANGE = (-5.0, 5.0)
LABEL_MODES = ("class", "slot")
# tags that keep the generators of different uses of one seed apart
_PHASE_TAG, _STEP_TAG, _CLASS_STEP_TAG, _SCHEDULE_TAG, _STREAM_TAG = 11, 12, 13, 14, 15


@runtime_checkable
class TaskStream(Protocol):
    """A stream of labelled batches whose task changes over time (see the module docstring)."""

    length: int
    change_points: tuple[int, ...]
    classification: bool

    def step(self, t: int) -> tuple[Tensor, Tensor]: ...

    def probe(self, t: int) -> tuple[Tensor, Tensor]: ...


# --- checks ------------------------------------------------------------------------------------


def _positive(name: str, v: Any, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise DataError(f"{name}={v!r} is invalid; it must be an integer >= {minimum}")
    return v


def _finite(name: str, v: Any, minimum: float | None = None) -> float:
    if (
        isinstance(v, bool)
        or not isinstance(v, (int, float))
        or not math.isfinite(v)
        or (minimum is not None and v < minimum)
    ):
        raise DataError(
            f"{name}={v!r} is invalid; it must be a finite number{f' >= {minimum}' if minimum is not None else ''}"
        )
    return float(v)


def check_change_points(change_points: Sequence[int], length: int, name: str = "stream") -> tuple[int, ...]:
    """``change_points`` as a tuple, or one-line :class:`DataError`: each an integer in ``1..length-1``,
    strictly increasing, so that no phase has zero length."""
    points = tuple(change_points)
    bounds = [0, *points, length]
    for c in points:
        if isinstance(c, bool) or not isinstance(c, int):
            raise DataError(f"{name}: change point {c!r} is not an integer step")
    for i in range(len(bounds) - 1):
        if bounds[i + 1] <= bounds[i]:
            raise DataError(
                f"{name}: phase {i} runs from step {bounds[i]} to {bounds[i + 1]}, a phase of length {bounds[i + 1] - bounds[i]}; "
                f"change points must increase strictly within 1..{length - 1} (every phase at least one step)"
            )
    return points


def phase_lengths(lengths: Sequence[int], name: str = "stream") -> tuple[int, ...]:
    """Phase lengths, or one-line :class:`DataError` naming a phase of length < 1."""
    out = tuple(lengths)
    if not out:
        raise DataError(f"{name}: no phases; give at least one phase length")
    for i, n in enumerate(out):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DataError(f"{name}: phase {i} has length {n!r}; every phase needs at least one step")
    return out


# --- sinusoids --------------------------------------------------------------------------------


def _reflect(v: float, lo: float, hi: float) -> float:
    """``v`` folded into ``[lo, hi]`` by reflection at the ends (a triangle wave)."""
    span = hi - lo
    u = (v - lo) % (2 * span)
    return lo + (u if u <= span else 2 * span - u)


class SinusoidStream:
    """Regression stream ``y = A(t) sin(x - phi(t)) (+ noise)``, ``x ~ U[-5, 5]``.

    Args:
        seed: the stream's seed.
        length: steps.
        phase_length: steps per phase (change points at its multiples), unless ``change_points`` is given.
        change_points: the steps where a new phase starts (increasing, in ``1..length-1``).
        points: points per step (``step(t)`` gives ``x, y [points, 1]``).
        amplitude_drift, phase_drift: per step, the amplitude moves by ``amplitude_drift`` and the phase
            by ``phase_drift`` radians, each in a direction drawn per phase (amplitude reflected into
            [0.1, 5]).
        noise: standard deviation of Gaussian noise on the targets of ``step`` (``probe`` is noise-free).
        probe_points: ``probe(t)`` is the current function on this many evenly spaced points of [-5, 5].

    At a change point amplitude and phase are drawn anew from U[0.1, 5] x U[0, pi]: an abrupt switch.
    """

    classification = False

    def __init__(
        self,
        seed: int = 0,
        length: int = 400,
        phase_length: int = 100,
        change_points: Sequence[int] | None = None,
        points: int = 1,
        amplitude_drift: float = 0.005,
        phase_drift: float = 0.005,
        noise: float = 0.0,
        probe_points: int = 50,
    ) -> None:
        self.seed = int(seed)
        self.length = _positive("length", length)
        if change_points is None:
            change_points = range(_positive("phase_length", phase_length), self.length, phase_length)
        self.change_points = check_change_points(change_points, self.length, "SinusoidStream")
        self.points = _positive("points", points)
        self.amplitude_drift = _finite("amplitude_drift", amplitude_drift, 0.0)
        self.phase_drift = _finite("phase_drift", phase_drift, 0.0)
        self.noise = _finite("noise", noise, 0.0)
        self.probe_points = _positive("probe_points", probe_points)
        self._starts = (0, *self.change_points)
        self._phases: dict[int, tuple[float, float, int, int]] = {}

    def phase(self, t: int) -> int:
        """The phase step ``t`` belongs to (0 before the first change point)."""
        return bisect.bisect_right(self.change_points, t)

    def _phase_draw(self, p: int) -> tuple[float, float, int, int]:
        if p not in self._phases:
            rng = random.Random(_mix(self.seed, _PHASE_TAG, p))
            amplitude = rng.uniform(*AMPLITUDE)
            phase = rng.uniform(*PHASE)
            self._phases[p] = (amplitude, phase, rng.choice((-1, 1)), rng.choice((-1, 1)))
        return self._phases[p]

    def params(self, t: int) -> tuple[float, float]:
        """Amplitude and phase of the task at step ``t``."""
        self._check_step(t)
        p = self.phase(t)
        a0, phi0, sa, sp = self._phase_draw(p)
        dt = t - self._starts[p]
        return _reflect(a0 + sa * self.amplitude_drift * dt, *AMPLITUDE), phi0 + sp * self.phase_drift * dt

    def _check_step(self, t: int) -> None:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.length:
            raise DataError(f"step {t!r} is outside the stream (steps 0..{self.length - 1})")

    def _values(self, t: int, x: Tensor) -> Tensor:
        a, phi = self.params(t)
        return a * torch.sin(x - phi)

    def step(self, t: int) -> tuple[Tensor, Tensor]:
        """``x, y [points, 1]`` arriving at step ``t``."""
        self._check_step(t)
        g = torch.Generator().manual_seed(_mix(self.seed, _STEP_TAG, t))
        x = X_RANGE[0] + (X_RANGE[1] - X_RANGE[0]) * torch.rand(self.points, 1, generator=g)
        y = self._values(t, x)
        if self.noise:
            y = y + self.noise * torch.randn(self.points, 1, generator=g)
        return x, y

    def probe(self, t: int) -> tuple[Tensor, Tensor]:
        """The noise-free function at step ``t`` on ``probe_points`` evenly spaced points, ``[P, 1]`` each."""
        x = torch.linspace(*X_RANGE, self.probe_points).unsqueeze(1)
        return x, self._values(t, x)

    def window(self, t: int, before: int, after: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The ``before`` points preceding step ``t`` (time order) and the ``after`` points from ``t`` on."""
        return stream_window(self, t, before, after)


def stream_window(stream: Any, t: int, before: int, after: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A regression episode of any stream: the last ``before`` points of the steps before ``t`` (time
    order) and the first ``after`` points of the steps from ``t`` on, as ``x, y`` pairs."""
    past: list[tuple[Tensor, Tensor]] = []
    s, n = t, 0
    while n < before:
        s -= 1
        if s < 0:
            raise DataError(f"a window of {before} points before step {t} reaches before the stream's start")
        past.insert(0, stream.step(s))
        n += len(past[0][1])
    future: list[tuple[Tensor, Tensor]] = []
    s, n = t, 0
    while n < after:
        if s >= stream.length:
            raise DataError(
                f"a window of {after} points from step {t} runs past the stream's end (steps 0..{stream.length - 1})"
            )
        future.append(stream.step(s))
        n += len(future[-1][1])
        s += 1
    x0, y0 = (past or future or [stream.step(t)])[0]
    px = torch.cat([x for x, _ in past])[-before:] if past else x0[:0]
    py = torch.cat([y for _, y in past])[-before:] if past else y0[:0]
    fx = torch.cat([x for x, _ in future])[:after] if future else x0[:0]
    fy = torch.cat([y for _, y in future])[:after] if future else y0[:0]
    return px, py, fx, fy


# --- class streams ------------------------------------------------------------------------------


def rotate_images(x: Tensor, degrees: float) -> Tensor:
    """Images ``[B, C, H, W]`` rotated counter-clockwise by ``degrees`` about their centre (bilinear, zeros outside)."""
    if degrees % 360 == 0:
        return x
    r = math.radians(degrees)
    c, s = math.cos(r), math.sin(r)
    theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=x.dtype).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class ClassStream:
    """Classification stream over a :class:`ClassDataset`: phase after phase, each step gives
    ``per_class`` examples of every class active in the current phase (shuffled).

    Args:
        dataset: the examples.
        phases: per phase, the classes active in it (dataset class indices or names).
        lengths: steps per phase (each >= 1); change points are the phase starts after the first.
        seed: the stream's seed (which examples each step draws).
        per_class: examples of each active class per step.
        rotation: gradual drift: images at step ``t`` are rotated by ``rotation * t`` degrees.
        holdout: the last ``holdout`` examples of every class are never given by ``step``; ``probe(t)``
            returns them (at ``t``'s rotation) for every active class.
        labels: ``"class"``: a class's label is its order of first appearance in the stream (new
            classes get new labels: 0, 1, 2, ...); ``"slot"``: its position in its phase (a class
            that replaces a retired one takes its label: fixed-width heads).
        name: for messages.
    """

    classification = True

    def __init__(
        self,
        dataset: ClassDataset,
        phases: Sequence[Sequence[int | str]],
        lengths: Sequence[int],
        seed: int = 0,
        per_class: int = 1,
        rotation: float = 0.0,
        holdout: int = 0,
        labels: str = "class",
        name: str | None = None,
    ) -> None:
        self.name = name or f"{dataset.name}-stream"
        self.dataset, self.seed = dataset, int(seed)
        self.lengths = phase_lengths(lengths, self.name)
        if len(phases) != len(self.lengths):
            raise DataError(
                f"{self.name}: {len(phases)} phases of classes for {len(self.lengths)} phase lengths; give one length per phase"
            )
        index = {n: i for i, n in enumerate(dataset.names)}
        self.phases: tuple[tuple[int, ...], ...] = tuple(tuple(self._class_index(c, index) for c in p) for p in phases)
        for i, p in enumerate(self.phases):
            if not p:
                raise DataError(f"{self.name}: phase {i} has no classes; every phase needs at least one")
            if len(set(p)) != len(p):
                raise DataError(f"{self.name}: phase {i} names a class twice")
        self.per_class = _positive("per_class", per_class)
        self.rotation = _finite("rotation", rotation)
        self.holdout = _positive("holdout", holdout, 0)
        if labels not in LABEL_MODES:
            raise DataError(f"labels={labels!r} is unknown; choose one of {', '.join(LABEL_MODES)}")
        if self.rotation and dataset.data.ndim != 4:
            raise DataError(
                f"{self.name}: rotation applies to images [M, C, H, W]; this data has shape {list(dataset.data.shape)}"
            )
        self.labels = labels
        counts = dataset.counts.tolist()
        self._counts: list[int] = counts
        self._starts_of: list[int] = dataset.offsets[:-1].tolist()
        self._usable: dict[int, int] = {}
        for c in sorted({c for p in self.phases for c in p}):
            usable = counts[c] - self.holdout
            if usable < 1:
                raise DataError(
                    f"{self.name}: class {dataset.names[c]!r} has {counts[c]} examples; with holdout={self.holdout} none is left "
                    f"for the stream; lower holdout or drop the class"
                )
            self._usable[c] = usable
        self.length = sum(self.lengths)
        starts = [0]
        for n in self.lengths[:-1]:
            starts.append(starts[-1] + n)
        self._phase_starts = tuple(starts)
        self.change_points = tuple(starts[1:])
        order: dict[int, int] = {}
        for p in self.phases:
            for c in p:
                order.setdefault(c, len(order))
        self._class_label = order  # "class" labels: first appearance

    @staticmethod
    def _class_index(c: int | str, index: Mapping[str, int]) -> int:
        if isinstance(c, str):
            if c not in index:
                raise DataError(f"phase names class {c!r}, which the dataset does not have")
            return index[c]
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < len(index):
            raise DataError(f"phase names class {c!r}; class indices run 0..{len(index) - 1}")
        return c

    # -- constructors ----------------------------------------------------------------------------

    @staticmethod
    def replacing(
        dataset: ClassDataset,
        seed: int = 0,
        length: int = 500,
        ways: int = 5,
        phase_length: int = 50,
        replace: int = 2,
        **options: Any,
    ) -> ClassStream:
        """A stream of ``ways`` active classes in which, at every change point (each ``phase_length``
        steps), ``replace`` of them retire and as many classes never seen before appear in their slots.
        The classes are drawn from ``dataset`` by ``seed``; ``options`` as :class:`ClassStream`."""
        _positive("length", length)
        _positive("ways", ways)
        _positive("phase_length", phase_length)
        _positive("replace", replace, 0)
        if replace > ways:
            raise DataError(f"replace={replace} exceeds ways={ways}; at most every active class can retire at a change")
        phases = -(-length // phase_length)
        need = ways + replace * (phases - 1)
        if need > dataset.num_classes:
            raise DataError(
                f"a stream of {length} steps with a change every {phase_length} steps replacing {replace} of {ways} classes needs "
                f"{need} classes; {dataset.name} has {dataset.num_classes}: shorten the stream or replace fewer"
            )
        rng = random.Random(_mix(seed, _SCHEDULE_TAG))
        fresh = iter(rng.sample(range(dataset.num_classes), need))
        current = [next(fresh) for _ in range(ways)]
        schedule = [tuple(current)]
        for _ in range(phases - 1):
            for slot in sorted(rng.sample(range(ways), replace)):
                current[slot] = next(fresh)
            schedule.append(tuple(current))
        lengths = [phase_length] * (phases - 1) + [length - phase_length * (phases - 1)]
        return ClassStream(dataset, schedule, lengths, seed=seed, **options)

    @staticmethod
    def phased(
        data: ClassDataset | Sequence[ClassDataset],
        lengths: Sequence[int],
        phases: Sequence[Sequence[int | str]] | None = None,
        seed: int = 0,
        **options: Any,
    ) -> ClassStream:
        """A user's data as a stream: one :class:`ClassDataset` per phase (a class is the same class in
        every phase it appears in, by name), or one dataset and ``phases`` (its classes per phase)."""
        if isinstance(data, ClassDataset):
            if phases is None:
                raise DataError(
                    "ClassStream.phased: one dataset needs phases=[[classes of phase 0], [classes of phase 1], ...]"
                )
            return ClassStream(data, phases, lengths, seed=seed, **options)
        if phases is not None:
            raise DataError(
                "ClassStream.phased: give phases only with one dataset; with one dataset per phase the phases are the datasets"
            )
        merged, names = merge_by_name(list(data))
        return ClassStream(merged, names, lengths, seed=seed, **options)

    # -- the stream ------------------------------------------------------------------------------

    def phase(self, t: int) -> int:
        return bisect.bisect_right(self.change_points, t)

    def classes(self, t: int) -> tuple[int, ...]:
        """Dataset class indices active at step ``t``."""
        self._check_step(t)
        return self.phases[self.phase(t)]

    def label(self, c: int, position: int) -> int:
        return self._class_label[c] if self.labels == "class" else position

    @property
    def num_labels(self) -> int:
        """Labels the stream uses (``"class"``: every class it shows; ``"slot"``: the largest phase)."""
        return len(self._class_label) if self.labels == "class" else max(len(p) for p in self.phases)

    def angle(self, t: int) -> float:
        """Rotation of the images at step ``t``, in degrees."""
        return self.rotation * t

    def new_labels(self) -> list[tuple[int, int]]:
        """``(label, step)`` of every class that first appears at a change point (not in phase 0)."""
        seen = set(self.phases[0])
        out = []
        for p, start in zip(self.phases[1:], self._phase_starts[1:]):
            for pos, c in enumerate(p):
                if c not in seen:
                    out.append((self.label(c, pos), start))
                    seen.add(c)
        return out

    def phase_end(self, t: int) -> int:
        """The first step after the phase of ``t``."""
        p = self.phase(t)
        return self._phase_starts[p] + self.lengths[p]

    def _check_step(self, t: int) -> None:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.length:
            raise DataError(f"step {t!r} is outside the stream (steps 0..{self.length - 1})")

    def _images(self, rows: list[int], t: int) -> Tensor:
        x = self.dataset.data[torch.tensor(rows, dtype=torch.long)]
        x = x.to(torch.float32).div_(255.0) if x.dtype == torch.uint8 else x
        return rotate_images(x, self.angle(t)) if self.rotation else x

    def step(self, t: int) -> tuple[Tensor, Tensor]:
        """``per_class`` examples of each active class (shuffled): ``x [B, *x_shape]``, ``y [B]``."""
        active = self.classes(t)
        rng = random.Random(_mix(self.seed, _CLASS_STEP_TAG, t))
        pairs = [
            (self._starts_of[c] + rng.randrange(self._usable[c]), self.label(c, pos))
            for pos, c in enumerate(active)
            for _ in range(self.per_class)
        ]
        rng.shuffle(pairs)
        return self._images([r for r, _ in pairs], t), torch.tensor([y for _, y in pairs], dtype=torch.long)

    def probe(self, t: int) -> tuple[Tensor, Tensor]:
        """The ``holdout`` examples of every active class at step ``t``'s rotation (empty when ``holdout = 0``)."""
        active = self.classes(t)
        rows = [self._starts_of[c] + self._usable[c] + j for c in active for j in range(self.holdout)]
        labels = [self.label(c, pos) for pos, c in enumerate(active) for _ in range(self.holdout)]
        if not rows:
            return self.dataset.data[:0].to(torch.float32), torch.zeros(0, dtype=torch.long)
        return self._images(rows, t), torch.tensor(labels, dtype=torch.long)

    def episode(self, t: int, ways: int, shots: int, queries: int, rng: random.Random) -> tuple[Tensor, Tensor, Tensor]:
        """A ``ways``-way ``shots``-shot ``queries``-query task of the classes active at ``t`` (rotated as at
        ``t``): support ``[N*K, ...]`` and query ``[N*Q, ...]`` inputs, class-major, and the N class indices.
        Episodes draw from every example of a class (the holdout matters to the online probes only)."""
        active = self.classes(t)
        if ways > len(active):
            raise DataError(
                f"{self.name}: {ways}-way tasks need {ways} active classes; phase {self.phase(t)} has {len(active)}"
            )
        pick = rng.sample(active, ways)
        need = shots + queries
        support, query = [], []
        for c in pick:
            if self._counts[c] < need:
                raise DataError(
                    f"{self.name}: class {self.dataset.names[c]!r} has {self._counts[c]} examples, fewer than shots + queries = {need}"
                )
            rows = [self._starts_of[c] + j for j in rng.sample(range(self._counts[c]), need)]
            support += rows[:shots]
            query += rows[shots:]
        x = self._images(support + query, t)
        return x[: len(support)], x[len(support) :], torch.tensor(pick, dtype=torch.long)


def merge_by_name(datasets: Sequence[ClassDataset]) -> tuple[ClassDataset, list[list[str]]]:
    """One :class:`ClassDataset` of every class of ``datasets`` (a class name in several is one class,
    its examples concatenated in order) and, per dataset, the names of its classes."""
    if not datasets:
        raise DataError("no phases: give at least one dataset")
    shape, dtype = datasets[0].example_shape, datasets[0].data.dtype
    parts: dict[str, list[Tensor]] = {}
    names: list[list[str]] = []
    for i, d in enumerate(datasets):
        if d.example_shape != shape or d.data.dtype != dtype:
            raise DataError(
                f"phase {i} ({d.name}) has examples of shape {list(d.example_shape)} ({d.data.dtype}); phase 0 has "
                f"{list(shape)} ({dtype}); give every phase the same shape (e.g. size=(H, W) when loading)"
            )
        names.append(list(d.names))
        for c, n in enumerate(d.names):
            parts.setdefault(n, []).append(d.examples(c))
    data = torch.cat([torch.cat(v) for v in parts.values()])
    counts = torch.tensor([sum(len(e) for e in v) for v in parts.values()])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    return ClassDataset(data, offsets, tuple(parts), "+".join(d.name for d in datasets)), names


def load_phase_folder(
    root: str | Path, size: tuple[int, int] | None = None, channels: int | None = None
) -> tuple[ClassDataset, list[list[str]]]:
    """``<root>/<phase>/<class>/<image>``: phases in sorted folder order; a class folder name in two
    phases is one class. Returns the merged dataset and the class names of each phase."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"stream folder {root} does not exist; give a folder with one subfolder per phase, each with one per class"
        )
    dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not dirs:
        raise DataError(
            f"stream folder {root} has no phase subfolders; put each phase's class folders in <root>/<phase>/"
        )
    return merge_by_name([ClassDataset.from_folder(d, size=size, channels=channels, name=d.name) for d in dirs])


# --- episodes of streams: a task source ---------------------------------------------------------


class StreamTasks:
    """Episodes drawn from seeded streams (the :class:`~fastadapt.core.contract.TaskSource` contract) and
    the streams themselves.

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
        self.shots, self.queries = _positive("shots", shots), _positive("queries", queries)
        probe = make(self.seed)
        if not isinstance(probe, TaskStream):
            raise DataError(
                f"{name}: make(seed) returned {type(probe).__name__}, not a TaskStream (length, change_points, step, probe)"
            )
        self.classification = bool(probe.classification)
        self.ways = _positive("ways", ways) if self.classification else 1
        if not self.classification:
            points = getattr(probe, "points", 1)
            if -(-shots // points) + -(-queries // points) > probe.length:
                raise DataError(
                    f"{name}: windows of {shots} + {queries} points do not fit in a stream of {probe.length} steps of {points} points"
                )
        self.step = 0

    def stream(self, i: int) -> Any:
        """The ``i``-th stream of this source (seeded by the source's seed and ``i``)."""
        return self.make(_mix(self.seed, _STREAM_TAG, i))

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
        _positive("num_tasks", num_tasks)
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
        batch = self.sample_tasks(self.step, 0, num_tasks)
        self.step += 1
        return batch

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
            "data.dataset='stream-folder:' names no folder; write stream-folder:<path>, a folder of phase folders of class folders"
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


__all__ = [
    "ClassStream",
    "SinusoidStream",
    "StreamTasks",
    "TaskStream",
    "check_change_points",
    "folder_stream",
    "load_phase_folder",
    "merge_by_name",
    "omniglot_stream",
    "phase_lengths",
    "rotate_images",
    "sinusoid_stream",
    "stream_window",
]
