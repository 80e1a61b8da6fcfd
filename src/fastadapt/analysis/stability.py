"""The divergence boundary of the inner step size: the largest inner rate ``a`` for which a short meta-training does
not diverge, against the number ``N`` of inner steps (Ji, Yang & Liang 2022, "Theoretical Convergence of Multi-Step
Model-Agnostic Meta-Learning", JMLR: N-step MAML needs ``a`` of order ``1/N``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from fastadapt.algorithms.base import task_loss
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError


@dataclass(frozen=True)
class ShortRun:
    """The outcome of :func:`short_meta_training` at one inner rate."""

    inner_lr: float
    start: float  # the meta-loss (query loss after adaptation) on the held-out tasks before training
    final: float  # the same after training; inf if training diverged
    unadapted: float  # the initial model's mean held-out query loss without adaptation (for comparison)
    losses: list[float]  # the training meta-loss of every step (stops at the first non-finite one)
    stable: bool  # every loss finite and final < start


def short_meta_training(
    build: Callable[[float], nn.Module],
    tasks: Callable[[int], TaskBatch],
    held_out: TaskBatch,
    inner_lr: float,
    steps: int,
    outer_lr: float = 1e-2,
    optimizer: str = "sgd",
) -> ShortRun:
    """``steps`` outer steps (plain SGD by default, or Adam; rate ``outer_lr``) on
    ``build(inner_lr).meta_loss(tasks(step))``, with the held-out meta-loss before and after.

    Stable (did not diverge): every training meta-loss and meta-gradient is finite and the held-out meta-loss after
    training is below the one before. ``build`` must return a fresh algorithm with the same initial weights each call
    (so that runs at different rates differ only in the rate); its ``model`` maps query inputs to outputs.

    SGD is the default because the theory is about it (Ji et al. analyse SGD on the meta-objective): Adam divides
    each step by the gradient's running size, so a meta-gradient that grows as ``(1 + a L)^N`` does not make it
    take a larger step, and its training diverges only when a loss overflows.
    """
    if optimizer not in ("sgd", "adam"):
        raise ConfigError(f"optimizer={optimizer!r} is unknown; choose sgd or adam")
    algo = build(inner_lr)
    with torch.no_grad():
        pairs = zip(held_out.query_x, held_out.query_y)
        unadapted = float(torch.stack([task_loss(algo.model(x), y) for x, y in pairs]).mean())
    start = _finite(float(algo.meta_loss(held_out).loss.detach()))
    opt = (torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam)(algo.parameters(), lr=outer_lr)
    losses: list[float] = []
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = algo.meta_loss(tasks(step)).loss
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            return ShortRun(inner_lr, start, math.inf, unadapted, losses, False)
        loss.backward()
        if not all(bool(torch.isfinite(p.grad).all()) for p in algo.parameters() if p.grad is not None):
            return ShortRun(inner_lr, start, math.inf, unadapted, losses, False)
        opt.step()
    final = _finite(float(algo.meta_loss(held_out).loss.detach()))
    return ShortRun(inner_lr, start, final, unadapted, losses, final < start)


def _finite(value: float) -> float:
    return value if math.isfinite(value) else math.inf


@dataclass(frozen=True)
class Boundary:
    """The largest stable rate found by :func:`largest_stable_rate`, and every rate tried."""

    stable: float  # the largest rate found stable (nan: none was)
    unstable: float  # the smallest rate found unstable above it (inf: none was, up to the search's top)
    tried: list[tuple[float, bool]] = field(default_factory=list)  # (rate, stable), in the order tried


def largest_stable_rate(
    is_stable: Callable[[float], bool], start: float, top: float, factor: float = 2.0, resolution: float = 2**0.25
) -> Boundary:
    """The boundary between stable and unstable rates of ``is_stable``, assumed stable below and unstable above it:

    1. a geometric grid ``start * factor^i`` up to ``top`` until the first unstable rate (downwards from ``start``
       while ``start`` itself is unstable);
    2. bisection in ``log a`` between the last stable and the first unstable rate until their ratio is at most
       ``resolution``.

    A non-monotone ``is_stable`` (stable again above an unstable rate) is not looked for: the grid's first
    unstable rate is the boundary's upper end.
    """
    if not (0 < start < top and factor > 1 and resolution > 1):
        raise ConfigError(
            f"start={start}, top={top}, factor={factor}, resolution={resolution}: need 0 < start < top, factor > 1, "
            "resolution > 1"
        )
    tried: list[tuple[float, bool]] = []

    def check(a: float) -> bool:
        ok = bool(is_stable(a))
        tried.append((a, ok))
        return ok

    lo, hi = math.nan, math.inf
    a = start
    if check(a):
        lo = a
        while a * factor <= top * (1 + 1e-12):
            a *= factor
            if not check(a):
                hi = a
                break
            lo = a
    else:
        hi = a
        while a / factor >= start / factor**20:
            a /= factor
            if check(a):
                lo = a
                break
            hi = a
        else:
            return Boundary(math.nan, hi, tried)
    if hi == math.inf:
        return Boundary(lo, hi, tried)
    while hi / lo > resolution * (1 + 1e-12):
        mid = math.sqrt(lo * hi)
        if check(mid):
            lo = mid
        else:
            hi = mid
    return Boundary(lo, hi, tried)
