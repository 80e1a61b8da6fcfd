"""ReBAL (Nagabandi et al. 2019, the recurrence-based adaptive learner): the meta-gradient against a hand-written
GRU and network in float64, the predictor's sliding window against reading the window from scratch, the one-line
refusals, and training through the one loop (a sinusoid stream; half-cheetah transitions, acting with
``OnlineDynamics``). The MuJoCo test skips without it, naming ``pip install "mujoco==3.3.7" "gymnasium[mujoco]"``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastadapt
import helpers
from fastadapt import ConfigError, DataError
from fastadapt.algorithms.rebal import ReBAL, RecurrentPredictor
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.registry import ALGORITHMS
from fastadapt.data.streams import SinusoidStream, StreamTasks
from fastadapt.eval.streams import online
from helpers import needs_package, stream_run_config

mujoco = needs_package("mujoco")
pytestmark = pytest.mark.usefixtures("one_thread")


def algorithm(inp: int = 3, out: int = 2, hidden_size: int = 5, **options) -> ReBAL:
    model = helpers.mlp(0, (6, 7), inp, out)
    torch.manual_seed(1)
    return ReBAL(model, hidden_size=hidden_size, **options).double()


def vector_windows(tasks: int = 3, shots: int = 4, queries: int = 3, inp: int = 3, out: int = 2) -> TaskBatch:
    g = torch.Generator().manual_seed(5)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return TaskBatch(
        rand(tasks, shots, inp), rand(tasks, shots, out), rand(tasks, queries, inp), rand(tasks, queries, out)
    )


def class_windows(tasks: int = 3, shots: int = 4, queries: int = 3, inp: int = 3, ways: int = 2) -> TaskBatch:
    g = torch.Generator().manual_seed(6)
    x = torch.randn(tasks, shots + queries, inp, generator=g, dtype=torch.float64)
    y = torch.randint(0, ways, (tasks, shots + queries), generator=g)
    return TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])


def sinusoid_windows(tasks: int = 3) -> TaskBatch:
    source = StreamTasks(lambda s: SinusoidStream(s, length=50, phase_length=20), 1, 6, 4, seed=2)
    return source.sample_tasks(0, 0, tasks).to(dtype=torch.float64)


# --- the reference: one window at a time, the GRU's equations and the MLP written out ------------------------


def gru_step(gru: nn.GRU, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """One GRU step by its equations (gates r, u, candidate n in PyTorch's order of the stacked weights)."""
    w_r, w_u, w_n = gru.weight_ih_l0.chunk(3)
    v_r, v_u, v_n = gru.weight_hh_l0.chunk(3)
    b_r, b_u, b_n = gru.bias_ih_l0.chunk(3)
    c_r, c_u, c_n = gru.bias_hh_l0.chunk(3)
    r = torch.sigmoid(w_r @ z + b_r + v_r @ h + c_r)
    u = torch.sigmoid(w_u @ z + b_u + v_u @ h + c_u)
    n = torch.tanh(w_n @ z + b_n + r * (v_n @ h + c_n))
    return (1 - u) * n + u * h


def reference_outputs(algo: ReBAL, sx, sy, qx, ways: int | None = None) -> torch.Tensor:
    """One window: h from 0 over the support points, then the MLP with ``[W_1, U] [x; h] + b_1`` as first layer."""
    h = torch.zeros(algo.hidden_size, dtype=torch.float64)
    for x, y in zip(sx, sy):
        target = F.one_hot(y, ways).double() if ways else y.reshape(-1)
        h = gru_step(algo.recurrent, h, torch.cat([x.reshape(-1), target]))
    linears = [m for m in algo.model.net if isinstance(m, nn.Linear)]
    a = qx.reshape(qx.shape[0], -1)
    w = torch.cat([linears[0].weight, algo.condition.weight], 1)  # the input layer on the concatenation [x, h]
    a = torch.cat([a, h.expand(a.shape[0], -1)], 1) @ w.T + linears[0].bias
    for layer in linears[1:]:
        a = torch.relu(a) @ layer.weight.T + layer.bias
    return a


def reference_loss(algo: ReBAL, batch: TaskBatch, ways: int | None = None) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64)
    for t in range(batch.num_tasks):
        out = reference_outputs(algo, batch.support_x[t], batch.support_y[t], batch.query_x[t], ways)
        y = batch.query_y[t]
        total = total + (F.cross_entropy(out, y) if ways else ((out - y.reshape(out.shape)) ** 2).mean())
    return total / batch.num_tasks


@pytest.mark.parametrize("kind", ["vectors", "sinusoid", "classes"])
def test_meta_gradient_equals_a_plain_loop_over_windows_in_float64(kind):
    if kind == "vectors":
        algo, batch, ways = algorithm(), vector_windows(), None
    elif kind == "sinusoid":
        algo, batch, ways = algorithm(inp=1, out=1), sinusoid_windows(), None
    else:
        algo, batch, ways = algorithm(out=2), class_windows(ways=2), 2
    params = [p for p in algo.parameters() if p.requires_grad]
    out = algo.meta_loss(batch)
    got = torch.autograd.grad(out.loss, params)
    want_loss = reference_loss(algo, batch, ways)
    want = torch.autograd.grad(want_loss, params)
    assert math.isclose(float(out.loss.detach()), float(want_loss.detach()), rel_tol=1e-12)
    for (name, _), g, w in zip(((n, p) for n, p in algo.named_parameters() if p.requires_grad), got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12, msg=name)
    for name, g in zip((n for n, p in algo.named_parameters() if p.requires_grad), got):
        assert float(g.abs().sum()) > 0, f"{name} gets no gradient"  # the GRU and U learn through the query loss
    assert int(algo.trained_window) == batch.support_x.shape[1] and algo.adapt_window() == batch.support_x.shape[1]
    assert set(out.metrics) == {"loss", "acc" if ways else "mse"}
    pred = algo.predict(batch)
    assert not pred.requires_grad
    for t in range(batch.num_tasks):
        ref = reference_outputs(algo, batch.support_x[t], batch.support_y[t], batch.query_x[t], ways)
        torch.testing.assert_close(pred[t].reshape(ref.shape), ref, rtol=1e-12, atol=1e-12)


def test_the_empty_state_is_the_model_itself():
    algo = algorithm()
    probe = torch.randn(4, 3, dtype=torch.float64)
    batch = vector_windows()
    predictor = algo.adapt(batch.support_x[0], batch.support_y[0])
    assert not torch.allclose(predictor(probe), algo.model(probe))  # a read window conditions the model
    predictor.reset()
    assert predictor.window_x.shape[0] == 0 and torch.equal(predictor(probe), algo.model(probe))


# --- the predictor ----------------------------------------------------------------------------------------


def stream(n: int = 12, inp: int = 3, out: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(9)
    return torch.randn(n, inp, generator=g, dtype=torch.float64), torch.randn(n, out, generator=g, dtype=torch.float64)


def test_update_on_a_sliding_window_equals_reading_the_last_m_points_from_scratch():
    algo = algorithm()
    before = {k: v.clone() for k, v in algo.state_dict().items()}
    x, y = stream()
    m, probe = 4, torch.randn(5, 3, dtype=torch.float64)
    predictor = algo.adapt(x[:2], y[:2]).configure(window=m, policy="window", steps=1)
    assert isinstance(predictor, RecurrentPredictor) and predictor.window == m
    for t in range(2, x.shape[0]):
        previous = predictor(probe)
        predictor.update(x[t : t + 1], y[t : t + 1])
        lo = max(0, t + 1 - m)
        torch.testing.assert_close(
            predictor(probe), algo.adapt(x[lo : t + 1], y[lo : t + 1])(probe), rtol=0, atol=1e-13
        )
        assert torch.equal(predictor.window_x, x[lo : t + 1])
        assert not torch.allclose(predictor(probe), previous)
    assert all(torch.equal(v, before[k]) for k, v in algo.state_dict().items())  # the algorithm is only read
    predictor.reset()
    predictor.update(x[:3], y[:3])
    torch.testing.assert_close(predictor(probe), algo.adapt(x[:3], y[:3])(probe), rtol=0, atol=1e-13)


def test_continue_runs_the_recurrence_over_the_whole_stream():
    algo = algorithm()
    x, y = stream()
    probe = torch.randn(5, 3, dtype=torch.float64)
    predictor = algo.adapt(x[:1], y[:1]).configure(window=2, policy="continue")
    for t in range(1, x.shape[0], 3):
        predictor.update(x[t : t + 3], y[t : t + 3])
    whole = algo.state_after(x, y)  # every point read once, in order, from h = 0
    torch.testing.assert_close(predictor.hidden, whole, rtol=0, atol=1e-13)
    assert predictor.window_x.shape[0] == 2
    with torch.no_grad():
        shift = float(algo.condition(whole).norm())  # ||U h||: how far the state moved the input layer's bias
    moved = predictor.explain(probe)["layers"]
    assert len(moved) == 1 and moved[0].name == "net.0.bias" and math.isclose(moved[0].change, shift, rel_tol=1e-12)


def test_the_predictor_keeps_the_trained_window():
    algo = algorithm(inp=1, out=1)
    algo.meta_loss(sinusoid_windows())
    x, y = (v.double() for v in SinusoidStream(0).step(0))
    assert algo.adapt(x, y).window == 6
    assert algorithm(window=3).adapt(*stream(1)).window == 3


def test_a_rejected_update_leaves_the_state_as_it_was():
    algo = algorithm()
    x, y = stream()
    predictor = algo.adapt(x[:4], y[:4])
    hidden, wx = predictor.hidden.clone(), predictor.window_x.clone()
    bad = y[4:5].clone()
    bad[0, 0] = float("nan")
    for args, message in (((x[4:5], bad), "finite"), ((x[4:5, :2], y[4:5]), "shape")):
        with pytest.raises(DataError, match=message) as e:
            predictor.update(*args)
        assert "\n" not in str(e.value)
    assert torch.equal(predictor.hidden, hidden) and torch.equal(predictor.window_x, wx)


def test_a_label_outside_the_head_is_refused_in_one_line():
    algo = algorithm(out=2)
    batch = class_windows(ways=2)
    predictor = algo.adapt(batch.support_x[0], batch.support_y[0])
    with pytest.raises(DataError, match="outside the 2 classes") as e:
        predictor.update(batch.query_x[0][:1], torch.tensor([2]))
    assert "\n" not in str(e.value)


# --- the refusals -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ReBAL(helpers.mlp(0, (4,), 3, 2), hidden_size=0), "hidden_size=0 is invalid"),
        (lambda: ReBAL(helpers.mlp(0, (4,), 3, 2), hidden_size=2.5), "hidden_size=2.5 is invalid"),
        (lambda: ReBAL(helpers.mlp(0, (4,), 3, 2), window=-1), "window=-1 is invalid"),
        (lambda: ReBAL(helpers.mlp(0, (4,), 3, 2), layer="net.9"), "layer='net.9' is not an nn.Linear"),
        (lambda: ReBAL(helpers.mlp(0, (4,), 3, 2), layer="net.2"), "does not take vectors of that width"),
        (lambda: ReBAL(nn.Sequential(nn.Flatten())), "has none"),
        (lambda: ReBAL(nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2))), "has no bias"),
        (lambda: algorithm().adapt(*stream(2)).configure(steps=2), "steps=2 does not apply to ReBAL"),
        (lambda: algorithm().adapt(*stream(2)).configure(policy="forget"), "policy='forget' is unknown"),
        (lambda: algorithm().adapt(*stream(2)).configure(window=0), "window=0 is invalid"),
    ],
)
def test_bad_options_are_refused_in_one_line(build, message):
    with pytest.raises(ConfigError, match=message) as e:
        build()
    assert "\n" not in str(e.value)


def test_a_config_with_an_option_rebal_does_not_take_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="inner_lr") as e:
        fastadapt.load_config("rebal-cheetah", ["algorithm.inner_lr=0.1"])
    assert "\n" not in str(e.value)
    assert ALGORITHMS.get("rebal") is ReBAL and ReBAL.needs_head


# --- through the one loop ---------------------------------------------------------------------------------


def test_rebal_trains_on_a_stream_source_through_the_common_loop_and_runs_online(tmp_path):
    cfg = stream_run_config(tmp_path / "rebal", {"name": "rebal", "hidden_size": 8})
    result = fastadapt.train(cfg)
    assert result.steps == 3 and math.isfinite(result.tests["5shot"].mean)
    run = fastadapt.load_run(tmp_path / "rebal")
    assert isinstance(run.algorithm, ReBAL) and int(run.algorithm.trained_window) == 5
    record = online(run.algorithm, SinusoidStream(4, length=30, phase_length=10))
    assert record.length == 30 and np.isfinite(record.error).all() and np.isfinite(record.probe_error).all()


@mujoco
def test_rebal_trains_on_cheetah_transitions_and_reads_the_last_m_transitions_while_acting(tmp_path):
    from fastadapt.rl.cheetah import cheetah_crippled_family
    from fastadapt.rl.model_based import OnlineDynamics, control_episode

    cfg = fastadapt.load_config(
        "rebal-cheetah",
        [
            'data.options={family="crippled", trajectories=2, horizon=30}',
            "data.meta_batch=2",
            "data.shots=4",
            "data.queries=4",
            "model.layers=[16]",
            "algorithm.hidden_size=8",
            "optim.steps=2",
            "eval.val_every=0",
            "eval.test_episodes=4",
            "run.progress=false",
            "run.threads=1",
            f"run.out={tmp_path / 'rebal'}",
        ],
    )
    result = fastadapt.train(cfg)
    assert result.steps == 2
    run = fastadapt.load_run(tmp_path / "rebal")
    algo = run.algorithm
    assert isinstance(algo, ReBAL) and algo.window == 16 and int(algo.trained_window) == 4
    source = next(iter(fastadapt.config.build.task_sources(run.config, tests_only=True).tests.values()))
    family = cheetah_crippled_family(horizon=10)
    seen: list = []
    dyn = OnlineDynamics(algo, source.normalizer, "meta", window=4)
    s0, a0 = torch.zeros(1, 17, dtype=torch.float64), torch.zeros(1, 6, dtype=torch.float64)
    empty = source.normalizer.next_state(s0, algo.model(source.normalizer.inputs(s0, a0).float()))
    assert torch.allclose(dyn.predict(s0, a0), empty)  # before any transition: h = 0, the model itself

    def observe(s, a, s2):
        seen.append((s, a, s2))
        dyn.observe(s, a, s2)

    rec = control_episode(family, [1.0, 0.0, 5.0], 3, dyn.predict, observe, plan_horizon=2, candidates=8)
    assert rec.rewards.shape == (10,) and torch.isfinite(rec.rewards).all()
    last = seen[-4:]
    x = torch.stack([source.normalizer.inputs(s, a) for s, a, _ in last]).float()
    y = torch.stack([source.normalizer.targets(s, s2) for s, _, s2 in last]).float()
    probe = torch.randn(5, 23)
    torch.testing.assert_close(dyn.predictor(probe), algo.adapt(x, y)(probe), rtol=0, atol=1e-6)  # the last M
    again = OnlineDynamics(algo, source.normalizer, "meta", window=4)
    rec2 = control_episode(family, [1.0, 0.0, 5.0], 3, again.predict, again.observe, plan_horizon=2, candidates=8)
    assert torch.equal(rec.rewards, rec2.rewards)  # same seed, same episode
