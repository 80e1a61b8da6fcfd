"""iMAML, in float64: the implicit meta-gradient against a closed form on quadratics and against differentiating
through a long, converged proximal inner loop on a tiny MLP; conjugate gradients on an SPD system; memory flat in
the inner steps (live saved tensors); the predictor; and a short run through the engine."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import fastadapt
import helpers
from fastadapt import ConfigError, TaskBatch
from fastadapt.algorithms.imaml import IMAML, conjugate_gradient, implicit_meta_gradient, proximal_descent
from helpers import assert_same_grads, grads, labelled, mlp

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


def spd(n: int, seed: int, low: float = 0.5) -> torch.Tensor:
    """A random symmetric positive definite ``[n, n]`` matrix, eigenvalues in ``[low, low + 3]``."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    return q @ torch.diag(low + 3 * torch.rand(n, generator=g, dtype=F64)) @ q.T


def tasks(count: int = 2, seed: int = 0) -> TaskBatch:
    """``count`` 3-way tasks of 4 features: 6 support and 6 query examples each (float64)."""
    parts = [labelled(6, seed + 10 * t) + labelled(6, seed + 10 * t + 5) for t in range(count)]
    sx, sy, qx, qy = (torch.stack([p[i] for p in parts]) for i in range(4))
    return TaskBatch(sx, sy, qx, qy, torch.arange(3).repeat(count, 1))


# --- 1. closed forms: quadratic inner and outer losses, conjugate gradients ----------------------------------------


def test_implicit_gradient_equals_the_closed_form_on_quadratic_losses():
    n, lam = 6, 1.5
    a_mat = spd(n, 0)
    g = torch.Generator().manual_seed(1)
    a, b, theta = (torch.randn(n, generator=g, dtype=F64) for _ in range(3))

    def train_loss(p):  # 1/2 (phi - a)^T A (phi - a)
        d = p["w"] - a
        return 0.5 * d @ a_mat @ d

    eye = torch.eye(n, dtype=F64)
    phi_star = torch.linalg.solve(a_mat + lam * eye, a_mat @ a + lam * theta)  # the exact proximal solution
    got = implicit_meta_gradient(train_loss, {"w": phi_star}, {"w": phi_star - b}, lam, cg_steps=n)["w"]
    want = torch.linalg.solve(eye + a_mat / lam, phi_star - b)
    assert float((got - want).abs().max()) <= 1e-8 * float(want.abs().max())
    # with too few CG steps it is not there yet (the check can fail)
    short = implicit_meta_gradient(train_loss, {"w": phi_star}, {"w": phi_star - b}, lam, cg_steps=1)["w"]
    assert float((short - want).abs().max()) > 1e-4
    # and the inner loop reaches phi* (lr * (lambda_max(A) + lam) < 2)
    phi = proximal_descent(lambda p: train_loss(p), {"w": theta}, lam, 0.2, 400)["w"]
    torch.testing.assert_close(phi, phi_star, rtol=1e-10, atol=1e-10)


def test_conjugate_gradient_solves_an_spd_system_in_n_steps():
    n = 12
    a_mat = spd(n, 3, low=0.1)
    b = torch.randn(n, generator=torch.Generator().manual_seed(4), dtype=F64)
    calls = []

    def matvec(v):
        calls.append(1)
        return a_mat @ v

    x = conjugate_gradient(matvec, b, n)
    torch.testing.assert_close(x, torch.linalg.solve(a_mat, b), rtol=1e-9, atol=1e-9)
    assert len(calls) <= n
    residuals = [float((a_mat @ conjugate_gradient(lambda v: a_mat @ v, b, k) - b).norm()) for k in (1, 4, n)]
    assert residuals[0] > residuals[1] > residuals[2]
    assert torch.equal(conjugate_gradient(matvec, torch.zeros(n, dtype=F64), 5), torch.zeros(n, dtype=F64))


def test_conjugate_gradient_stops_at_non_positive_curvature():
    a_mat = -torch.eye(3, dtype=F64)  # negative definite: no step is taken
    b = torch.ones(3, dtype=F64)
    assert torch.equal(conjugate_gradient(lambda v: a_mat @ v, b, 3), torch.zeros(3, dtype=F64))


# --- 2. against differentiating through a converged proximal inner loop -------------------------------------------


def cross_entropy_of(model, x, y):
    return lambda p: F.cross_entropy(functional_call(model, p, (x,)), y)


def unrolled_meta_gradient(model, batch: TaskBatch, lam: float, lr: float, steps: int) -> dict[str, torch.Tensor]:
    """The gradient of the mean query loss after ``steps`` proximal GD steps, by plain autograd THROUGH the loop."""
    theta = dict(model.named_parameters())
    total = torch.zeros((), dtype=F64)
    for t in range(batch.num_tasks):
        sx, sy, qx, qy = batch.support_x[t], batch.support_y[t], batch.query_x[t], batch.query_y[t]
        phi = dict(theta)
        for _ in range(steps):
            loss = F.cross_entropy(functional_call(model, phi, (sx,)), sy)
            gs = torch.autograd.grad(loss, list(phi.values()), create_graph=True)
            phi = {k: v - lr * (g + lam * (v - theta[k])) for (k, v), g in zip(phi.items(), gs)}
        total = total + F.cross_entropy(functional_call(model, phi, (qx,)), qy)
    model.zero_grad()
    (total / batch.num_tasks).backward()
    return grads(model)


def smooth_mlp() -> nn.Module:
    """4 -> 5 -> 3 with tanh: smooth, so gradient descent on the proximal problem converges (a ReLU kink can
    make it cycle between two points, and then neither gradient is the implicit one)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def test_implicit_gradient_equals_the_gradient_through_a_converged_inner_loop():
    model, batch = smooth_mlp(), tasks()
    n = sum(p.numel() for p in model.parameters())  # 43: CG exact after n steps
    lam, lr, steps = 2.0, 0.2, 200
    algo = IMAML(model, lam=lam, inner_lr=lr, inner_steps=steps, cg_steps=n)
    algo.zero_grad()
    out = algo.meta_loss(batch)
    out.loss.backward()
    got = grads(model)
    want = unrolled_meta_gradient(model, batch, lam, lr, steps)
    assert_same_grads(got, want, tol=1e-10)  # converged: measured ~1e-15 relative (3e-6 after 50 steps)
    # the reported loss is the query loss after the inner loop
    with torch.no_grad():
        pred = algo.predict(TaskBatch(batch.support_x, batch.support_y, batch.query_x, batch.query_y, batch.classes))
    query = sum(F.cross_entropy(pred[t], batch.query_y[t]) for t in range(2)) / 2
    assert float(out.loss.detach()) == pytest.approx(float(query), rel=1e-12) and out.metrics["loss"] == pytest.approx(
        float(query), rel=1e-12
    )
    # teeth: a short unrolled loop (not converged) and first order (g = grad L_Q) both differ
    assert_not_same(got, unrolled_meta_gradient(model, batch, lam, lr, 3))
    theta = {k: v.detach() for k, v in model.named_parameters()}
    first_order = {k: torch.zeros_like(v) for k, v in theta.items()}
    for t in range(batch.num_tasks):
        sx, sy, qx, qy = batch.support_x[t], batch.support_y[t], batch.query_x[t], batch.query_y[t]
        phi = proximal_descent(cross_entropy_of(model, sx, sy), theta, lam, lr, steps)
        g = torch.func.grad(cross_entropy_of(model, qx, qy))(phi)
        first_order = {k: v + g[k] / batch.num_tasks for k, v in first_order.items()}
    assert_not_same(got, first_order)


def assert_not_same(a, b, rel=1e-4):
    scale = max(float(v.abs().max()) for v in b.values())
    assert max(float((a[k] - b[k]).abs().max()) for k in a) > rel * scale


# --- 3. memory does not grow with the inner steps ------------------------------------------------------------------


class LiveSaved:
    """Counts the tensors autograd saves for backward that are alive at once (their peak), by saved-tensor hooks."""

    def __init__(self) -> None:
        self.live = self.peak = 0

    def __enter__(self):
        counter = self

        class Packed:
            def __init__(self, t):
                self.t = t
                counter.live += 1
                counter.peak = max(counter.peak, counter.live)

            def __del__(self):
                counter.live -= 1

        self._hooks = torch.autograd.graph.saved_tensors_hooks(Packed, lambda p: p.t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)


def peak_saved(algo, batch) -> int:
    with LiveSaved() as count:
        algo.meta_loss(batch).loss.backward()
    return count.peak


def test_live_saved_tensors_do_not_grow_with_inner_steps():
    batch = tasks(1)
    one = peak_saved(IMAML(mlp(hidden=(5,), inp=4, out=3), inner_steps=1), batch)
    fifty = peak_saved(IMAML(mlp(hidden=(5,), inp=4, out=3), inner_steps=50), batch)
    assert one > 0 and fifty == one
    # teeth: differentiating through the loop (second-order MAML's way) keeps its graph: the same count grows
    model = mlp(hidden=(5,), inp=4, out=3)
    unrolled = []
    for steps in (1, 5):
        with LiveSaved() as count:
            unrolled_meta_gradient(model, batch, 2.0, 0.1, steps)
        unrolled.append(count.peak)
    assert unrolled[1] > unrolled[0] + 10


# --- 4. the predictor and options ----------------------------------------------------------------------------------


def test_adapt_runs_the_proximal_inner_loop_and_update_after_reset_equals_adapt():
    algo = IMAML(mlp(hidden=(5,), inp=4, out=3), lam=2.0, inner_lr=0.2, inner_steps=4, inner_steps_eval=6)
    before = {k: v.clone() for k, v in algo.state_dict().items()}
    x, y = labelled(6, 1)
    qx = labelled(5, 2)[0]
    predictor = algo.adapt(x, y)
    theta = {k: v.detach() for k, v in algo.model.named_parameters()}
    want = proximal_descent(lambda p: F.cross_entropy(functional_call(algo.model, p, (x,)), y), theta, 2.0, 0.2, 6)
    torch.testing.assert_close(predictor(qx), functional_call(algo.model, want, (qx,)), rtol=1e-12, atol=1e-12)
    first = predictor(qx).clone()
    predictor.update(*labelled(4, 3))
    assert not torch.equal(predictor(qx), first)
    predictor.reset()
    predictor.update(x, y)  # the window policy: from (and anchored at) the meta-learnt weights
    torch.testing.assert_close(predictor(qx), first, rtol=1e-12, atol=1e-12)
    assert predictor.explain(qx)["kind"] == "adaptation"
    for k, v in algo.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize(
    "options, match",
    [
        ({"lam": 0.0}, "lam"),
        ({"inner_lr": -1.0}, "inner_lr"),
        ({"inner_lr": 1.0, "lam": 2.0}, "inner_lr \\* lam"),
        ({"inner_steps": 0}, "inner_steps"),
        ({"cg_steps": 0}, "cg_steps"),
        ({"cg_damping": -1.0}, "cg_damping"),
    ],
)
def test_bad_options_are_one_line_config_errors(options, match):
    with pytest.raises(ConfigError, match=match) as e:
        IMAML(mlp(hidden=(5,), inp=4, out=3), **options)
    assert "\n" not in str(e.value)


# --- 5. through the engine ------------------------------------------------------------------------------------------


def test_it_trains_and_evaluates_through_the_engine_on_the_bundled_omniglot(tmp_path):
    cfg = helpers.tiny(
        tmp_path,
        "algorithm.target=fastadapt.algorithms.imaml:IMAML",
        "algorithm.inner_lr=0.1",
        "algorithm.inner_steps=2",
        "algorithm.cg_steps=2",
    )
    result = fastadapt.train(cfg)
    assert result.steps == 6 and not result.interrupted
    rows = [json.loads(x) for x in (cfg.out_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert len(train_rows) == 6 and all(math.isfinite(r["loss"]) and 0 <= r["acc"] <= 1 for r in train_rows)
    assert 0.0 <= result.tests["5w1s"].mean <= 1.0 and result.tests["5w1s"].episodes == 6
