"""The stream protocol, the checks every stream shares, and regression windows of any stream."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from fastadapt.core.errors import DataError

# tags that keep the generators of different uses of one seed apart
PHASE_TAG, STEP_TAG, CLASS_STEP_TAG, SCHEDULE_TAG, STREAM_TAG = 11, 12, 13, 14, 15


@runtime_checkable
class TaskStream(Protocol):
    """A sequence of ``length`` steps, each a small labelled batch; the task drifts and switches over time.

    Every step is a pure function of ``(seed, t)``: the same seed gives the same stream, in any order
    it is read.

    Attributes:
        length: the number of steps.
        change_points: the steps where a new phase starts (increasing, each in ``1..length-1``: no
            phase is empty).
        classification: labels (``y [B]`` int64) rather than targets (``y [B, 1]`` float).

    ``step(t) -> (x, y)`` is the data arriving at step ``t`` (``x [B, *x_shape]``); ``probe(t) -> (x, y)``
    is held-out data of the task at step ``t`` (never given by ``step``), to measure the current error
    without noise.
    """

    length: int
    change_points: tuple[int, ...]
    classification: bool

    def step(self, t: int) -> tuple[Tensor, Tensor]: ...

    def probe(self, t: int) -> tuple[Tensor, Tensor]: ...


def positive(name: str, v: Any, minimum: int = 1) -> int:
    """``v`` if it is an integer >= ``minimum``, else a one-line :class:`DataError`."""
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise DataError(f"{name}={v!r} is invalid; it must be an integer >= {minimum}")
    return v


def finite(name: str, v: Any, minimum: float | None = None) -> float:
    """``v`` as a float if it is a finite number (>= ``minimum`` when given), else a one-line :class:`DataError`."""
    if (
        isinstance(v, bool)
        or not isinstance(v, (int, float))
        or not math.isfinite(v)
        or (minimum is not None and v < minimum)
    ):
        at_least = f" >= {minimum}" if minimum is not None else ""
        raise DataError(f"{name}={v!r} is invalid; it must be a finite number{at_least}")
    return float(v)


def check_step(t: Any, length: int) -> None:
    """A one-line :class:`DataError` unless ``t`` is a step of a stream of ``length`` steps."""
    if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < length:
        raise DataError(f"step {t!r} is outside the stream (steps 0..{length - 1})")


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
                f"{name}: phase {i} runs from step {bounds[i]} to {bounds[i + 1]}, a phase of length "
                f"{bounds[i + 1] - bounds[i]}; change points must increase strictly within 1..{length - 1} "
                f"(every phase at least one step)"
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
