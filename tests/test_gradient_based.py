"""Gradient-based algorithms (MAML, FOMAML, MAML++ options, Meta-SGD, ANIL, Reptile), in float64,
against finite differences and against plain per-task autograd loops written here."""

from __future__ import annotations

import copy
import inspect
from functools import partial

import pytest
import torch
from torch import nn
from torch.func import functional_call

import helpers
from fastadapt import ConfigError, SinusoidTasks, TaskBatch
from fastadapt.algorithms import algorithm_class, inner
from fastadapt.algorithms.anil import ANIL
from fastadapt.algorithms.base import task_loss
from fastadapt.algorithms.maml import FOMAML, MAML, multi_step_loss_weights
from fastadapt.algorithms.metasgd import MetaSGD
from fastadapt.algorithms.reptile import Reptile
from helpers import mlp

EXECUTIONS = inner.EXECUTIONS
WAYS, SHOTS, QUERIES, TASKS, SIDE = 3, 2, 2, 3, 16


pytestmark = pytest.mark.usefixtures("one_thread")


# --- data and models -------------------------------------------------------------------------


def sinusoids(tasks: int = 4, shots: int = 5, queries: int = 5) -> TaskBatch:
    return SinusoidTasks(shots, queries, seed=3).sample(tasks).to(dtype=torch.float64)


images = partial(helpers.images, tasks=TASKS)  # 3-way 2-shot, 2 queries, 16x16, float64
conv4 = partial(helpers.conv4, hidden=8, perturb=False)


class NormNet(nn.Module):
    """conv -> a normalisation layer -> ReLU -> conv -> linear head, for the other fused norms."""

    def __init__(self, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, stride=2)
        self.norm = {
            "instance": nn.InstanceNorm2d(4, affine=True),
            "layer": nn.LayerNorm([4, 7, 7]),
            "layer_last": nn.LayerNorm(7),
        }[norm]
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2)
        self.head = nn.Linear(4 * 3 * 3, WAYS)
        with torch.no_grad():  # affine parameters away from their (1, 0) initialisation
            for p in self.norm.parameters():
                p.add_(0.3 * torch.randn_like(p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv2(torch.relu(self.norm(self.conv1(x)))).flatten(1))


def norm_net(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "batch":  # BatchNorm's affine parameters away from (1, 0)
        return helpers.conv4(seed, hidden=8)
    if kind == "batch_running":  # eval-mode BatchNorm with running statistics
        model = conv4(seed, track_running_stats=True)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.normal_(0, 0.1)
                    m.running_var.uniform_(0.5, 2.0)
        return model.eval()
    return NormNet(kind).double()


# --- references and helpers ------------------------------------------------------------------


def reference_meta_loss(
    model: nn.Module,
    batch: TaskBatch,
    lr: float,
    steps: int,
    first_order: bool = False,
    adapted: list[str] | None = None,
) -> torch.Tensor:
    """Mean query loss after ``steps`` SGD steps per task: a plain loop with torch.autograd.grad."""
    params = dict(model.named_parameters())
    names = adapted or list(params)
    total = torch.zeros((), dtype=torch.float64)
    for t in range(batch.num_tasks):
        fast = dict(params)
        for _ in range(steps):
            loss = task_loss(functional_call(model, fast, (batch.support_x[t],)), batch.support_y[t])
            grads = torch.autograd.grad(loss, [fast[n] for n in names], create_graph=not first_order)
            fast = {**fast, **{n: fast[n] - lr * g for n, g in zip(names, grads)}}
        total = total + task_loss(functional_call(model, fast, (batch.query_x[t],)), batch.query_y[t])
    return total / batch.num_tasks


def grads_of(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, params, allow_unused=True))


def assert_grads_close(got: list[torch.Tensor], want: list[torch.Tensor], rtol: float) -> None:
    """Every tensor within ``rtol`` relative to the largest gradient entry (conv biases before BatchNorm have zero
    gradient)."""
    scale = max(float(w.abs().max()) for w in want)
    assert scale > 0
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=rtol, atol=rtol * scale)


def finite_differences(f, tensors: list[torch.Tensor], eps: float = 1e-6) -> list[torch.Tensor]:
    """Central differences of the scalar ``f()`` w.r.t. every entry of ``tensors`` (changed in place, then restored)."""
    out = []
    with torch.no_grad():
        for p in tensors:
            g = torch.zeros_like(p)
            flat, gflat = p.view(-1), g.view(-1)
            for i in range(flat.numel()):
                v = float(flat[i])
                flat[i] = v + eps
                up = value(f())
                flat[i] = v - eps
                down = value(f())
                flat[i] = v
                gflat[i] = (up - down) / (2 * eps)
            out.append(g)
    return out


def value(t: torch.Tensor) -> float:
    return float(t.detach())


def rel_err(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    num = sum(float((x - y).square().sum()) for x, y in zip(a, b)) ** 0.5
    return num / sum(float(y.square().sum()) for y in b) ** 0.5


def model_params(algo: nn.Module) -> list[torch.Tensor]:
    return list(algo.model.parameters())


# --- 1. second-order MAML against finite differences -----------------------------------------


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_maml_meta_gradient_matches_central_finite_differences(steps):
    algo = MAML(mlp(hidden=(4, 4)), inner_lr=0.05, inner_steps=steps)
    batch = sinusoids()
    params = model_params(algo)
    exact = grads_of(algo.meta_loss(batch).loss, params)
    fd = finite_differences(lambda: algo.meta_loss(batch).loss, params)
    assert rel_err(exact, fd) < 1e-6
    # the check has teeth: the first-order gradient is measurably different from the true one
    first = grads_of(FOMAML(algo.model, inner_lr=0.05, inner_steps=steps).meta_loss(batch).loss, params)
    assert rel_err(first, fd) > 1e-3


# --- 2. every execution path against a per-task autograd loop, with normalisation layers -------


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_maml_meta_gradient_matches_per_task_loop_on_batchnorm_conv4(execution):
    model = norm_net("batch")
    batch = images()
    algo = MAML(model, inner_lr=0.3, inner_steps=2, execution=execution, chunk_size=2)
    params = model_params(algo)
    loss = algo.meta_loss(batch).loss
    ref = reference_meta_loss(model, batch, 0.3, 2)
    assert value(loss) == pytest.approx(value(ref), rel=1e-12)
    assert_grads_close(grads_of(loss, params), grads_of(ref, params), rtol=1e-9)


@pytest.mark.parametrize("kind", ["instance", "layer", "layer_last", "batch_running"])
@pytest.mark.parametrize("execution", ["vmap", "chunks"])
def test_maml_meta_gradient_is_exact_under_vmap_for_other_normalisations(kind, execution):
    model = norm_net(kind)
    batch = images(1)
    algo = MAML(model, inner_lr=0.3, inner_steps=2, execution=execution, chunk_size=2)
    params = model_params(algo)
    ref = reference_meta_loss(model, batch, 0.3, 2)
    assert_grads_close(grads_of(algo.meta_loss(batch).loss, params), grads_of(ref, params), rtol=1e-9)


def test_split_affine_norms_reproduce_the_fused_functions():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, 5, 5, generator=g, dtype=torch.float64)
    w, b = torch.rand(4, generator=g, dtype=torch.float64) + 0.5, torch.randn(4, generator=g, dtype=torch.float64)
    rm, rv = torch.randn(4, generator=g, dtype=torch.float64), torch.rand(4, generator=g, dtype=torch.float64) + 0.5
    F = torch.nn.functional
    for training in (True, False):
        want = F.batch_norm(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5)
        torch.testing.assert_close(
            inner.split_batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5), want, rtol=1e-12, atol=1e-12
        )
    torch.testing.assert_close(
        inner.split_instance_norm(x, weight=w, bias=b), F.instance_norm(x, weight=w, bias=b), rtol=1e-12, atol=1e-12
    )
    lw, lb = torch.rand(5, 5, generator=g, dtype=torch.float64), torch.randn(5, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        inner.split_layer_norm(x, (5, 5), lw, lb), F.layer_norm(x, (5, 5), lw, lb), rtol=1e-12, atol=1e-12
    )
    with inner.SplitAffineNorms():  # the mode routes the module calls through them, unchanged otherwise
        got = nn.functional.batch_norm(x, None, None, w, b, True)
    torch.testing.assert_close(got, F.batch_norm(x, None, None, w, b, True), rtol=1e-12, atol=1e-12)


# --- 3. first order, Meta-SGD, MAML++, Reptile, ANIL ------------------------------------------


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_first_order_gradient_is_the_query_gradient_at_the_adapted_weights(execution):
    model, batch, lr, steps = norm_net("batch"), images(2), 0.3, 2
    algo = FOMAML(model, inner_lr=lr, inner_steps=steps, execution=execution, chunk_size=2)
    got = grads_of(algo.meta_loss(batch).loss, model_params(algo))
    # independently: adapt each task with detached SGD, then the query-loss gradient at phi
    want = [torch.zeros_like(p) for p in model.parameters()]
    for t in range(batch.num_tasks):
        phi = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
        for _ in range(steps):
            g = torch.autograd.grad(
                task_loss(functional_call(model, phi, (batch.support_x[t],)), batch.support_y[t]), list(phi.values())
            )
            phi = {k: (v - lr * gi).detach().requires_grad_() for (k, v), gi in zip(phi.items(), g)}
        gq = torch.autograd.grad(
            task_loss(functional_call(model, phi, (batch.query_x[t],)), batch.query_y[t]), list(phi.values())
        )
        want = [w + gi / batch.num_tasks for w, gi in zip(want, gq)]
    assert_grads_close(got, want, rtol=1e-9)


def test_metasgd_rate_gradient_matches_finite_differences():
    algo = MetaSGD(mlp(1, hidden=(4, 4)), init_lr=0.05, inner_steps=2)
    with torch.no_grad():  # distinct rates, so that a mix-up between parameters would show
        for p in algo.lrs.parameters():
            p.uniform_(0.01, 0.08)
    batch = sinusoids(3)
    lrs = list(algo.lrs.parameters())
    exact = grads_of(algo.meta_loss(batch).loss, lrs)
    fd = finite_differences(lambda: algo.meta_loss(batch).loss, lrs)
    assert rel_err(exact, fd) < 1e-6


def test_metasgd_with_uniform_rates_is_maml_and_its_rates_are_inspectable():
    batch = sinusoids(3)
    sgd = MetaSGD(mlp(), init_lr=0.05, inner_steps=2, execution="loop")
    maml = MAML(sgd.model, inner_lr=0.05, inner_steps=2)
    params = model_params(sgd)
    assert_grads_close(
        grads_of(sgd.meta_loss(batch).loss, params), grads_of(maml.meta_loss(batch).loss, params), rtol=1e-10
    )
    rates = sgd.learning_rates()
    assert list(rates) == [n for n, _ in sgd.model.named_parameters()]
    assert rates["net.0.weight"] == pytest.approx({"mean": 0.05, "std": 0.0, "min": 0.05, "max": 0.05})
    assert sgd.lrs["net-0-weight"].shape == sgd.model.net[0].weight.shape


def test_lslr_rates_get_the_finite_difference_gradient():
    algo = MAML(mlp(2), inner_lr=0.05, inner_steps=2, learn_inner_lr=True)
    with torch.no_grad():
        for p in algo.inner_lrs.parameters():
            p.uniform_(0.02, 0.08)
    batch = sinusoids(3)
    lrs = list(algo.inner_lrs.parameters())
    assert all(p.shape == (2,) for p in lrs)
    exact = grads_of(algo.meta_loss(batch).loss, lrs)
    algo.eval()  # meta_step stays put during the finite differences (nothing reads it here anyway)
    fd = finite_differences(lambda: algo.meta_loss(batch).loss, lrs)
    assert rel_err(exact, fd) < 1e-6


def test_multi_step_loss_weights_follow_maml_plus_plus():
    w0 = multi_step_loss_weights(5, 0, 100)
    torch.testing.assert_close(w0, torch.full((5,), 0.2, dtype=torch.float64))
    w = multi_step_loss_weights(5, 50, 100)
    assert float(w.sum()) == pytest.approx(1.0)
    assert w[0] == pytest.approx(0.2 - 0.5 * 0.2) and w[-1] == pytest.approx(1 - 4 * 0.1)
    assert multi_step_loss_weights(5, 99, 100)[0] == pytest.approx(0.03 / 5)  # floored
    torch.testing.assert_close(
        multi_step_loss_weights(5, 100, 100), torch.tensor([0, 0, 0, 0, 1.0], dtype=torch.float64)
    )


def test_multi_step_loss_is_the_weighted_sum_of_per_step_query_losses():
    model, batch = mlp(3), sinusoids(3)
    algo = MAML(model, inner_lr=0.05, inner_steps=3, multi_step_loss=True, msl_anneal_steps=4)
    algo.meta_step.fill_(1)
    weights = multi_step_loss_weights(3, 1, 4)
    params = model_params(algo)
    ref = sum(w * reference_meta_loss(model, batch, 0.05, k + 1) for k, w in enumerate(weights.tolist()))
    out = algo.meta_loss(batch)
    assert int(algo.meta_step) == 2
    assert out.metrics["mse"] == pytest.approx(value(reference_meta_loss(model, batch, 0.05, 3)), rel=1e-10)
    assert_grads_close(grads_of(out.loss, params), grads_of(ref, params), rtol=1e-9)


def test_derivative_order_annealing_switches_to_second_order():
    model, batch = mlp(4), sinusoids(3)
    algo = MAML(model, inner_lr=0.05, inner_steps=2, first_order_until=2)
    params = model_params(algo)
    first = grads_of(reference_meta_loss(model, batch, 0.05, 2, first_order=True), params)
    second = grads_of(reference_meta_loss(model, batch, 0.05, 2), params)
    for expected in (first, first, second):
        assert algo.is_first_order() == (expected is first)
        assert_grads_close(grads_of(algo.meta_loss(batch).loss, params), expected, rtol=1e-9)
    assert int(algo.meta_step) == 3


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("execution", EXECUTIONS)
def test_reptile_gradient_is_theta_minus_mean_adapted_theta(optimizer, execution):
    # Adam divides by sqrt(v): a parameter whose gradient is zero up to rounding (a conv bias before
    # BatchNorm) would move by rounding noise, so the Adam case runs without BatchNorm.
    model = norm_net("batch") if optimizer == "sgd" else conv4(batch_norm=False)
    batch, lr, steps = images(3), 0.05, 3
    algo = Reptile(
        model,
        inner_lr=lr,
        inner_steps=steps,
        inner_optimizer=optimizer,
        inner_state="fresh",
        execution=execution,
        chunk_size=2,
    )
    out = algo.meta_loss(batch)
    out.loss.backward()
    # independently: torch.optim on a copy of the model per task, full support set each step
    finals = []
    for t in range(batch.num_tasks):
        copy_ = copy.deepcopy(model)
        opt = (
            torch.optim.SGD(copy_.parameters(), lr=lr)
            if optimizer == "sgd"
            else torch.optim.Adam(copy_.parameters(), lr=lr, betas=(0.0, 0.999))
        )
        for _ in range(steps):
            opt.zero_grad()
            task_loss(copy_(batch.support_x[t]), batch.support_y[t]).backward()
            opt.step()
        finals.append([p.detach() for p in copy_.parameters()])
    want = [p.detach() - torch.stack(ps).mean(0) for p, ps in zip(model.parameters(), zip(*finals))]
    assert_grads_close([p.grad for p in model.parameters()], want, rtol=1e-9)
    assert out.metrics["surrogate"] == pytest.approx(0.5 * sum(float(w.square().sum()) for w in want), rel=1e-9)
    assert max(float(w.abs().max()) for w in want) > 1e-3  # the inner loop moved


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_reptile_persistent_adam_state_matches_one_torch_adam_carried_across_tasks(execution):
    # The authors' code resets only the weights before each task: one Adam, whose moments and step
    # count carry from task to task and meta-step to meta-step; evaluation starts from them and
    # keeps nothing. Reference: one torch.optim.Adam over a copy of the model, reset to theta per task.
    model, lr, steps, eval_steps = conv4(batch_norm=False), 0.05, 2, 3
    algo = Reptile(
        model, inner_lr=lr, inner_steps=steps, inner_steps_eval=eval_steps, execution=execution, chunk_size=2
    )
    assert algo.persistent and int(algo.adam_step) == 0
    outer = torch.optim.SGD(algo.parameters(), lr=0.5)
    copy_ = copy.deepcopy(model)
    inner_opt = torch.optim.Adam(copy_.parameters(), lr=lr, betas=(0.0, 0.999))
    for meta_step in range(2):
        batch = images(3 + meta_step, tasks=3)
        theta = [p.detach().clone() for p in model.parameters()]
        finals = []
        for t in range(batch.num_tasks):
            with torch.no_grad():
                for c, p in zip(copy_.parameters(), theta):
                    c.copy_(p)
            for _ in range(steps):
                inner_opt.zero_grad()
                task_loss(copy_(batch.support_x[t]), batch.support_y[t]).backward()
                inner_opt.step()
            finals.append([p.detach().clone() for p in copy_.parameters()])
        outer.zero_grad()
        algo.meta_loss(batch).loss.backward()
        want = [p - torch.stack(ps).mean(0) for p, ps in zip(theta, zip(*finals))]
        assert_grads_close([p.grad for p in model.parameters()], want, rtol=1e-9)
        outer.step()
    assert int(algo.adam_step) == 2 * 3 * steps  # 2 meta-steps of 3 tasks
    # evaluation starts every task from the carried state and keeps nothing
    batch = images(9)
    before = {k: v.clone() for k, v in algo.state_dict().items()}
    outputs = algo.predict(batch)
    for t in range(batch.num_tasks):
        with torch.no_grad():
            for c, p in zip(copy_.parameters(), model.parameters()):
                c.copy_(p)
        opt = copy.deepcopy(inner_opt)
        opt.param_groups[0]["params"] = list(copy_.parameters())
        opt.state = {
            c: copy.deepcopy(inner_opt.state[o])
            for c, o in zip(copy_.parameters(), inner_opt.param_groups[0]["params"])
        }
        for _ in range(eval_steps):
            opt.zero_grad()
            task_loss(copy_(batch.support_x[t]), batch.support_y[t]).backward()
            opt.step()
        torch.testing.assert_close(outputs[t], copy_(batch.query_x[t]).detach(), rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(
            algo.adapt(batch.support_x[t], batch.support_y[t])(batch.query_x[t]), outputs[t], rtol=1e-10, atol=1e-10
        )
    assert all(torch.equal(v, algo.state_dict()[k]) for k, v in before.items())


def test_minibatch_indices_read_successive_shuffles_of_the_support_set():
    g = torch.Generator().manual_seed(0)
    idx = inner.minibatch_indices(5, 3, 7, g)
    assert idx.shape == (7, 3)
    flat = idx.flatten().tolist()
    for start in range(0, 20, 5):  # every full round is a permutation, and batches span rounds
        assert sorted(flat[start : start + 5]) == list(range(5))
    assert inner.minibatch_indices(2, 5, 1, g).flatten().bincount().tolist() in (
        [3, 2],
        [2, 3],
    )  # a batch larger than the set


@pytest.mark.parametrize("execution", EXECUTIONS)
@pytest.mark.parametrize("state", ["persistent", "fresh"])
def test_reptile_inner_minibatches_match_torch_adam_on_the_same_batches(execution, state):
    # Training on mini-batches (the authors' --inner-batch): step k of task t uses the support
    # examples idx[t, k], drawn task by task from torch's RNG. Reference: torch.optim.Adam on a copy.
    model, lr, steps, size = conv4(batch_norm=False), 0.05, 3, 4
    algo = Reptile(
        model, inner_lr=lr, inner_steps=steps, inner_state=state, inner_batch=size, execution=execution, chunk_size=2
    )
    batch = images(5)
    torch.manual_seed(11)
    out = algo.meta_loss(batch)
    out.loss.backward()
    torch.manual_seed(11)
    idx = [inner.minibatch_indices(WAYS * SHOTS, size, steps) for _ in range(batch.num_tasks)]
    theta = [p.detach().clone() for p in model.parameters()]
    copy_ = copy.deepcopy(model)
    opt = torch.optim.Adam(copy_.parameters(), lr=lr, betas=(0.0, 0.999))
    finals = []
    for t in range(batch.num_tasks):
        with torch.no_grad():
            for c, p in zip(copy_.parameters(), theta):
                c.copy_(p)
        if state == "fresh":
            opt = torch.optim.Adam(copy_.parameters(), lr=lr, betas=(0.0, 0.999))
        for k in range(steps):
            opt.zero_grad()
            task_loss(copy_(batch.support_x[t][idx[t][k]]), batch.support_y[t][idx[t][k]]).backward()
            opt.step()
        finals.append([p.detach().clone() for p in copy_.parameters()])
    want = [p - torch.stack(ps).mean(0) for p, ps in zip(theta, zip(*finals))]
    assert_grads_close([p.grad for p in model.parameters()], want, rtol=1e-9)
    whole = Reptile(
        copy.deepcopy(model), inner_lr=lr, inner_steps=steps, inner_state=state, execution=execution, chunk_size=2
    )
    whole.model.zero_grad()
    whole.meta_loss(batch).loss.backward()
    assert (
        max(float((p.grad - w).abs().max()) for p, w in zip(whole.model.parameters(), want)) > 1e-4
    )  # the batches mattered


def test_reptile_inner_batch_is_validated_and_evaluation_uses_the_whole_support_set():
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ConfigError, match="inner_batch=.* is invalid; it must be an integer >= 1"):
            Reptile(mlp(), inner_batch=bad)
    batch = images(6)
    a = Reptile(conv4(batch_norm=False), inner_lr=0.05, inner_steps=2, inner_batch=1)
    b = Reptile(conv4(batch_norm=False), inner_lr=0.05, inner_steps=2)
    torch.testing.assert_close(a.predict(batch), b.predict(batch), rtol=0, atol=0)


def test_reptile_inner_state_is_validated():
    with pytest.raises(ConfigError, match="inner_state='sometimes' is unknown; choose one of persistent, fresh"):
        Reptile(mlp(), inner_state="sometimes")
    assert not Reptile(mlp(), inner_optimizer="sgd").persistent and not any(
        k.startswith("adam") for k in Reptile(mlp(), inner_optimizer="sgd").state_dict()
    )


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_anil_adapts_only_the_head_and_matches_a_per_task_loop(execution):
    model, batch = norm_net("batch"), images(4)
    algo = ANIL(model, inner_lr=0.3, inner_steps=2, head="head", execution=execution, chunk_size=2)
    params = model_params(algo)
    ref = reference_meta_loss(model, batch, 0.3, 2, adapted=["head.weight", "head.bias"])
    assert_grads_close(grads_of(algo.meta_loss(batch).loss, params), grads_of(ref, params), rtol=1e-9)
    fast = algo.adapt(batch.support_x[0], batch.support_y[0]).params
    for name, p in model.named_parameters():
        if name.startswith("head."):
            assert not torch.equal(fast[name], p)
        else:
            assert torch.equal(fast[name], p.detach())


def test_anil_rejects_a_head_that_is_not_last_or_missing():
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * self.head(x)

    with pytest.raises(ConfigError, match="produce the model's output"):
        ANIL(Scaled().double()).meta_loss(sinusoids(2))
    with pytest.raises(ConfigError, match="head='classifier' is not a submodule"):
        ANIL(mlp(), head="classifier")


# --- 4. adapt is pure, predict is adapt batched ----------------------------------------------


def all_algorithms(execution: str) -> list[nn.Module]:
    kw = {"execution": execution, "chunk_size": 2}
    running = conv4(5, track_running_stats=True)  # training mode: a forward would update running statistics
    return [
        MAML(running, inner_lr=0.3, inner_steps=1, inner_steps_eval=2, **kw),
        MAML(conv4(6), inner_lr=0.3, inner_steps=2, learn_inner_lr=True, inner_steps_eval=3, **kw),
        FOMAML(conv4(7), inner_lr=0.3, inner_steps=2, **kw),
        MetaSGD(conv4(8), init_lr=0.3, inner_steps=1, inner_steps_eval=2, **kw),
        ANIL(conv4(9), inner_lr=0.3, inner_steps=2, **kw),
        Reptile(conv4(10), inner_lr=0.01, inner_steps=2, **kw),
    ]


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_adapt_leaves_state_bit_identical_and_predict_is_adapt_batched(execution):
    batch = images(5)
    for algo in all_algorithms(execution):
        before = {k: v.clone() for k, v in algo.state_dict().items()}
        with torch.no_grad():
            outputs = algo.predict(batch)
        assert outputs.shape == (TASKS, WAYS * QUERIES, WAYS)
        assert not outputs.requires_grad
        for t in range(batch.num_tasks):
            predictor = algo.adapt(batch.support_x[t], batch.support_y[t])
            torch.testing.assert_close(predictor(batch.query_x[t]), outputs[t], rtol=1e-10, atol=1e-10)
        after = algo.state_dict()
        assert list(after) == list(before)
        for k, v in before.items():
            assert torch.equal(after[k], v), (type(algo).__name__, k)
        assert all(p.grad is None for p in algo.parameters())
        # adaptation changes the outputs (the inner loop ran)
        unadapted = functional_call(algo.model, {}, (batch.query_x[0],))
        assert not torch.allclose(unadapted, outputs[0])


def test_meta_loss_metrics_and_regression_shapes():
    batch = sinusoids(4)
    for algo in (
        MAML(mlp(), inner_lr=0.01),
        MetaSGD(mlp(), init_lr=0.01),
        ANIL(mlp(), inner_lr=0.01, head="net.4"),
        Reptile(mlp()),
    ):
        out = algo.meta_loss(batch)
        assert out.loss.ndim == 0 and out.loss.requires_grad
        assert set(out.metrics) >= {"loss", "mse"}
        assert algo.predict(batch).shape == (4, 5, 1)
    out = MAML(conv4(), inner_lr=0.3).meta_loss(images())
    assert 0.0 <= out.metrics["acc"] <= 1.0


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_dropout_models_run_on_every_path_with_independent_masks_per_task(execution):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 1)).double()
    one = sinusoids(1)
    same = TaskBatch(*(v.expand(4, *v.shape[1:]) for v in (one.support_x, one.support_y, one.query_x, one.query_y)))
    outputs = MAML(model, inner_lr=0.01, execution=execution, chunk_size=2).predict(same)
    assert torch.isfinite(outputs).all()
    assert not torch.equal(outputs[0], outputs[1])  # four copies of one task, four dropout masks


def test_zero_inner_steps_is_the_plain_query_loss():
    model, batch = mlp(), sinusoids(3)
    loss = MAML(model, inner_steps=0).meta_loss(batch).loss
    assert value(loss) == pytest.approx(value(reference_meta_loss(model, batch, 0.4, 0)), rel=1e-12)


# --- options, errors, registry ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda m: MAML(m, inner_steps=-1), "inner_steps=-1 is invalid; it must be an integer >= 0"),
        (
            lambda m: MAML(m, execution="threads"),
            "execution='threads' is unknown; choose one of auto, vmap, chunks, loop",
        ),
        (lambda m: MAML(m, chunk_size=0), "chunk_size=0 is invalid"),
        (lambda m: MAML(m, inner_lr=0.0), "inner_lr=0.0 is invalid; it must be a finite number > 0"),
        (lambda m: MAML(m, inner_steps=0, learn_inner_lr=True), "learn_inner_lr=True needs inner_steps >= 1"),
        (lambda m: FOMAML(m, first_order=False), "FOMAML is first order by definition"),
        (lambda m: MetaSGD(m, init_lr=-1), "init_lr=-1 is invalid"),
        (lambda m: Reptile(m, inner_steps=0), "inner_steps=0 is invalid; it must be an integer >= 1"),
        (
            lambda m: Reptile(m, inner_optimizer="rmsprop"),
            "inner_optimizer='rmsprop' is unknown; choose one of sgd, adam",
        ),
        (lambda m: Reptile(m, adam_beta1=1.0), "adam_beta1=1.0 is invalid"),
    ],
)
def test_bad_options_are_one_line_config_errors(build, message):
    with pytest.raises(ConfigError) as info:
        build(mlp())
    assert message in str(info.value) and "\n" not in str(info.value)


def test_registry_builds_every_gradient_based_algorithm():
    for name, cls in (("maml", MAML), ("fomaml", FOMAML), ("metasgd", MetaSGD), ("anil", ANIL), ("reptile", Reptile)):
        built = algorithm_class(name)
        assert built is cls and built.needs_head
        algo = built(conv4())
        assert isinstance(algo, nn.Module) and algo.model is not None
    assert FOMAML(conv4()).first_order
    assert "first_order" not in inspect.signature(FOMAML).parameters
    assert "inner_lr" in inspect.signature(FOMAML).parameters


def test_norm_mode_names_the_batchnorm_setting():
    assert inner.norm_mode(conv4()) == "transductive"
    assert inner.norm_mode(conv4(track_running_stats=True).eval()) == "running"
    assert inner.norm_mode(mlp()) == "none"


def test_auto_execution_follows_the_measured_choice():
    images = torch.zeros(2, 3, 1, 8, 8)
    vectors = torch.zeros(2, 3, 1)
    assert inner.resolve_execution("auto", images) == "loop"
    assert inner.resolve_execution("auto", vectors) == "vmap"
    assert inner.resolve_execution("chunks", images) == "chunks"


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fine_tune_takes_the_same_steps_as_the_first_order_inner_loop(optimizer):
    """adapt's plain-autograd fine_tune equals inner_loop(first_order=True) in float64, unused parameters included."""
    from fastadapt.algorithms.base import task_loss

    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
            self.unused = nn.Linear(2, 2)  # a parameter the loss never reaches: its step is zero in both

        def forward(self, xs):
            return self.body(xs)

    model = Net().double()
    x, y = torch.randn(9, 4, dtype=torch.float64), torch.arange(9) % 3
    params = inner.trainable_params(model)
    rates = [{k: 0.1 * (j + 1) for k in params} for j in range(3)]

    def forward(p, xs):
        return functional_call(model, p, (xs,))

    got = inner.fine_tune(forward, params, x, y, rates, optimizer, (0.5, 0.9))
    with torch.enable_grad():
        want = inner.inner_loop(
            lambda p: task_loss(forward(p, x), y),
            inner.detached(params),
            rates,
            first_order=True,
            optimizer=optimizer,
            betas=(0.5, 0.9),
        )[3]
    assert got.keys() == want.keys()
    for k in got:
        torch.testing.assert_close(got[k], want[k].detach(), rtol=1e-12, atol=1e-12)
        assert not got[k].requires_grad
    assert torch.equal(got["unused.weight"], params["unused.weight"].detach())
