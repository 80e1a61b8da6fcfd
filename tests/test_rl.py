"""Meta-reinforcement learning: the policy-gradient estimator, the second-order meta-gradient against a
plain float64 autograd loop, seeded environments, the linear baseline, training through the engine, bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastadapt
from fastadapt import cli
from fastadapt.algorithms.maml_rl import MAMLRL, clipped_surrogate, inner_loss
from fastadapt.core.episodes import EnvTasks
from fastadapt.core.errors import ConfigError, DataError
from fastadapt.rl import (
    EnvTaskSource,
    GaussianMLPPolicy,
    fit_linear_baseline,
    nav2d_family,
    pendulum_family,
    rollout,
    task_family,
)
from fastadapt.rl.envs import require_gymnasium
from fastadapt.rl.rollout import Trajectories


class Bandit(gym.Env):
    """One step; reward -(a - centre)^2 (``centre`` is the task parameter); a constant observation."""

    def __init__(self, centre: float = 0.0, reward_scale: float = 1.0):
        self.centre, self.reward_scale = centre, reward_scale
        self.observation_space = gym.spaces.Box(-1, 1, shape=(1,), dtype=np.float64)
        self.action_space = gym.spaces.Box(-100, 100, shape=(1,), dtype=np.float64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1), {}

    def step(self, action):
        return np.zeros(1), self.reward_scale * -float((action[0] - self.centre) ** 2), True, False, {}


class MeanPolicy(nn.Module):
    """``mean = mu`` whatever the observation; ``log_std`` a parameter: the bandit's closed form is in mu and sigma."""

    def __init__(self, mu: float, std: float):
        super().__init__()
        self.mu = nn.Parameter(torch.tensor([mu], dtype=torch.float64))
        self.log_std = nn.Parameter(torch.tensor([math.log(std)], dtype=torch.float64))

    def forward(self, obs):
        return self.mu.expand(obs.shape[0], 1)


def test_policy_gradient_is_unbiased_on_a_bandit():
    """E[r] = -((mu - c)^2 + sigma^2): d/dmu = -2 (mu - c), d/dlog sigma = -2 sigma^2. The estimate from 4000
    sampled actions (fixed seed) must lie within 4 standard errors of the closed form (standard errors from the
    analytic score)."""
    mu, std, c = 0.5, 0.8, -0.3
    family = task_family(Bandit, lambda rng: {"centre": c}, horizon=1, name="bandit")
    tasks = EnvTaskSource(family, shots=1, queries=1, seed=3).sample_tasks(0, 0, 40)
    policy = MeanPolicy(mu, std)
    algo = MAMLRL(policy, discount=1.0, normalize_advantages=False)
    params = dict(policy.named_parameters())
    traj = algo.sample(tasks, [params] * 40, 100, phase=0)
    obs, act, r, mask = (x.reshape(4000, 1, *x.shape[3:]) for x in (traj.obs, traj.actions, traj.rewards, traj.mask))
    assert bool((mask == 1).all()) and r.shape == (4000, 1)
    est = {}
    for objective in ("logprob", "lvc"):
        loss = inner_loss(policy, params, obs, act, r, mask, objective)
        grads = torch.autograd.grad(loss, [params["mu"], params["log_std"]])
        est[objective] = [-float(g) for g in grads]  # the loss is minus the objective
    assert est["lvc"] == pytest.approx(est["logprob"], rel=1e-12)  # the LVC form has the same gradient
    a, rr = act.reshape(-1).double(), r.reshape(-1).double()
    scores = {"mu": (a - mu) / std**2 * rr, "log_std": ((a - mu) ** 2 / std**2 - 1) * rr}
    true = {"mu": -2 * (mu - c), "log_std": -2 * std**2}
    for i, key in enumerate(("mu", "log_std")):
        se = float(scores[key].std() / math.sqrt(a.numel()))
        assert float(scores[key].mean()) == pytest.approx(est["logprob"][i], rel=1e-9)
        assert abs(est["logprob"][i] - true[key]) < 4 * se, (key, est["logprob"][i], true[key], se)
        assert 4 * se < 0.5 * abs(true[key])  # tight enough that a wrong sign or a factor of 2 fails


def _fixed_trajectories(t, n, h, d, a, seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(t, n, h, dtype=torch.float64)
    mask[0, 1, h - 2 :] = 0  # one trajectory ended early
    return Trajectories(
        torch.randn(t, n, h, d, generator=g, dtype=torch.float64),
        torch.randn(t, n, h, a, generator=g, dtype=torch.float64),
        torch.randn(t, n, h, generator=g, dtype=torch.float64) * mask,
        mask,
    )


def _reference_advantages(obs, rew, mask, gamma, reg):
    """Returns-to-go by a Python loop, the Duan et al. features, ridge least squares by numpy, normalised."""
    obs, rew, mask = obs.numpy(), rew.numpy(), mask.numpy()
    n, h = rew.shape
    ret = np.zeros((n, h))
    for i in range(n):
        acc = 0.0
        for k in reversed(range(h)):
            acc = rew[i, k] * mask[i, k] + gamma * acc
            ret[i, k] = acc * mask[i, k]
    rows, ys, where = [], [], []
    for i in range(n):
        for k in range(h):
            if mask[i, k]:
                o = np.clip(obs[i, k], -10, 10)
                tt = k / 100.0
                rows.append(np.concatenate([o, o * o, [tt, tt * tt, tt**3, 1.0]]))
                ys.append(ret[i, k])
                where.append((i, k))
    x, y = np.array(rows), np.array(ys)
    x_aug = np.vstack([x, math.sqrt(reg) * np.eye(x.shape[1])])
    w = np.linalg.lstsq(x_aug, np.concatenate([y, np.zeros(x.shape[1])]), rcond=None)[0]
    adv_valid = y - x @ w
    adv_valid = (adv_valid - adv_valid.mean()) / (adv_valid.std() + 1e-8)
    adv = np.zeros((n, h))
    for (i, k), v in zip(where, adv_valid):
        adv[i, k] = v
    return torch.tensor(adv)


def _reference_meta_gradient(policy, pre, post, inner_lr, clip, gamma, reg, first_order):
    """A plain per-task loop: hand-written MLP forward and Gaussian log-density, autograd.grad for the inner step."""
    theta = [p for _, p in policy.named_parameters()]
    names = [n for n, _ in policy.named_parameters()]

    def logp(ws, obs, act):
        p = dict(zip(names, ws))
        hdn = torch.relu(F.linear(obs, p["mean.0.weight"], p["mean.0.bias"]))
        mean = F.linear(hdn, p["mean.2.weight"], p["mean.2.bias"])
        log_std = p["log_std"]
        return (-0.5 * ((act - mean) / torch.exp(log_std)) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    total = 0
    tasks = pre.obs.shape[0]
    for t in range(tasks):
        adv = _reference_advantages(pre.obs[t], pre.rewards[t], pre.mask[t], gamma, reg)
        lp = logp(theta, pre.obs[t], pre.actions[t])
        loss_in = -(torch.exp(lp - lp.detach()) * adv * pre.mask[t]).sum() / pre.mask[t].sum()
        grads = torch.autograd.grad(loss_in, theta, create_graph=not first_order)
        fast = [w - inner_lr * (g.detach() if first_order else g) for w, g in zip(theta, grads)]
        adv_out = _reference_advantages(post.obs[t], post.rewards[t], post.mask[t], gamma, reg)
        lp_new = logp(fast, post.obs[t], post.actions[t])
        ratio = torch.exp(lp_new - lp_new.detach())
        obj = torch.minimum(ratio * adv_out, ratio.clamp(1 - clip, 1 + clip) * adv_out)
        total = total + (-(obj * post.mask[t]).sum() / post.mask[t].sum())
    loss = total / tasks
    return torch.autograd.grad(loss, theta)


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_matches_a_plain_per_task_autograd_loop_in_float64(first_order):
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(3, 2, (5,), init_std=0.7).double()
    pre, post = _fixed_trajectories(2, 3, 6, 3, 2, seed=1), _fixed_trajectories(2, 3, 6, 3, 2, seed=2)
    algo = MAMLRL(policy, inner_lr=0.3, clip=0.2, discount=0.9, baseline_reg=1e-3, first_order=first_order)
    algo.sample = lambda tasks, fast, per_task, phase: (
        pre if phase == 0 else post
    )  # fixed trajectories: a deterministic comparison
    batch = EnvTasks(torch.zeros(2, 1, dtype=torch.float64), torch.arange(2), (3,), 2, None, shots=3, queries=3)
    out = algo.meta_loss(batch)
    got = torch.autograd.grad(out.loss, list(policy.parameters()))
    want = _reference_meta_gradient(policy, pre, post, 0.3, 0.2, 0.9, 1e-3, first_order)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    if not first_order:  # the second-order term is there: the first-order gradient differs
        fo = _reference_meta_gradient(policy, pre, post, 0.3, 0.2, 0.9, 1e-3, True)
        assert max(float((a - b).abs().max()) for a, b in zip(got, fo)) > 1e-6


def test_clipped_surrogate_clips_the_ratio():
    logp_old = torch.zeros(1, 3, dtype=torch.float64)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]], dtype=torch.float64))
    adv = torch.tensor([[1.0, -1.0, 1.0]], dtype=torch.float64)
    loss = clipped_surrogate(logp, logp_old, adv, torch.ones(1, 3, dtype=torch.float64), 0.2)
    assert float(loss) == pytest.approx(-(1.2 - 0.8 + 1.1) / 3)


def test_linear_baseline_equals_least_squares():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(5, 7, 4, generator=g, dtype=torch.float64)
    ret = torch.randn(5, 7, generator=g, dtype=torch.float64)
    mask = torch.ones(5, 7, dtype=torch.float64)
    mask[2, 4:] = 0
    x, y = feats[mask.bool()].numpy(), ret[mask.bool()].numpy()
    plain = np.linalg.lstsq(x, y, rcond=None)[0]
    np.testing.assert_allclose(fit_linear_baseline(feats, ret, mask, reg=0.0).numpy(), plain, rtol=1e-9, atol=1e-12)
    reg = 0.5  # ridge: the least-squares solution of the system augmented by sqrt(reg) * I
    ridge = np.linalg.lstsq(np.vstack([x, math.sqrt(reg) * np.eye(4)]), np.concatenate([y, np.zeros(4)]), rcond=None)[0]
    np.testing.assert_allclose(fit_linear_baseline(feats, ret, mask, reg=reg).numpy(), ridge, rtol=1e-9, atol=1e-12)
    assert not np.allclose(ridge, plain)


def _policy(family, seed=0):
    torch.manual_seed(seed)
    pol = GaussianMLPPolicy(family.observation_shape[0], family.action_size, (8,), init_std=0.5)
    params = dict(pol.named_parameters())
    return lambda obs: (
        torch.func.functional_call(pol, params, (obs.reshape(-1, obs.shape[-1]),)).reshape(*obs.shape[:2], -1),
        params["log_std"].expand(obs.shape[0], -1),
    )


@pytest.mark.parametrize("make", [lambda: nav2d_family(horizon=10), lambda: pendulum_family(horizon=10)])
def test_environments_are_deterministic_per_seed(make):
    family = make()
    source = EnvTaskSource(family, 2, 2, seed=5)
    a, b = source.sample_tasks(3, 0, 3), source.sample_tasks(3, 0, 3)
    assert torch.equal(a.params, b.params) and torch.equal(a.seeds, b.seeds)
    assert torch.equal(
        source.sample_tasks(3, 1, 2).params, a.params[1:]
    )  # task i of a step does not depend on the batch
    assert not torch.equal(EnvTaskSource(family, 2, 2, seed=6).sample_tasks(3, 0, 3).params, a.params)
    t1, t2 = rollout(a, _policy(family), 2, phase=0), rollout(a, _policy(family), 2, phase=0)
    for x, y in zip((t1.obs, t1.actions, t1.rewards), (t2.obs, t2.actions, t2.rewards)):
        assert torch.equal(x, y)
    t3 = rollout(a, _policy(family), 2, phase=1)
    assert not torch.equal(t1.actions, t3.actions)  # another sampling of the same tasks draws other noise
    assert not torch.equal(t1.rewards[0], t1.rewards[1])  # tasks differ (goals; masses and lengths)


def test_nav2d_is_the_papers_task():
    family = nav2d_family()
    assert family.horizon == 100 and family.param_names == ("goal_x", "goal_y")
    params = EnvTaskSource(family, 1, 1, seed=0).sample_tasks(0, 0, 200).params
    assert float(params.abs().max()) <= 0.5 and float(params.abs().max()) > 0.45
    env = family.make([0.3, -0.2])
    obs, _ = env.reset(seed=0)
    assert np.allclose(obs, 0)
    obs, reward, *_ = env.step(np.array([1.0, -0.05]))  # clipped to 0.1
    assert np.allclose(obs, [0.1, -0.05]) and reward == pytest.approx(-math.hypot(0.2, 0.15))


def test_pendulum_tasks_change_the_dynamics():
    family = pendulum_family()
    heavy, light = family.make([2.0, 1.5]), family.make([0.5, 0.5])
    outs = []
    for env in (heavy, light):
        env.reset(seed=0)
        outs.append(env.step(np.array([1.0]))[0])
    assert not np.allclose(outs[0], outs[1])


def _quick(tmp_path) -> list[str]:
    """Overrides for a two-step run of 2 tasks of 2 + 2 trajectories of 5 steps into ``tmp_path / "run"``."""
    return [
        f"run.out={tmp_path / 'run'}",
        "run.progress=false",
        "optim.steps=2",
        "data.meta_batch=2",
        "data.shots=2",
        "data.queries=2",
        "eval.test_episodes=2",
        "data.options={horizon=5}",
    ]


def _cfg(tmp_path, preset="maml-rl-nav2d", **over):
    return fastadapt.load_config(preset, _quick(tmp_path) + [f"{k}={v}" for k, v in over.items()])


def test_train_two_steps_through_the_engine_then_report_plot_and_load_the_run(tmp_path, capsys):
    result = fastadapt.train(_cfg(tmp_path))
    assert result.steps == 2
    res = result.tests["2shot"]
    assert res.metric == "return" and res.episodes == 2
    assert all(
        -5 * 1.5 <= s < 0 for s in res.scores
    )  # 5 steps; a distance stays below |goal| + 5 * 0.1 * sqrt(2) < 1.5
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"return", "return_pre", "loss"} <= set(rows[-1])
    assert cli.main(["report", str(tmp_path / "run")]) == 0
    assert "| maml-rl | 2shot (2 queries) | return -" in capsys.readouterr().out
    assert cli.main(["plot", str(tmp_path / "run")]) == 0 and (tmp_path / "run" / "curves.png").is_file()
    run = fastadapt.load_run(tmp_path / "run")
    assert isinstance(run.algorithm, MAMLRL)
    tasks = EnvTaskSource(nav2d_family(horizon=5), 2, 2, seed=0).sample_tasks(0, 0, 1)
    before = {k: v.clone() for k, v in run.algorithm.state_dict().items()}
    predictor = run.algorithm.adapt(tasks)
    assert predictor(torch.zeros(3, 2)).shape == (3, 2)
    assert all(torch.equal(before[k], v) for k, v in run.algorithm.state_dict().items())  # adapt changes nothing


@pytest.mark.parametrize("options", [{"outer": "'reptile'", "inner_steps": 2}, {"first_order": "true"}])
def test_reptile_and_first_order_train_through_the_same_code(tmp_path, options):
    result = fastadapt.train(
        _cfg(tmp_path, **{f"algorithm.{k}": v for k, v in options.items()}, **{"eval.test_episodes": 0})
    )
    assert result.steps == 2


def test_the_command_trains_the_preset(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "fastadapt",
        "train",
        "pretrain-rl-pendulum",
        *_quick(tmp_path),
        "data.test_shots=2",
        "data.test_queries=2",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "run" / "results.json").read_text())["tests"]["2shot"]["metric"] == "return"


def test_unknown_env_id_and_unsupported_spaces_are_one_line_errors():
    with pytest.raises(ConfigError, match="no environment 'NoSuchEnv-v9'") as e:
        task_family("NoSuchEnv-v9", lambda rng: {"x": 1.0})
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"action space Discrete\(2\) is not supported") as e:
        task_family("CartPole-v1", lambda rng: {"length": 0.5})
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="no attribute 'mass_of_moon'"):
        task_family("Pendulum-v1", lambda rng: {"mass_of_moon": 1.0})


def test_non_finite_reward_is_a_one_line_error():
    family = task_family(
        lambda: Bandit(0.0, reward_scale=float("nan")), lambda rng: {"centre": 0.0}, horizon=1, name="nan-bandit"
    )
    tasks = EnvTaskSource(family, 1, 1, seed=0).sample_tasks(0, 0, 1)
    with pytest.raises(DataError, match="non-finite reward") as e:
        rollout(tasks, lambda obs: (torch.zeros(*obs.shape[:2], 1), torch.zeros(1, 1)), 2)
    assert "\n" not in str(e.value)


def test_missing_gymnasium_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gymnasium", None)  # import gymnasium now raises ModuleNotFoundError
    with pytest.raises(ConfigError, match=r"pip install fastadapt\[rl\]"):
        require_gymnasium()


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("data.options={mass=[2.0, 1.0]}", "data.options.mass"),
        ("data.options={gravity=3}", "not an option of pendulum-dynamics"),
        ("model.name=mlp", "no parameter log_std"),
    ],
)
def test_bad_options_exit_2_on_the_command_line(tmp_path, capsys, bad, says):
    argv = ["train", "maml-rl-pendulum", f"run.out={tmp_path / 'run'}", "run.progress=false", bad]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1, err
