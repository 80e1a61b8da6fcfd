"""Fixed-episode evaluation: per-episode scores, mean and confidence interval, and the settings
that change the number written beside it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from fastadapt.algorithms.base import per_task_scores
from fastadapt.core import cancel
from fastadapt.core.episodes import EnvTasks
from fastadapt.eval.stats import mean_ci
from fastadapt.runtime import distributed as dist_
from fastadapt.runtime.precision import autocast


@dataclass(frozen=True)
class EvalResult:
    """``scores``: accuracy (classification), MSE (regression) or return (reinforcement learning) of each episode, in
    episode order."""

    metric: str
    mean: float
    ci: float
    level: float
    episodes: int
    scores: list[float]
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        if "diverged_episodes" in self.settings:
            diverged = self.settings["diverged_episodes"]
            return f"{self.metric} diverged (non-finite) on {diverged} of {self.episodes} episodes"
        if self.metric == "acc":
            return (
                f"{100 * self.mean:.2f} +- {100 * self.ci:.2f} % "
                f"({self.episodes} episodes, {int(100 * self.level)}% CI)"
            )
        return f"{self.metric} {self.mean:.4f} +- {self.ci:.4f} ({self.episodes} episodes, {int(100 * self.level)}% CI)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def batchnorm_setting(model: nn.Module) -> str:
    """How the model's BatchNorm layers normalise at evaluation, in words for reports."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return "none"
    if all(not m.track_running_stats for m in bns):
        return "transductive (batch statistics of the evaluated examples)"
    return "running statistics (eval mode)"


def _check_every_rank() -> None:
    """:func:`fastadapt.core.cancel.check` on every rank of the process group at once: raised on all, with the signal
    a rank saw, when a stop was asked of any."""
    asked = cancel.requested()
    if dist_.any_rank(asked is not None):
        seen = [s for s in dist_.gather_scores([asked]) if s is not None]
        raise cancel.Cancelled(asked if asked is not None else seen[0])


def evaluate(
    algo: nn.Module,
    episodes,
    level: float = 0.95,
    device: torch.device | str = "cpu",
    progress: bool = False,
    desc: str = "eval",
    settings: dict[str, Any] | None = None,
    distributed: bool = False,
    precision: str = "fp32",
) -> EvalResult:
    """Score ``algo`` on every :class:`TaskBatch` of ``episodes`` (an iterable, e.g. ``sampler.fixed(n)``).

    ``distributed=True`` (every rank of the process group must call it): rank ``r`` of ``W`` scores
    batches ``r, r + W, ...`` of ``episodes`` and the scores of all ranks are gathered in episode
    order, so the result equals one process's. Whole batches are split, never the episodes of one
    batch, because an encoder's BatchNorm may normalise over the batch. ``precision``: ``"bf16"``
    runs ``predict`` under bf16 autocast (:mod:`fastadapt.runtime.precision`).

    A stop asked for (SIGINT / SIGTERM while a command or a training runs: :mod:`fastadapt.core.cancel`) is checked
    before each batch: the partial evaluation is abandoned with :class:`~fastadapt.core.cancel.Cancelled`, and no
    result comes back to be written. Under a process group the ranks agree once a round of ``W`` batches (an
    all-reduce), so all of them stop at the same batch when any was asked to, and none waits in a collective.
    """
    shard = distributed and dist_.is_distributed()
    me, world = dist_.rank(), dist_.world_size()
    was_training = algo.training
    algo.eval()
    scores: list[float] = []
    scored: list[tuple[int, str, list[float]]] = []  # (batch index, metric, scores) of this rank's batches
    metric = "acc"
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc=desc, unit="ep", leave=False)
    try:
        for i, batch in enumerate(episodes):
            if not shard:
                cancel.check()
            elif i % world == 0:  # once a round of batches, on every rank
                _check_every_rank()
            if shard and i % world != me:
                continue
            batch = batch.to(device)
            with autocast(precision, batch.params.device if isinstance(batch, EnvTasks) else batch.query_x.device):
                out = algo.predict(batch)
            if isinstance(
                batch, EnvTasks
            ):  # reinforcement learning: predict gives each task's mean return after adaptation
                metric, s = "return", out.detach().double().reshape(-1)
            else:
                metric = "acc" if not batch.query_y.is_floating_point() else "mse"
                s = per_task_scores(out, batch.query_y)
            scores += s.tolist()
            scored.append((i, metric, s.tolist()))
            if bar is not None:
                bar.update(len(s))
                bar.set_postfix({metric: f"{sum(scores) / len(scores):.4f}"})
    finally:
        if bar is not None:
            bar.close()
        algo.train(was_training)
    if shard:
        gathered = sorted(dist_.gather_scores(scored), key=lambda item: item[0])
        scores = [x for _, _, part in gathered for x in part]
        metric = gathered[0][1] if gathered else metric
    settings = dict(settings or {})
    diverged = sum(1 for s in scores if not math.isfinite(s))
    if diverged:  # e.g. inner steps beyond what learnt rates were trained for: report it, don't crash
        settings["diverged_episodes"] = diverged
        return EvalResult(
            metric,
            float("inf") if metric == "mse" else float("nan"),
            float("nan"),
            level,
            len(scores),
            scores,
            settings,
        )
    mean, ci = mean_ci(scores, level)
    return EvalResult(metric, mean, ci, level, len(scores), scores, settings)
