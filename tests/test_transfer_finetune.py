"""Test-time methods that transfer across domains (issue 30): transductive fine-tuning, FiLM and task-specific adapters
on a frozen backbone, and the fine-tuning schedule chosen on validation episodes.

The gradient checks run a hand-written float64 Conv4 forward (``reference_features``) with the adapters inserted by
hand, plain autograd and a hand-written SGD-with-momentum loop, never the module walker or the hooks under test."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import helpers
from fastadapt.algorithms.protonet import ProtoNet
from fastadapt.config import load_config
from fastadapt.core.errors import ConfigError
from fastadapt.data import EpisodeSampler, load_omniglot
from fastadapt.eval.adapters import (
    film_fit,
    film_forward,
    film_init,
    film_sites,
    tsa_fit,
    tsa_forward,
    tsa_init,
    tsa_sites,
)
from fastadapt.eval.finetune import (
    FineTuned,
    choose_schedule,
    finetune_state,
    mean_entropy,
    transductive_loss,
)
from fastadapt.nn import Conv4
from fastadapt.nn.resnet import ResNet12
from fastadapt.runs import load_run
from fastadapt.training.testing import evaluate_run

NEW_MODES = ("transductive", "film", "tsa")
LR, MOMENTUM = 0.07, 0.9


# --- the independent reference -------------------------------------------------------------------------------------


def reference_features(p: dict[str, torch.Tensor], x: torch.Tensor, film=None, alpha=None) -> torch.Tensor:
    """Conv4 written out: 4 x [conv 3x3 (+ alpha[i] 1x1 beside it), BatchNorm on batch statistics (then
    ``gamma[i] * h + beta[i]``), ReLU, 2x2 max-pool], flattened."""
    h = x
    for i in range(4):
        y = F.conv2d(h, p[f"features.{i}.0.weight"], p[f"features.{i}.0.bias"], padding=1)
        if alpha is not None:
            y = y + F.conv2d(h, alpha[i])
        mean = y.mean(dim=(0, 2, 3), keepdim=True)
        var = y.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        y = (y - mean) / torch.sqrt(var + 1e-5) * p[f"features.{i}.1.weight"].view(1, -1, 1, 1)
        y = y + p[f"features.{i}.1.bias"].view(1, -1, 1, 1)
        if film is not None:
            y = y * film[i][0].view(1, -1, 1, 1) + film[i][1].view(1, -1, 1, 1)
        h = F.max_pool2d(F.relu(y), 2)
    return h.flatten(1)


def class_means(z: torch.Tensor, y: torch.Tensor, ways: int) -> torch.Tensor:
    return torch.stack([z[y == c].mean(0) for c in range(ways)])


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``mean_i (log sum_k exp l_ik - l_i,y_i)``, written out."""
    m = logits.max(1, keepdim=True).values
    lse = (m + (logits - m).exp().sum(1, keepdim=True).log()).squeeze(1)
    return (lse - logits[torch.arange(len(y)), y]).mean()


def proto_loss(z: torch.Tensor, y: torch.Tensor, ways: int) -> torch.Tensor:
    """Cross-entropy of ``-||z_i - c_k||^2`` with ``c`` the class means of ``z`` itself, the distances by a loop."""
    c = class_means(z, y, ways)
    d = torch.stack([((z - c[k]) ** 2).sum(1) for k in range(ways)], 1)
    return cross_entropy(-d, y)


def sgd_momentum(loss_fn, init: list[torch.Tensor], steps: int) -> list[torch.Tensor]:
    """``buf = momentum * buf + g`` (``buf = g`` at the first step), ``p = p - lr * buf``: torch's SGD, by hand."""
    params = [t.detach().clone() for t in init]
    bufs = [None] * len(params)
    for _ in range(steps):
        leaves = [t.requires_grad_() for t in params]
        grads = torch.autograd.grad(loss_fn(leaves), leaves)
        for j, g in enumerate(grads):
            bufs[j] = g if bufs[j] is None else MOMENTUM * bufs[j] + g
        params = [(p - LR * b).detach() for p, b in zip(params, bufs)]
    return params


def task():
    """A tiny float64 Conv4 (BatchNorm's affine moved off (1, 0)) and one 3-way 2-shot 16x16 task."""
    model = helpers.conv4(3, out=None, hidden=4)
    t = helpers.images(5, tasks=1).task(0)
    return model, t


def weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters()}


def assert_close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-10) -> None:
    assert a.shape == b.shape
    scale = max(float(b.abs().max()), 1e-3)
    assert float((a - b).abs().max()) <= tol * scale


# --- gradients against the reference -------------------------------------------------------------------------------


def test_film_two_steps_equal_a_hand_written_loop():
    model, t = task()
    w, ways = weights(model), helpers.WAYS
    init = [torch.ones(4, dtype=torch.float64) if j % 2 == 0 else torch.zeros(4, dtype=torch.float64) for j in range(8)]

    def loss(v):
        film = [(v[2 * i], v[2 * i + 1]) for i in range(4)]
        return proto_loss(reference_features(w, t.support_x, film=film), t.support_y, ways)

    expected = sgd_momentum(loss, init, 2)
    got = film_fit(model, t.support_x, t.support_y, 2, LR)
    assert set(got) == {f"features.{i}.1.{k}" for i in range(4) for k in ("gamma", "beta")}
    for i in range(4):
        assert_close(got[f"features.{i}.1.gamma"], expected[2 * i])
        assert_close(got[f"features.{i}.1.beta"], expected[2 * i + 1])
    assert float((got["features.0.1.gamma"] - 1).abs().max()) > 1e-4  # the steps moved it: the check has teeth


def test_tsa_two_steps_equal_a_hand_written_loop():
    model, t = task()
    w, ways = weights(model), helpers.WAYS
    chans = [1, 4, 4, 4, 4]
    init = [torch.zeros(chans[i + 1], chans[i], 1, 1, dtype=torch.float64) for i in range(4)]
    init.append(torch.eye(4, dtype=torch.float64))

    def loss(v):
        z = reference_features(w, t.support_x, alpha=v[:4]) @ v[4].T
        return proto_loss(z, t.support_y, ways)

    expected = sgd_momentum(loss, init, 2)
    got = tsa_fit(model, t.support_x, t.support_y, 2, LR)
    assert set(got) == {f"features.{i}.0.alpha" for i in range(4)} | {"transform"}
    for i in range(4):
        assert_close(got[f"features.{i}.0.alpha"], expected[i])
    assert_close(got["transform"], expected[4])
    assert float(got["features.2.0.alpha"].abs().max()) > 1e-4


def test_transductive_two_steps_equal_a_hand_written_loop():
    model, t = task()
    names = [n for n, _ in model.named_parameters()]
    w, ways = weights(model), helpers.WAYS
    with torch.no_grad():
        c = class_means(reference_features(w, t.support_x), t.support_y, ways)
    init = [w[n] for n in names] + [2 * c, -(c**2).sum(1)]

    def loss(v):
        p = dict(zip(names, v))
        head_w, head_b = v[-2], v[-1]
        ls = reference_features(p, t.support_x) @ head_w.T + head_b
        lq = reference_features(p, t.query_x) @ head_w.T + head_b
        prob = lq.exp() / lq.exp().sum(1, keepdim=True)
        return cross_entropy(ls, t.support_y) + (-(prob * prob.log()).sum(1)).mean()

    expected = sgd_momentum(loss, init, 2)
    got = finetune_state(model, t.support_x, t.support_y, t.query_x, "transductive", 2, LR)
    assert set(got) == {f"encoder.{n}" for n in names} | {"head.weight", "head.bias"}
    for n, e in zip(names, expected):
        assert_close(got[f"encoder.{n}"], e)
    assert_close(got["head.weight"], expected[-2])
    assert_close(got["head.bias"], expected[-1])
    # the query entropy changes the step: without it ("encoder") the head moves elsewhere
    plain = finetune_state(model, t.support_x, t.support_y, t.query_x, "encoder", 2, LR)
    assert float((plain["head.weight"] - got["head.weight"]).abs().max()) > 1e-6


def test_transductive_loss_is_cross_entropy_plus_weighted_query_entropy():
    support = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    query = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]], dtype=torch.float64)
    ce = (math.log(2.0) + math.log(1 + math.exp(-2.0))) / 2  # labels 0, 0
    h = (-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) + math.log(2.0)) / 2  # p = (1/4, 3/4) and (1/2, 1/2)
    y = torch.tensor([0, 0])
    assert abs(float(mean_entropy(query)) - h) < 1e-15
    assert abs(float(transductive_loss(support, y, query)) - (ce + h)) < 1e-15
    assert abs(float(transductive_loss(support, y, query, 0.5)) - (ce + 0.5 * h)) < 1e-15


# --- the adapters at initialisation, on the project's backbones --------------------------------------------------


def test_adapters_at_initialisation_are_the_backbone_exactly():
    model, t = task()
    x = t.query_x
    with torch.no_grad():
        z = model(x)
        assert torch.equal(film_forward(model, film_init(model, x), x), z)
        assert torch.equal(tsa_forward(model, tsa_init(model, x, z.shape[1]), x), z)
    assert all(not m._forward_hooks for m in model.modules())  # the hooks live for one forward pass only


def test_the_walker_finds_norms_or_convs_and_skips_resnet_shortcuts():
    resnet = ResNet12(1, None, channels=(4, 4, 4, 4))
    assert len(film_sites(resnet)) == 16  # 3 BatchNorms and the shortcut's in each of 4 blocks
    assert sorted(tsa_sites(resnet)) == sorted(f"blocks.{b}.conv{i}" for b in range(4) for i in (1, 2, 3))
    plain = Conv4(out_features=None, hidden=4, batch_norm=False)
    assert list(film_sites(plain)) == [f"features.{i}.0" for i in range(4)]  # no norm: after each convolution
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(tsa_forward(resnet, tsa_init(resnet, x, 4), x), resnet(x))
    with pytest.raises(ConfigError, match="eval.finetune=tsa adapts convolutions larger than 1x1") as e:
        tsa_sites(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1)))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="not 'same'-padded"):
        tsa_sites(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)))


@pytest.mark.parametrize("mode", ("film", "tsa"))
def test_adapters_at_zero_steps_classify_as_protonets(mode):
    model, _ = task()
    algo = ProtoNet(model).eval()
    batch = helpers.images(6, tasks=2)
    with torch.no_grad():
        tuned = FineTuned(algo, mode, 0, LR).predict(batch)
        for i in range(2):
            zs, zq = model(batch.support_x[i]), model(batch.query_x[i])
            ref = -(torch.cdist(zq, class_means(zs, batch.support_y[i], helpers.WAYS)) ** 2)
            assert torch.allclose(tuned[i].softmax(-1), ref.softmax(-1), atol=1e-12)


# --- the run is never changed -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", NEW_MODES)
def test_evaluation_leaves_the_run_weights_alone_and_fits_the_support_set(mode):
    model, _ = task()
    algo = ProtoNet(model).eval()
    batch = helpers.images(7, tasks=2)
    before = {k: v.clone() for k, v in algo.state_dict().items()}
    with torch.no_grad():
        start = FineTuned(algo, mode, 0, 0.05).adapt(batch.support_x[0], batch.support_y[0])(batch.support_x[0])
        tuned = FineTuned(algo, mode, 15, 0.05).adapt(batch.support_x[0], batch.support_y[0])(batch.support_x[0])
        out = FineTuned(algo, mode, 3, 0.05).predict(batch)
    assert out.shape == (2, helpers.WAYS * helpers.QUERIES, helpers.WAYS) and torch.isfinite(out).all()
    y = batch.support_y[0]
    assert float(F.cross_entropy(tuned, y)) < float(F.cross_entropy(start, y))
    assert all(torch.equal(before[k], v) for k, v in algo.state_dict().items())
    assert all(p.grad is None for p in algo.parameters())
    assert all(not m._forward_hooks for m in algo.modules())


def test_a_bad_mode_is_a_one_line_error():
    algo = ProtoNet(Conv4(out_features=None, hidden=4))
    with pytest.raises(ConfigError, match="eval.finetune='lora' is not supported") as e:
        FineTuned(algo, "lora", 1, 0.01)
    assert "\n" not in str(e.value) and "transductive, film, tsa" in str(e.value)
    with pytest.raises(ConfigError, match="eval.finetune='lora' is not allowed") as e:
        load_config("protonet-quick", ["eval.finetune=lora"])
    assert "\n" not in str(e.value)
    for mode in NEW_MODES:
        assert load_config("protonet-quick", [f"eval.finetune={mode}"]).eval.finetune == mode


# --- the schedule chosen on validation episodes -------------------------------------------------------------------


def test_choose_schedule_picks_the_grid_point_that_wins_on_the_validation_episodes():
    torch.manual_seed(0)
    algo = ProtoNet(Conv4(out_features=None, hidden=8)).eval()
    val = EpisodeSampler(load_omniglot("vinyals", "val"), 5, 1, 2, seed=4)
    grid = [(0, 0.01), (4, 3.0), (4, 0.05)]
    best = choose_schedule(algo, val, "film", grid, episodes=6, batch=3)
    assert best.episodes == 6 and [row[:2] for row in best.table] == grid
    means = [row[2] for row in best.table]
    win = max(range(3), key=lambda i: (means[i], -grid[i][0]))
    assert (best.steps, best.lr) == grid[win]
    assert len(set(means)) > 1  # the grid points differ: the choice has something to choose
    # each grid point's score: FineTuned's mean per-episode accuracy on the same fixed episodes, counted here
    episodes = list(val.fixed(6, 3))
    with torch.no_grad():
        for (k, lr), mean in zip(grid, means):
            hits = [
                (FineTuned(algo, "film", k, lr).predict(b).argmax(-1) == b.query_y).double().mean(-1) for b in episodes
            ]
            assert abs(float(torch.cat(hits).mean()) - mean) < 1e-12


def test_choose_schedule_breaks_ties_by_fewer_steps_and_refuses_a_bad_grid():
    torch.manual_seed(0)
    algo = ProtoNet(Conv4(out_features=None, hidden=8)).eval()
    val = EpisodeSampler(load_omniglot("vinyals", "val"), 5, 1, 2, seed=4)
    best = choose_schedule(algo, val, "head", [(5, 1e-12), (0, 0.01)], episodes=3)
    assert best.table[0][2] == best.table[1][2] and best.steps == 0  # a step of 1e-12 changes no prediction
    with pytest.raises(ConfigError, match="grid=.* is invalid") as e:
        choose_schedule(algo, val, "head", [(5, -1.0)], episodes=3)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="no validation tasks"):
        choose_schedule(algo, None, "head", [(5, 0.1)])


# --- through the engine -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", NEW_MODES)
def test_a_trained_protonets_run_is_evaluated_with_each_new_mode(tmp_path, mode):
    run = helpers.smoke_run(tmp_path / "run")
    overrides = [f"eval.finetune={mode}", "eval.finetune_steps=2", "eval.test_episodes=2", "data.test_queries=2"]
    out = evaluate_run(str(run), overrides)
    (res, file), *_ = out.values()
    record = json.loads(Path(file).read_text())
    assert res.episodes == 2 and 0.0 <= res.mean <= 1.0
    assert record["settings"]["finetune"]["mode"] == mode and record["overrides"] == overrides


def test_choose_schedule_on_a_run_reads_its_validation_part(tmp_path):
    run = load_run(helpers.smoke_run(tmp_path / "run"), ["eval.val_every=1"])
    before = {k: v.clone() for k, v in run.algorithm.state_dict().items()}
    best = choose_schedule(run, run.tasks("val").val, "tsa", [(0, 0.01), (2, 0.01)], episodes=2)
    assert (best.steps, best.lr) in [(0, 0.01), (2, 0.01)] and best.episodes == 2
    assert all(torch.equal(before[k], v) for k, v in run.algorithm.state_dict().items())
