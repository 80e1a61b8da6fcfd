"""Class streams: the classes of each phase, one phase after another, images optionally rotating."""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fastadapt.core.errors import DataError
from fastadapt.data.classes import ClassDataset
from fastadapt.data.sampler import _mix
from fastadapt.data.streams.protocol import CLASS_STEP_TAG, SCHEDULE_TAG, check_step, finite, phase_lengths, positive

LABEL_MODES = ("class", "slot")


def rotate_images(x: Tensor, degrees: float) -> Tensor:
    """Images ``[B, C, H, W]`` rotated counter-clockwise by ``degrees`` about their centre (bilinear, zeros
    outside)."""
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
                f"{self.name}: {len(phases)} phases of classes for {len(self.lengths)} phase lengths; "
                f"give one length per phase"
            )
        index = {n: i for i, n in enumerate(dataset.names)}
        self.phases: tuple[tuple[int, ...], ...] = tuple(tuple(self._class_index(c, index) for c in p) for p in phases)
        for i, p in enumerate(self.phases):
            if not p:
                raise DataError(f"{self.name}: phase {i} has no classes; every phase needs at least one")
            if len(set(p)) != len(p):
                raise DataError(f"{self.name}: phase {i} names a class twice")
        self.per_class = positive("per_class", per_class)
        self.rotation = finite("rotation", rotation)
        self.holdout = positive("holdout", holdout, 0)
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
                    f"{self.name}: class {dataset.names[c]!r} has {counts[c]} examples; with holdout={self.holdout} "
                    f"none is left for the stream; lower holdout or drop the class"
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
        positive("length", length)
        positive("ways", ways)
        positive("phase_length", phase_length)
        positive("replace", replace, 0)
        if replace > ways:
            raise DataError(f"replace={replace} exceeds ways={ways}; at most every active class can retire at a change")
        phases = -(-length // phase_length)
        need = ways + replace * (phases - 1)
        if need > dataset.num_classes:
            raise DataError(
                f"a stream of {length} steps with a change every {phase_length} steps replacing {replace} of {ways} "
                f"classes needs {need} classes; {dataset.name} has {dataset.num_classes}: shorten the stream or "
                f"replace fewer"
            )
        rng = random.Random(_mix(seed, SCHEDULE_TAG))
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
                "ClassStream.phased: give phases only with one dataset; with one dataset per phase the phases are "
                "the datasets"
            )
        merged, names = merge_by_name(list(data))
        return ClassStream(merged, names, lengths, seed=seed, **options)

    # -- the stream ------------------------------------------------------------------------------

    def phase(self, t: int) -> int:
        return bisect.bisect_right(self.change_points, t)

    def classes(self, t: int) -> tuple[int, ...]:
        """Dataset class indices active at step ``t``."""
        check_step(t, self.length)
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

    def _images(self, rows: list[int], t: int) -> Tensor:
        x = self.dataset.data[torch.tensor(rows, dtype=torch.long)]
        x = x.to(torch.float32).div_(255.0) if x.dtype == torch.uint8 else x
        return rotate_images(x, self.angle(t)) if self.rotation else x

    def step(self, t: int) -> tuple[Tensor, Tensor]:
        """``per_class`` examples of each active class (shuffled): ``x [B, *x_shape]``, ``y [B]``."""
        active = self.classes(t)
        rng = random.Random(_mix(self.seed, CLASS_STEP_TAG, t))
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
                    f"{self.name}: class {self.dataset.names[c]!r} has {self._counts[c]} examples, fewer than "
                    f"shots + queries = {need}"
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
