"""Relation Networks, in float64: the meta-gradient of one meta_loss against a plain per-pair loop written here (MSE
and cross-entropy), the predictor against predict, variable ways, and a short run through the engine."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import fastadapt
import helpers
from fastadapt import ConfigError
from fastadapt.algorithms.relation import RelationNet, class_sums, feature_maps
from helpers import assert_same_grads, grads, tiny

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_relation(loss: str = "mse", batch_norm: bool = False, seed: int = 0) -> RelationNet:
    """Conv4 (4 filters, 16x16 inputs, first two blocks pooled: 4x4 maps) and a relation module of 5 filters and 3
    units, float64."""
    model = helpers.conv4(seed, out=None, hidden=4, side=16, batch_norm=batch_norm)
    torch.manual_seed(seed + 1)
    return RelationNet(model, pooled_blocks=2, hidden=5, fc=3, batch_norm=batch_norm, loss=loss).double()


def reference_maps(model, x: torch.Tensor) -> torch.Tensor:
    """One image ``[C, H, W]`` through Conv4's convolutions written out: conv, ReLU, and a 2x2 pool in blocks 0-1."""
    h = x.unsqueeze(0)
    for i, block in enumerate(model.features):
        h = F.relu(F.conv2d(h, block[0].weight, block[0].bias, padding=1))
        if i < 2:
            h = F.max_pool2d(h, 2)
    return h[0]


def reference_score(g, pair: torch.Tensor) -> torch.Tensor:
    """One pair ``[2C, H, W]`` through the relation module written out; the pre-sigmoid score."""
    h = pair.unsqueeze(0)
    for conv in g.convs:
        h = F.relu(F.conv2d(h, conv.weight, conv.bias, padding=1))
        if min(h.shape[-2:]) >= 2:
            h = F.max_pool2d(h, 2)
    h = F.relu(h.mean((-2, -1)) @ g.fc.weight.T + g.fc.bias)
    return (h @ g.out.weight.T + g.out.bias)[0, 0]


def reference_meta_loss(algo: RelationNet, batch) -> torch.Tensor:
    """The mean loss over tasks, queries and classes, one image and one pair at a time."""
    total, count = torch.zeros((), dtype=torch.float64), 0
    for t in range(batch.num_tasks):
        sx, sy, qx, qy = batch.support_x[t], batch.support_y[t], batch.query_x[t], batch.query_y[t]
        classes = [sum(reference_maps(algo.model, sx[i]) for i in range(len(sy)) if sy[i] == n) for n in range(3)]
        for q in range(len(qy)):
            zq = reference_maps(algo.model, qx[q])
            scores = torch.stack([reference_score(algo.relation, torch.cat([c, zq])) for c in classes])
            if algo.loss == "mse":
                target = (torch.arange(3) == qy[q]).double()
                total = total + ((torch.sigmoid(scores) - target) ** 2).sum()
                count += 3
            else:
                total = total - scores.log_softmax(0)[qy[q]]
                count += 1
    return total / count


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_meta_gradient_equals_a_plain_per_pair_loop_in_float64(loss):
    batch = helpers.images(seed=3)
    algo = tiny_relation(loss)
    out = algo.meta_loss(batch)
    out.loss.backward()
    ours = grads(algo)
    algo.zero_grad()
    ref = reference_meta_loss(algo, batch)
    ref.backward()
    torch.testing.assert_close(out.loss, ref, rtol=1e-12, atol=1e-12)
    assert_same_grads(ours, grads(algo))
    assert set(ours) == {n for n, _ in algo.named_parameters()}  # every weight, encoder and comparator, learns


def test_the_class_feature_is_the_sum_of_its_shots_and_the_encoder_keeps_its_maps():
    algo = tiny_relation()
    batch = helpers.images(seed=1)
    maps = feature_maps(algo.model, batch.support_x[0], 2)
    assert maps.shape == (6, 4, 4, 4)  # 16 -> 8 -> 4, the last two blocks unpooled
    assert feature_maps(algo.model, batch.support_x[0], None).shape == (6, 4, 1, 1)  # Conv4 as it is
    sums = class_sums(maps.unsqueeze(0), batch.support_y[:1], 3)[0]
    torch.testing.assert_close(sums[1], maps[2] + maps[3], rtol=0, atol=1e-12)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_the_predictor_scores_as_predict_and_learns_online(batch_norm):
    algo = tiny_relation(batch_norm=batch_norm).eval()
    batch = helpers.images(seed=2, tasks=2)
    task = batch.task(1)
    predictor = algo.adapt(task.support_x, task.support_y)
    logits = predictor(task.query_x)
    assert logits.shape == (6, 3) and torch.isfinite(logits).all()
    if not batch_norm:  # without batch statistics, encoding the support set apart changes nothing
        torch.testing.assert_close(logits, algo.predict(batch)[1], rtol=1e-12, atol=1e-12)
    scores = predictor.explain(task.query_x)["relations"]
    assert bool(((scores > 0) & (scores < 1)).all()) and torch.equal(scores.argmax(-1), logits.argmax(-1))
    predictor.reset()
    predictor.update(task.support_x, task.support_y)
    torch.testing.assert_close(predictor(task.query_x), logits, rtol=1e-12, atol=1e-12)
    predictor.update(task.query_x[:1], torch.tensor([4]))  # a new class 4; class 3 never seen: never predicted
    out = predictor(task.query_x)
    assert out.shape == (6, 5) and bool(torch.isinf(out[:, 3]).all()) and torch.isfinite(out[:, 4]).all()


def test_any_number_of_ways_is_read_from_the_support_set():
    algo = tiny_relation().eval()
    batch = helpers.images(seed=4, tasks=1, ways=5, shots=1)
    assert algo.predict(batch).shape == (1, 10, 5)
    assert algo.adapt(batch.support_x[0], batch.support_y[0])(batch.query_x[0]).shape == (10, 5)


@pytest.mark.parametrize(
    "options, match", [({"loss": "bce"}, "loss"), ({"fc": 0}, "fc"), ({"pooled_blocks": -1}, "pooled_blocks")]
)
def test_bad_options_are_one_line_config_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        RelationNet(helpers.conv4(out=None), **options)


def test_it_trains_through_the_engine_on_the_bundled_omniglot(tmp_path):
    cfg = tiny(tmp_path, "algorithm.target=fastadapt.algorithms.relation:RelationNet", "algorithm.hidden=8")
    result = fastadapt.train(cfg)
    assert result.steps == 6 and not result.interrupted
    rows = [json.loads(x) for x in (cfg.out_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert len(train_rows) == 6 and all(math.isfinite(r["loss"]) and 0 <= r["acc"] <= 1 for r in train_rows)
    assert 0.0 <= result.tests["5w1s"].mean <= 1.0 and result.tests["5w1s"].episodes == 6
