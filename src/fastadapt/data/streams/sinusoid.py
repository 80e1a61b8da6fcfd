"""Sinusoid streams: ``y = A(t) sin(x - phi(t))`` whose amplitude and phase drift, then switch."""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence

import torch
from torch import Tensor

from fastadapt.data.sampler import _mix
from fastadapt.data.sinusoid import AMPLITUDE, PHASE, X_RANGE
from fastadapt.data.streams.protocol import (
    PHASE_TAG,
    STEP_TAG,
    check_change_points,
    check_step,
    finite,
    positive,
    stream_window,
)


def _reflect(v: float, lo: float, hi: float) -> float:
    """``v`` folded into ``[lo, hi]`` by reflection at the ends (a triangle wave)."""
    span = hi - lo
    u = (v - lo) % (2 * span)
    return lo + (u if u <= span else 2 * span - u)


class SinusoidStream:
    """Regression stream ``y = A(t) sin(x - phi(t)) (+ noise)``, ``x ~ U[-5, 5]``.

    Within a phase amplitude and phase drift linearly (amplitude reflected into [0.1, 5]); at a change
    point both are drawn anew from U[0.1, 5] x U[0, pi] (MAML's ranges): an abrupt switch.

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
        self.length = positive("length", length)
        if change_points is None:
            change_points = range(positive("phase_length", phase_length), self.length, phase_length)
        self.change_points = check_change_points(change_points, self.length, "SinusoidStream")
        self.points = positive("points", points)
        self.amplitude_drift = finite("amplitude_drift", amplitude_drift, 0.0)
        self.phase_drift = finite("phase_drift", phase_drift, 0.0)
        self.noise = finite("noise", noise, 0.0)
        self.probe_points = positive("probe_points", probe_points)
        self._starts = (0, *self.change_points)
        self._phases: dict[int, tuple[float, float, int, int]] = {}

    def phase(self, t: int) -> int:
        """The phase step ``t`` belongs to (0 before the first change point)."""
        return bisect.bisect_right(self.change_points, t)

    def _phase_draw(self, p: int) -> tuple[float, float, int, int]:
        if p not in self._phases:
            rng = random.Random(_mix(self.seed, PHASE_TAG, p))
            amplitude = rng.uniform(*AMPLITUDE)
            phase = rng.uniform(*PHASE)
            self._phases[p] = (amplitude, phase, rng.choice((-1, 1)), rng.choice((-1, 1)))
        return self._phases[p]

    def params(self, t: int) -> tuple[float, float]:
        """Amplitude and phase of the task at step ``t``."""
        check_step(t, self.length)
        p = self.phase(t)
        a0, phi0, sa, sp = self._phase_draw(p)
        dt = t - self._starts[p]
        return _reflect(a0 + sa * self.amplitude_drift * dt, *AMPLITUDE), phi0 + sp * self.phase_drift * dt

    def _values(self, t: int, x: Tensor) -> Tensor:
        a, phi = self.params(t)
        return a * torch.sin(x - phi)

    def step(self, t: int) -> tuple[Tensor, Tensor]:
        """``x, y [points, 1]`` arriving at step ``t``."""
        check_step(t, self.length)
        g = torch.Generator().manual_seed(_mix(self.seed, STEP_TAG, t))
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
