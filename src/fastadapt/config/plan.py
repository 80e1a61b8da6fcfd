"""The whole run's time, estimated up front from measured timings, and a refusal of a plan far beyond its training.

The memory preflight (:mod:`fastadapt.config.preflight`) refuses one value too big to allocate; this refuses a
plan whose products are too long (``eval.val_episodes`` x validations, ``eval.test_episodes`` x settings,
``optim.steps`` x a step). The timings come from a short probe on the real model and data
(:func:`fastadapt.training.commands.probe_timings`); the formulas are on :func:`estimate_plan` and the bounds on
:func:`plan_refusal`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fastadapt.config import Config
from fastadapt.core.errors import ConfigError

# The bounds of a plan (fastadapt train refuses beyond them unless --force):
EVAL_RATIO = 10.0  # validation + testing may take up to 10 times the training's time ...
EVAL_FLOOR_S = 5 * 60.0  # ... or 5 minutes, whichever is more (a short training may still be tested properly)
TOTAL_BOUND_S = 7 * 24 * 3600.0  # and the whole run at most a week (beyond it, a typo such as optim.steps=10**8)


@dataclass(frozen=True)
class Timings:
    """What the probe measured, in seconds (one process)."""

    step_s: float  # one training step: this process's tasks of the meta-batch, forward and backward
    val_episode_s: float  # one validation episode (0 when the run does not validate)
    test_episode_s: tuple[float, ...]  # one test episode of each test setting, in order
    probe_s: float  # the probe's own wall time


@dataclass(frozen=True)
class Plan:
    """The estimate of a whole run (see :func:`estimate_plan`), in seconds."""

    steps: int  # training steps expected (optim.steps, fewer when optim.max_minutes ends the run first)
    validations: int  # validations expected
    val_episodes: int  # eval.val_episodes
    test_settings: int  # test settings (1 + len(eval.test_settings))
    test_episodes: int  # eval.test_episodes
    train_s: float
    val_s: float
    test_s: float
    probe_s: float

    @property
    def total_s(self) -> float:
        return self.train_s + self.val_s + self.test_s

    def summary(self) -> str:
        """``plan: ~12 min training (600 steps), ~3 min validation (120 x 200 episodes), ~1 min test
        (1 x 1000 episodes); estimate from a 1.2 s probe``."""
        parts = [f"~{duration(self.train_s)} training ({self.steps} steps)"]
        if self.validations:
            parts.append(f"~{duration(self.val_s)} validation ({self.validations} x {self.val_episodes} episodes)")
        if self.test_episodes:
            parts.append(f"~{duration(self.test_s)} test ({self.test_settings} x {self.test_episodes} episodes)")
        return f"plan: {', '.join(parts)}; estimate from a {self.probe_s:.1f} s probe"


def duration(seconds: float) -> str:
    """``40 s``, ``12 min``, ``3.5 h``, ``12 days``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def count(n: float) -> str:
    """``20000``, ``2.4M``, ``1.8G``."""
    if n >= 1e9:
        return f"{n / 1e9:.1f}G"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    return f"{n:.0f}"


def plural(n: int) -> str:
    return "" if n == 1 else "s"


def estimate_plan(cfg: Config, t: Timings, validating: bool, world: int = 1) -> Plan:
    """The whole run's time from the probe's timings ``t``::

        one val      = val_episodes * val_episode_s / world
        steps        = optim.steps, or fewer when optim.max_minutes (B seconds) ends the run first: the loop
                       stops after the first step that ends past B, validations counted in, so with
                       n = floor(B / (val_every * step_s + one val)) blocks of val_every steps and a validation,
                       steps = n * val_every + min(val_every, floor((B - n * block) / step_s) + 1)
        validations  = ceil(steps / val_every)  (every val_every steps and at the last), 0 without validation
        training     = steps * step_s
        validation   = validations * one val
        test         = test_episodes * sum over test settings of test_episode_s / world

    ``validating``: the run has a validation source and ``eval.val_every > 0``. Under ``torchrun``
    (``world`` processes) evaluation episodes are split across processes; ``step_s`` is one process's share.
    A resumed run is estimated as a whole run (an overestimate).
    """
    e = cfg.eval
    val_every = e.val_every if validating and e.val_every else 0
    one_val = e.val_episodes * t.val_episode_s / world if val_every else 0.0
    steps = cfg.optim.steps
    if cfg.optim.max_minutes and t.step_s > 0:
        budget, every = 60 * cfg.optim.max_minutes, val_every or steps
        block = every * t.step_s + one_val
        n = math.floor(budget / block)
        steps = min(steps, n * every + min(every, math.floor((budget - n * block) / t.step_s) + 1))
    validations = math.ceil(steps / val_every) if val_every else 0
    return Plan(
        steps=steps,
        validations=validations,
        val_episodes=e.val_episodes,
        test_settings=len(t.test_episode_s),
        test_episodes=e.test_episodes,
        train_s=steps * t.step_s,
        val_s=validations * one_val,
        test_s=e.test_episodes * sum(t.test_episode_s) / world,
        probe_s=t.probe_s,
    )


def plan_refusal(cfg: Config, plan: Plan) -> str | None:
    """Why ``plan`` is beyond its bounds, in one line naming the product to shrink; None when it is within them.

    The bounds: validation + test at most ``max(EVAL_RATIO * training, EVAL_FLOOR_S)``, and the whole run at
    most ``TOTAL_BOUND_S`` (the constants above).
    """
    evaluation = plan.val_s + plan.test_s
    if evaluation > max(EVAL_RATIO * plan.train_s, EVAL_FLOOR_S):
        against = f"against ~{duration(plan.train_s)} of training"
        if plan.val_s >= plan.test_s:
            episodes = plan.validations * plan.val_episodes
            return (
                f"eval.val_episodes={plan.val_episodes} x {plan.validations} validation{plural(plan.validations)} = "
                f"{count(episodes)} "
                f"episodes, ~{duration(plan.val_s)} {against}; lower eval.val_episodes or raise eval.val_every, "
                f"or pass --force"
            )
        episodes = plan.test_settings * plan.test_episodes
        return (
            f"eval.test_episodes={plan.test_episodes} x {plan.test_settings} test setting{plural(plan.test_settings)} "
            f"= {count(episodes)} "
            f"episodes, ~{duration(plan.test_s)} {against}; lower eval.test_episodes (or eval.test_settings), "
            f"or pass --force"
        )
    if plan.total_s > TOTAL_BOUND_S:
        return (
            f"optim.steps={plan.steps} x ~{plan.train_s / max(plan.steps, 1):.2g} s a step: the run would take "
            f"~{duration(plan.total_s)}, more than {duration(TOTAL_BOUND_S)}; lower optim.steps or set "
            f"optim.max_minutes, or pass --force"
        )
    return None


def check_plan(cfg: Config, plan: Plan, force: bool = False) -> Plan:
    """``plan``, or a one-line :class:`ConfigError` (:func:`plan_refusal`) when it is beyond its bounds and not
    ``force``."""
    why = plan_refusal(cfg, plan)
    if why is not None and not force:
        raise ConfigError(why)
    return plan
