"""The rest of issue 34's measurements, in float64 where they are checks: iMAML's CG error against the condition
number's bound, the divergence boundary of MAML's inner step size, similarity against transfer (rank correlation
and its bootstrap), and ``fastadapt analyze`` on a ProtoNets run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from fastadapt import TaskBatch
from fastadapt.algorithms import MAML, inner
from fastadapt.algorithms.base import task_loss
from fastadapt.algorithms.protonet import ProtoNet
from fastadapt.analysis.episodes import analyze_episodes
from fastadapt.analysis.hessian import full_hessian
from fastadapt.analysis.implicit import (
    cg_bound,
    cg_error_curve,
    cg_rate,
    condition_number,
    distinct_eigenvalues,
    fitted_rate,
    system_matrix,
)
from fastadapt.analysis.objective import meta_loss_of, meta_parameters
from fastadapt.analysis.stability import largest_stable_rate, short_meta_training
from fastadapt.analysis.transfer import (
    bootstrap_ci,
    bootstrap_ci_items,
    cosine,
    embedding_similarity,
    gradient_similarity,
    mean_meta_gradient,
    mean_pairwise_cosine,
    pixel_similarity,
    ranks,
    spearman,
)
from fastadapt.cli import main
from fastadapt.core.errors import ConfigError
from fastadapt.data.sinusoid import SinusoidTasks

F64 = torch.float64


def rotated(values: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A symmetric matrix with eigenvalues ``values``, in a random orthonormal basis."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(values), len(values), generator=g, dtype=F64))
    return q @ torch.diag(values) @ q.T


def quadratic_problem(h: torch.Tensor, seed: int = 1):
    """``1/2 (phi - c)^T h (phi - c)`` as a loss of ``{"w": phi}``, with a point and a query gradient."""
    g = torch.Generator().manual_seed(seed)
    c, phi, b = (torch.randn(h.shape[0], generator=g, dtype=F64) for _ in range(3))
    return (lambda p: 0.5 * (p["w"] - c) @ h @ (p["w"] - c)), {"w": phi}, {"w": b}


# --- 1. the CG error of iMAML's implicit gradient ------------------------------------------------------------------


def test_cg_error_on_a_quadratic_follows_its_closed_form_and_stays_under_the_condition_number_bound():
    size, lam, kappa = 60, 2.0, 50.0
    h = rotated(lam * (kappa - 1) * torch.linspace(0, 1, size, dtype=F64))  # I + H/lam: eigenvalues 1 .. kappa
    loss, phi, b = quadratic_problem(h)
    curve = cg_error_curve(loss, phi, b, lam, list(range(0, 61, 3)))
    assert curve.kappa == pytest.approx(kappa, rel=1e-9) and curve.eig_min == pytest.approx(1.0, rel=1e-9)
    assert curve.rate == pytest.approx((math.sqrt(kappa) - 1) / (math.sqrt(kappa) + 1), rel=1e-12)
    assert curve.errors[0] == 1.0 and curve.errors[-1] < 1e-10  # exact after P steps (up to rounding)
    assert curve.bound_holds and curve.distinct == size
    assert all(e <= b for e, b in zip(curve.errors, curve.bounds) if e > 1e-12)
    assert curve.measured_rate <= curve.rate  # CG beats its worst case (superlinear on a spread spectrum)
    assert curve.measured_rate > 0.5 * curve.rate  # ... but on evenly spread eigenvalues not by much
    # the direct reference is the closed form
    x = torch.linalg.solve(torch.eye(size, dtype=F64) + h / lam, b["w"])
    assert torch.allclose(torch.linalg.solve(system_matrix(h, lam), b["w"]), x, rtol=1e-12, atol=1e-12)


def test_cg_is_exact_after_as_many_steps_as_the_system_has_distinct_eigenvalues():
    values = torch.tensor([0.0, 0.0, 0.0, 3.0, 3.0, 9.0, 9.0, 9.0], dtype=F64)  # I + H: 1, 4, 10
    loss, phi, b = quadratic_problem(rotated(values, 2))
    curve = cg_error_curve(loss, phi, b, 1.0, [1, 2, 3, 4])
    assert curve.distinct == 3
    assert curve.errors[1] > 1e-4 and curve.errors[2] < 1e-12 and curve.errors[3] < 1e-12


def test_an_indefinite_system_is_measured_without_a_bound_and_refused_by_condition_number():
    values = torch.tensor([-3.0, 1.0, 2.0, 5.0], dtype=F64)
    loss, phi, b = quadratic_problem(rotated(values, 3))
    curve = cg_error_curve(loss, phi, b, 2.0, [0, 2, 4])  # I + H/2: eigenvalues -0.5 .. 3.5
    assert curve.eig_min == pytest.approx(-0.5) and math.isnan(curve.kappa) and math.isnan(curve.rate)
    assert not curve.bound_holds and all(math.isnan(v) for v in curve.bounds)
    with pytest.raises(ConfigError, match="not positive definite"):
        condition_number(system_matrix(rotated(values, 3), 2.0))
    with pytest.raises(ConfigError, match="steps"):
        cg_error_curve(loss, phi, b, 2.0, [-1])


def test_cg_on_a_small_network_converges_to_the_direct_solve_with_the_full_hessian():
    """iMAML's CG (Hessian-vector products by double backward) against ``solve(I + H/lam, g)`` with the Hessian by
    ``torch.autograd.functional.hessian``: two independent paths to the same vector."""
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 6), nn.Tanh(), nn.Linear(6, 1)).double()
    x = torch.randn(8, 1, generator=g, dtype=F64)
    y = torch.sin(x)
    phi = {k: v.detach() for k, v in inner.trainable_params(net).items()}
    grads = {k: torch.randn(v.shape, generator=g, dtype=F64) for k, v in phi.items()}
    curve = cg_error_curve(lambda p: task_loss(inner.call(net, p, x), y), phi, grads, 10.0, [0, 5, 30])
    assert curve.eig_min > 0 and curve.bound_holds
    assert curve.errors[0] == 1.0 and 1e-12 < curve.errors[1] < 1.0 and curve.errors[2] < 1e-10


def test_cg_rate_bound_and_fitted_rate_match_their_formulas():
    assert cg_rate(1.0) == 0.0 and cg_rate(9.0) == pytest.approx(0.5)
    assert cg_bound(9.0, 0) == pytest.approx(3.0) and cg_bound(9.0, 3) == pytest.approx(3 * 2 * 0.125)
    steps = [0, 2, 4, 6, 8]
    assert fitted_rate(steps, [0.7**k for k in steps]) == pytest.approx(0.7, rel=1e-12)
    assert fitted_rate(steps, [0.5**k if k < 6 else 1e-16 for k in steps]) == pytest.approx(0.5, rel=1e-12)
    assert math.isnan(fitted_rate([1], [0.5]))
    assert distinct_eigenvalues(torch.tensor([1.0, 1.0 + 1e-12, 2.0], dtype=F64)) == 2


# --- 3. the divergence boundary ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("threshold", "start"), [(0.37, 1e-3), (0.37, 5.0), (3e-3, 1e-3)])
def test_largest_stable_rate_brackets_a_known_threshold_to_the_resolution(threshold, start):
    found = largest_stable_rate(lambda a: a < threshold, start, 10.0, resolution=2**0.25)
    assert found.stable < threshold <= found.unstable
    assert found.unstable / found.stable <= 2**0.25 * (1 + 1e-9)
    assert all(ok == (a < threshold) for a, ok in found.tried)


def test_largest_stable_rate_says_when_no_rate_or_every_rate_is_stable():
    never = largest_stable_rate(lambda a: False, 1e-3, 1.0)
    assert math.isnan(never.stable) and never.unstable > 0
    always = largest_stable_rate(lambda a: True, 1e-3, 1.0)
    assert always.stable == pytest.approx(0.512) and always.unstable == math.inf
    with pytest.raises(ConfigError, match="start"):
        largest_stable_rate(lambda a: True, 1.0, 0.5)


def sinusoid_batches(tasks: int, seed: int = 0):
    source = SinusoidTasks(shots=5, queries=5, seed=seed)
    return (lambda step: source.sample_tasks(step, 0, tasks).to(dtype=F64)), source.sample_tasks(99, 0, 8).to(dtype=F64)


def test_a_short_meta_training_is_stable_at_a_small_inner_rate_and_diverges_at_a_large_one():
    """One linear unit on sinusoid tasks: the inner loss's curvature is 2 mean(x^2) ~ 17, so N = 5 inner steps at
    a = 1 multiply the error by about 16^5 each; at a = 0.01 every step contracts."""
    tasks, held = sinusoid_batches(4)

    def build(lr):
        torch.manual_seed(0)
        return MAML(nn.Linear(1, 1).double(), inner_lr=lr, inner_steps=5, execution="loop")

    calm = short_meta_training(build, tasks, held, 0.01, 5, outer_lr=1e-2)
    wild = short_meta_training(build, tasks, held, 1.0, 5, outer_lr=1e-2)
    assert calm.stable and calm.final < calm.start and len(calm.losses) == 5
    assert all(math.isfinite(v) for v in calm.losses) and calm.unadapted > 0
    assert not wild.stable and (wild.final == math.inf or wild.final >= wild.start)
    with pytest.raises(ConfigError, match="optimizer"):
        short_meta_training(build, tasks, held, 0.01, 1, optimizer="rmsprop")


# --- 4. similarity and transfer ------------------------------------------------------------------------------------


def test_spearman_matches_scipy_with_and_without_ties():
    scipy_stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, generator=g, dtype=F64), torch.randn(30, generator=g, dtype=F64)
    assert spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y).statistic, abs=1e-12)
    xt, yt = torch.round(x * 2), torch.round(x + y)
    assert spearman(xt, yt) == pytest.approx(scipy_stats.spearmanr(xt, yt).statistic, abs=1e-12)
    assert spearman(x, torch.exp(3 * x)) == pytest.approx(1.0) and spearman(x, -x) == pytest.approx(-1.0)
    assert torch.equal(ranks(torch.tensor([5.0, 1.0, 3.0, 3.0])), torch.tensor([4.0, 1.0, 2.5, 2.5], dtype=F64))
    assert math.isnan(spearman(x, torch.ones(30, dtype=F64)))


def test_bootstrap_interval_holds_the_estimate_and_collapses_on_a_perfect_order():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, generator=g, dtype=F64)
    y = x + torch.randn(40, generator=g, dtype=F64)
    lo, hi = bootstrap_ci(x, y, draws=500)
    assert lo < spearman(x, y) < hi and hi - lo < 0.6
    assert bootstrap_ci(x, 2 * x, draws=200) == (pytest.approx(1.0), pytest.approx(1.0))


def protonet(seed: int = 0) -> ProtoNet:
    torch.manual_seed(seed)
    return ProtoNet(nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5)).double())


def class_tasks(count: int, seed: int) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(3).repeat(count, 2)
    return TaskBatch(
        torch.randn(count, 6, 4, generator=g, dtype=F64) + y[..., None],
        y,
        torch.randn(count, 6, 4, generator=g, dtype=F64) + y[..., None],
        y.clone(),
        torch.arange(3).repeat(count, 1),
    )


def test_mean_meta_gradient_is_the_gradient_of_the_algorithms_own_loss():
    algo = protonet()
    batches = [class_tasks(2, 0), class_tasks(2, 1)]
    for b in batches:
        algo.meta_loss(b).loss.backward()
    want = torch.cat([p.grad.reshape(-1) / 2 for p in algo.parameters()])
    before = {k: v.clone() for k, v in algo.state_dict().items()}
    got = mean_meta_gradient(algo, batches)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-13) and float(got.norm()) > 1e-6
    assert all(torch.equal(v, algo.state_dict()[k]) for k, v in before.items())
    assert gradient_similarity(algo, batches, batches) == pytest.approx(1.0)
    assert -1.0 <= gradient_similarity(algo, batches[:1], batches[1:]) < 1.0 - 1e-6


def test_embedding_and_pixel_similarities_are_largest_for_the_same_images():
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(10, 1, 6, 6, generator=g), torch.rand(10, 1, 6, 6, generator=g) ** 3
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 5))
    assert embedding_similarity(net, a, a) == 0.0 and embedding_similarity(net, a, b) < 0
    assert pixel_similarity(a, a) == pytest.approx(1.0) and pixel_similarity(a, b) < 1 - 1e-3
    assert cosine(torch.zeros(3), torch.ones(3)) == 0.0


# --- 5. the episode analysis (ProtoNets) ---------------------------------------------------------------------------


def test_episode_analysis_matches_the_full_hessian_and_the_per_task_gradients():
    algo, batch = protonet(3), class_tasks(3, 4)
    record = analyze_episodes(algo, batch, iterations=3000)
    theta = meta_parameters(algo)
    eig = torch.linalg.eigvalsh(full_hessian(meta_loss_of(algo, batch), theta))
    assert record["hessian"]["top_eigenvalue"] == pytest.approx(float(eig[eig.abs().argmax()]), rel=1e-5)
    grads = []
    for t in range(3):
        algo.zero_grad()
        algo.meta_loss(batch.select(slice(t, t + 1))).loss.backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in algo.parameters()]))
    want = mean_pairwise_cosine(torch.stack(grads))
    assert record["alignment"]["task_gradient_cosine"] == pytest.approx(want, rel=1e-10)
    assert set(record["not_applicable"]) == {"taylor", "first_order_error", "adapted_spread", "within_task_cosine"}
    with pytest.raises(ConfigError, match="at least 2"):
        analyze_episodes(algo, batch.select(slice(0, 1)))


def test_analyze_command_on_a_protonets_run_measures_what_applies(tmp_path, capsys):
    from fastadapt import train

    out = tmp_path / "run"
    tiny = ["model.hidden=4", "data.ways=3", "data.queries=2", "data.test_ways=3", "data.test_queries=2"]
    train("protonet-quick", [*tiny, f"run.out={out}", "optim.steps=2", "eval.val_every=0", "eval.test_episodes=2"])
    assert main(["analyze", str(out), "--tasks", "2"]) == 0
    assert f"wrote {out / 'analysis' / 'analysis.png'}" in capsys.readouterr().out
    record = json.loads((out / "analysis" / "analysis.json").read_text())
    assert record["kind"] == "episodes" and record["origin"]["kind"] == "trained" and record["algorithm"] == "protonet"
    assert record["hessian"]["top_eigenvalue"] != 0 and -1 <= record["alignment"]["task_gradient_cosine"] <= 1
    assert "not applicable" in record["summary"]["line"] and "taylor" in record["not_applicable"]
    assert (out / "analysis" / "analysis.png").read_bytes()[:4] == b"\x89PNG"


def test_the_item_bootstrap_is_wider_than_the_pair_bootstrap_when_one_item_carries_the_correlation():
    """Ordered pairs of 7 items; only the pairs with item "z" are related (low x and y together): resampling pairs
    keeps about 12 of them every time, resampling items often drops "z" and the correlation with it."""
    items = ["a", "b", "c", "d", "e", "f", "z"]
    pairs = [(s, t) for s in items for t in items if s != t]
    g = torch.Generator().manual_seed(3)
    x = torch.tensor([-3.0 if "z" in p else 0.0 for p in pairs], dtype=F64) + torch.rand(len(pairs), generator=g)
    y = torch.tensor([-3.0 if "z" in p else 0.0 for p in pairs], dtype=F64) + torch.rand(len(pairs), generator=g)
    rho = spearman(x, y)
    pair_lo, pair_hi = bootstrap_ci(x, y, draws=400)
    item_lo, item_hi = bootstrap_ci_items(x, y, pairs, draws=400)
    assert item_lo <= rho <= item_hi and pair_lo <= rho <= pair_hi
    assert item_lo < pair_lo - 0.2 and item_hi - item_lo > pair_hi - pair_lo
    assert bootstrap_ci_items(x, 2 * x, pairs, draws=100) == (pytest.approx(1.0), pytest.approx(1.0))
