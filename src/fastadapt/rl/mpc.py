"""Model-predictive control on the CPU, batched over candidate action sequences: :func:`plan` (random shooting, or
the cross-entropy method with ``iterations > 1``), the rewards of the families it plans for, and Pendulum-v1's exact
dynamics as a planning model."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from fastadapt.core.errors import ConfigError

# model_fn(states [N, D], actions [N, A]) -> next states [N, D]; reward_fn(states, actions, next_states) -> [N]
ModelFn = Callable[[Tensor, Tensor], Tensor]
RewardFn = Callable[[Tensor, Tensor, Tensor], Tensor]

CHEETAH_VELOCITY = 8  # HalfCheetah-v5's observation: qpos[1:] (8 values), then qvel; qvel[0] is the forward velocity
CHEETAH_CTRL_COST = 0.1  # HalfCheetah-v5's ctrl_cost_weight
# Ant-v5's observation without contact forces (fastadapt.rl.ant): qpos[2:] (torso height, orientation quaternion, 8
# joint angles: 13 values), then qvel (14 values): the torso's height is at 0, its forward velocity qvel[0] at 13
ANT_HEIGHT, ANT_VELOCITY = 0, 13
ANT_CTRL_COST = 0.5  # Ant-v5's ctrl_cost_weight
ANT_HEALTHY_REWARD = 1.0  # Ant-v5's healthy_reward, paid while healthy
ANT_HEALTHY_Z = (0.2, 1.0)  # Ant-v5's healthy_z_range: the torso's height while healthy
PENDULUM = {"g": 10.0, "dt": 0.05, "max_speed": 8.0, "max_torque": 2.0}  # Pendulum-v1's constants


def plan(
    model_fn: ModelFn,
    state: Tensor,
    horizon: int,
    candidates: int,
    *,
    reward_fn: RewardFn,
    low: Tensor,
    high: Tensor,
    generator: torch.Generator | None = None,
    iterations: int = 1,
    elite_fraction: float = 0.1,
    discount: float = 1.0,
) -> Tensor:
    """The first action of the best of ``candidates`` action sequences of ``horizon`` steps under ``model_fn``.

    Every candidate is rolled out through the model at once (one batched call per step): the predicted return of
    sequence ``i`` is ``sum_h discount^h reward_fn(s_h, a_h, s_{h+1})`` from ``s_0 = state``. With
    ``iterations = 1`` the candidates are uniform in ``[low, high]`` (random shooting, Nagabandi et al. 2018);
    with more, the cross-entropy method: each iteration samples from a per-step Gaussian (first: uniform), keeps
    the best ``elite_fraction`` and refits the mean and standard deviation to them; the answer is the first action
    of the best sequence seen.

    Args:
        model_fn: ``(states [N, D], actions [N, A]) -> next states [N, D]`` (no graph is needed: called under
            ``torch.no_grad``).
        state: ``[D]``, the current state (observation).
        low, high: ``[A]``, the action bounds.
        generator: the source of the candidates (seeded for a reproducible controller).

    Returns:
        ``[A]``, the action to take now.
    """
    if horizon < 1 or candidates < 1 or iterations < 1:
        raise ConfigError(f"plan: horizon={horizon}, candidates={candidates}, iterations={iterations} must be >= 1")
    if not 0 < elite_fraction <= 1:
        raise ConfigError(f"plan: elite_fraction={elite_fraction} must be in (0, 1]")
    low, high = low.to(state.dtype), high.to(state.dtype)
    a = low.shape[0]
    elites = max(1, int(math.ceil(elite_fraction * candidates)))
    mean, std = (low + high) / 2, (high - low) / 2
    best_value, best_action = -math.inf, mean
    with torch.no_grad():
        for it in range(iterations):
            u = torch.rand(candidates, horizon, a, generator=generator, dtype=state.dtype)
            if it == 0:
                actions = low + (high - low) * u
            else:
                z = torch.randn(candidates, horizon, a, generator=generator, dtype=state.dtype)
                actions = torch.minimum(torch.maximum(mean + std * z, low), high)
            values = sequence_returns(model_fn, state, actions, reward_fn, discount)
            top = values.topk(elites).indices
            if float(values[top[0]]) > best_value:
                best_value, best_action = float(values[top[0]]), actions[top[0], 0]
            chosen = actions[top]
            mean, std = chosen.mean(0), chosen.std(0, unbiased=False) + 1e-6
    return best_action.clone()


def sequence_returns(
    model_fn: ModelFn, state: Tensor, actions: Tensor, reward_fn: RewardFn, discount: float = 1.0
) -> Tensor:
    """``[N]`` predicted (discounted) returns of the action sequences ``actions [N, H, A]`` from ``state [D]``."""
    s = state.expand(actions.shape[0], *state.shape)
    total = torch.zeros(actions.shape[0], dtype=state.dtype)
    weight = 1.0
    for h in range(actions.shape[1]):
        nxt = model_fn(s, actions[:, h])
        total = total + weight * reward_fn(s, actions[:, h], nxt)
        s, weight = nxt, weight * discount
    return total


def cheetah_reward(states: Tensor, actions: Tensor, next_states: Tensor) -> Tensor:
    """HalfCheetah-v5's reward as a function of its observations: the forward velocity after the step minus
    ``0.1 |a|^2`` (the environment uses the mean velocity over the step's 5 frames; this is the velocity at its
    end)."""
    return next_states[..., CHEETAH_VELOCITY] - CHEETAH_CTRL_COST * (actions * actions).sum(-1)


def ant_reward(states: Tensor, actions: Tensor, next_states: Tensor) -> Tensor:
    """Ant-v5's reward as a function of its observations (without contact forces: :mod:`fastadapt.rl.ant`)::

        r = v_x(s') + 1[healthy(s')] - 0.5 |a|^2,     healthy: s' finite and 0.2 <= z(s') <= 1

    ``v_x`` the torso's forward velocity after the step (the environment uses its displacement over the step's 5
    frames divided by the step's 0.05 s; this is the velocity at the step's end), ``z`` the torso's height. Ant-v5's
    contact cost (``5e-4 |clipped contact forces|^2``) is left out: the observation carries no contact forces.

    Args:
        states, next_states: ``[..., 27]`` observations; actions: ``[..., 8]``.

    Returns:
        ``[...]`` rewards.
    """
    z = next_states[..., ANT_HEIGHT]
    healthy = torch.isfinite(next_states).all(-1) & (z >= ANT_HEALTHY_Z[0]) & (z <= ANT_HEALTHY_Z[1])
    return (
        next_states[..., ANT_VELOCITY]
        + ANT_HEALTHY_REWARD * healthy.to(next_states.dtype)
        - ANT_CTRL_COST * (actions * actions).sum(-1)
    )


# the planner's reward of each MuJoCo family, by the family's name (EnvFamily.name): see reward_for
FAMILY_REWARDS: dict[str, RewardFn] = {
    "cheetah-crippled": cheetah_reward,
    "cheetah-body": cheetah_reward,
    "ant-crippled": ant_reward,
}


def reward_for(family: object) -> RewardFn:
    """The planner's reward (``reward_fn`` of :func:`plan` and :func:`fastadapt.rl.model_based.control_episode`) of a
    task family, an :class:`~fastadapt.rl.EnvFamily` or its name (:data:`FAMILY_REWARDS`); a one-line error for a
    family without one."""
    name = family if isinstance(family, str) else getattr(family, "name", family)
    reward = FAMILY_REWARDS.get(name) if isinstance(name, str) else None
    if reward is None:
        raise ConfigError(
            f"no planner reward for the task family {name!r}; the families with one: {', '.join(FAMILY_REWARDS)}"
        )
    return reward


def angle_normalize(x: Tensor) -> Tensor:
    """An angle in ``[-pi, pi)``."""
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


def pendulum_step(states: Tensor, actions: Tensor, mass: float, length: float) -> Tensor:
    """Pendulum-v1's dynamics on ``states [N, 2]`` = (angle, angular velocity) and torques ``actions [N, 1]``
    (clipped to +-2), for a pendulum of ``mass`` and ``length``: the environment's own update, batched."""
    p = PENDULUM
    th, thdot = states[..., 0], states[..., 1]
    u = actions[..., 0].clamp(-p["max_torque"], p["max_torque"])
    acc = 3 * p["g"] / (2 * length) * torch.sin(th) + 3.0 / (mass * length**2) * u
    new_thdot = (thdot + acc * p["dt"]).clamp(-p["max_speed"], p["max_speed"])
    return torch.stack([th + new_thdot * p["dt"], new_thdot], -1)


def pendulum_reward(states: Tensor, actions: Tensor, next_states: Tensor) -> Tensor:
    """Pendulum-v1's reward of a step from ``states`` (angle, angular velocity) with torque ``actions``."""
    th, thdot = states[..., 0], states[..., 1]
    u = actions[..., 0].clamp(-PENDULUM["max_torque"], PENDULUM["max_torque"])
    return -(angle_normalize(th) ** 2 + 0.1 * thdot**2 + 0.001 * u**2)


def pendulum_state(env: object, obs: object) -> Tensor:
    """Pendulum-v1's state (angle, angular velocity) read from the environment, float64: the planner's state for
    :func:`pendulum_step` (``state_of`` of :func:`fastadapt.rl.model_based.control_episode`)."""
    return torch.as_tensor(env.unwrapped.state, dtype=torch.float64).clone()  # type: ignore[attr-defined]
