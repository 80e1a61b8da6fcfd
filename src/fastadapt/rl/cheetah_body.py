"""The body of Gymnasium's HalfCheetah-v5 changed per task (:class:`CheetahBody`): one joint's actuator gain, switched
at a step of the episode, and the masses and friction. Imports Gymnasium's MuJoCo environments: reached only through
:mod:`fastadapt.rl.cheetah`, which checks that they are installed first."""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

# the task's attributes on env.unwrapped and their defaults (the unchanged cheetah)
BODY_DEFAULTS = {
    "joint": -1.0,  # index of the actuator whose gain changes (0..5: bthigh bshin bfoot fthigh fshin ffoot); -1: none
    "gain": 1.0,  # the fraction of its gear the joint keeps after the switch (0: disabled)
    "switch_step": 0.0,  # the step of the episode at which the gain changes (0: from the first step)
    "mass_scale": 1.0,  # every body's mass and inertia times this
    "friction_scale": 1.0,  # every geom's sliding friction times this
}


def set_body(model: Any, defaults: dict[str, np.ndarray], mass_scale: float, friction_scale: float) -> None:
    """Scale the masses, inertias and sliding frictions of a MuJoCo ``model`` from their ``defaults``, in place."""
    model.body_mass[:] = defaults["mass"] * mass_scale
    model.body_inertia[:] = defaults["inertia"] * mass_scale
    model.geom_friction[:, 0] = defaults["friction"] * friction_scale


class CheetahBody(gymnasium.Wrapper):
    """HalfCheetah-v5 (observation [17], action [6] in [-1, 1], reward forward velocity - 0.1 |a|^2) whose body a
    task changes. The task's attributes (:data:`BODY_DEFAULTS`) are set on ``env.unwrapped`` (what
    :meth:`fastadapt.rl.EnvFamily.make` does) before ``reset``; ``reset`` applies the masses and frictions and
    restores every gear, and the step numbered ``switch_step`` (counted from the reset) first sets the gear of
    actuator ``joint`` to ``gain`` times its default: the joint weakens or fails in the middle of the episode.
    Edits ``model.actuator_gear``, ``model.body_mass`` / ``body_inertia`` and ``model.geom_friction`` of the
    environment's own MuJoCo model; never renders.
    """

    def __init__(self, env: Any | None = None) -> None:
        super().__init__(env if env is not None else HalfCheetahEnv())
        base = self.env.unwrapped
        for name, value in BODY_DEFAULTS.items():
            setattr(base, name, value)
        model = base.model
        self.defaults = {
            "gear": model.actuator_gear[:, 0].copy(),
            "mass": model.body_mass.copy(),
            "inertia": model.body_inertia.copy(),
            "friction": model.geom_friction[:, 0].copy(),
        }
        self.steps_taken = 0

    def _joint(self) -> int:
        joint = int(round(self.env.unwrapped.joint))
        if joint >= len(self.defaults["gear"]):
            raise ValueError(
                f"joint={joint} is out of range; HalfCheetah has actuators 0..{len(self.defaults['gear']) - 1}"
            )
        return joint

    def _switch(self) -> None:
        base, joint = self.env.unwrapped, self._joint()
        if joint >= 0:
            base.model.actuator_gear[joint, 0] = self.defaults["gear"][joint] * float(base.gain)

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        base = self.env.unwrapped
        base.model.actuator_gear[:, 0] = self.defaults["gear"]
        set_body(base.model, self.defaults, float(base.mass_scale), float(base.friction_scale))
        self.steps_taken = 0
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        if self.steps_taken == int(round(self.env.unwrapped.switch_step)):
            self._switch()
        self.steps_taken += 1
        return self.env.step(action)


def make_cheetah_body(horizon: int) -> Any:
    """A fresh :class:`CheetahBody` under a ``horizon``-step time limit."""
    return gymnasium.wrappers.TimeLimit(CheetahBody(), max_episode_steps=horizon)
