"""The ant with a crippled leg on MuJoCo (Nagabandi et al. 2019): the family, its registered source, its transitions
for dynamics models and the planner's reward. The tests that need MuJoCo skip without it, naming
``pip install "mujoco==3.3.7" "gymnasium[mujoco]"`` (they fail instead under FASTADAPT_REQUIRE_SYSTEM_PACKAGES=1)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import fastadapt
from fastadapt.config.build import SourceRequest
from fastadapt.core.registry import TASK_SOURCES
from fastadapt.rl.mpc import ant_reward, cheetah_reward, reward_for
from helpers import needs_package

mujoco = needs_package("mujoco")


def request(options: dict, part: str = "train", shots: int = 2, queries: int = 2, seed: int = 0) -> SourceRequest:
    return SourceRequest(part=part, ways=1, shots=shots, queries=queries, seed=seed, options=options, role=part)


def run_actions(env, actions, seed: int = 1) -> np.ndarray:
    """The observations after each of ``actions`` from a reset with ``seed``."""
    env.reset(seed=seed)
    return np.stack([env.step(a.astype(np.float32))[0] for a in actions])


# --- without MuJoCo -------------------------------------------------------------------------------------------


def test_a_missing_mujoco_is_one_line_naming_the_install_command(monkeypatch):
    from fastadapt.rl.ant import ant_crippled_family

    monkeypatch.setitem(sys.modules, "mujoco", None)  # import mujoco now fails as if it were not installed
    with pytest.raises(fastadapt.ConfigError, match='pip install "mujoco==3.3.7"') as info:
        ant_crippled_family(horizon=10)
    assert "\n" not in str(info.value)


def test_the_planner_reward_follows_the_family_by_name():
    assert reward_for("ant-crippled") is ant_reward
    assert reward_for("cheetah-crippled") is cheetah_reward and reward_for("cheetah-body") is cheetah_reward
    with pytest.raises(fastadapt.ConfigError, match="pendulum-dynamics") as info:
        reward_for("pendulum-dynamics")  # its planner works on the true state, not on observations
    assert "\n" not in str(info.value)


def test_ant_reward_pays_the_healthy_bonus_only_between_the_heights():
    s = torch.zeros(4, 27, dtype=torch.float64)
    nxt = s.clone()
    nxt[:, 0] = torch.tensor([0.5, 0.1, 1.2, 0.5], dtype=torch.float64)  # the torso's height
    nxt[:, 13] = torch.tensor([0.3, 0.3, 0.3, 0.3], dtype=torch.float64)  # its forward velocity
    nxt[3, 20] = float("nan")  # a height in range, but a velocity not finite: unhealthy
    a = torch.full((4, 8), 0.5, dtype=torch.float64)  # control cost 0.5 * 8 * 0.25 = 1
    got = ant_reward(s, a, nxt)
    assert torch.allclose(got, torch.tensor([0.3 + 1.0 - 1.0, 0.3 - 1.0, 0.3 - 1.0, 0.3 - 1.0], dtype=torch.float64))


# --- the family -------------------------------------------------------------------------------------------------


@mujoco
def test_ant_rollouts_are_the_same_for_the_same_seed_and_differ_for_another():
    from fastadapt.rl.ant import ant_crippled_family

    family = ant_crippled_family(horizon=20)
    source = fastadapt.rl.EnvTaskSource(family, 2, 2, seed=4)
    tasks = source.sample_tasks(0, 0, 3)
    assert tasks.observation_shape == (27,) and tasks.action_size == 8 and family.name == "ant-crippled"
    assert family.param_names == ("leg", "gain", "switch_step") and reward_for(family) is ant_reward
    assert torch.equal(tasks.params, source.sample_tasks(0, 0, 3).params)
    assert tasks.params[:, 2].eq(10).all() and tasks.params[:, 1].eq(0).all()  # disabled half-way through
    other = fastadapt.rl.EnvTaskSource(family, 2, 2, seed=5).sample_tasks(0, 0, 3)
    assert not torch.equal(tasks.seeds, other.seeds)

    def policy(obs):
        return torch.zeros(*obs.shape[:-1], 8), torch.zeros(obs.shape[0], 8)

    a = fastadapt.rl.rollout(tasks, policy, 2)
    b = fastadapt.rl.rollout(tasks, policy, 2)
    c = fastadapt.rl.rollout(tasks, policy, 2, phase=1)
    d = fastadapt.rl.rollout(other, policy, 2)
    assert torch.equal(a.obs, b.obs) and torch.equal(a.rewards, b.rewards)
    assert not torch.equal(a.obs, c.obs) and not torch.equal(a.obs, d.obs)
    assert a.mask.eq(1).all()  # no early termination: every episode runs its horizon


@mujoco
def test_each_leg_is_its_hip_and_ankle_actuators_where_the_docs_say():
    import mujoco as mj

    from fastadapt.rl.ant import ANT_LEGS, ant_crippled_family

    env = ant_crippled_family(horizon=5).make([0.0, 0.0, 0.0])
    model = env.unwrapped.model
    hips = [(0.2, 0.2), (-0.2, 0.2), (-0.2, -0.2), (0.2, -0.2)]  # front left, back left, back right, front right
    assert sorted(i for leg in ANT_LEGS for i in leg) == list(range(model.nu))
    for leg, actuators in enumerate(ANT_LEGS):
        joints = [mj.mj_id2name(model, mj.mjtObj.mjOBJ_JOINT, model.actuator_trnid[i, 0]) for i in actuators]
        assert joints == [f"hip_{leg + 1}", f"ankle_{leg + 1}"]
        hip_body = model.jnt_bodyid[model.actuator_trnid[actuators[0], 0]]
        assert np.allclose(model.body_pos[hip_body][:2], hips[leg])


@mujoco
def test_the_leg_keeps_its_gear_until_the_switch_then_its_gain_and_reset_restores_it():
    from fastadapt.rl.ant import ant_crippled_family

    env = ant_crippled_family(horizon=20).make([1.0, 0.25, 5.0])  # leg 1 (actuators 4, 5), a quarter, from step 5
    model = env.unwrapped.model
    default = model.actuator_gear[:, 0].copy()
    assert np.all(default > 0)
    env.reset(seed=0)
    for _ in range(5):
        env.step(np.zeros(8, dtype=np.float32))
        assert np.array_equal(model.actuator_gear[:, 0], default)
    env.step(np.zeros(8, dtype=np.float32))
    expected = default.copy()
    expected[[4, 5]] *= 0.25
    assert np.array_equal(model.actuator_gear[:, 0], expected)
    env.reset(seed=0)
    assert np.array_equal(model.actuator_gear[:, 0], default)


@mujoco
@pytest.mark.parametrize("leg", [0, 1, 2, 3])
def test_a_disabled_leg_ignores_its_actions_and_an_intact_one_does_not(leg):
    from fastadapt.rl.ant import ANT_LEGS, ant_crippled_family

    family = ant_crippled_family(horizon=20)
    rng = np.random.default_rng(leg)
    base = rng.uniform(-1, 1, size=(8, 8))

    def final_obs(value: float, disabled: int) -> np.ndarray:
        actions = base.copy()
        actions[:, list(ANT_LEGS[leg])] = value
        return run_actions(family.make([float(disabled), 0.0, 0.0]), actions)[-1]

    assert np.array_equal(final_obs(1.0, leg), final_obs(-1.0, leg))
    other = (leg + 1) % 4  # another leg disabled: this one still acts
    assert not np.allclose(final_obs(1.0, other), final_obs(-1.0, other))


@mujoco
def test_the_observation_is_qpos_without_x_y_then_qvel_and_the_ant_reward_is_the_environments():
    from fastadapt.rl.ant import make_ant_body

    env = make_ant_body(200, contact_cost_weight=0.0)  # the term the planner's reward leaves out, switched off
    data = env.unwrapped.data
    obs, _ = env.reset(seed=3)
    assert np.array_equal(obs, np.concatenate([data.qpos[2:], data.qvel]))
    rng = np.random.default_rng(0)
    rows, velocity = [], []
    for t in range(60):
        if t == 40:  # lift the ant above the healthy range: no healthy reward, and the episode goes on
            qpos, qvel = data.qpos.copy(), data.qvel.copy()
            qpos[2] = 1.5
            env.unwrapped.set_state(qpos, qvel)
            obs = np.concatenate([data.qpos[2:], data.qvel])
        action = np.clip(rng.normal(size=8), -1, 1).astype(np.float32)
        nxt, reward, terminated, truncated, info = env.step(action)
        assert not terminated and not truncated
        assert nxt[13] == data.qvel[0]  # the forward velocity the reward reads
        mine = float(ant_reward(*(torch.as_tensor(np.asarray(v), dtype=torch.float64) for v in (obs, action, nxt))))
        # Ant-v5's forward term is the displacement over the step / dt; ant_reward's the velocity at its end
        rows.append((reward - info["reward_forward"], mine - nxt[13], info["reward_survive"]))
        velocity.append((info["x_velocity"], nxt[13]))
        obs = nxt
    rest = np.array(rows)
    assert np.allclose(rest[:, 0], rest[:, 1], atol=1e-6)  # healthy reward - control cost: the same
    assert set(rest[:, 2]) == {0.0, 1.0}  # both branches of the healthy reward were compared
    v = np.array(velocity)
    assert np.abs(v[:, 0] - v[:, 1]).mean() < 0.5 * v[:, 0].std()  # the end velocity tracks the step's mean


# --- registration and transitions -------------------------------------------------------------------------------


@mujoco
def test_the_registered_source_builds_and_refuses_bad_options_in_one_line():
    source = TASK_SOURCES.get("ant-crippled")(request({"legs": [0, 3], "horizon": 40, "gain": [0.0, 0.5]}))
    tasks = source.sample_tasks(0, 0, 8)
    assert set(tasks.params[:, 0].tolist()) <= {0.0, 3.0} and tasks.params[:, 2].eq(20).all()
    assert ((tasks.params[:, 1] >= 0) & (tasks.params[:, 1] <= 0.5)).all() and tasks.params[:, 1].unique().numel() > 1
    for options, message in (
        ({"legs": [4]}, "legs"),
        ({"legs": 2}, "legs"),
        ({"joints": [0]}, "joints is not an option"),
        ({"gain": [0.5, 0.2]}, "gain"),
        ({"switch": 1.0}, "switch"),
        ({"horizon": 0}, "horizon"),
    ):
        with pytest.raises(fastadapt.ConfigError, match=message) as info:
            TASK_SOURCES.get("ant-crippled")(request(options))
        assert "\n" not in str(info.value)
    with pytest.raises(fastadapt.ConfigError, match="'ant-crippled'") as info:
        TASK_SOURCES.get("cheetah-transitions")(request({"family": "ant"}))
    assert "\n" not in str(info.value)


@mujoco
def test_transition_windows_of_the_ant_family_build():
    options = {"family": "ant-crippled", "trajectories": 2, "horizon": 20, "legs": [2]}
    source = TASK_SOURCES.get("cheetah-transitions")(request(options, shots=3, queries=2))
    data = source.data
    assert data.obs.shape == (2, 19, 27) and data.actions.shape == (2, 19, 8)
    assert torch.equal(data.obs[:, 1:], data.next_obs[:, :-1]) and data.actions.abs().max() <= 1.0
    assert data.params[:, 0].eq(2).all() and data.params[:, 2].eq(10).all()
    batch = source.sample_tasks(1, 0, 4)
    assert batch.support_x.shape == (4, 3, 35) and batch.query_y.shape == (4, 2, 27)
    assert torch.equal(batch.query_x, source.sample_tasks(1, 0, 4).query_x)
    back = source.normalizer.next_state(data.obs, source.normalizer.targets(data.obs, data.next_obs))
    assert torch.allclose(back, data.next_obs, atol=1e-9)
