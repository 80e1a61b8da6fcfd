"""Metrics of online runs: how fast a learner recovers from a change, over one run or many seeded runs.

:func:`aligned` (error against steps since each change), :func:`recovery_steps`, :func:`regret`,
:func:`summarize` / :func:`paired` (means with confidence intervals over seeded streams, paired per
stream for comparisons), :func:`new_class_curves` / :func:`examples_to_fraction` (accuracy of the
classes that appear at a change against the labelled examples seen of each).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from fastadapt.algorithms import inner
from fastadapt.core.errors import ConfigError, DataError
from fastadapt.eval.stats import mean_ci
from fastadapt.eval.streams import OnlineRun


def _bounds(change_points: Sequence[int], length: int) -> list[tuple[int, int, int]]:
    """``(previous start, change, next change)`` per change point."""
    starts = [0, *change_points, length]
    return [(starts[i], starts[i + 1], starts[i + 2]) for i in range(len(change_points))]


def aligned(values: np.ndarray, change_points: Sequence[int], horizon: int) -> np.ndarray:
    """``[changes, horizon]``: ``values[c + s]`` for every change point ``c`` and ``s < horizon``, NaN at or
    after the next change (or the end)."""
    values = np.asarray(values, dtype=np.float64)
    out = np.full((len(change_points), horizon), math.nan)
    for i, (_, c, nxt) in enumerate(_bounds(change_points, len(values))):
        n = min(horizon, nxt - c)
        out[i, :n] = values[c : c + n]
    return out


def recovery_steps(
    values: np.ndarray,
    change_points: Sequence[int],
    pre: int = 10,
    tolerance: float = 0.1,
    hold: int = 3,
    smooth: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Steps to recover from each change, and whether each is censored.

    The level before change ``c`` is the mean of ``values`` over the ``pre`` steps before it (fewer when
    the previous phase is shorter). After the change the values are averaged over the last ``smooth``
    steps (never reaching back before ``c``). The recovery time is the first ``s >= 0`` from which
    ``hold`` consecutive (smoothed) values are at most ``(1 + tolerance)`` times that level; when the
    phase ends first, it is the phase's length and censored. Returns ``steps [changes]`` (float) and
    ``censored [changes]``.
    """
    values = np.asarray(values, dtype=np.float64)
    inner.check_steps("smooth", smooth, 1)
    steps = np.zeros(len(change_points))
    censored = np.zeros(len(change_points), dtype=bool)
    for i, (prev, c, nxt) in enumerate(_bounds(change_points, len(values))):
        level = float(np.nanmean(values[max(prev, c - pre) : c])) if c > prev else math.nan
        after = values[c:nxt]
        if smooth > 1:
            sums = np.cumsum(np.concatenate([[0.0], after]))
            idx = np.arange(len(after))
            lo = np.maximum(0, idx - smooth + 1)
            after = (sums[idx + 1] - sums[lo]) / (idx + 1 - lo)
        ok = after <= (1 + tolerance) * level
        run, found = 0, None
        for s, good in enumerate(ok):
            run = run + 1 if good else 0
            if run >= hold:
                found = s - hold + 1
                break
        steps[i] = found if found is not None else nxt - c
        censored[i] = found is None
    return steps, censored


def regret(values: np.ndarray) -> float:
    """The cumulative error over the stream (sum of the per-step errors)."""
    return float(np.sum(np.asarray(values, dtype=np.float64)))


def run_values(run: OnlineRun, metric: str) -> np.ndarray:
    """The per-step values of ``run`` that ``metric`` names: ``probe`` (probe errors) or ``error`` (step errors)."""
    if metric == "probe":
        if np.all(np.isnan(run.probe_error)):
            raise DataError(
                "the runs have no probe errors (the stream has no probes, or online(probe=False)); use metric='error'"
            )
        return run.probe_error
    if metric == "error":
        return run.error
    raise ConfigError(f"metric={metric!r} is unknown; choose probe or error")


def _ci(values: Sequence[float], level: float) -> list[float]:
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return [float(v.mean()) if v.size else math.nan, math.nan]
    return list(mean_ci(v, level))


def summarize(
    runs: Sequence[OnlineRun],
    metric: str = "probe",
    horizon: int = 50,
    pre: int = 10,
    tolerance: float = 0.1,
    hold: int = 3,
    smooth: int = 1,
    level: float = 0.95,
) -> dict[str, Any]:
    """Over seeded streams: recovery steps (each stream's mean over its changes), the fraction censored,
    regret (cumulative ``error`` over the stream; the step errors, not the probes), each as
    ``[mean, half-width]`` of the ``level`` interval over streams, and the mean error against steps
    since a change (``curve``, ``[horizon]``, with ``curve_ci``)."""
    if not runs:
        raise DataError("summarize needs at least one run")
    rec, cens, reg, curves = [], [], [], []
    for r in runs:
        v = run_values(r, metric)
        steps, censored = recovery_steps(v, r.change_points, pre, tolerance, hold, smooth)
        if len(steps):
            rec.append(float(steps.mean()))
            cens.append(float(censored.mean()))
            curves.append(np.nanmean(aligned(v, r.change_points, horizon), axis=0))
        reg.append(regret(r.error))
    out: dict[str, Any] = {
        "streams": len(runs),
        "metric": metric,
        "regret": _ci(reg, level),
        "per_stream": {"regret": reg, "recovery": rec},
    }
    if rec:
        c = np.array(curves)
        out["recovery"] = _ci(rec, level)
        out["censored"] = float(np.mean(cens))
        out["curve"] = [float(v) for v in np.nanmean(c, axis=0)]
        out["curve_ci"] = [_ci(c[~np.isnan(c[:, s]), s], level)[1] for s in range(c.shape[1])]
    return out


def paired(
    a: Sequence[OnlineRun],
    b: Sequence[OnlineRun],
    metric: str = "probe",
    pre: int = 10,
    tolerance: float = 0.1,
    hold: int = 3,
    smooth: int = 1,
    level: float = 0.95,
) -> dict[str, list[float]]:
    """Per-stream differences ``a - b`` (the same seeded streams, in the same order) of recovery steps and
    regret, as ``[mean, half-width]``: an interval below 0 says ``a`` recovers faster / regrets less."""
    if len(a) != len(b) or not a:
        raise DataError(f"paired comparison needs the same streams for both: {len(a)} and {len(b)} runs")
    rec, reg = [], []
    for ra, rb in zip(a, b):
        if ra.change_points != rb.change_points:
            raise DataError("paired comparison: the runs are of different streams (change points differ)")
        sa = recovery_steps(run_values(ra, metric), ra.change_points, pre, tolerance, hold, smooth)[0]
        sb = recovery_steps(run_values(rb, metric), rb.change_points, pre, tolerance, hold, smooth)[0]
        if len(sa):
            rec.append(float(sa.mean() - sb.mean()))
        reg.append(regret(ra.error) - regret(rb.error))
    return {"recovery": _ci(rec, level), "regret": _ci(reg, level)}


def new_class_curves(run: OnlineRun, new_labels: Sequence[tuple[int, int]], horizon: int) -> np.ndarray:
    """``[new classes, horizon]``: probe accuracy of each class that appears at a change (``new_labels``:
    ``(label, step)``, e.g. ``ClassStream.new_labels()``) ``j`` steps after it appeared, i.e. after
    ``j * per_class`` labelled examples of it (the probe comes before the step's update)."""
    if run.probe_label_acc is None:
        raise DataError(
            "the run has no per-label probe accuracy (a classification stream with holdout > 0, online(probe=True))"
        )
    out = np.full((len(new_labels), horizon), math.nan)
    for i, (label, step) in enumerate(new_labels):
        if label < run.probe_label_acc.shape[1]:
            n = min(horizon, run.length - step)
            out[i, :n] = run.probe_label_acc[step : step + n, label]
    return out


def examples_to_fraction(curve: np.ndarray, fraction: float = 0.9, final: int = 10, per_class: int = 1) -> float:
    """Labelled examples a class needs to reach ``fraction`` of its final accuracy: ``curve [horizon]`` (or
    ``[classes, horizon]``, averaged first) is accuracy against steps since it appeared; final = the mean
    of the last ``final`` values; the first step at or above ``fraction * final``, times ``per_class``
    (NaN when never)."""
    c = np.asarray(curve, dtype=np.float64)
    c = np.nanmean(c, axis=0) if c.ndim == 2 else c
    target = fraction * float(np.nanmean(c[-final:]))
    hits = np.nonzero(c >= target)[0]
    return float(hits[0] * per_class) if len(hits) else math.nan


__all__ = [
    "aligned",
    "examples_to_fraction",
    "new_class_curves",
    "paired",
    "recovery_steps",
    "regret",
    "run_values",
    "summarize",
]
