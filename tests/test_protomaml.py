"""Proto-MAML, in float64: its meta-gradient against a plain per-task autograd loop written here (second and first
order, every execution path, BatchNorm), ProtoNets at zero steps, the predictor, and a short run through the engine."""

from __future__ import annotations

import json
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import fastadapt
import helpers
from fastadapt import ConfigError, TaskBatch
from fastadapt.algorithms import inner
from fastadapt.algorithms.protomaml import HEAD, ProtoMAML, prototype_head
from fastadapt.algorithms.protonet import ProtoNet
from helpers import assert_same_grads, assert_updates_refused, bad_updates, grads, labelled, mlp, tiny

pytestmark = pytest.mark.usefixtures("one_thread")

SIDE = 4  # 4x4 images: a 16-input MLP embedding
images = partial(helpers.images, side=SIDE)  # 3 tasks, 3-way 2-shot, 2 queries a class, float64
embedding = partial(mlp, hidden=(8,), inp=SIDE * SIDE, out=5)  # a tiny MLP embedding, D = 5


def reference_meta_loss(
    model: nn.Module, batch: TaskBatch, lr: float, steps: int, first_order: bool = False, detach_head: bool = False
) -> torch.Tensor:
    """Proto-MAML's mean query loss written as a plain loop: prototypes by boolean masks, the head ``2 c``,
    ``-||c||^2``, ``steps`` SGD steps on encoder and head with torch.autograd.grad."""
    params = dict(model.named_parameters())

    def logits(fast: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        z = functional_call(model, {k: fast[k] for k in params}, (x,)).flatten(1)
        return z @ fast["W"].T + fast["b"]

    total = torch.zeros((), dtype=torch.float64)
    for t in range(batch.num_tasks):
        sx, sy, qx, qy = batch.support_x[t], batch.support_y[t], batch.query_x[t], batch.query_y[t]
        z = functional_call(model, params, (sx,)).flatten(1)
        c = torch.stack([z[sy == k].mean(0) for k in range(batch.ways)])
        if detach_head:
            c = c.detach().requires_grad_()
        # the encoder's fast weights are clones: the head is a variable of its own, so the inner gradients are partial
        # (the gradient to the head's initialisation reaches the encoder only through the outer backward)
        fast = {**{k: v.clone() for k, v in params.items()}, "W": 2 * c, "b": -(c * c).sum(1)}
        for _ in range(steps):
            g = torch.autograd.grad(
                F.cross_entropy(logits(fast, sx), sy), list(fast.values()), create_graph=not first_order
            )
            fast = {k: v - lr * gk for (k, v), gk in zip(fast.items(), g)}
        total = total + F.cross_entropy(logits(fast, qx), qy)
    return total / batch.num_tasks


def meta_grads(algo: nn.Module, batch: TaskBatch) -> dict[str, torch.Tensor]:
    algo.zero_grad()
    algo.meta_loss(batch).loss.backward()
    return grads(algo.model)


def reference_grads(model: nn.Module, *args, **kwargs) -> dict[str, torch.Tensor]:
    model.zero_grad()
    reference_meta_loss(model, *args, **kwargs).backward()
    return grads(model)


# --- 1. the meta-gradient against the plain loop ----------------------------------------------


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("execution", inner.EXECUTIONS)
def test_meta_gradient_equals_a_plain_per_task_loop(execution, first_order):
    model, batch = embedding(), images()
    algo = ProtoMAML(model, inner_lr=0.3, inner_steps=2, first_order=first_order, execution=execution, chunk_size=2)
    out = algo.meta_loss(batch)
    ref = reference_meta_loss(model, batch, 0.3, 2, first_order)
    assert float(out.loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-12)
    assert set(out.metrics) == {"loss", "acc"}
    assert_same_grads(meta_grads(algo, batch), reference_grads(model, batch, 0.3, 2, first_order))


def test_the_checks_have_teeth_second_order_first_order_and_the_prototype_path_differ():
    model, batch = embedding(), images()
    second = reference_grads(model, batch, 0.3, 2)
    first = reference_grads(model, batch, 0.3, 2, True)
    no_proto = reference_grads(model, batch, 0.3, 2, True, detach_head=True)  # the head's init cut from the encoder

    def rel(a, b):
        return max(float((a[k] - b[k]).abs().max()) for k in a) / max(float(b[k].abs().max()) for k in b)

    assert rel(first, second) > 1e-3 and rel(no_proto, first) > 1e-3
    assert_same_grads(meta_grads(ProtoMAML(model, inner_lr=0.3, inner_steps=2, first_order=True), batch), first)


@pytest.mark.parametrize("execution", ["loop", "vmap"])
def test_meta_gradient_equals_the_plain_loop_on_a_batchnorm_conv4_embedding(execution):
    model, batch = helpers.conv4(out=None, hidden=4), helpers.images(tasks=2)
    algo = ProtoMAML(model, inner_lr=0.2, inner_steps=1, execution=execution)
    assert_same_grads(meta_grads(algo, batch), reference_grads(model, batch, 0.2, 1))


# --- 2. zero steps: ProtoNets ---------------------------------------------------------------------------


def test_with_no_inner_step_the_logits_are_protonets_plus_a_per_query_constant():
    model, batch = embedding(), images()
    got = ProtoMAML(model, inner_steps=0).predict(batch)
    want = ProtoNet(model).predict(batch)
    with torch.no_grad():
        norms = model(batch.query_x.flatten(0, 1)).pow(2).sum(-1).view(batch.num_tasks, -1, 1)  # ||f(x_q)||^2
    torch.testing.assert_close(got, want + norms, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.softmax(-1), want.softmax(-1), rtol=1e-12, atol=1e-12)
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_with_no_inner_step_the_meta_loss_and_its_gradient_are_protonets():
    model, batch = embedding(), images()
    algo, proto = ProtoMAML(model, inner_steps=0), ProtoNet(model)
    assert float(algo.meta_loss(batch).loss.detach()) == pytest.approx(
        float(proto.meta_loss(batch).loss.detach()), rel=1e-12
    )
    assert_same_grads(meta_grads(algo, batch), meta_grads(proto, batch))


def test_prototype_head_is_twice_the_means_and_minus_their_squared_norms_absent_classes_never_win():
    z = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, -2.0]], dtype=torch.float64)
    weight, bias = prototype_head(z, torch.tensor([0, 0, 2]), 4)
    torch.testing.assert_close(weight, torch.tensor([[4.0, 6.0], [0, 0], [0, -4.0], [0, 0]], dtype=torch.float64))
    assert bias.tolist() == [-13.0, -math.inf, -4.0, -math.inf]


# --- 3. adapt and the predictor ---------------------------------------------------------------------------


def test_adapt_leaves_the_module_unchanged_and_matches_predict():
    model, batch = embedding(), images()
    algo = ProtoMAML(model, inner_lr=0.3, inner_steps=2, inner_steps_eval=3)
    before = {k: v.clone() for k, v in algo.state_dict().items()}
    predictor = algo.adapt(batch.support_x[1], batch.support_y[1])
    out = predictor(batch.query_x[1])
    predictor.update(batch.query_x[1], batch.query_y[1])
    after = algo.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in algo.parameters())
    torch.testing.assert_close(out, algo.predict(batch)[1], rtol=1e-10, atol=1e-10)
    assert not out.requires_grad and out.shape == (6, 3)


def test_predictor_update_reset_configure_and_explain():
    algo = ProtoMAML(mlp(hidden=(8,), inp=4, out=5), inner_lr=0.2, inner_steps=2)
    x, y = labelled(9, seed=1)
    qx, qy = labelled(6, seed=2)
    assert set(y.tolist()) == {0, 1, 2}
    predictor = algo.adapt(x, y)
    first = predictor(qx).clone()
    assert predictor.configure(window=12, policy="continue") is predictor
    predictor.update(qx, qy)
    assert not torch.equal(predictor(qx), first)  # it learnt
    predictor.reset()  # the meta-learnt encoder, the head at its prototype initialisation
    predictor.configure(policy="window")
    predictor.update(x, y)  # after reset, one update equals adapt on the same examples
    torch.testing.assert_close(predictor(qx), first, rtol=1e-12, atol=1e-12)
    layers = {c.name: c for c in predictor.explain(qx)["layers"]}
    assert set(HEAD) <= layers.keys() and layers[HEAD[0]].change > 0
    assert_updates_refused(predictor, qx, bad_updates(x))
    with pytest.raises(fastadapt.DataError, match="outside the 3 classes"):
        predictor.update(qx[:1], torch.tensor([3]))


def test_an_update_without_some_class_keeps_its_head_row_finite():
    algo = ProtoMAML(mlp(hidden=(8,), inp=4, out=5), inner_lr=0.2, inner_steps=0)
    x, y = labelled(9, seed=1)
    predictor = algo.adapt(x, y)
    init = {k: v.clone() for k, v in predictor.params.items()}
    predictor.update(x[y == 0], y[y == 0])  # a window of class 0 only, from the meta-learnt start
    for name in HEAD:
        assert torch.isfinite(predictor.params[name]).all()
        assert torch.equal(predictor.params[name][1:], init[name][1:])  # no step taken: the start's rows


@pytest.mark.parametrize(
    "options, match",
    [({"inner_lr": 0.0}, "inner_lr"), ({"inner_steps": -1}, "inner_steps"), ({"execution": "fast"}, "execution")],
)
def test_bad_options_are_one_line_config_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        ProtoMAML(embedding(), **options)


# --- 4. through the engine --------------------------------------------------------------------------------


def test_it_trains_through_the_engine_on_the_bundled_omniglot(tmp_path):
    cfg = tiny(tmp_path, "algorithm.target=fastadapt.algorithms.protomaml:ProtoMAML", "algorithm.inner_lr=0.05")
    result = fastadapt.train(cfg)
    assert result.steps == 6 and not result.interrupted
    rows = [json.loads(x) for x in (cfg.out_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert len(train_rows) == 6 and all(math.isfinite(r["loss"]) and 0 <= r["acc"] <= 1 for r in train_rows)
    assert 0.0 <= result.tests["5w1s"].mean <= 1.0 and result.tests["5w1s"].episodes == 6
