"""Evaluation of meta-reinforcement learning as in the MAML paper's Figure 4: returns after 0, 1, ...
policy-gradient steps on fixed held-out tasks (:func:`adaptation_curve`, :func:`compare`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from fastadapt.core.episodes import EnvTasks
from fastadapt.eval.stats import mean_ci


@dataclass(frozen=True)
class AdaptationCurve:
    """Returns after 0..steps adaptation steps: ``per_task[i][j]`` is task i after j steps."""

    mean: list[float]  # [steps + 1] mean over tasks
    ci: list[float]  # [steps + 1] half-width of the confidence interval of the mean
    per_task: list[list[float]]  # [tasks][steps + 1]
    level: float
    trajectories: int  # per task and step

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def separated(self, other: AdaptationCurve, step: int) -> bool:
        """Whether this curve is above ``other`` at ``step`` with non-overlapping intervals."""
        return self.mean[step] - self.ci[step] > other.mean[step] + other.ci[step]


def adaptation_curve(
    algo: nn.Module, tasks: EnvTasks, steps: int = 3, trajectories: int = 20, level: float = 0.95
) -> AdaptationCurve:
    """The Figure-4 curve of ``algo`` on ``tasks`` (which it does not change).

    ``algo`` has ``adaptation_curve`` (e.g. :class:`~fastadapt.algorithms.maml_rl.MAMLRL` around the
    meta-learnt, the jointly pretrained or a randomly initialised policy): the mean return on the tasks
    after 0, 1, ..., ``steps`` policy-gradient steps of ``trajectories`` trajectories each, with the mean
    over tasks and its ``level`` confidence interval (Student's t, :func:`fastadapt.eval.stats.mean_ci`).
    The trajectories that score the policy after ``j`` steps make step ``j + 1``; every task's sampling is
    seeded, so the same tasks give the same numbers.
    """
    was_training = algo.training
    algo.eval()
    try:
        returns = algo.adaptation_curve(tasks, steps, trajectories).detach().double()  # [T, steps + 1]
    finally:
        algo.train(was_training)
    stats = [mean_ci(returns[:, j].tolist(), level) for j in range(steps + 1)]
    return AdaptationCurve([m for m, _ in stats], [c for _, c in stats], returns.tolist(), level, trajectories)


def compare(
    policies: dict[str, nn.Module], tasks: EnvTasks, steps: int = 3, trajectories: int = 20, level: float = 0.95
) -> dict[str, AdaptationCurve]:
    """Every policy's curve on the same tasks."""
    return {name: adaptation_curve(algo, tasks, steps, trajectories, level) for name, algo in policies.items()}


def paths_before_and_after(
    algo: nn.Module, tasks: EnvTasks, trajectories: int = 20, shown: int = 5
) -> dict[str, torch.Tensor]:
    """Observations (2D navigation: positions) ``[T, shown, H, D]`` of the policy before adaptation and after one step
    on ``trajectories`` trajectories per task (the paper's rollout figure)."""
    fast, _, before = algo.adapt_tasks(tasks, 1, trajectories)
    with torch.no_grad():
        after = algo.sample(tasks, fast, shown, phase=1)
    return {
        "before": before.obs[:, :shown].detach(),
        "after": after.obs.detach(),
        "mask_before": before.mask[:, :shown],
        "mask_after": after.mask,
    }
