"""Sinusoid regression tasks, as in the MAML paper (Finn et al. 2017, section 5.1).

Each task is ``y = A sin(x - phi)`` with amplitude ``A ~ U[0.1, 5.0]``, phase ``phi ~ U[0, pi]``, and
inputs ``x ~ U[-5, 5]``; K support points and Q query points per task.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import DataError
from fastadapt.data.sampler import _mix, fixed_episodes, next_tasks

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, math.pi)
X_RANGE = (-5.0, 5.0)


class SinusoidTasks:
    """Seeded sinusoid tasks with the same interface as :class:`~fastadapt.data.EpisodeSampler`.

    Batches are regression :class:`TaskBatch` es: ``support_x, support_y [T, K, 1]``,
    ``query_x, query_y [T, Q, 1]``, ``classes = None``. :meth:`task_params` gives ``[T, 2]``
    (amplitude, phase) of the same tasks.
    """

    ways = 1

    def __init__(self, shots: int, queries: int, seed: int = 0) -> None:
        for label, v in (("shots", shots), ("queries", queries)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise DataError(f"{label}={v!r} is invalid; it must be a positive integer")
        self.shots, self.queries, self.seed = shots, queries, int(seed)
        self.step = 0
        self._gen = torch.Generator()

    def _draw(self, step: int, start: int, num_tasks: int) -> tuple[Tensor, Tensor]:
        """``[T, 2]`` (amplitude, phase) and ``[T, K+Q, 1]`` inputs; each task from its own seed."""
        params = torch.empty(num_tasks, 2)
        x = torch.empty(num_tasks, self.shots + self.queries, 1)
        for i in range(num_tasks):
            self._gen.manual_seed(_mix(self.seed, step, start + i))
            u = torch.rand(2, generator=self._gen)
            params[i, 0] = AMPLITUDE[0] + (AMPLITUDE[1] - AMPLITUDE[0]) * u[0]
            params[i, 1] = PHASE[0] + (PHASE[1] - PHASE[0]) * u[1]
            x[i] = X_RANGE[0] + (X_RANGE[1] - X_RANGE[0]) * torch.rand(x.shape[1], 1, generator=self._gen)
        return params, x

    def task_params(self, step: int, start: int, num_tasks: int) -> Tensor:
        """``[T, 2]`` amplitude and phase of tasks ``start..start+T-1`` of ``step``."""
        return self._draw(step, start, num_tasks)[0]

    def sample_tasks(self, step: int, start: int, num_tasks: int) -> TaskBatch:
        if num_tasks < 1:
            raise DataError(f"num_tasks={num_tasks} is invalid; it must be a positive integer")
        params, x = self._draw(step, start, num_tasks)
        y = params[:, 0, None, None] * torch.sin(x - params[:, 1, None, None])
        k = self.shots
        return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:], None)

    def sample(self, num_tasks: int) -> TaskBatch:
        return next_tasks(self, num_tasks)

    def fixed(self, num_episodes: int, batch_size: int = 100):
        return fixed_episodes(self, num_episodes, batch_size)

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])
