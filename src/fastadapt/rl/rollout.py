"""Sampling trajectories of T tasks at once through Gymnasium's vector API (:func:`rollout`), seeded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import Tensor

from fastadapt.core.episodes import EnvTasks
from fastadapt.core.errors import DataError
from fastadapt.data.sampler import _mix
from fastadapt.rl.envs import EnvFamily, require_gymnasium

# policy(obs [T, N, D]) -> (mean [T, N, A], log_std [T, A]): every task's current policy at once
Policy = Callable[[Tensor], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class Trajectories:
    """``per_task`` trajectories of each of T tasks, padded to the horizon H."""

    obs: Tensor  # [T, N, H, D] observations
    actions: Tensor  # [T, N, H, A] sampled actions (before clipping)
    rewards: Tensor  # [T, N, H]
    mask: Tensor  # [T, N, H] 1.0 while the episode runs, 0.0 after it ended

    def returns(self) -> Tensor:
        """``[T, N]`` undiscounted return of each trajectory."""
        return (self.rewards * self.mask).sum(-1)


def _seed32(*values: int) -> int:
    return _mix(*values) & 0xFFFFFFFF


def rollout(
    tasks: EnvTasks,
    policy: Policy,
    per_task: int,
    phase: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Trajectories:
    """``per_task`` trajectories of every task with ``policy`` (called without a graph).

    One ``gymnasium.vector.SyncVectorEnv`` of ``T * per_task`` environments (one process: on one core the
    synchronous vector env is the fastest), stepping all of them together for the family's horizon.
    Everything is seeded: environment ``n`` of task ``t`` resets with a seed mixed from the task's seed,
    ``phase`` (which sampling of the task this is: adaptation step 0, 1, ..., or the evaluation after
    adaptation) and ``n``; the Gaussian action noise of task ``t`` comes from its own generator with the
    same mixing. The same tasks, phase and policy give the same trajectories.

    Actions are sampled unclipped (their log-likelihood is the policy's); the environment receives them
    clipped to its action space's bounds. A non-finite reward is a one-line error.
    """
    gym = require_gymnasium()
    family = tasks.family
    if not isinstance(family, EnvFamily):
        raise DataError(
            "these tasks carry no environment family (a run rebuilt from its shapes only); "
            "draw tasks from the run's task source"
        )
    t_count, n, h = tasks.num_tasks, per_task, family.horizon
    seeds = [int(s) for s in tasks.seeds]
    envs = gym.vector.SyncVectorEnv(
        [partial(family.make, tasks.params[t].tolist()) for t in range(t_count) for _ in range(n)]
    )
    gens = [torch.Generator().manual_seed(_seed32(seeds[t], phase, 1)) for t in range(t_count)]
    low = torch.tensor(family.action_low, dtype=dtype)
    high = torch.tensor(family.action_high, dtype=dtype)
    d, a = family.observation_shape, family.action_size
    obs_out = torch.zeros(t_count, n, h, *d, dtype=dtype)
    act_out = torch.zeros(t_count, n, h, a, dtype=dtype)
    rew_out = torch.zeros(t_count, n, h, dtype=dtype)
    mask = torch.zeros(t_count, n, h, dtype=dtype)
    alive = torch.ones(t_count, n, dtype=torch.bool)
    try:
        obs, _ = envs.reset(seed=[_seed32(seeds[t], phase, 2, i) for t in range(t_count) for i in range(n)])
        for step in range(h):
            o = torch.as_tensor(np.asarray(obs), dtype=dtype).reshape(t_count, n, *d)
            with torch.no_grad():
                mean, log_std = policy(o.to(device))
            mean, std = mean.detach().cpu().to(dtype), log_std.detach().cpu().to(dtype).exp()
            noise = torch.stack([torch.randn(n, a, generator=g, dtype=dtype) for g in gens])
            act = mean + std[:, None, :] * noise
            obs_out[:, :, step], act_out[:, :, step], mask[:, :, step] = o, act, alive.to(dtype)
            obs, reward, terminated, truncated, _ = envs.step(
                torch.minimum(torch.maximum(act, low), high).reshape(t_count * n, a).numpy()
            )
            reward = np.asarray(reward, dtype=np.float64)
            if not np.all(np.isfinite(reward)):
                bad = int(np.flatnonzero(~np.isfinite(reward))[0])
                raise DataError(
                    f"environment {family.name} returned a non-finite reward ({reward[bad]}) at step {step} of task "
                    f"{tasks.params[bad // n].tolist()}; check the environment and its parameters"
                )
            rew_out[:, :, step] = torch.as_tensor(reward, dtype=dtype).reshape(t_count, n) * alive.to(dtype)
            alive = alive & ~torch.as_tensor(np.logical_or(terminated, truncated)).reshape(t_count, n)
            if not bool(alive.any()):
                break
    finally:
        envs.close()
    return Trajectories(obs_out.to(device), act_out.to(device), rew_out.to(device), mask.to(device))
