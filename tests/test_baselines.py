"""Baseline / Baseline++ (Chen et al. 2019) and the RFS linear probe (Tian et al. 2020): pretraining loss
and gradient against a per-example float64 loop, the per-task heads against independent references
(torch.optim.SGD, scipy's L-BFGS), the contract (module untouched, deterministic, no_grad), and runs
through the engine and load_run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import logsumexp
from torch import nn

import fastadapt
from fastadapt.algorithms.baseline import Baseline, cosine_logits, fit_head, global_labels, head_logits
from fastadapt.algorithms.linear_probe import LinearProbe, fit_logistic_regression
from fastadapt.config import load_config
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError
from fastadapt.nn import Conv4
from fastadapt.runs.checkpoint import load_checkpoint

ALGOS = {
    "baseline": lambda model, **kw: Baseline(model, num_classes=7, **kw),
    "baseline++": lambda model, **kw: Baseline(model, num_classes=7, head="cosine", **kw),
    "linear_probe": lambda model, **kw: LinearProbe(model, num_classes=7, **kw),
}


def task_batch(tasks=2, ways=3, shots=1, queries=2, num_classes=7, side=16, dtype=torch.float64, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    classes = torch.stack([torch.randperm(num_classes, generator=g)[:ways] for _ in range(tasks)])
    return TaskBatch(
        torch.randn(tasks, ways * shots, 1, side, side, generator=g, dtype=dtype),
        torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).clone(),
        torch.randn(tasks, ways * queries, 1, side, side, generator=g, dtype=dtype),
        torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).clone(),
        classes,
    )


def encoder(batch_norm: bool = False, track_running_stats: bool = False) -> Conv4:
    torch.manual_seed(0)
    return Conv4(1, None, hidden=4, image_size=16, batch_norm=batch_norm, track_running_stats=track_running_stats)


# --- pretraining ------------------------------------------------------------------------------


def reference_pretrain_loss(model, weight, bias, kind, scale, batch):
    """Mean over every image of the batch of -log softmax(logits)[global label], one example at a time."""
    total, count = 0.0, 0
    for t in range(batch.num_tasks):
        pairs = [(batch.support_x[t, i], batch.support_y[t, i]) for i in range(batch.support_x.shape[1])]
        pairs += [(batch.query_x[t, i], batch.query_y[t, i]) for i in range(batch.query_x.shape[1])]
        for x, y in pairs:
            z = model(x[None])[0]
            rows = []
            for c in range(weight.shape[0]):
                if kind == "linear":
                    rows.append(torch.dot(weight[c], z) + bias[c])
                else:
                    rows.append(scale * torch.dot(weight[c], z) / (weight[c].norm() * z.norm()))
            logits = torch.stack(rows)
            label = int(batch.classes[t, int(y)])
            total = total + torch.logsumexp(logits, 0) - logits[label]
            count += 1
    return total / count


@pytest.mark.parametrize("name", ["baseline", "baseline++", "linear_probe"])
def test_meta_loss_and_its_gradient_equal_a_per_example_float64_reference(name):
    algo = ALGOS[name](encoder()).double()
    with torch.no_grad():  # a non-zero bias, so that it is checked too
        if algo.classifier.bias is not None:
            algo.classifier.bias.normal_()
    batch = task_batch()
    out = algo.meta_loss(batch)
    kind = "cosine" if name == "baseline++" else "linear"
    ref = reference_pretrain_loss(algo.model, algo.classifier.weight, algo.classifier.bias, kind, 2.0, batch)
    assert out.loss.dtype == torch.float64
    assert abs(float(out.loss.detach()) - float(ref.detach())) < 1e-12
    assert set(out.metrics) == {"loss", "acc"} and all(isinstance(v, float) for v in out.metrics.values())
    params = [p for p in algo.parameters()]
    assert any(p is algo.classifier.weight for p in params) and len(params) > 2  # encoder and head
    got = torch.autograd.grad(out.loss, params)
    want = torch.autograd.grad(ref, params)
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, rtol=0, atol=1e-9)
    assert max(float(g.abs().max()) for g in got) > 1e-6  # not a trivially zero gradient


def test_global_labels_map_task_labels_to_dataset_classes():
    batch = task_batch(tasks=2, ways=3, shots=2, queries=1)
    ys, yq = global_labels(batch)
    assert ys.shape == (2, 6) and yq.shape == (2, 3)
    for t in range(2):
        assert ys[t].tolist() == [int(batch.classes[t, y]) for y in batch.support_y[t]]
        assert yq[t].tolist() == batch.classes[t].tolist()


def test_a_class_id_beyond_num_classes_is_a_one_line_error():
    algo = Baseline(encoder(), num_classes=3).double()
    with pytest.raises(ConfigError, match="num_classes=3"):
        algo.meta_loss(task_batch(num_classes=7))


def test_a_model_without_embedding_dim_needs_it_given():
    with pytest.raises(ConfigError, match="has no embedding_dim attribute; pass embedding_dim="):
        Baseline(nn.Flatten(), num_classes=5)
    assert Baseline(nn.Flatten(), num_classes=5, embedding_dim=16).classifier.weight.shape == (5, 16)


# --- the heads ----------------------------------------------------------------------------------


def test_cosine_logits_are_scale_times_the_cosine_of_every_pair():
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)
    got = cosine_logits(x, w, 2.5)
    for i in range(4):
        for j in range(3):
            cos = float(x[i] @ w[j]) / (math.sqrt(float(x[i] @ x[i])) * math.sqrt(float(w[j] @ w[j])))
            assert abs(float(got[i, j]) - 2.5 * cos) < 1e-12
    assert float(got.abs().max()) <= 2.5


def reference_order(n, batch_size, steps, generator):
    order = []
    while len(order) < steps:
        perm = torch.randperm(n, generator=generator).tolist()
        order += [perm[i : i + batch_size] for i in range(0, n, batch_size)]
    return order[:steps]


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_fit_head_equals_torch_sgd_with_momentum_dampening_and_weight_decay(kind):
    g = torch.Generator().manual_seed(3)
    n, d, ways, steps, seed, scale = 10, 6, 3, 7, 5, 3.0
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.arange(n) % ways
    head = fit_head(
        z,
        y,
        ways,
        kind,
        scale=scale,
        steps=steps,
        lr=0.05,
        batch_size=4,
        momentum=0.9,
        dampening=0.9,
        weight_decay=1e-3,
        seed=seed,
    )

    # the documented draws: one generator, nn.Linear's start (weight, then bias), then one permutation per pass
    gen = torch.Generator().manual_seed(seed)
    bound = 1 / math.sqrt(d)
    lin = nn.Linear(d, ways, bias=kind == "linear").double()
    with torch.no_grad():
        lin.weight.copy_((torch.rand(ways, d, generator=gen, dtype=torch.float64) * 2 - 1) * bound)
        if kind == "linear":
            lin.bias.copy_((torch.rand(ways, generator=gen, dtype=torch.float64) * 2 - 1) * bound)
    order = reference_order(n, 4, steps, gen)
    assert [len(b) for b in order] == [4, 4, 2, 4, 4, 2, 4]
    opt = torch.optim.SGD(lin.parameters(), lr=0.05, momentum=0.9, dampening=0.9, weight_decay=1e-3)
    for idx in order:
        zb = z[idx]
        if kind == "linear":
            logits = lin(zb)
        else:
            logits = scale * (zb @ lin.weight.T) / (zb.norm(dim=1, keepdim=True) * lin.weight.norm(dim=1))
        loss = nn.functional.cross_entropy(logits, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert head.kind == kind and head.scale == scale
    assert torch.allclose(head.weight, lin.weight, rtol=0, atol=1e-12)
    if kind == "linear":
        assert torch.allclose(head.bias, lin.bias, rtol=0, atol=1e-12)
    else:
        assert head.bias is None
    assert not torch.allclose(
        head.weight,
        (torch.rand(ways, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1) * bound,
    )


def test_fit_head_defaults_to_100_passes_and_the_scale_of_chen_et_al():
    z, y = torch.randn(6, 3, dtype=torch.float64), torch.arange(6) % 3
    assert fit_head(z, y, 3, "cosine").scale == 2.0  # <= 200 classes
    full = fit_head(z, y, 3, steps=None)
    assert torch.equal(
        full.weight, fit_head(z, y, 3, steps=100 * 2).weight
    )  # 6 examples, mini-batches of 4: 2 steps a pass
    assert not torch.equal(full.weight, fit_head(z, y, 3, steps=199).weight)
    assert Baseline(encoder(), num_classes=201, head="cosine").pretrain_scale() == 10.0
    assert Baseline(encoder(), num_classes=200, head="cosine").pretrain_scale() == 2.0


def sklearn_objective(theta, u, y, ways, C):
    """scikit-learn's multinomial L2 logistic regression: C * sum_i CE + ||W||^2 / 2 (bias not penalised), and its
    gradient."""
    n, d = u.shape
    w, b = theta[: ways * d].reshape(ways, d), theta[ways * d :]
    logits = u @ w.T + b
    logp = logits - logsumexp(logits, axis=1, keepdims=True)
    onehot = np.eye(ways)[y]
    f = -C * (onehot * logp).sum() + 0.5 * (w * w).sum()
    r = C * (np.exp(logp) - onehot)
    return f, np.concatenate([(r.T @ u + w).ravel(), r.sum(0)])


@pytest.mark.parametrize("C", [1.0, 0.3])
def test_logistic_regression_reaches_the_optimum_scipy_finds_for_the_same_objective(C):
    g = torch.Generator().manual_seed(7)
    ways, n, d = 4, 12, 5
    u = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.arange(n) % ways
    head = fit_logistic_regression(u, y, ways, C=C)
    un, yn = u.numpy(), y.numpy()
    res = minimize(
        sklearn_objective,
        np.zeros(ways * d + ways),
        args=(un, yn, ways, C),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 10000, "gtol": 1e-12, "ftol": 1e-16},
    )
    w_ref, b_ref = res.x[: ways * d].reshape(ways, d), res.x[ways * d :]
    ours = np.concatenate([head.weight.numpy().ravel(), head.bias.numpy()])
    assert sklearn_objective(ours, un, yn, ways, C)[0] <= res.fun + 1e-9
    assert abs(sklearn_objective(ours, un, yn, ways, C)[0] - res.fun) < 1e-8
    assert np.abs(head.weight.numpy() - w_ref).max() < 1e-6
    assert np.abs((head.bias.numpy() - head.bias.numpy().mean()) - (b_ref - b_ref.mean())).max() < 1e-6
    assert abs(float(head.bias.sum())) < 1e-9  # from b = 0, the bias stays in sum(b) = 0
    assert np.abs(w_ref).max() > 0.05  # a non-trivial optimum


# --- the contract ---------------------------------------------------------------------------------


class Identity(nn.Module):
    """Raw inputs as features (no weights)."""

    embedding_dim = 5

    def forward(self, x):
        return x.flatten(1)


@pytest.mark.parametrize("name", list(ALGOS))
def test_adapt_leaves_the_module_and_the_global_rng_untouched_and_is_deterministic(name):
    algo = ALGOS[name](encoder(batch_norm=True, track_running_stats=True))
    algo.train()  # BatchNorm in training mode would update its running statistics if adapt touched them
    batch = task_batch(dtype=torch.float32)
    task = batch.task(0)
    state = {k: v.clone() for k, v in algo.state_dict().items()}
    attrs = dict(vars(algo))
    rng = torch.get_rng_state()
    first = algo.adapt(task.support_x, task.support_y)(task.query_x)
    second = algo.adapt(task.support_x, task.support_y)(task.query_x)
    assert torch.equal(first, second)
    assert first.shape == (6, 3) and not first.requires_grad
    assert state.keys() == algo.state_dict().keys() and all(
        torch.equal(v, algo.state_dict()[k]) for k, v in state.items()
    )
    assert vars(algo).keys() == attrs.keys() and all(
        vars(algo)[k] is v for k, v in attrs.items() if not isinstance(v, dict)
    )
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.grad is None for p in algo.parameters())


@pytest.mark.parametrize("name", list(ALGOS))
def test_adapt_and_predict_work_under_no_grad_and_inference_mode(name):
    algo = ALGOS[name](encoder(batch_norm=True)).eval()
    batch = task_batch(dtype=torch.float32)
    task = batch.task(1)
    plain = algo.adapt(task.support_x, task.support_y)(task.query_x)
    with torch.no_grad():
        assert torch.equal(algo.adapt(task.support_x, task.support_y)(task.query_x), plain)
        pred = algo.predict(batch)
    with torch.inference_mode():
        assert torch.equal(algo.adapt(task.support_x, task.support_y)(task.query_x), plain)
        assert torch.equal(algo.predict(batch), pred)
    assert pred.shape == (2, 6, 3) and not pred.requires_grad
    assert torch.equal(pred[1], plain)
    assert torch.equal(pred[0], algo.adapt(batch.support_x[0], batch.support_y[0])(batch.query_x[0]))


@pytest.mark.parametrize("name", list(ALGOS))
def test_separable_support_sets_are_fitted_to_100_percent(name):
    algo = ALGOS[name](Identity())
    g = torch.Generator().manual_seed(2)
    labels = torch.arange(5).repeat(3)  # 5 ways, 3 shots, interleaved
    x = 3 * torch.eye(5)[labels] + 0.3 * torch.randn(15, 5, generator=g) + 0.5
    logits = algo.adapt(x, labels)(x)
    assert logits.shape == (15, 5)
    assert torch.equal(logits.argmax(1), labels)
    noise = algo.adapt(x, labels)(torch.eye(5) * 3 + 0.5)  # the class centres are classified as their class
    assert torch.equal(noise.argmax(1), torch.arange(5))


# --- through the engine --------------------------------------------------------------------------

PRESETS = {"baseline-omniglot": "baseline", "baselinepp-omniglot": "baseline", "linear-probe-omniglot": "linear_probe"}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_each_preset_trains_tests_and_loads_back_through_the_engine(tmp_path, preset):
    overrides = [
        "data.ways=5",
        "data.shots=1",
        "data.queries=1",
        "data.meta_batch=1",
        "data.test_queries=2",
        "model.hidden=8",
        "optim.steps=2",
        "eval.val_every=1",
        "eval.val_episodes=2",
        "eval.test_episodes=2",
        "eval.batch=2",
        "run.progress=false",
        "run.threads=1",
        f"run.out={tmp_path / preset}",
    ]
    if PRESETS[preset] == "baseline":
        overrides.append("algorithm.finetune_steps=5")
    cfg = load_config(preset, overrides)
    assert cfg.algorithm == PRESETS[preset]
    result = fastadapt.train(cfg)
    assert result.steps == 2
    scores = result.tests["5w1s"].scores
    assert len(scores) == 2 and all(0 <= s <= 1 for s in scores)
    run = fastadapt.load_run(cfg.out_dir)
    algo = run.algorithm
    assert type(algo) is {"baseline": Baseline, "linear_probe": LinearProbe}[PRESETS[preset]]
    assert algo.num_classes == run.provenance["train_classes"] == 4112
    if preset == "baselinepp-omniglot":
        assert algo.head_kind == "cosine" and algo.classifier.bias is None
    saved = load_checkpoint(cfg.out_dir / run.weights)["algorithm"]
    assert saved.keys() == algo.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in algo.state_dict().items())
    x = torch.rand(5, 1, 28, 28)
    logits = algo.adapt(x, torch.arange(5))(torch.rand(3, 1, 28, 28))
    assert logits.shape == (3, 5) and torch.isfinite(logits).all()


def test_head_logits_of_a_linear_head_are_z_w_plus_b():
    from fastadapt.algorithms.baseline import Head

    z, w, b = (
        torch.randn(3, 4, dtype=torch.float64),
        torch.randn(2, 4, dtype=torch.float64),
        torch.randn(2, dtype=torch.float64),
    )
    got = head_logits(z, Head(w, b, "linear"))
    assert torch.allclose(
        got, torch.stack([torch.stack([z[i] @ w[j] + b[j] for j in range(2)]) for i in range(3)]), atol=1e-14
    )


def test_adapt_fits_the_documented_head_on_the_frozen_support_features():
    from fastadapt.algorithms.baseline import embed

    batch = task_batch(dtype=torch.float32, shots=2)
    task = batch.task(0)
    for algo in (
        Baseline(encoder(batch_norm=True), num_classes=7, head="cosine"),
        LinearProbe(encoder(batch_norm=True), num_classes=7, C=0.5),
    ):
        zs, zq = embed(algo.model, task.support_x), embed(algo.model, task.query_x)
        if isinstance(
            algo, Baseline
        ):  # defaults: lr 0.01, momentum 0.9, dampening 0.9, weight decay 1e-3, batches of 4, 100 passes, scale 2
            head = fit_head(
                zs,
                task.support_y,
                3,
                "cosine",
                steps=200,
                lr=0.01,
                batch_size=4,
                momentum=0.9,
                dampening=0.9,
                weight_decay=1e-3,
            )
        else:  # L2-normalised features, C passed through
            zs, zq = nn.functional.normalize(zs, dim=-1), nn.functional.normalize(zq, dim=-1)
            head = fit_logistic_regression(zs, task.support_y, 3, C=0.5)
        assert torch.equal(algo.adapt(task.support_x, task.support_y)(task.query_x), head_logits(zq, head))
