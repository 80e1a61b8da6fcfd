"""Task families of environments, through Gymnasium (:func:`task_family`), and the task source that draws
their tasks (:class:`EnvTaskSource`; registered as ``nav2d`` and ``pendulum-dynamics``). Gymnasium is an
extra (``pip install fastadapt[rl]``), imported on first use; its absence is a one-line error."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fastadapt.core.episodes import EnvTasks
from fastadapt.core.errors import ConfigError, DataError
from fastadapt.data.sampler import _mix, fixed_episodes

INSTALL = "pip install fastadapt[rl]"
NAV_GOAL_RANGE = (-0.5, 0.5)  # MAML sec. 5.3: goals uniform in [-0.5, 0.5]^2
NAV_HORIZON = 100
PENDULUM_MASS = (0.5, 2.0)  # Pendulum-v1's default is m = 1, l = 1
PENDULUM_LENGTH = (0.5, 1.5)


def require_gymnasium() -> Any:
    """The ``gymnasium`` module, or a one-line :class:`ConfigError` saying how to install it."""
    try:
        import gymnasium
    except ModuleNotFoundError:
        raise ConfigError(f"reinforcement learning needs Gymnasium, which is not installed; {INSTALL}") from None
    return gymnasium


@dataclass(frozen=True)
class EnvFamily:
    """A family of tasks: one environment whose parameters (``param_names``) change per task.

    A task is a parameter vector, set as attributes of ``env.unwrapped`` after ``gym.make``: a goal (2D
    navigation), a mass and a length (Pendulum). The algorithm samples its trajectories with the policy it
    adapts (:mod:`fastadapt.rl.rollout`).
    """

    name: str  # for messages and records, e.g. "Pendulum-v1"
    make_base: Callable[[], Any]  # a fresh Gymnasium environment with default parameters
    sampler: Callable[[np.random.Generator], Mapping[str, float]]  # one task's parameters
    param_names: tuple[str, ...]  # attributes of env.unwrapped that a task sets, in the order of EnvTasks.params
    observation_shape: tuple[int, ...]  # one observation (the policy's input)
    action_size: int  # one action's width (the policy's output)
    action_low: tuple[float, ...]  # the action space's bounds: sampled actions are clipped to them
    action_high: tuple[float, ...]
    horizon: int  # steps per trajectory (fewer when the environment terminates)

    def make(self, params: torch.Tensor | list[float]) -> Any:
        """The environment of one task (``params``: one row of :attr:`EnvTasks.params`)."""
        env = self.make_base()
        for name, value in zip(self.param_names, [float(v) for v in params], strict=True):
            setattr(env.unwrapped, name, value)
        return env

    def draw(self, seed: int) -> list[float]:
        """One task's parameters from ``seed`` (a one-line error for a sampler that gives other names or non-finite
        values)."""
        values = self.sampler(np.random.default_rng(seed))
        if not isinstance(values, Mapping) or set(values) != set(self.param_names):
            found = sorted(values) if isinstance(values, Mapping) else type(values).__name__
            raise DataError(
                f"task family {self.name}: the sampler must return a dict with keys {list(self.param_names)}; "
                f"found {found}"
            )
        row = [float(values[n]) for n in self.param_names]
        if not all(math.isfinite(v) for v in row):
            raise DataError(
                f"task family {self.name}: the sampler returned non-finite parameters "
                f"{dict(zip(self.param_names, row))}"
            )
        return row


def _make_by_id(gym: Any, env_id: str) -> Callable[[], Any]:
    try:
        gym.spec(env_id)
    except gym.error.Error as e:
        raise ConfigError(
            f"Gymnasium has no environment {env_id!r} ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
            f"give a registered id such as Pendulum-v1"
        ) from None
    return lambda: gym.make(env_id, disable_env_checker=True)


def check_spaces(env: Any, name: str) -> tuple[tuple[int, ...], int, tuple[float, ...], tuple[float, ...]]:
    """The observation shape, action size and bounds; a one-line error for spaces the Gaussian policy cannot handle."""
    gym = require_gymnasium()
    obs, act = env.observation_space, env.action_space
    if not isinstance(obs, gym.spaces.Box) or len(obs.shape) != 1:
        raise ConfigError(
            f"environment {name}: observation space {obs} is not supported; the policy takes a vector (a 1-D Box)"
        )
    if not isinstance(act, gym.spaces.Box) or len(act.shape) != 1:
        raise ConfigError(
            f"environment {name}: action space {act} is not supported; the Gaussian policy needs continuous "
            f"actions (a 1-D Box), e.g. Pendulum-v1 or MountainCarContinuous-v0"
        )
    return (
        tuple(int(s) for s in obs.shape),
        int(act.shape[0]),
        tuple(float(v) for v in act.low),
        tuple(float(v) for v in act.high),
    )


def task_family(
    env: str | Callable[[], Any],
    sampler: Callable[[np.random.Generator], Mapping[str, float]],
    *,
    horizon: int | None = None,
    name: str | None = None,
) -> EnvFamily:
    """A task family from a Gymnasium environment id (or a function making the environment) and a parameter
    sampler. Any environment with a continuous (Box) action space and a vector observation works::

        def sampler(rng):                       # numpy Generator -> {attribute of env.unwrapped: value}
            return {"m": rng.uniform(0.5, 2.0), "l": rng.uniform(0.5, 1.5)}

        family = fastadapt.rl.task_family("Pendulum-v1", sampler)
        source = fastadapt.rl.EnvTaskSource(family, shots=20, queries=20, seed=0)

    ``sampler(rng)`` gets a ``numpy.random.Generator`` and returns ``{attribute: value}``: the
    attributes of ``env.unwrapped`` a task sets. ``horizon``: steps per trajectory (default: the
    environment's ``max_episode_steps``). Unknown ids, spaces the policy cannot handle and attributes
    the environment lacks are one-line errors.
    """
    gym = require_gymnasium()
    if isinstance(env, str):
        make_base, label = _make_by_id(gym, env), env
    elif callable(env):
        make_base, label = env, getattr(env, "__name__", type(env).__name__)
    else:
        raise ConfigError(
            f"task_family: env must be a Gymnasium id or a function making the environment, found {type(env).__name__}"
        )
    label = name or label
    probe = make_base()
    try:
        obs_shape, action_size, low, high = check_spaces(probe, label)
        values = sampler(np.random.default_rng(0))
        if not isinstance(values, Mapping) or not values:
            raise ConfigError(
                f"task family {label}: the sampler must return a non-empty dict {{attribute: value}}, found {values!r}"
            )
        missing = [k for k in values if not hasattr(probe.unwrapped, k)]
        if missing:
            raise ConfigError(
                f"task family {label}: the environment {type(probe.unwrapped).__name__} has no attribute "
                f"{missing[0]!r} for the sampler to set"
            )
        steps = horizon if horizon is not None else getattr(getattr(probe, "spec", None), "max_episode_steps", None)
        if not isinstance(steps, int) or steps < 1:
            raise ConfigError(
                f"task family {label}: the environment sets no max_episode_steps; pass horizon=N (N >= 1)"
            )
    finally:
        probe.close()
    return EnvFamily(label, make_base, sampler, tuple(values), obs_shape, action_size, low, high, steps)


class EnvTaskSource:
    """Tasks of a family, seeded: ``shots`` trajectories per adaptation step, ``queries`` to score the adapted
    policy. ``sample_tasks(step, start, count)`` is pure (task ``i`` of step ``s`` from the seed
    ``(seed, s, i)``) and returns an :class:`~fastadapt.core.episodes.EnvTasks`."""

    ways = 1

    def __init__(self, family: EnvFamily, shots: int, queries: int, seed: int = 0) -> None:
        for label, v in (
            ("shots (trajectories per adaptation step)", shots),
            ("queries (trajectories after adaptation)", queries),
        ):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise DataError(f"{label}={v!r} is invalid; it must be a positive integer")
        self.family, self.shots, self.queries, self.seed = family, shots, queries, int(seed)

    def sample_tasks(self, step: int, start: int, num_tasks: int) -> EnvTasks:
        """Tasks ``start .. start+num_tasks-1`` of ``step``: a pure function of (seed, step, index)."""
        if num_tasks < 1:
            raise DataError(f"num_tasks={num_tasks} is invalid; it must be a positive integer")
        seeds = [_mix(self.seed, step, start + i) for i in range(num_tasks)]
        params = torch.tensor([self.family.draw(s) for s in seeds], dtype=torch.float64)
        f = self.family
        return EnvTasks(
            params,
            torch.tensor(seeds, dtype=torch.int64),
            f.observation_shape,
            f.action_size,
            f,
            self.shots,
            self.queries,
        )

    def fixed(self, num_episodes: int, batch_size: int = 100) -> Iterator[EnvTasks]:
        """The same ``num_episodes`` evaluation tasks every time for a seed."""
        return fixed_episodes(self, num_episodes, batch_size)


def nav_goal_sampler(rng: np.random.Generator) -> dict[str, float]:
    """A goal uniform in ``[-0.5, 0.5]^2``."""
    x, y = rng.uniform(*NAV_GOAL_RANGE, size=2)
    return {"goal_x": float(x), "goal_y": float(y)}


def nav2d_family(horizon: int = NAV_HORIZON) -> EnvFamily:
    """2D navigation of the MAML paper: goals uniform in ``[-0.5, 0.5]^2``, reward -distance, 100 steps."""
    require_gymnasium()
    from fastadapt.rl.nav2d import Navigation2D

    return task_family(Navigation2D, nav_goal_sampler, horizon=horizon, name="nav2d")


def pendulum_sampler(
    mass: tuple[float, float] = PENDULUM_MASS, length: tuple[float, float] = PENDULUM_LENGTH
) -> Callable[[np.random.Generator], dict[str, float]]:
    """Pendulum-v1's mass ``m`` and length ``l``, each uniform in its range."""

    def sample(rng: np.random.Generator) -> dict[str, float]:
        return {"m": float(rng.uniform(*mass)), "l": float(rng.uniform(*length))}

    return sample


def pendulum_family(
    mass: tuple[float, float] = PENDULUM_MASS, length: tuple[float, float] = PENDULUM_LENGTH, horizon: int = 200
) -> EnvFamily:
    """Pendulum-v1 swing-up whose mass and length change per task (dynamics, not goals)."""
    for label, (lo, hi) in (("mass", mass), ("length", length)):
        if not (0 < lo <= hi and math.isfinite(hi)):
            raise ConfigError(f"data.options.{label}={[lo, hi]} is invalid; give [low, high] with 0 < low <= high")
    return task_family(
        "Pendulum-v1", pendulum_sampler(tuple(mass), tuple(length)), horizon=horizon, name="pendulum-dynamics"
    )


def _options(request: Any, allowed: dict[str, Any], source: str) -> dict[str, Any]:
    options = dict(request.options)
    unknown = [k for k in options if k not in allowed]
    if unknown:
        raise ConfigError(f"data.options.{unknown[0]} is not an option of {source}; it takes {', '.join(allowed)}")
    return {**allowed, **options}


def _horizon(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"data.options.horizon={value!r} is invalid; give the steps per trajectory, an integer >= 1")
    return value


def nav2d(request: Any) -> EnvTaskSource:
    """Registered as ``data.dataset = "nav2d"``: 2D navigation tasks (MAML sec. 5.3); ``data.options.horizon`` (100)."""
    opts = _options(request, {"horizon": NAV_HORIZON}, "nav2d")
    return EnvTaskSource(nav2d_family(_horizon(opts["horizon"])), request.shots, request.queries, request.seed)


def pendulum_dynamics(request: Any) -> EnvTaskSource:
    """Registered as ``data.dataset = "pendulum-dynamics"``: Pendulum-v1 with mass and length per task
    (``data.options``: ``mass = [0.5, 2.0]``, ``length = [0.5, 1.5]``, ``horizon = 200``)."""
    opts = _options(
        request, {"mass": list(PENDULUM_MASS), "length": list(PENDULUM_LENGTH), "horizon": 200}, "pendulum-dynamics"
    )
    ranges = []
    for key in ("mass", "length"):
        v = opts[key]
        if (
            not isinstance(v, (list, tuple))
            or len(v) != 2
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
        ):
            raise ConfigError(f"data.options.{key}={v!r} is invalid; give [low, high]")
        ranges.append((float(v[0]), float(v[1])))
    return EnvTaskSource(
        pendulum_family(ranges[0], ranges[1], _horizon(opts["horizon"])), request.shots, request.queries, request.seed
    )
