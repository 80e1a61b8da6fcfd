"""fastadapt.analysis in float64: Hessian-vector products against the full Hessian, power iteration against
eigvalsh, the Taylor residual of Nichol et al.'s meta-gradient expansion shrinking as a^2, the first-order error
against its closed form on a quadratic, the runner's files and the command's one-line errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from fastadapt.algorithms import MAML, inner
from fastadapt.algorithms.base import task_loss
from fastadapt.analysis import (
    adapted_spread,
    analyze,
    avg_grad_inner_by_dot,
    curvatures,
    first_order_error,
    flat,
    full_hessian,
    gradient_terms,
    hvp,
    loglog_slope,
    mean_pairwise_cosine,
    measured,
    power_iteration,
    predicted,
    split_minibatches,
    top_eigenvalue,
    unflat,
)
from fastadapt.analysis.terms import _maml_gradient
from fastadapt.cli import main
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError

F64 = torch.float64


def tanh_mlp(seed: int = 0, hidden: int = 6) -> nn.Module:
    """A smooth float64 regression net 1 -> hidden -> hidden -> 1 (tanh: the Taylor expansion holds at every a)."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.8)
    return net.double()


def regression_tasks(tasks: int, k: int, per_batch: int = 6, seed: int = 1) -> list[list[tuple[torch.Tensor, ...]]]:
    """``tasks`` sinusoid-like tasks, each as ``k`` mini-batches ``(x [B, 1], y [B, 1])``."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(tasks):
        amp, phase = 0.5 + torch.rand((), generator=g, dtype=F64), torch.rand((), generator=g, dtype=F64)
        x = 4 * torch.rand(k * per_batch, 1, generator=g, dtype=F64) - 2
        out.append(split_minibatches(x, amp * torch.sin(x - phase), k, g))
    return out


def model_loss(model: nn.Module):
    return lambda params, x, y: task_loss(inner.call(model, params, x), y)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in inner.trainable_params(model).items()}


# --- curvature -----------------------------------------------------------------------------------------------------


def test_hvp_equals_the_full_hessian_times_the_vector():
    model = tanh_mlp()
    theta = weights(model)
    x, y = regression_tasks(1, 2)[0][0]

    def loss(p):
        return model_loss(model)(p, x, y)

    h = full_hessian(loss, theta)
    assert h.shape == (flat(theta).numel(),) * 2 and torch.allclose(h, h.T, atol=1e-12)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        v = torch.randn(h.shape[0], generator=g, dtype=F64)
        got = flat(hvp(loss, theta, unflat(v, theta)))
        assert torch.allclose(got, h @ v, rtol=1e-10, atol=1e-12)


def test_hvp_of_a_quadratic_is_its_matrix():
    g = torch.Generator().manual_seed(0)
    b = torch.randn(5, 5, generator=g, dtype=F64)
    a = b @ b.T - 2 * torch.eye(5, dtype=F64)  # indefinite
    theta = {"w": torch.randn(5, generator=g, dtype=F64)}
    v = torch.randn(5, generator=g, dtype=F64)
    got = hvp(lambda p: 0.5 * p["w"] @ a @ p["w"] + p["w"].sum(), theta, {"w": v})["w"]
    assert torch.allclose(got, a @ v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_power_iteration_finds_the_eigenvalue_of_largest_magnitude(sign):
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=F64))
    values = torch.tensor([sign * 5.0, 3.0, -2.5, 1.0, 0.5, -0.3, 0.2, 0.1], dtype=F64)
    a = q @ torch.diag(values) @ q.T
    found = power_iteration(lambda v: a @ v, 8, iterations=500, tol=1e-13)
    want = torch.linalg.eigvalsh(a)
    assert found.converged and found.value == pytest.approx(float(want[want.abs().argmax()]), rel=1e-9)
    assert torch.allclose(a @ found.vector, found.value * found.vector, atol=1e-5)


def test_top_eigenvalue_of_a_network_matches_eigvalsh_of_its_hessian():
    model = tanh_mlp(seed=2)
    theta = weights(model)
    x, y = regression_tasks(1, 2, seed=4)[0][0]

    def loss(p):
        return model_loss(model)(p, x, y)

    eig = torch.linalg.eigvalsh(full_hessian(loss, theta))
    found = top_eigenvalue(loss, theta, iterations=2000, tol=1e-12)
    assert found.value == pytest.approx(float(eig[eig.abs().argmax()]), rel=1e-6)


# --- the meta-gradient's terms -------------------------------------------------------------------------------------


def test_split_minibatches_are_disjoint_and_balanced_by_class():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(30, dtype=F64)[:, None]
    y = torch.arange(3).repeat_interleave(10)
    batches = split_minibatches(x, y, 3, g)
    seen = torch.cat([b[0][:, 0] for b in batches])
    assert len(batches) == 3 and seen.unique().numel() == 30
    for bx, by in batches:
        counts = torch.bincount(by, minlength=3)
        assert len(by) == 10 and int(counts.max() - counts.min()) <= 1
        assert torch.equal(by, y[bx[:, 0].long()])


def test_avg_grad_inner_by_hessian_vector_products_equals_half_the_gradient_of_the_dot():
    model = tanh_mlp()
    tasks = regression_tasks(3, 3)
    terms = gradient_terms(model_loss(model), weights(model), tasks)
    other = avg_grad_inner_by_dot(model_loss(model), weights(model), tasks)
    assert terms.avg_grad_inner.norm() > 1e-3
    assert torch.allclose(terms.avg_grad_inner, other, rtol=1e-10, atol=1e-13)


def test_the_measured_maml_gradient_is_the_maml_algorithms_gradient():
    """k = 2: one inner step on mini-batch 1, the loss on mini-batch 2 = MAML with support 1 and query 2."""
    model = tanh_mlp(seed=5)
    (b1, b2) = regression_tasks(1, 2, seed=6)[0]
    a = 0.05
    ours = _maml_gradient(model_loss(model), weights(model), [b1, b2], a, False)
    algo = MAML(model, inner_lr=a, inner_steps=1, execution="loop")
    batch = TaskBatch(b1[0][None], b1[1][None], b2[0][None], b2[1][None], None)
    algo.meta_loss(batch).loss.backward()
    theirs = torch.cat([p.grad.reshape(-1) for p in inner.trainable_params(model).values()])
    assert torch.allclose(ours, theirs, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("k", [2, 3])
def test_the_taylor_residual_of_each_meta_gradient_shrinks_as_a_squared(k):
    model = tanh_mlp()
    theta, loss, tasks = weights(model), model_loss(model), regression_tasks(3, k)
    terms = gradient_terms(loss, theta, tasks)
    steps = [1e-4 * 2**i for i in range(5)]
    residuals = {n: [] for n in ("maml", "fomaml", "reptile")}
    for a in steps:
        got, want = measured(loss, theta, tasks, a).gradients, predicted(terms, a)
        for n in residuals:
            residuals[n].append(float((got[n] - want[n]).norm()))
    first = float((k - 1) * steps[0] * terms.avg_grad_inner.norm())  # the size of the O(a) term at the smallest a
    for n, r in residuals.items():
        assert loglog_slope(steps, r) == pytest.approx(2.0, abs=0.05), (n, r)
        assert r[0] < 1e-2 * first, (n, r[0], first)  # the prediction removes the first-order term


def test_reptile_gradient_is_the_distance_travelled_over_a():
    model = tanh_mlp()
    theta, loss, tasks = weights(model), model_loss(model), regression_tasks(2, 3)
    a = 0.03
    got = measured(loss, theta, tasks, a)
    forward = sum(flat(theta) - phi for phi in got.adapted) / (a * len(tasks))
    backward_tasks = [list(reversed(t)) for t in tasks]
    backward = sum(flat(theta) - phi for phi in measured(loss, theta, backward_tasks, a).adapted) / (a * len(tasks))
    assert torch.allclose(got.gradients["reptile"], (forward + backward) / 2, rtol=1e-9, atol=1e-12)


# --- the first-order error on a quadratic --------------------------------------------------------------------------


def test_first_order_error_matches_its_closed_form_on_a_quadratic_and_stays_under_its_bound():
    """Least squares ``L(w) = 1/2 mean (x w - y)^2``: H = X^T X / n, ``g_MAML - g_FO = a H_A g_B(theta - a g_A)``."""
    g = torch.Generator().manual_seed(0)
    d = 4
    tasks = []
    for _ in range(3):
        xa, xb = torch.randn(7, d, generator=g, dtype=F64), torch.randn(7, d, generator=g, dtype=F64)
        tasks.append([(xa, torch.randn(7, generator=g, dtype=F64)), (xb, torch.randn(7, generator=g, dtype=F64))])
    theta = {"w": torch.randn(d, generator=g, dtype=F64)}

    def loss(p, x, y):
        return 0.5 * ((x @ p["w"] - y) ** 2).mean()

    curv = curvatures(loss, theta, tasks, iterations=3000, tol=1e-14)
    hessians = [t[0][0].T @ t[0][0] / 7 for t in tasks]
    assert torch.allclose(curv, torch.stack([torch.linalg.eigvalsh(h).abs().max() for h in hessians]), rtol=1e-8)
    steps = [0.001, 0.01, 0.05, 0.1, 0.3]
    errors = []
    for a in steps:
        fo = first_order_error(loss, theta, tasks, a, curv)
        for i, ((xa, ya), (xb, yb)) in enumerate(tasks):
            w = theta["w"]
            phi = w - a * xa.T @ (xa @ w - ya) / 7
            g_fo = xb.T @ (xb @ phi - yb) / 7
            assert float(fo.error[i]) == pytest.approx(float((a * hessians[i] @ g_fo).norm()), rel=1e-10)
            assert float(fo.grad_norm[i]) == pytest.approx(float(g_fo.norm()), rel=1e-10)
        assert bool((fo.error <= fo.bound).all()), (a, fo.error, fo.bound)
        errors.append(float(fo.error.mean()))
    assert loglog_slope(steps[:2], errors[:2]) == pytest.approx(1.0, abs=0.05)


# --- transfer ------------------------------------------------------------------------------------------------------


def test_mean_pairwise_cosine_and_spread_match_their_definitions():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(5, 7, generator=g, dtype=F64)
    naive = [
        float(v[i] @ v[j] / (v[i].norm() * v[j].norm())) for i in range(5) for j in range(5) if i != j
    ]  # ordered pairs
    assert mean_pairwise_cosine(v) == pytest.approx(sum(naive) / len(naive), rel=1e-12)
    assert mean_pairwise_cosine(torch.stack([v[0], 2 * v[0]])) == pytest.approx(1.0)
    theta = torch.randn(7, generator=g, dtype=F64)
    got = adapted_spread(v, theta)
    centre = v.mean(0)
    assert got["spread"] == pytest.approx(math.sqrt(sum(float((r - centre) @ (r - centre)) for r in v) / 5))
    assert got["distance"] == pytest.approx(sum(float((r - theta).norm()) for r in v) / 5)


# --- the runner and the command ------------------------------------------------------------------------------------

TINY_SINUSOID = ["model.layers=[8,8]", "data.shots=4", "data.queries=4"]


def test_the_runner_writes_its_json_and_png_and_changes_no_process_state(tmp_path):
    import matplotlib

    backend, rng, threads = matplotlib.get_backend(), torch.get_rng_state(), torch.get_num_threads()
    record, paths = analyze("maml-sinusoid", TINY_SINUSOID, step_sizes=[1e-3, 1e-2], tasks=2, k=2, out=tmp_path / "a")
    assert [p.name for p in paths] == ["analysis.json", "analysis.png"]
    assert json.loads(paths[0].read_text()) == json.loads(json.dumps(record))
    assert paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [row["a"] for row in record["sweep"]] == [1e-3, 1e-2]
    assert record["origin"]["kind"] == "init" and record["settings"]["parameters"] == 8 + 8 + 72 + 9
    assert record["summary"]["fo_bound_holds"] and record["hessian"]["top_eigenvalue"] != 0
    assert matplotlib.get_backend() == backend and torch.equal(torch.get_rng_state(), rng)
    assert torch.get_num_threads() == threads


def test_analyze_command_on_a_trained_run_writes_into_its_analysis_folder(tmp_path, capsys):
    from fastadapt import train

    out = tmp_path / "run"
    over = [*TINY_SINUSOID, f"run.out={out}", "optim.steps=2", "eval.val_every=0", "eval.test_episodes=2"]
    train("maml-sinusoid", over)
    assert main(["analyze", str(out), "--tasks", "2", "--step-sizes", "1e-3", "2e-3"]) == 0
    text = capsys.readouterr().out
    assert "Taylor residual slopes" in text and f"wrote {out / 'analysis' / 'analysis.json'}" in text
    record = json.loads((out / "analysis" / "analysis.json").read_text())
    assert record["origin"]["kind"] == "trained" and record["origin"]["step"] == 2


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["analyze", "no-such-preset"], "unknown preset"),
        (["analyze", "maml-sinusoid", "--k", "1"], "--k=1 is invalid"),
        (["analyze", "maml-sinusoid", "--tasks", "1"], "--tasks=1 is invalid"),
        (["analyze", "maml-sinusoid", "--step-sizes", "0"], "step size 0.0 is invalid"),
        (["analyze", "maml-sinusoid", "--step-sizes", "x"], "invalid float value"),
        (["analyze", "maml-sinusoid", "data.nope=1"], "unknown key data.nope"),
        (["analyze", "missing.toml"], "does not exist"),
    ],
)
def test_analyze_bad_input_is_one_line_and_exit_2(args, words, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fastadapt: error:") and words in err, err


def test_the_inner_loop_analysis_refuses_an_algorithm_without_a_head():
    """ProtoNets gets the episode analysis (tests/test_analysis_theory.py); the inner-loop sweep says why not."""
    from fastadapt.analysis import analyze_subject, load_subject

    subject = load_subject("protonet-quick", ["model.hidden=4", "data.ways=3", "data.queries=2"])
    assert not subject.has_head and subject.algorithm is not None
    with pytest.raises(ConfigError, match="does not end in a head"):
        analyze_subject(subject, [1e-3], tasks=2)
