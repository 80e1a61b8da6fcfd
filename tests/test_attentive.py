"""The attentive comparator, in float64: the loss and meta-gradient of one meta_loss against a plain per-pair,
per-location loop written here (one-way and two-way scoring, with and without coordinates), the two-way score's
symmetry, the mean over shots, the predictor against predict and online, variable ways, and a short run through
the engine."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import fastadapt
import helpers
from fastadapt import ConfigError, load_config
from fastadapt.algorithms.attentive import Attentive, class_means, map_tokens
from fastadapt.core.registry import ALGORITHMS
from helpers import assert_same_grads, grads, tiny

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_attentive(two_way: bool = False, coordinates: bool = True, batch_norm: bool = False, seed: int = 0):
    """Conv4 (4 filters, 16x16 inputs, first two blocks pooled: 4x4 maps, 16 tokens), d = 5, 6 hidden units,
    float64. At their initial scale the tiny encoder (its maps are small without BatchNorm) and the comparator give
    every pair almost the same score; the encoder's weights are scaled by 1.5 without BatchNorm and the comparator's
    doubled, so that the classes' logits differ (a check at a tie would miss terms)."""
    model = helpers.conv4(seed, out=None, hidden=4, side=16, batch_norm=batch_norm)
    torch.manual_seed(seed + 1)
    algo = Attentive(model, pooled_blocks=2, dim=5, hidden=6, coordinates=coordinates, two_way=two_way).double()
    with torch.no_grad():
        for p in (algo.comparator if batch_norm else algo).parameters():
            p.mul_(2.0)
        for p in () if batch_norm else model.parameters():
            p.mul_(1.5)
    return algo


def reference_tokens(model, x: torch.Tensor, coordinates: bool) -> list[torch.Tensor]:
    """One image ``[C, H, W]``: Conv4's convolutions written out (conv, ReLU, a 2x2 pool in blocks 0-1), then one
    token per location, row by row, ending with the location's column and row scaled to [-1, 1]."""
    h = x.unsqueeze(0)
    for i, block in enumerate(model.features):
        h = F.relu(F.conv2d(h, block[0].weight, block[0].bias, padding=1))
        if i < 2:
            h = F.max_pool2d(h, 2)
    maps = h[0]
    rows, cols = maps.shape[1:]
    out = []
    for r in range(rows):
        for c in range(cols):
            where = torch.tensor([-1 + 2 * c / max(cols - 1, 1), -1 + 2 * r / max(rows - 1, 1)], dtype=x.dtype)
            out.append(torch.cat([maps[:, r, c], where]) if coordinates else maps[:, r, c])
    return out


def reference_score(comp, ta: list[torch.Tensor], tb: list[torch.Tensor]) -> torch.Tensor:
    """``a`` attends to ``b``, location by location: softmax of the scaled dot products over b's locations, b's
    values averaged by it, then the pair head on [own value, aligned value, |difference|], averaged over a's
    locations."""

    def lin(layer, v):
        return layer.weight @ v + layer.bias

    keys = [lin(comp.key, t) for t in tb]
    values = [lin(comp.value, t) for t in tb]
    d = keys[0].shape[0]
    hs = []
    for t in ta:
        q, own = lin(comp.query, t), lin(comp.value, t)
        e = torch.stack([torch.exp(q @ k / math.sqrt(d)) for k in keys])
        aligned = sum(w * v for w, v in zip(e / e.sum(), values))
        hs.append(F.relu(lin(comp.hidden, torch.cat([own, aligned, (own - aligned).abs()]))))
    return lin(comp.out, sum(hs) / len(hs))[0]


def reference_meta_loss(algo: Attentive, batch) -> torch.Tensor:
    """Mean cross-entropy over every task's queries; a class's logit is the mean of its shots' pair scores."""
    total, count = torch.zeros((), dtype=torch.float64), 0
    for t in range(batch.num_tasks):
        sx, sy, qx, qy = batch.support_x[t], batch.support_y[t], batch.query_x[t], batch.query_y[t]
        support = [reference_tokens(algo.model, sx[i], algo.coordinates) for i in range(len(sy))]
        for q in range(len(qy)):
            tq = reference_tokens(algo.model, qx[q], algo.coordinates)
            logits = []
            for n in range(batch.ways):
                scores = []
                for i in range(len(sy)):
                    if sy[i] != n:
                        continue
                    score = reference_score(algo.comparator, tq, support[i])
                    if algo.two_way:
                        score = (score + reference_score(algo.comparator, support[i], tq)) / 2
                    scores.append(score)
                logits.append(sum(scores) / len(scores))
            total = total - torch.stack(logits).log_softmax(0)[qy[q]]
            count += 1
    return total / count


@pytest.mark.parametrize("two_way, coordinates", [(False, True), (True, True), (False, False)])
def test_loss_and_meta_gradient_equal_a_plain_per_pair_loop_in_float64(two_way, coordinates):
    batch = helpers.images(seed=3, tasks=2)
    algo = tiny_attentive(two_way, coordinates)
    out = algo.meta_loss(batch)
    out.loss.backward()
    ours = grads(algo)
    algo.zero_grad()
    ref = reference_meta_loss(algo, batch)
    ref.backward()
    torch.testing.assert_close(out.loss, ref, rtol=1e-10, atol=1e-10)
    assert_same_grads(ours, grads(algo), tol=1e-10)
    assert set(ours) == {n for n, _ in algo.named_parameters()}  # every weight, encoder and comparator, learns
    assert float(algo.predict(batch).std(-1).mean()) > 0.01  # the classes score differently: the check is not at a tie


def test_two_way_scores_are_symmetric_and_differ_from_one_way():
    algo = tiny_attentive(two_way=False).eval()
    batch = helpers.images(seed=5, tasks=1)
    za, zb = algo.tokens(batch.query_x[0]), algo.tokens(batch.support_x[0])
    with torch.no_grad():
        one_ab, one_ba = algo.comparator(za, zb), algo.comparator(zb, za)
        two = algo.comparator(za, zb, two_way=True)
        torch.testing.assert_close(two, algo.comparator(zb, za, two_way=True).T, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(two, (one_ab + one_ba.T) / 2, rtol=1e-12, atol=1e-12)
    assert float((one_ab - one_ba.T).abs().max()) > 1e-4  # attention is not symmetric: two-way is a different score


def test_a_class_scores_the_mean_of_its_shots_and_an_absent_class_minus_infinity():
    pairs = torch.tensor([[1.0, 2.0, 4.0, 8.0], [0.5, -1.0, 3.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([2, 0, 2, 2])
    out = class_means(pairs, labels, 4)
    torch.testing.assert_close(out[:, 0], pairs[:, 1], rtol=0, atol=0)
    torch.testing.assert_close(out[:, 2], pairs[:, [0, 2, 3]].mean(-1), rtol=1e-15, atol=0)
    assert bool(torch.isinf(out[:, [1, 3]]).all()) and bool((out[:, [1, 3]] < 0).all())


def test_tokens_are_the_maps_locations_with_their_coordinates():
    maps = torch.arange(2 * 3 * 4, dtype=torch.float64).view(1, 2, 3, 4)
    t = map_tokens(maps, coordinates=True)
    assert t.shape == (1, 12, 4)
    torch.testing.assert_close(t[0, 5, :2], maps[0, :, 1, 1], rtol=0, atol=0)  # row 1, column 1
    assert t[0, 0, 2:].tolist() == [-1.0, -1.0] and t[0, -1, 2:].tolist() == [1.0, 1.0]
    assert t[0, 3, 2:].tolist() == [1.0, -1.0]  # the last column of the first row
    assert map_tokens(maps, coordinates=False).shape == (1, 12, 2)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_the_predictor_scores_as_predict_and_learns_online(batch_norm):
    algo = tiny_attentive(two_way=True, batch_norm=batch_norm).eval()
    batch = helpers.images(seed=2, tasks=2)
    task = batch.task(1)
    predictor = algo.adapt(task.support_x, task.support_y)
    logits = predictor(task.query_x)
    assert logits.shape == (6, 3) and torch.isfinite(logits).all()
    if not batch_norm:  # without batch statistics, encoding the support set apart changes nothing
        torch.testing.assert_close(logits, algo.predict(batch)[1], rtol=1e-12, atol=1e-12)
    why = predictor.explain(task.query_x)
    assert why["kind"] == "comparisons" and why["pair_logits"].shape == (6, 6)
    torch.testing.assert_close(class_means(why["pair_logits"], task.support_y, 3), logits, rtol=1e-12, atol=1e-12)
    predictor.reset()
    with pytest.raises(fastadapt.DataError, match="no labelled example"):
        predictor(task.query_x)
    predictor.update(task.support_x, task.support_y)
    torch.testing.assert_close(predictor(task.query_x), logits, rtol=1e-12, atol=1e-12)
    predictor.update(task.query_x[:1], torch.tensor([4]))  # a new class 4; class 3 never seen: never predicted
    out = predictor(task.query_x)
    assert out.shape == (6, 5) and bool(torch.isinf(out[:, 3]).all()) and torch.isfinite(out[:, 4]).all()
    predictor.configure(window=2)
    assert predictor.support_z.shape[0] == 2 and predictor.support_y.tolist() == [2, 4]


def test_any_number_of_ways_is_read_from_the_support_set():
    algo = tiny_attentive().eval()
    batch = helpers.images(seed=4, tasks=1, ways=5, shots=1)
    assert algo.predict(batch).shape == (1, 10, 5)
    assert algo.adapt(batch.support_x[0], batch.support_y[0])(batch.query_x[0]).shape == (10, 5)
    assert ALGORITHMS.get("attentive") is Attentive and Attentive.variable_ways


@pytest.mark.parametrize(
    "options, match",
    [({"dim": 0}, "dim"), ({"two_way": "yes"}, "two_way"), ({"pooled_blocks": -1}, "pooled_blocks")],
)
def test_bad_options_are_one_line_config_errors(options, match):
    with pytest.raises(ConfigError, match=match) as e:
        Attentive(helpers.conv4(out=None), **options)
    assert "\n" not in str(e.value)


def test_a_wrong_channel_count_is_a_one_line_error_naming_the_fix():
    algo = Attentive(helpers.conv4(out=None, hidden=6), channels=5).double()
    with pytest.raises(ConfigError, match="algorithm.channels=6"):
        algo.meta_loss(helpers.images(seed=1, tasks=1))


def test_it_trains_through_the_engine_on_the_bundled_omniglot(tmp_path):
    cfg = tiny(tmp_path, "algorithm.target=fastadapt.algorithms.attentive:Attentive", "algorithm.dim=8")
    result = fastadapt.train(cfg)
    assert result.steps == 6 and not result.interrupted
    rows = [json.loads(x) for x in (cfg.out_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert len(train_rows) == 6 and all(math.isfinite(r["loss"]) and 0 <= r["acc"] <= 1 for r in train_rows)
    assert 0.0 <= result.tests["5w1s"].mean <= 1.0 and result.tests["5w1s"].episodes == 6


def test_the_preset_is_relation_networks_data_with_the_attentive_comparator():
    cfg, relation = load_config("attentive-omniglot-5w1s"), load_config("relation-omniglot-5w1s")
    assert cfg.algorithm == "attentive" and cfg.data == relation.data and cfg.model == relation.model
