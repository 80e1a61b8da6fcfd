"""The benchmarks' one timing helper: wall and CPU seconds of named paths, interleaved rounds, medians.

CPU time of this process is the measure on a shared machine (other work inflates wall time, not it); paths are
interleaved round by round so that a busy machine slows them alike; the first ``warmup`` rounds are not counted.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


def median(values: Iterable[float]) -> float:
    """The median, NaN for no values."""
    values = list(values)
    return statistics.median(values) if values else math.nan


@dataclass
class Timings:
    """Seconds per call of each named path: ``wall[name]`` and ``cpu[name]`` (this process), one value per round."""

    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, wall: float, cpu: float) -> None:
        self.wall.setdefault(name, []).append(wall)
        self.cpu.setdefault(name, []).append(cpu)

    def median_wall(self, name: str) -> float:
        return median(self.wall.get(name, ()))

    def median_cpu(self, name: str) -> float:
        return median(self.cpu.get(name, ()))


def timed(fn: Callable[[], Any], sync: Callable[[], None] = lambda: None) -> tuple[float, float, Any]:
    """``(wall seconds, CPU seconds, result)`` of one call of ``fn``; ``sync`` (e.g. ``torch.cuda.synchronize``)
    runs before the clocks start and before they stop."""
    sync()
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    sync()
    return time.perf_counter() - w0, time.process_time() - c0, out


def interleaved(
    paths: Mapping[str, Callable[[], Any]],
    rounds: int,
    warmup: int = 1,
    sync: Callable[[], None] = lambda: None,
    after_round: Callable[[int, Timings], None] | None = None,
) -> Timings:
    """Call every path once per round, ``warmup + rounds`` rounds, and record the last ``rounds`` of them.

    ``after_round(i, timings)`` runs after each counted round ``i`` (1-based), e.g. to print it.
    """
    timings = Timings()
    for i in range(warmup + rounds):
        for name, fn in paths.items():
            wall, cpu, _ = timed(fn, sync)
            if i >= warmup:
                timings.add(name, wall, cpu)
        if i >= warmup and after_round is not None:
            after_round(i - warmup + 1, timings)
    return timings
