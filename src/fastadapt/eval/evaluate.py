"""Fixed-episode evaluation: per-episode scores, mean and confidence interval, and the settings
that change the number written beside it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from fastadapt.algorithms.base import per_task_scores
from fastadapt.eval.stats import mean_ci


@dataclass(frozen=True)
class EvalResult:
    """``scores``: accuracy (classification) or MSE (regression) of each episode, in episode order."""

    metric: str
    mean: float
    ci: float
    level: float
    episodes: int
    scores: list[float]
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        if self.metric == "acc":
            return f"{100 * self.mean:.2f} +- {100 * self.ci:.2f} % ({self.episodes} episodes, {int(100 * self.level)}% CI)"
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


def evaluate(algo: nn.Module, episodes, level: float = 0.95, device: torch.device | str = "cpu", progress: bool = False,
             desc: str = "eval", settings: dict[str, Any] | None = None) -> EvalResult:
    """Score ``algo`` on every :class:`TaskBatch` of ``episodes`` (an iterable, e.g. ``sampler.fixed(n)``)."""
    was_training = algo.training
    algo.eval()
    scores: list[float] = []
    metric = "acc"
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc=desc, unit="ep", leave=False)
    try:
        for batch in episodes:
            batch = batch.to(device)
            out = algo.predict(batch)
            metric = "acc" if not batch.query_y.is_floating_point() else "mse"
            s = per_task_scores(out, batch.query_y)
            scores += s.tolist()
            if bar is not None:
                bar.update(len(s))
                bar.set_postfix({metric: f"{sum(scores) / len(scores):.4f}"})
    finally:
        if bar is not None:
            bar.close()
        algo.train(was_training)
    mean, ci = mean_ci(scores, level)
    return EvalResult(metric, mean, ci, level, len(scores), scores, dict(settings or {}))
