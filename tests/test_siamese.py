"""Siamese verification nets, in float64: the meta-gradient of one meta_loss against a plain per-pair loop written
here, one-shot prediction by the most similar support image, the two-way score of a symmetric model, and a short
run through the engine with affine distortions."""

from __future__ import annotations

import json
import math
from functools import partial

import pytest
import torch

import fastadapt
import helpers
from fastadapt import ConfigError
from fastadapt.algorithms.siamese import Siamese
from helpers import assert_same_grads, grads, mlp, tiny

pytestmark = pytest.mark.usefixtures("one_thread")

SIDE = 4
images = partial(helpers.images, side=SIDE)  # 3 tasks, 3-way 2-shot, 2 queries a class, float64


def tiny_siamese(two_way: bool = False, seed: int = 0) -> Siamese:
    torch.manual_seed(seed + 1)
    return Siamese(mlp(seed, hidden=(8,), inp=SIDE * SIDE, out=5), two_way=two_way).double()


def reference_meta_loss(algo: Siamese, batch) -> torch.Tensor:
    """Every unordered pair of distinct images of each task, one at a time: binary cross-entropy of
    ``sigmoid(alpha . |f(a) - f(b)| + beta)``, the same-class and different-class means weighted 1/2 each."""
    same, different = [], []
    for t in range(batch.num_tasks):
        x = torch.cat([batch.support_x[t], batch.query_x[t]])
        y = torch.cat([batch.support_y[t], batch.query_y[t]])
        for a in range(len(y)):
            for b in range(a + 1, len(y)):
                za, zb = algo.model(x[a : a + 1])[0], algo.model(x[b : b + 1])[0]
                p = torch.sigmoid((algo.weight * (za - zb).abs()).sum() + algo.bias)
                (same if y[a] == y[b] else different).append(-torch.log(p) if y[a] == y[b] else -torch.log(1 - p))
    return 0.5 * torch.stack(same).mean() + 0.5 * torch.stack(different).mean()


def test_meta_gradient_equals_a_plain_per_pair_loop_in_float64():
    batch = images(seed=3)
    algo = tiny_siamese()
    out = algo.meta_loss(batch)
    out.loss.backward()
    ours = grads(algo)
    algo.zero_grad()
    ref = reference_meta_loss(algo, batch)
    ref.backward()
    torch.testing.assert_close(out.loss, ref, rtol=1e-12, atol=1e-12)
    assert_same_grads(ours, grads(algo))
    assert {"weight", "bias"} <= set(ours) and any(k.startswith("model.") for k in ours)


def test_a_query_takes_the_class_of_the_support_image_with_the_highest_p_same():
    algo = tiny_siamese().eval()
    batch = images(seed=5, tasks=2)
    task = batch.task(1)
    predictor = algo.adapt(task.support_x, task.support_y)
    logits = predictor(task.query_x)
    torch.testing.assert_close(logits, algo.predict(batch)[1], rtol=1e-12, atol=1e-12)
    why = predictor.explain(task.query_x)
    p_same = why["p_same"]
    assert p_same.shape == (6, 6) and bool(((p_same > 0) & (p_same < 1)).all())
    nearest = task.support_y[p_same.argmax(-1)]
    assert torch.equal(logits.argmax(-1), nearest)
    torch.testing.assert_close(torch.sigmoid(logits.max(-1).values), p_same.max(-1).values, rtol=1e-12, atol=0)
    predictor.reset()
    predictor.update(task.support_x, task.support_y)
    torch.testing.assert_close(predictor(task.query_x), logits, rtol=1e-12, atol=1e-12)


def test_two_way_scoring_of_the_symmetric_l1_comparator_is_the_one_way_score():
    one, two = tiny_siamese(two_way=False).eval(), tiny_siamese(two_way=True).eval()
    two.load_state_dict(one.state_dict())
    batch = images(seed=6, tasks=2, ways=5, shots=1)
    torch.testing.assert_close(two.predict(batch), one.predict(batch), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(two.meta_loss(batch).loss, one.meta_loss(batch).loss, rtol=1e-14, atol=1e-14)
    assert one.predict(batch).shape == (2, 10, 5)  # any N, read from the support set


@pytest.mark.parametrize("options, match", [({"two_way": "yes"}, "two_way"), ({"features": 0}, "features")])
def test_bad_options_are_one_line_config_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        Siamese(mlp(inp=4, out=3), **options)


def test_it_trains_through_the_engine_with_affine_distortions(tmp_path):
    cfg = tiny(tmp_path, "algorithm.target=fastadapt.algorithms.siamese:Siamese", 'data.augment=["affine"]')
    result = fastadapt.train(cfg)
    assert result.steps == 6 and not result.interrupted
    rows = [json.loads(x) for x in (cfg.out_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert len(train_rows) == 6 and all(math.isfinite(r["loss"]) and 0 <= r["acc"] <= 1 for r in train_rows)
    assert 0.0 <= result.tests["5w1s"].mean <= 1.0 and result.tests["5w1s"].episodes == 6


def test_the_online_predictor_keeps_a_bounded_window_of_the_last_examples():
    algo = tiny_siamese().eval()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 1, SIDE, SIDE, generator=gen, dtype=torch.float64)
    predictor = algo.adapt(x, torch.tensor([0, 1, 0, 1]))
    assert predictor.window == 10  # the support set's size, at least 10
    for _ in range(5):
        predictor.update(torch.randn(3, 1, SIDE, SIDE, generator=gen, dtype=torch.float64), torch.tensor([0, 1, 2]))
    assert len(predictor.support_y) == 10 and predictor.support_y[-3:].tolist() == [0, 1, 2]
    predictor.configure(window=4)
    assert predictor.support_z.shape[0] == 4 and predictor.support_y.tolist() == [2, 0, 1, 2]
