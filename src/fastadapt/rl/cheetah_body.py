"""The body of a Gymnasium MuJoCo locomotion environment changed per task (:class:`ChangedBody`): one part's actuator
gains (a half-cheetah's joint, an ant's leg), switched at a step of the episode, and the masses and friction. Imports
Gymnasium's MuJoCo environments: reached only through :mod:`fastadapt.rl.cheetah` and :mod:`fastadapt.rl.ant`, which
check that they are installed first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

# the task's attributes on env.unwrapped and their defaults (the unchanged body), besides the part (below)
BODY_DEFAULTS = {
    "gain": 1.0,  # the fraction of its gear the part's actuators keep after the switch (0: disabled)
    "switch_step": 0.0,  # the step of the episode at which the gain changes (0: from the first step)
    "mass_scale": 1.0,  # every body's mass and inertia times this
    "friction_scale": 1.0,  # every geom's sliding friction times this
}
NO_PART = -1.0  # the part attribute's default: no part changes


def set_body(model: Any, defaults: dict[str, np.ndarray], mass_scale: float, friction_scale: float) -> None:
    """Scale the masses, inertias and sliding frictions of a MuJoCo ``model`` from their ``defaults``, in place."""
    model.body_mass[:] = defaults["mass"] * mass_scale
    model.body_inertia[:] = defaults["inertia"] * mass_scale
    model.geom_friction[:, 0] = defaults["friction"] * friction_scale


class ChangedBody(gymnasium.Wrapper):
    """A MuJoCo environment whose body a task changes. ``parts[i]`` lists the actuator indices of part ``i``
    (HalfCheetah: each joint alone; Ant: a leg's hip and ankle); ``part`` names the task's attribute that picks one
    (``"joint"``, ``"leg"``; -1: none). The task's attributes (``part`` and :data:`BODY_DEFAULTS`) are set on
    ``env.unwrapped`` (what :meth:`fastadapt.rl.EnvFamily.make` does) before ``reset``; ``reset`` applies the masses
    and frictions and restores every gear, and the step numbered ``switch_step`` (counted from the reset) first sets
    the gears of the chosen part's actuators to ``gain`` times their defaults: the part weakens or fails in the
    middle of the episode. Edits ``model.actuator_gear``, ``model.body_mass`` / ``body_inertia`` and
    ``model.geom_friction`` of the environment's own MuJoCo model; never renders.
    """

    def __init__(self, env: Any, parts: Sequence[Sequence[int]] | None = None, part: str = "joint") -> None:
        super().__init__(env)
        base = self.env.unwrapped
        model = base.model
        each = tuple((i,) for i in range(model.nu))
        self.parts = each if parts is None else tuple(tuple(int(i) for i in p) for p in parts)
        self.part = part
        setattr(base, part, NO_PART)
        for name, value in BODY_DEFAULTS.items():
            setattr(base, name, value)
        self.defaults = {
            "gear": model.actuator_gear[:, 0].copy(),
            "mass": model.body_mass.copy(),
            "inertia": model.body_inertia.copy(),
            "friction": model.geom_friction[:, 0].copy(),
        }
        self.steps_taken = 0

    def actuators(self) -> tuple[int, ...]:
        """The actuator indices of the task's part (none for -1); a ``ValueError`` for a part out of range."""
        index = int(round(getattr(self.env.unwrapped, self.part)))
        if index >= len(self.parts):
            name = type(self.env.unwrapped).__name__
            raise ValueError(f"{self.part}={index} is out of range; {name} has {self.part}s 0..{len(self.parts) - 1}")
        return self.parts[index] if index >= 0 else ()

    def _switch(self) -> None:
        base = self.env.unwrapped
        for i in self.actuators():
            base.model.actuator_gear[i, 0] = self.defaults["gear"][i] * float(base.gain)

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


def make_body(env: Any, horizon: int, parts: Sequence[Sequence[int]] | None = None, part: str = "joint") -> Any:
    """``env`` as a :class:`ChangedBody` (``parts``, ``part``: as there) under a ``horizon``-step time limit."""
    return gymnasium.wrappers.TimeLimit(ChangedBody(env, parts, part), max_episode_steps=horizon)


def make_cheetah_body(horizon: int) -> Any:
    """A fresh HalfCheetah-v5 as a :class:`ChangedBody` (a part: one joint) under a ``horizon``-step time limit."""
    return make_body(HalfCheetahEnv(), horizon)
