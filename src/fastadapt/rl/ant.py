"""The ant with a crippled leg (Nagabandi et al. 2019, "Learning to Adapt in Dynamic, Real-World Environments
through Meta-Reinforcement Learning", ICLR), on Gymnasium's Ant-v5, as a task family of :func:`fastadapt.rl.task_family`
and the registered task source ``ant-crippled``; built from the half-cheetah's pieces
(:func:`fastadapt.rl.cheetah.crippled_family`, :class:`fastadapt.rl.cheetah_body.ChangedBody`). MuJoCo is the extra
``pip install fastadapt[mujoco]``, imported on first use; its absence is a one-line error."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastadapt.rl.cheetah import crippled_family, crippled_options, require_mujoco
from fastadapt.rl.envs import EnvFamily, EnvTaskSource

ANT_HORIZON = 200  # steps per episode (the environment's own limit is 1000)
# leg i -> its actuators (hip_k, ankle_k with k = i + 1 in Ant-v5's ant.xml; the motors are listed hip_4, ankle_4,
# hip_1, ankle_1, hip_2, ankle_2, hip_3, ankle_3). The hips sit at (x, y) = (0.2, 0.2), (-0.2, 0.2), (-0.2, -0.2),
# (0.2, -0.2) from the torso; with +x the rewarded direction: front left, back left, back right, front right (the
# XML's body names front_left_leg, front_right_leg, back_leg, right_back_leg follow another orientation)
ANT_LEGS = ((2, 3), (4, 5), (6, 7), (0, 1))
ANT_GAIN = (0.0, 0.0)  # the failed leg's remaining gain: disabled
ANT_SWITCH = 0.5  # the change happens at this fraction of the horizon (like the half-cheetah's)
# Ant-v5 set up for random-action data and planning: no early end when the torso leaves [0.2, 1] m (an episode runs
# its horizon), and the observation without contact forces: qpos[2:] (13) + qvel (14) = 27 values
ANT_ENV_ARGS = {"terminate_when_unhealthy": False, "include_cfrc_ext_in_observation": False}
ANT_OPTIONS = {
    "legs": list(range(len(ANT_LEGS))),
    "gain": list(ANT_GAIN),
    "switch": ANT_SWITCH,
    "horizon": ANT_HORIZON,
}


def make_ant_body(horizon: int, **ant_args: Any) -> Any:
    """A fresh Ant-v5 (:data:`ANT_ENV_ARGS`, updated by ``ant_args``: any argument of Gymnasium's ``AntEnv``, e.g.
    ``contact_cost_weight=0``) whose legs a task can cripple (:class:`~fastadapt.rl.cheetah_body.ChangedBody` with
    the part ``leg``, :data:`ANT_LEGS`), under a ``horizon``-step time limit."""
    require_mujoco()
    from gymnasium.envs.mujoco.ant_v5 import AntEnv

    from fastadapt.rl.cheetah_body import make_body

    return make_body(AntEnv(**{**ANT_ENV_ARGS, **ant_args}), horizon, ANT_LEGS, "leg")


def ant_crippled_family(
    legs: Sequence[int] = tuple(range(len(ANT_LEGS))),
    gain: tuple[float, float] = ANT_GAIN,
    switch: float = ANT_SWITCH,
    horizon: int = ANT_HORIZON,
) -> EnvFamily:
    """Ant-v5 (observation [27]: qpos[2:] + qvel, action [8] in [-1, 1]; no early termination, no contact forces) in
    which one leg per task (uniform of ``legs``, 0..3 as in :data:`ANT_LEGS`) keeps a fraction of its two
    actuators' gear (uniform in ``gain``; ``(0, 0)``: disabled) from step ``round(switch * horizon)`` on
    (``switch = 0``: from the start). A task is ``(leg, gain, switch_step)``; the environment's reward is Ant-v5's
    (forward velocity + 1 while healthy - 0.5 |a|^2 - 5e-4 |contact forces|^2)."""
    return crippled_family(make_ant_body, len(ANT_LEGS), "leg", legs, gain, switch, horizon, "ant-crippled")


def ant_family_from_options(options: dict[str, Any], source: str) -> EnvFamily:
    """:func:`ant_crippled_family` from ``data.options`` (``legs``, ``gain``, ``switch``, ``horizon``; unknown keys
    and bad values: one-line errors)."""
    return ant_crippled_family(*crippled_options(options, ANT_OPTIONS, "legs", source))


def ant_crippled(request: Any) -> EnvTaskSource:
    """Registered as ``data.dataset = "ant-crippled"``: Ant-v5 with one leg disabled (or weakened) half-way through
    the episode (``data.options``: ``legs = [0, 1, 2, 3]``, ``gain = [0, 0]``, ``switch = 0.5``, ``horizon = 200``)."""
    family = ant_family_from_options(dict(request.options), "ant-crippled")
    return EnvTaskSource(family, request.shots, request.queries, request.seed)
