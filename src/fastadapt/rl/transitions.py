"""Transitions of a task family as regression tasks for dynamics models (GrBAL's meta-training data, Nagabandi et al.
2019): :func:`collect` samples trajectories, :class:`Normalizer` maps ``(state, action) -> state change`` to and from
the model's scale, :class:`TransitionWindows` serves windows of consecutive transitions (registered as
``cheetah-transitions``, for the half-cheetah and ant families)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError, DataError
from fastadapt.data.sampler import _mix, fixed_episodes
from fastadapt.rl.ant import ant_family_from_options
from fastadapt.rl.cheetah import family_from_options
from fastadapt.rl.envs import EnvFamily, EnvTaskSource
from fastadapt.rl.rollout import rollout

STATS_SEED = 12345  # the trajectories the normalisation statistics come from (the same for every part and run)
STATS_TRAJECTORIES = 32
PART_CODES = {"train": 0, "val": 1, "test": 2}  # mixed into the seed, so the parts draw different tasks


@dataclass(frozen=True)
class Transitions:
    """``N`` trajectories of ``H`` transitions, one task each: ``obs [N, H, D]``, ``actions [N, H, A]`` (as the
    environment received them: clipped), ``next_obs [N, H, D]``, ``params [N, P]`` (the tasks)."""

    obs: Tensor
    actions: Tensor
    next_obs: Tensor
    params: Tensor

    @property
    def steps(self) -> int:
        """Simulator steps these transitions cost."""
        return int(self.obs.shape[0] * self.obs.shape[1])


def collect(family: EnvFamily, trajectories: int, seed: int, action_std: float = 1.0) -> Transitions:
    """``trajectories`` tasks of ``family`` drawn from ``seed``, one trajectory each of ``family.horizon - 1``
    transitions, with zero-mean Gaussian actions of standard deviation ``action_std`` clipped to the action space
    (random exploration, the paper's first round of data). Seeded: the same arguments give the same transitions."""
    if trajectories < 1:
        raise DataError(f"trajectories={trajectories} is invalid; give a positive integer")
    tasks = EnvTaskSource(family, 1, 1, seed).sample_tasks(0, 0, trajectories)
    a = family.action_size
    log_std = torch.full((trajectories, a), float(torch.tensor(action_std).log()))

    def noise_policy(obs: Tensor) -> tuple[Tensor, Tensor]:
        return torch.zeros(*obs.shape[:-1], a), log_std

    traj = rollout(tasks, noise_policy, 1, dtype=torch.float64)
    if bool((traj.mask < 1).any()):
        raise DataError(f"task family {family.name}: an episode ended before the horizon; transitions need full ones")
    low, high = (
        torch.tensor(family.action_low, dtype=torch.float64),
        torch.tensor(family.action_high, dtype=torch.float64),
    )
    obs, act = traj.obs[:, 0], torch.minimum(torch.maximum(traj.actions[:, 0], low), high)
    return Transitions(obs[:, :-1], act[:, :-1], obs[:, 1:], tasks.params)


@dataclass(frozen=True)
class Normalizer:
    """Standardisation of the model's input ``[state, action]`` and target ``next_state - state``:

    x = ([s, a] - x_mean) / x_std,      y = (s' - s - y_mean) / y_std,      s' = s + y_mean + y_std * f(x)
    """

    x_mean: Tensor  # [D + A]
    x_std: Tensor
    y_mean: Tensor  # [D]
    y_std: Tensor

    @staticmethod
    def fit(data: Transitions, floor: float = 1e-6) -> Normalizer:
        """Means and standard deviations (at least ``floor``) of ``data``'s inputs and state changes."""
        x = torch.cat([data.obs, data.actions], -1).flatten(0, -2)
        y = (data.next_obs - data.obs).flatten(0, -2)
        return Normalizer(x.mean(0), x.std(0).clamp_min(floor), y.mean(0), y.std(0).clamp_min(floor))

    def inputs(self, obs: Tensor, actions: Tensor) -> Tensor:
        """``[..., D + A]`` model inputs of states ``[..., D]`` and actions ``[..., A]``."""
        return (torch.cat([obs, actions], -1) - self.x_mean.to(obs)) / self.x_std.to(obs)

    def targets(self, obs: Tensor, next_obs: Tensor) -> Tensor:
        """``[..., D]`` model targets: the standardised state changes."""
        return (next_obs - obs - self.y_mean.to(obs)) / self.y_std.to(obs)

    def next_state(self, obs: Tensor, outputs: Tensor) -> Tensor:
        """The next states the model's ``outputs`` predict from ``obs``."""
        return obs + self.y_mean.to(obs) + self.y_std.to(obs) * outputs.to(obs)


class TransitionWindows:
    """Regression tasks of windows of consecutive transitions: a task is one trajectory and a step ``t``; its
    support set is the ``shots`` transitions before ``t`` (the recent past a model adapts on), its query set the
    ``queries`` transitions from ``t`` on (what comes next). Windows that straddle a mid-episode change are part of
    the distribution, as in the paper. ``sample_tasks`` is pure in ``(seed, step, index)``; inputs and targets are
    standardised by ``normalizer`` (float32):

    ``support_x [T, shots, D + A]``, ``support_y [T, shots, D]``, ``query_x [T, queries, D + A]``, ``query_y``."""

    ways = 1

    def __init__(self, data: Transitions, normalizer: Normalizer, shots: int, queries: int, seed: int = 0) -> None:
        horizon = data.obs.shape[1]
        if shots < 1 or queries < 1 or shots + queries > horizon:
            raise DataError(
                f"shots={shots} and queries={queries} do not fit trajectories of {horizon} transitions; "
                "give shots, queries >= 1 with shots + queries <= the horizon - 1"
            )
        self.data, self.normalizer, self.shots, self.queries, self.seed = data, normalizer, shots, queries, int(seed)
        self.x = normalizer.inputs(data.obs, data.actions).float()  # [N, H, D + A]
        self.y = normalizer.targets(data.obs, data.next_obs).float()  # [N, H, D]

    def sample_tasks(self, step: int, start: int, num_tasks: int) -> TaskBatch:
        """Windows ``start .. start+num_tasks-1`` of ``step``."""
        if num_tasks < 1:
            raise DataError(f"num_tasks={num_tasks} is invalid; it must be a positive integer")
        n, h = self.x.shape[:2]
        rows, times = [], []
        for i in range(num_tasks):
            g = torch.Generator().manual_seed(_mix(self.seed, step, start + i) & 0xFFFFFFFF)
            rows.append(int(torch.randint(n, (1,), generator=g)))
            times.append(int(torch.randint(self.shots, h - self.queries + 1, (1,), generator=g)))
        sx = torch.stack([self.x[r, t - self.shots : t] for r, t in zip(rows, times)])
        sy = torch.stack([self.y[r, t - self.shots : t] for r, t in zip(rows, times)])
        qx = torch.stack([self.x[r, t : t + self.queries] for r, t in zip(rows, times)])
        qy = torch.stack([self.y[r, t : t + self.queries] for r, t in zip(rows, times)])
        return TaskBatch(sx, sy, qx, qy)

    def fixed(self, num_episodes: int, batch_size: int = 100) -> Iterator[TaskBatch]:
        """The same ``num_episodes`` evaluation windows every time for a seed."""
        return fixed_episodes(self, num_episodes, batch_size)


TRANSITION_OPTIONS = {"family": "crippled", "trajectories": 64, "action_std": 1.0}
# data.options.family -> (the family's own options, source) -> the family; the planner's reward for it:
# fastadapt.rl.mpc.reward_for(family)
FAMILIES: dict[str, Callable[[dict[str, Any], str], EnvFamily]] = {
    "crippled": partial(family_from_options, "crippled"),  # cheetah-crippled
    "body": partial(family_from_options, "body"),  # cheetah-body
    "ant-crippled": ant_family_from_options,  # ant-crippled
}


def transition_family(kind: str, options: dict[str, Any], source: str) -> EnvFamily:
    """The family ``kind`` of :data:`FAMILIES` (``data.options.family``) from its own ``options`` (unknown keys and
    bad values: one-line errors)."""
    build = FAMILIES.get(kind) if isinstance(kind, str) else None
    if build is None:
        raise ConfigError(f"data.options.family={kind!r} is invalid; give one of {', '.join(map(repr, FAMILIES))}")
    return build(options, source)


def cheetah_transitions(request: Any) -> TransitionWindows:
    """Registered as ``data.dataset = "cheetah-transitions"``: windows of random-action transitions of a MuJoCo
    family (``data.options``: ``family = "crippled" | "body" | "ant-crippled"``: the half-cheetah's or the ant's,
    :data:`FAMILIES`; ``trajectories = 64`` per part, ``action_std = 1.0``, and the family's own
    options, e.g. ``joints`` (``legs``), ``gain``, ``switch``, ``horizon``). The planner's reward for the family:
    :func:`fastadapt.rl.mpc.reward_for`."""
    options = dict(request.options)
    own = {k: options.pop(k, v) for k, v in TRANSITION_OPTIONS.items()}
    trajectories, action_std = own["trajectories"], own["action_std"]
    if not isinstance(trajectories, int) or isinstance(trajectories, bool) or trajectories < 1:
        raise ConfigError(f"data.options.trajectories={trajectories!r} is invalid; give an integer >= 1")
    if not isinstance(action_std, (int, float)) or isinstance(action_std, bool) or not action_std > 0:
        raise ConfigError(f"data.options.action_std={action_std!r} is invalid; give a standard deviation > 0")
    family = transition_family(str(own["family"]), options, "cheetah-transitions")
    normalizer = Normalizer.fit(collect(family, STATS_TRAJECTORIES, STATS_SEED, float(action_std)))
    seed = _mix(request.seed, PART_CODES.get(request.role, 3))
    data = collect(family, trajectories, seed, float(action_std))
    return TransitionWindows(data, normalizer, request.shots, request.queries, seed)
