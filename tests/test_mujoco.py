"""Half-cheetah dynamics families on MuJoCo, transition windows for dynamics models, the model-predictive planner,
and acting with a model that adapts online (GrBAL). The tests that need MuJoCo skip without it, naming
``pip install "mujoco==3.3.7" "gymnasium[mujoco]"`` (they fail instead under FASTADAPT_REQUIRE_SYSTEM_PACKAGES=1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fastadapt
from fastadapt.config.build import SourceRequest
from fastadapt.core.registry import TASK_SOURCES
from fastadapt.rl.mpc import pendulum_reward, pendulum_step, plan, sequence_returns
from helpers import needs_package

mujoco = needs_package("mujoco")


def request(name_options: dict, part: str = "train", shots: int = 2, queries: int = 2, seed: int = 0) -> SourceRequest:
    return SourceRequest(part=part, ways=1, shots=shots, queries=queries, seed=seed, options=name_options, role=part)


# --- the planner (no MuJoCo) ------------------------------------------------------------------------


def test_sequence_returns_equal_a_loop_over_each_candidate():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 3, generator=g, dtype=torch.float64) * 0.3

    def model(s, a):
        return torch.tanh(s @ w) + a.sum(-1, keepdim=True)

    def reward(s, a, s2):
        return -(s2 * s2).sum(-1) - 0.1 * (a * a).sum(-1)

    state = torch.randn(3, generator=g, dtype=torch.float64)
    actions = torch.rand(7, 4, 2, generator=g, dtype=torch.float64) * 2 - 1
    got = sequence_returns(model, state, actions, reward, discount=0.9)
    for i in range(7):
        s, total = state.clone(), 0.0
        for h in range(4):
            nxt = torch.tanh(s @ w) + actions[i, h].sum()
            total += 0.9**h * float(-(nxt * nxt).sum() - 0.1 * (actions[i, h] ** 2).sum())
            s = nxt
        assert math.isclose(float(got[i]), total, rel_tol=1e-12)


def test_random_shooting_returns_the_first_action_of_the_best_candidate():
    low, high = -torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    goal = torch.tensor([0.3, -0.6], dtype=torch.float64)

    def model(s, a):
        return s + a

    def reward(s, a, s2):
        return -((s2 - goal) ** 2).sum(-1)

    state = torch.zeros(2, dtype=torch.float64)
    action = plan(model, state, 3, 64, reward_fn=reward, low=low, high=high, generator=torch.Generator().manual_seed(5))
    u = torch.rand(64, 3, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    candidates = low + (high - low) * u  # the same draws, scored by hand
    best = int(sequence_returns(model, state, candidates, reward).argmax())
    assert torch.equal(action, candidates[best, 0])


def test_cem_plans_closer_to_the_optimum_than_one_round_of_random_shooting():
    low, high = -torch.ones(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)

    def model(s, a):
        return s + a

    def reward(s, a, s2):
        return -((s2 - 0.37) ** 2).sum(-1)  # one step: the best action is 0.37

    state = torch.zeros(1, dtype=torch.float64)
    errors = {}
    for iterations in (1, 5):
        errs = []
        for seed in range(10):
            gen = torch.Generator().manual_seed(seed)
            a = plan(model, state, 1, 20, reward_fn=reward, low=low, high=high, generator=gen, iterations=iterations)
            errs.append(abs(float(a) - 0.37))
        errors[iterations] = sum(errs) / len(errs)
    assert errors[5] < errors[1] / 3


def test_plan_refuses_bad_settings_in_one_line():
    with pytest.raises(fastadapt.ConfigError, match="candidates=0"):
        plan(
            lambda s, a: s,
            torch.zeros(1),
            2,
            0,
            reward_fn=lambda s, a, n: s[:, 0],
            low=-torch.ones(1),
            high=torch.ones(1),
        )


def test_pendulum_step_is_pendulum_v1s_own_dynamics():
    gym = pytest.importorskip("gymnasium")
    for mass, length in ((1.0, 1.0), (1.7, 0.6)):
        env = gym.make("Pendulum-v1").unwrapped
        env.m, env.l = mass, length
        env.reset(seed=3)
        rng = np.random.default_rng(0)
        for _ in range(50):
            state = torch.tensor(env.state, dtype=torch.float64)[None]
            u = rng.uniform(-3, 3, size=1)  # beyond the torque limit too: both clip
            _, reward, *_ = env.step(u.astype(np.float32))
            action = torch.tensor(u, dtype=torch.float32).double()[None]
            predicted = pendulum_step(state, action, mass, length)[0]
            assert torch.allclose(predicted, torch.tensor(env.state, dtype=torch.float64), atol=1e-5)
            assert math.isclose(float(pendulum_reward(state, action, None)), float(reward), abs_tol=1e-4)


# --- the half-cheetah families ------------------------------------------------------------------------


@mujoco
def test_crippled_family_rollouts_are_the_same_for_the_same_seed_and_differ_for_another():
    from fastadapt.rl.cheetah import cheetah_crippled_family

    family = cheetah_crippled_family(horizon=30)
    source = fastadapt.rl.EnvTaskSource(family, 2, 2, seed=4)
    tasks = source.sample_tasks(0, 0, 2)
    assert tasks.observation_shape == (17,) and tasks.action_size == 6
    assert torch.equal(tasks.params, source.sample_tasks(0, 0, 2).params)
    assert tasks.params[:, 2].eq(15).all()  # the joint fails half-way through

    def policy(obs):
        return torch.zeros(*obs.shape[:-1], 6), torch.zeros(obs.shape[0], 6)

    a = fastadapt.rl.rollout(tasks, policy, 2)
    b = fastadapt.rl.rollout(tasks, policy, 2)
    c = fastadapt.rl.rollout(tasks, policy, 2, phase=1)
    assert torch.equal(a.obs, b.obs) and torch.equal(a.rewards, b.rewards)
    assert not torch.equal(a.obs, c.obs)


@mujoco
def test_the_joint_keeps_its_gear_until_the_switch_then_its_gain_and_reset_restores_it():
    from fastadapt.rl.cheetah import cheetah_crippled_family

    family = cheetah_crippled_family(horizon=20)
    env = family.make([2.0, 0.25, 5.0])  # joint bfoot, a quarter of its gain from step 5
    model = env.unwrapped.model
    default = model.actuator_gear[:, 0].copy()
    env.reset(seed=0)
    for _ in range(5):
        env.step(np.zeros(6, dtype=np.float32))
        assert np.array_equal(model.actuator_gear[:, 0], default)
    env.step(np.zeros(6, dtype=np.float32))
    expected = default.copy()
    expected[2] *= 0.25
    assert np.array_equal(model.actuator_gear[:, 0], expected)
    env.reset(seed=0)
    assert np.array_equal(model.actuator_gear[:, 0], default)


@mujoco
def test_a_disabled_joint_ignores_its_action_and_an_intact_one_does_not():
    from fastadapt.rl.cheetah import cheetah_crippled_family

    family = cheetah_crippled_family(horizon=20)

    def final_obs(joint_action: float, params: list[float]) -> np.ndarray:
        env = family.make(params)
        obs, _ = env.reset(seed=1)
        for _ in range(10):
            action = np.full(6, 0.3, dtype=np.float32)
            action[4] = joint_action
            obs, *_ = env.step(action)
        return obs

    disabled = [4.0, 0.0, 0.0]  # fshin, no gain, from the start
    assert np.array_equal(final_obs(1.0, disabled), final_obs(-1.0, disabled))
    intact = [1.0, 0.0, 0.0]  # another joint disabled: fshin still acts
    assert not np.allclose(final_obs(1.0, intact), final_obs(-1.0, intact))


@mujoco
def test_body_family_scales_masses_inertias_and_friction():
    from fastadapt.rl.cheetah import cheetah_body_family

    family = cheetah_body_family(mass=(0.5, 2.0), friction=(0.3, 1.2), horizon=10)
    params = family.draw(7)
    assert 0.5 <= params[0] <= 2.0 and 0.3 <= params[1] <= 1.2
    env = family.make(params)
    wrapper = env.env  # CheetahBody under the time limit
    env.reset(seed=0)
    model = env.unwrapped.model
    assert np.allclose(model.body_mass, wrapper.defaults["mass"] * params[0])
    assert np.allclose(model.body_inertia, wrapper.defaults["inertia"] * params[0])
    assert np.allclose(model.geom_friction[:, 0], wrapper.defaults["friction"] * params[1])


@mujoco
def test_registered_sources_build_and_refuse_bad_options_in_one_line():
    source = TASK_SOURCES.get("cheetah-crippled")(request({"joints": [0, 3], "horizon": 40}))
    tasks = source.sample_tasks(0, 0, 8)
    assert set(tasks.params[:, 0].tolist()) <= {0.0, 3.0} and tasks.params[:, 2].eq(20).all()
    body = TASK_SOURCES.get("cheetah-body")(request({}))
    assert body.family.param_names == ("mass_scale", "friction_scale")
    for options, message in (
        ({"joints": [6]}, "joints"),
        ({"gain": [0.5, 0.2]}, "gain"),
        ({"switch": 1.0}, "switch"),
        ({"wheels": 4}, "wheels is not an option"),
    ):
        with pytest.raises(fastadapt.ConfigError, match=message) as info:
            TASK_SOURCES.get("cheetah-crippled")(request(options))
        assert "\n" not in str(info.value)


@mujoco
def test_transition_windows_are_consecutive_standardised_transitions_and_pure():
    from fastadapt.rl.transitions import Normalizer

    source = TASK_SOURCES.get("cheetah-transitions")(request({"trajectories": 3, "horizon": 30}, shots=4, queries=3))
    data, norm = source.data, source.normalizer
    assert data.obs.shape == (3, 29, 17) and data.actions.shape == (3, 29, 6)
    assert torch.equal(data.obs[:, 1:], data.next_obs[:, :-1])  # one trajectory, step after step
    assert data.actions.abs().max() <= 1.0
    batch = source.sample_tasks(2, 0, 5)
    again = source.sample_tasks(2, 0, 5)
    assert torch.equal(batch.support_x, again.support_x) and torch.equal(batch.query_y, again.query_y)
    assert batch.support_x.shape == (5, 4, 23) and batch.query_y.shape == (5, 3, 17)
    x = norm.inputs(data.obs, data.actions).float()
    for t in range(5):  # the query follows the support in one trajectory
        joined = torch.cat([batch.support_x[t], batch.query_x[t]])
        hits = [(r, s) for r in range(3) for s in range(29 - 6) if torch.equal(x[r, s : s + 7], joined)]
        assert hits, "a window is not 7 consecutive transitions of one trajectory"
    back = norm.next_state(data.obs, norm.targets(data.obs, data.next_obs))
    assert torch.allclose(back, data.next_obs, atol=1e-9)
    fitted = Normalizer.fit(data)
    assert torch.allclose(
        fitted.inputs(data.obs, data.actions).flatten(0, 1).mean(0), torch.zeros(23, dtype=torch.float64), atol=1e-9
    )


# --- acting with an adapting model --------------------------------------------------------------------


@mujoco
def test_grbal_trains_through_the_loop_and_adapts_online_from_the_meta_learnt_weights(tmp_path):
    from fastadapt.rl.cheetah import cheetah_crippled_family
    from fastadapt.rl.model_based import OnlineDynamics, control_episode, recovery_steps, return_after

    cfg = fastadapt.load_config(
        "grbal-cheetah",
        [
            'data.options={family="crippled", trajectories=2, horizon=30}',
            "data.meta_batch=2",
            "data.shots=4",
            "data.queries=4",
            "model.layers=[16]",
            "optim.steps=2",
            "eval.val_every=0",
            "eval.test_episodes=4",
            "run.progress=false",
            "run.threads=1",
            f"run.out={tmp_path / 'grbal'}",
        ],
    )
    fastadapt.train(cfg)
    run = fastadapt.load_run(tmp_path / "grbal")
    source = next(iter(fastadapt.config.build.task_sources(run.config, tests_only=True).tests.values()))
    family = cheetah_crippled_family(horizon=12)
    params = [1.0, 0.0, 6.0]
    seen: list = []
    dyn = OnlineDynamics(run.algorithm, source.normalizer, "meta", window=4)

    def observe(s, a, s2):
        seen.append((s, a, s2))
        dyn.observe(s, a, s2)

    rec = control_episode(family, params, 3, dyn.predict, observe, plan_horizon=2, candidates=8)
    assert rec.rewards.shape == (12,) and rec.switch_step == 6
    last = seen[-4:]
    x = torch.stack([source.normalizer.inputs(s, a) for s, a, _ in last]).float()
    y = torch.stack([source.normalizer.targets(s, s2) for s, _, s2 in last]).float()
    reference = run.algorithm.adapt(x, y)  # GrBAL's rule: from theta on the last M transitions
    probe = torch.randn(5, 23)
    assert torch.allclose(dyn.predictor(probe), reference(probe), atol=1e-6)
    again = OnlineDynamics(run.algorithm, source.normalizer, "meta", window=4)
    rec2 = control_episode(family, params, 3, again.predict, again.observe, plan_horizon=2, candidates=8)
    assert torch.equal(rec.rewards, rec2.rewards)  # same seed, same episode
    fixed = OnlineDynamics(run.algorithm, source.normalizer, "fixed")
    fixed.observe(*seen[0])
    s, a, _ = seen[0]
    expected = source.normalizer.next_state(
        s[None], run.algorithm.model(source.normalizer.inputs(s[None], a[None]).float())
    )
    assert torch.allclose(fixed.predict(s[None], a[None]), expected)
    assert return_after(rec.rewards, 6) == pytest.approx(float(rec.rewards[6:].sum()))
    assert 0 < recovery_steps(rec.rewards, 6, -1e9, span=3) == 3
    assert recovery_steps(rec.rewards, 6, 1e9, span=3) == 6


def test_recovery_counts_steps_until_the_moving_average_reaches_the_target():
    from fastadapt.rl.model_based import recovery_steps

    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0], dtype=torch.float64)
    assert recovery_steps(rewards, 2, 0.9, span=2) == 6  # the mean of steps 6, 7 (after 2: indices 4, 5) is 1
    assert recovery_steps(rewards, 2, 2.0, span=2) == 7  # never: every step after the change
