"""ALFA (Baik et al. 2020), in float64: its meta-gradient against a plain per-task autograd loop written
here, and, with its generator fixed to constant outputs, MAML with those rates exactly."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import helpers
from fastadapt import ConfigError, SinusoidTasks, TaskBatch, config_from_dict
from fastadapt.algorithms import inner
from fastadapt.algorithms.alfa import ALFA
from fastadapt.algorithms.maml import FOMAML, MAML
from fastadapt.core.contract import LearntRates

pytestmark = pytest.mark.usefixtures("one_thread")


def sinusoids(tasks: int = 3, shots: int = 5, queries: int = 4) -> TaskBatch:
    return SinusoidTasks(shots, queries, seed=7).sample(tasks).to(dtype=torch.float64)


mlp = partial(helpers.mlp, hidden=(6, 5))  # float64, 1 -> 6 -> 5 -> 1


def alfa(seed: int = 0, **kw) -> ALFA:
    algo = ALFA(mlp(seed), inner_lr=0.05, **kw)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # a generator that is not the identity, and base rates that differ per step and layer
        last = algo.generator.net[-1]
        last.weight.copy_(0.3 * torch.randn(last.weight.shape, generator=g, dtype=torch.float64))
        last.bias.copy_(0.1 * torch.randn(last.bias.shape, generator=g, dtype=torch.float64))
        algo.alpha0.mul_(1 + 0.5 * torch.rand(algo.alpha0.shape, generator=g, dtype=torch.float64))
        algo.beta0.sub_(0.05 * torch.rand(algo.beta0.shape, generator=g, dtype=torch.float64))
    return algo


def reference_meta_loss(algo: ALFA, batch: TaskBatch, steps: int, random_init: bool = False) -> torch.Tensor:
    """A plain loop: torch.autograd.grad with create_graph, the generator written out as matrices."""
    model = algo.model
    theta = {n: p for n, p in model.named_parameters()}
    if random_init:
        theta = {n: p.detach() for n, p in theta.items()}
    lin = [m for m in algo.generator.net if isinstance(m, torch.nn.Linear)]
    names = list(theta)
    L = len(names)

    def generator(tau):
        h = torch.relu(lin[0].weight @ tau + lin[0].bias)
        h = torch.relu(lin[1].weight @ h + lin[1].bias)
        out = lin[2].weight @ h + lin[2].bias
        return 1 + out[:L], 1 + out[L:]

    losses = []
    for t in range(batch.num_tasks):
        phi = dict(theta)
        for j in range(steps):
            loss = F.mse_loss(functional_call(model, phi, (batch.support_x[t],)), batch.support_y[t])
            grads = (
                torch.autograd.grad(loss, [phi[n] for n in names], create_graph=True, allow_unused=False)
                if any(v.requires_grad for v in phi.values())
                else None
            )
            if grads is None:  # random init, first step: phi does not require grad yet
                leaves = {n: v.detach().requires_grad_() for n, v in phi.items()}
                loss = F.mse_loss(functional_call(model, leaves, (batch.support_x[t],)), batch.support_y[t])
                grads = torch.autograd.grad(loss, [leaves[n] for n in names], create_graph=True)
            tau = torch.stack([phi[n].mean() for n in names] + [g.mean() for g in grads])
            a, b = generator(tau)
            k = min(j, algo.inner_steps - 1)
            phi = {
                n: algo.beta0[k, i] * b[i] * phi[n] - algo.alpha0[k, i] * a[i] * grads[i] for i, n in enumerate(names)
            }
        losses.append(F.mse_loss(functional_call(model, phi, (batch.query_x[t],)), batch.query_y[t]))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("execution", ["vmap", "loop"])
@pytest.mark.parametrize("random_init", [False, True])
def test_meta_gradient_matches_a_plain_autograd_loop(execution, random_init):
    batch = sinusoids()
    algo = alfa(inner_steps=2, execution=execution, random_init=random_init)
    out = algo.meta_loss(batch)
    params = [p for p in algo.parameters()]
    got = torch.autograd.grad(out.loss, params, allow_unused=True)
    ref_loss = reference_meta_loss(algo, batch, 2, random_init)
    want = torch.autograd.grad(ref_loss, params, allow_unused=True)
    torch.testing.assert_close(out.loss, ref_loss, rtol=1e-12, atol=1e-12)
    names = [n for n, _ in algo.named_parameters()]
    for name, g, w in zip(names, got, want, strict=True):
        if random_init and name.startswith("model."):
            assert g is None and w is None, name  # theta is not meta-learnt
            continue
        assert g is not None and w is not None, name
        assert float(g.abs().max()) > 0, name  # every meta-parameter gets a gradient
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12, msg=name)


def constant_generator(algo: ALFA, alpha_mult: float, beta_mult: float) -> None:
    L = algo.generator.layers
    with torch.no_grad():
        algo.generator.net[-1].weight.zero_()
        algo.generator.net[-1].bias.copy_(torch.tensor([alpha_mult - 1] * L + [beta_mult - 1] * L, dtype=torch.float64))


@pytest.mark.parametrize("first_order", [False, True])
def test_constant_generator_outputs_equal_maml_with_those_rates(first_order):
    batch = sinusoids()
    algo = ALFA(mlp(3), inner_lr=0.05, inner_steps=3, first_order=first_order, execution="loop")
    constant_generator(algo, 1.6, 1.0)
    ref = (
        FOMAML(mlp(3), inner_lr=0.05 * 1.6, inner_steps=3, execution="loop")
        if first_order
        else MAML(mlp(3), inner_lr=0.05 * 1.6, inner_steps=3, execution="loop")
    )
    a, m = algo.meta_loss(batch), ref.meta_loss(batch)
    torch.testing.assert_close(a.loss, m.loss, rtol=1e-13, atol=0)
    ga = torch.autograd.grad(a.loss, list(algo.model.parameters()))
    gm = torch.autograd.grad(m.loss, list(ref.model.parameters()))
    for x, y in zip(ga, gm, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)
    pa = algo.adapt(batch.support_x[0], batch.support_y[0])(batch.query_x[0])
    pm = ref.adapt(batch.support_x[0], batch.support_y[0])(batch.query_x[0])
    torch.testing.assert_close(pa, pm, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(algo.predict(batch), ref.predict(batch), rtol=1e-13, atol=1e-14)


def test_weight_decay_multiplier_shrinks_the_weights_as_written():
    """beta != 1 with a zero rate: every adapted tensor is beta^K times theta."""
    batch = sinusoids(tasks=1)
    algo = ALFA(mlp(1), inner_lr=0.05, inner_steps=2)
    constant_generator(algo, 0.0, 0.9)
    fast = algo.adapt(batch.support_x[0], batch.support_y[0]).params
    for name, p in inner.trainable_params(algo.model).items():
        torch.testing.assert_close(fast[name], 0.81 * p.detach(), rtol=1e-14, atol=0)


def test_adapt_overrides_steps_and_scales_rates_without_changing_the_module():
    batch = sinusoids(tasks=1)
    algo = alfa(inner_steps=2)
    before = {k: v.clone() for k, v in algo.state_dict().items()}
    a = algo.adapt(batch.support_x[0], batch.support_y[0], steps=4, lr_scale=0.5)
    b = algo.adapt(batch.support_x[0], batch.support_y[0], steps=4, lr_scale=0.5)
    c = algo.adapt(batch.support_x[0], batch.support_y[0])
    torch.testing.assert_close(a(batch.query_x[0]), b(batch.query_x[0]), rtol=0, atol=0)
    assert not torch.allclose(a(batch.query_x[0]), c(batch.query_x[0]))
    for k, v in algo.state_dict().items():
        assert torch.equal(v, before[k]), k
    rates = algo.learning_rates()
    assert isinstance(algo, LearntRates) and set(rates) == set(inner.trainable_params(algo.model))


def test_bad_options_are_one_line_errors():
    with pytest.raises(ConfigError, match="inner_steps=0"):
        ALFA(mlp(), inner_steps=0)
    with pytest.raises(ConfigError, match="inner_lr"):
        ALFA(mlp(), inner_lr=-1.0)
    with pytest.raises(ConfigError, match="unknown key algorithm.decay"):
        config_from_dict(
            {
                "data": {"dataset": "sinusoid", "ways": 1},
                "model": {"name": "mlp"},
                "algorithm": {"name": "alfa", "decay": 1},
            }
        )
    cfg = config_from_dict(
        {
            "data": {"dataset": "sinusoid", "ways": 1},
            "model": {"name": "mlp"},
            "algorithm": {"name": "alfa", "random_init": True},
        }
    )
    assert cfg.algorithm_options == {"random_init": True}
