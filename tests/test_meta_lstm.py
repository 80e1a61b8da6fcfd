"""LSTM meta-learner: reduces to SGD with fixed gates, drops second derivatives, trains every parameter, records
gates."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastadapt import TaskBatch
from fastadapt.algorithms import algorithm_class
from fastadapt.algorithms.meta_lstm import MetaLSTM, preprocess
from fastadapt.core.errors import ConfigError
from fastadapt.nn import Conv4
from helpers import fix_gates_to_sgd

D = torch.float64


def _learner() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def _batch(tasks: int = 3, seed: int = 0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    sy = torch.tensor([0, 0, 0, 1, 1, 1]).repeat(tasks, 1)
    qy = torch.tensor([0, 0, 1, 1]).repeat(tasks, 1)
    return TaskBatch(
        torch.randn(tasks, 6, 3, generator=g, dtype=D),
        sy,
        torch.randn(tasks, 4, 3, generator=g, dtype=D),
        qy,
        torch.arange(2 * tasks).view(tasks, 2),
    )


def _hand_sgd(
    theta0: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, lr: float, steps: int
) -> list[torch.Tensor]:
    """Plain gradient descent on the 2-layer tanh net, written without the module."""
    w1, b1, w2, b2 = (p.detach().clone().requires_grad_(True) for p in theta0)
    for _ in range(steps):
        loss = F.cross_entropy(torch.tanh(x @ w1.T + b1) @ w2.T + b2, y)
        gs = torch.autograd.grad(loss, (w1, b1, w2, b2))
        w1, b1, w2, b2 = (p - lr * g for p, g in zip((w1, b1, w2, b2), gs))
        w1, b1, w2, b2 = (p.detach().requires_grad_(True) for p in (w1, b1, w2, b2))
    return [w1, b1, w2, b2]


@pytest.mark.parametrize("vectorize", [True, False])
def test_fixed_gates_input_rate_forget_one_is_exactly_sgd(vectorize):
    torch.manual_seed(0)
    algo = MetaLSTM(_learner(), inner_steps=4, vectorize=vectorize).double()
    fix_gates_to_sgd(algo, 0.3)
    batch = _batch()
    theta, _ = algo.unroll(batch.support_x, batch.support_y)
    theta0 = [p for _, p in algo.model.named_parameters()]
    for i in range(batch.num_tasks):
        ref = _hand_sgd(theta0, batch.support_x[i], batch.support_y[i], 0.3, 4)
        got = algo.unflatten(theta[i])
        for name, r in zip(algo.names, ref):
            torch.testing.assert_close(got[name], r, rtol=1e-12, atol=1e-12)
        # the predictor of adapt runs the learner with those weights
        w1, b1, w2, b2 = ref
        expected = torch.tanh(batch.query_x[i] @ w1.T + b1) @ w2.T + b2
        torch.testing.assert_close(
            algo.adapt(batch.support_x[i], batch.support_y[i])(batch.query_x[i]), expected, rtol=1e-12, atol=1e-12
        )


def test_meta_gradient_drops_second_derivatives():
    """With SGD gates, d theta_T / d theta_0 = I once gradients are inputs, so d meta-loss / d theta_0 is the
    gradient of the query loss at the adapted weights (first-order MAML)."""
    torch.manual_seed(1)
    algo = MetaLSTM(_learner(), inner_steps=3).double()
    fix_gates_to_sgd(algo, 0.2)
    batch = _batch(tasks=2, seed=4)
    algo.meta_loss(batch).loss.backward()
    theta0 = [p for _, p in algo.model.named_parameters()]
    expected = [torch.zeros_like(p) for p in theta0]
    for i in range(2):
        w = _hand_sgd(theta0, batch.support_x[i], batch.support_y[i], 0.2, 3)
        q = F.cross_entropy(torch.tanh(batch.query_x[i] @ w[0].T + w[1]) @ w[2].T + w[3], batch.query_y[i])
        for e, g in zip(expected, torch.autograd.grad(q, w)):
            e += g / 2
    for p, e in zip(theta0, expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-10, atol=1e-12)


def test_preprocessing_on_hand_values():
    p = 10.0
    x = torch.tensor([1.0, -math.exp(-5.0), 1e-6, -2e-5, 0.0], dtype=D)
    out = preprocess(x, p)
    expected = torch.tensor(
        [[0.0, 1.0], [-0.5, -1.0], [-1.0, math.exp(10) * 1e-6], [-1.0, -math.exp(10) * 2e-5], [-1.0, 0.0]], dtype=D
    )
    torch.testing.assert_close(out, expected)


def test_gradients_reach_every_meta_learner_parameter_and_vmap_equals_loop():
    grads = {}
    for vectorize in (True, False):
        torch.manual_seed(2)
        algo = MetaLSTM(_learner(), inner_steps=3, vectorize=vectorize).double()
        out = algo.meta_loss(_batch(seed=3))
        assert set(out.metrics) == {"loss", "acc"}
        out.loss.backward()
        for name, p in algo.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
        grads[vectorize] = {n: p.grad.clone() for n, p in algo.named_parameters()}
    for n in grads[True]:
        torch.testing.assert_close(grads[True][n], grads[False][n], rtol=1e-10, atol=1e-12)


def test_gate_trace_records_per_step_per_tensor_means_and_is_pure():
    torch.manual_seed(0)
    algo = MetaLSTM(Conv4(hidden=8, out_features=5), inner_steps=3)
    g = torch.Generator().manual_seed(0)
    sx, sy = torch.rand(5, 1, 28, 28, generator=g), torch.arange(5)
    before = {k: v.clone() for k, v in algo.state_dict().items()}
    trace = algo.gate_trace(sx, sy)
    assert trace.names == tuple(n for n, _ in algo.model.named_parameters())
    assert trace.input_gate.shape == (3, len(trace.names)) and trace.forget_gate.shape == (3, len(trace.names))
    # initial biases: f in sigmoid([4, 6]) ~ 0.98..0.998, i in sigmoid([-5, -4]) ~ 0.007..0.018 (weights are small)
    assert (trace.forget_gate > 0.95).all() and (trace.forget_gate < 1).all()
    assert (trace.input_gate > 0.003).all() and (trace.input_gate < 0.03).all()
    assert all(torch.equal(before[k], v) for k, v in algo.state_dict().items())
    # the recorded gates are the ones the update used: with SGD gates the trace is exactly (lr, 1)
    fix_gates_to_sgd(algo, 0.1)
    tr = algo.gate_trace(sx, sy)
    torch.testing.assert_close(tr.input_gate, torch.full_like(tr.input_gate, 0.1))
    assert (tr.forget_gate == 1).all()


def test_predict_shape_no_graph_and_registry():
    torch.manual_seed(0)
    algo = MetaLSTM(_learner(), inner_steps=2).double()
    batch = _batch()
    pred = algo.predict(batch)
    assert pred.shape == (3, 4, 2) and not pred.requires_grad
    assert algorithm_class("meta_lstm") is MetaLSTM
    assert MetaLSTM.needs_head is True


def test_bad_options_raise_config_error():
    with pytest.raises(ConfigError):
        MetaLSTM(_learner(), inner_steps=0)
    with pytest.raises(ConfigError):
        MetaLSTM(_learner(), preprocess_p=0.0)
    with pytest.raises(ConfigError):
        MetaLSTM(Conv4(hidden=8, track_running_stats=True))
