"""Acting with a learnt dynamics model that adapts while it acts (Nagabandi et al. 2019, GrBAL): the model's online
update (:class:`OnlineDynamics`), one episode of model-predictive control in a task's environment
(:func:`control_episode`), and what is read off the rewards (:func:`return_after`, :func:`recovery_steps`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fastadapt.core.errors import ConfigError
from fastadapt.data.sampler import _mix
from fastadapt.rl.envs import EnvFamily
from fastadapt.rl.mpc import RewardFn, cheetah_reward, plan
from fastadapt.rl.transitions import Normalizer

MODES = ("fixed", "meta", "finetune")


class OnlineDynamics:
    """A dynamics model (an algorithm of the library over a regression network, trained on
    :class:`~fastadapt.rl.transitions.TransitionWindows`) that adapts on the transitions it sees while acting:

    * ``"meta"``: at every step, ``algorithm.adapt`` on the last ``window`` transitions, from the meta-learnt
      weights (GrBAL's test-time rule: its predictor's ``"window"`` policy; for ReBAL, the GRU reading them from
      ``h = 0``);
    * ``"finetune"``: at every step, ``steps`` gradient steps from the current weights on the last ``window``
      transitions (online fine-tuning of a model trained on all tasks: the predictor's ``"continue"`` policy);
    * ``"fixed"``: the trained weights, never changed.

    Before the first transition every mode predicts with the trained weights. ``predict(states, actions)`` is the
    ``model_fn`` of :func:`~fastadapt.rl.mpc.plan`. The algorithm module is only read.
    """

    def __init__(
        self, algorithm: nn.Module, normalizer: Normalizer, mode: str = "meta", window: int = 16, steps: int = 1
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"mode={mode!r} is invalid; give one of {', '.join(MODES)}")
        if window < 1 or steps < 1:
            raise ConfigError(f"window={window} and steps={steps} must be >= 1")
        self.algorithm, self.normalizer, self.mode, self.window, self.steps = algorithm, normalizer, mode, window, steps
        self.predictor: Any = None

    def predict(self, states: Tensor, actions: Tensor) -> Tensor:
        """Next states ``[N, D]`` of states ``[N, D]`` and actions ``[N, A]``."""
        x = self.normalizer.inputs(states, actions).float()
        with torch.no_grad():
            out = self.predictor(x) if self.predictor is not None else self.algorithm.model(x)
        return self.normalizer.next_state(states, out)

    def observe(self, obs: Tensor, action: Tensor, next_obs: Tensor) -> None:
        """Learn from one transition (after acting on it: test, then train)."""
        if self.mode == "fixed":
            return
        x = self.normalizer.inputs(obs[None], action[None]).float()
        y = self.normalizer.targets(obs[None], next_obs[None]).float()
        if self.predictor is None:
            policy = "window" if self.mode == "meta" else "continue"
            self.predictor = self.algorithm.adapt(x, y).configure(window=self.window, policy=policy, steps=self.steps)
        else:
            self.predictor.update(x, y)


@dataclass(frozen=True)
class ControlRecord:
    """One episode under model-predictive control."""

    rewards: Tensor  # [H] the environment's reward at each step
    adapt_seconds: Tensor  # [H] wall time of the model's update at each step
    plan_seconds: Tensor  # [H] wall time of planning the step's action
    cpu_seconds: (
        Tensor  # [H] this thread's CPU time for the whole step (adaptation + planning): robust to a busy machine
    )
    switch_step: int  # the step at which the task's change happened (0: from the start)

    @property
    def step_seconds(self) -> Tensor:
        """``[H]`` wall time of one control step: adaptation + planning."""
        return self.adapt_seconds + self.plan_seconds


def control_episode(
    family: EnvFamily,
    params: Tensor | list[float],
    seed: int,
    model_fn: Callable[[Tensor, Tensor], Tensor],
    observe: Callable[[Tensor, Tensor, Tensor], None] | None = None,
    *,
    plan_horizon: int = 10,
    candidates: int = 500,
    iterations: int = 1,
    reward_fn: RewardFn = cheetah_reward,
    state_of: Callable[[Any, Any], Tensor] | None = None,
    horizon: int | None = None,
) -> ControlRecord:
    """One episode of ``family``'s task ``params`` (reset with ``seed``), acting at each step with
    :func:`~fastadapt.rl.mpc.plan` over ``model_fn`` and then calling ``observe(state, action, next_state)``.

    ``state_of(env, obs)`` is the planner's state (default: the observation, float64); the planner's candidates
    come from a generator seeded by ``seed``, so an episode is reproducible. ``horizon``: steps (default: the
    family's). The wall time of the update and of the planning of every step are recorded separately, and the
    thread's CPU time of the whole step (what one core spends on it, whatever else runs beside it).
    """
    steps = horizon or family.horizon
    env = family.make(params)
    low, high = (
        torch.tensor(family.action_low, dtype=torch.float64),
        torch.tensor(family.action_high, dtype=torch.float64),
    )
    read = state_of or (lambda _env, obs: torch.as_tensor(np.asarray(obs), dtype=torch.float64))
    gen = torch.Generator().manual_seed(_mix(seed, 7) & 0xFFFFFFFF)
    rewards = torch.zeros(steps, dtype=torch.float64)
    adapt_s, plan_s, cpu_s = torch.zeros(steps), torch.zeros(steps), torch.zeros(steps)
    try:
        obs, _ = env.reset(seed=int(seed) & 0xFFFFFFFF)
        state = read(env, obs)
        for t in range(steps):
            c0, t0 = time.thread_time(), time.perf_counter()
            action = plan(
                model_fn, state, plan_horizon, candidates, reward_fn=reward_fn, low=low, high=high, generator=gen,
                iterations=iterations,
            )  # fmt: skip
            plan_s[t], c1 = time.perf_counter() - t0, time.thread_time()
            obs, reward, terminated, truncated, _ = env.step(action.numpy().astype(np.float32))
            rewards[t] = float(reward)
            next_state = read(env, obs)
            c2, t0 = time.thread_time(), time.perf_counter()
            if observe is not None:
                observe(state, action, next_state)
            adapt_s[t], cpu_s[t] = time.perf_counter() - t0, time.thread_time() - c2 + c1 - c0
            state = next_state
            if terminated or truncated:
                rewards, adapt_s, plan_s, cpu_s = rewards[: t + 1], adapt_s[: t + 1], plan_s[: t + 1], cpu_s[: t + 1]
                break
    finally:
        env.close()
    switch = int(round(float(getattr(env.unwrapped, "switch_step", 0.0))))
    return ControlRecord(rewards, adapt_s, plan_s, cpu_s, switch)


def return_after(rewards: Tensor, switch_step: int) -> float:
    """The return collected from the change on (``rewards[switch_step:]``)."""
    return float(rewards[switch_step:].sum())


def recovery_steps(rewards: Tensor, switch_step: int, target: float, span: int = 10) -> int:
    """Steps after the change until the ``span``-step moving average of ``rewards`` first reaches ``target`` (e.g.
    90 % of the episode's mean reward before the change), counted to the end of that span; ``len(rewards) -
    switch_step`` when it never does."""
    after = rewards[switch_step:]
    if after.numel() < span:
        return int(after.numel())
    hits = (after.unfold(0, span, 1).mean(-1) >= target).nonzero()
    return int(hits[0]) + span if hits.numel() else int(after.numel())
