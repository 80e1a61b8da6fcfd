"""Test-time selection of the inner rate and steps from the support set alone (eval.select=support_cv)."""

from __future__ import annotations

import math

import pytest
import torch

import helpers
from fastadapt import ConfigError, SinusoidTasks, TaskBatch, config_from_dict
from fastadapt.algorithms.alfa import ALFA
from fastadapt.algorithms.anil import ANIL
from fastadapt.algorithms.base import task_loss
from fastadapt.algorithms.maml import MAML
from fastadapt.algorithms.metasgd import MetaSGD
from fastadapt.algorithms.protonet import ProtoNet
from fastadapt.algorithms.reptile import Reptile
from fastadapt.eval import evaluate
from fastadapt.eval.select import SupportSelected, augmented_copies, candidates, choose, kfold_splits
from fastadapt.nn import Conv4
from helpers import mlp

SCALES, STEPS = (0.5, 1.0, 2.0), (1, 3)


pytestmark = pytest.mark.usefixtures("one_thread")


def sinusoids(tasks: int = 3, shots: int = 5) -> TaskBatch:
    return SinusoidTasks(shots, 6, seed=11).sample(tasks).to(dtype=torch.float64)


def images(shots: int) -> TaskBatch:
    """One 3-way task of 16x16 images in [0, 1], 2 queries a class, drawn from a generator at ``shots``."""
    return helpers.images(shots, tasks=1, shots=shots, draw=torch.rand)


def conv(ways: int = 3) -> Conv4:
    torch.manual_seed(0)
    return Conv4(1, hidden=4, out_features=ways).double()


def blind(batch: TaskBatch) -> TaskBatch:
    """The same tasks with a query set nobody may look at: NaN inputs, -1 labels (or NaN targets)."""
    qy = (
        torch.full_like(batch.query_y, math.nan)
        if batch.query_y.is_floating_point()
        else torch.full_like(batch.query_y, -1)
    )
    return TaskBatch(batch.support_x, batch.support_y, torch.full_like(batch.query_x, math.nan), qy, batch.classes)


ALGOS = {
    "maml": lambda: MAML(mlp(), inner_lr=0.02, inner_steps=1, inner_steps_eval=2),
    "metasgd": lambda: MetaSGD(mlp(), init_lr=0.02),
    "anil": lambda: ANIL(mlp(), inner_lr=0.02, head="net.4"),
    "reptile": lambda: Reptile(mlp(), inner_lr=0.01, inner_steps=2, inner_optimizer="sgd"),
    "alfa": lambda: ALFA(mlp(), inner_lr=0.02, inner_steps=2),
}


@pytest.mark.parametrize("name", list(ALGOS))
def test_selection_never_reads_the_query_set(name):
    algo = ALGOS[name]()
    batch = sinusoids()
    sel = SupportSelected(algo, SCALES, STEPS)
    seen = sel.choices(batch.support_x, batch.support_y)
    hidden = blind(batch)
    assert sel.choices(hidden.support_x, hidden.support_y) == seen
    assert all(math.isfinite(c.loss) and c.scheme == "kfold" for c in seen)
    # predictions on the real query inputs with the choice made on the blind batch: finite, and what predict gives
    real = sel.predict(batch)
    assert torch.isfinite(real).all()
    for t, c in enumerate(seen):
        want = algo.adapt(batch.support_x[t], batch.support_y[t], steps=c.steps, lr_scale=c.lr_scale)(batch.query_x[t])
        torch.testing.assert_close(real[t], want, rtol=0, atol=0)
    out = sel.predict(hidden)  # the query inputs are NaN: so are the outputs, and nothing crashed
    assert out.shape == real.shape and torch.isnan(out).all()


def test_choice_is_the_grid_minimum_of_a_plain_kfold_loop():
    algo = ALGOS["maml"]()
    batch = sinusoids(tasks=1)
    x, y = batch.support_x[0], batch.support_y[0]
    c = choose(algo, x, y, SCALES, STEPS)
    losses = {}
    for scale, k in candidates(SCALES, STEPS, 2):
        fold_losses = []
        for j in range(5):  # 5 points, 5 folds: leave-one-out
            keep = [i for i in range(5) if i != j]
            p = algo.adapt(x[keep], y[keep], steps=k, lr_scale=scale)
            fold_losses.append(float(task_loss(p(x[j : j + 1]), y[j : j + 1])))
        losses[(scale, k)] = sum(fold_losses) / 5
    best = min(losses, key=lambda key: losses[key])
    assert (c.lr_scale, c.steps) == best
    assert c.loss == pytest.approx(losses[best], rel=1e-12)
    assert (1.0, 2) in losses  # the run's own setting is always a candidate


def test_one_shot_images_validate_on_augmented_copies_and_kshot_on_folds():
    algo = MAML(conv(), inner_lr=0.1, inner_steps=1)
    one = images(shots=1)
    c1 = SupportSelected(algo, SCALES, STEPS).choices(one.support_x, one.support_y)
    assert {c.scheme for c in c1} == {"augment"}
    assert SupportSelected(algo, SCALES, STEPS).choices(blind(one).support_x, one.support_y) == c1
    two = images(shots=2)
    assert {c.scheme for c in SupportSelected(algo, SCALES, STEPS).choices(two.support_x, two.support_y)} == {"kfold"}
    folds = kfold_splits(two.support_y[0], True)
    assert len(folds) == 2 and all(sorted(two.support_y[0][va].tolist()) == [0, 1, 2] for _, va in folds)
    x = one.support_x[0]
    aug = augmented_copies(x)
    assert aug.shape == (6 * x.shape[0], *x.shape[1:])
    torch.testing.assert_close(
        aug[: x.shape[0], ..., :-2], x[..., 2:], rtol=0, atol=1e-12
    )  # the first copy: moved 2 pixels left


def test_one_example_regression_keeps_the_run_setting():
    algo = ALGOS["maml"]()
    batch = sinusoids(tasks=1, shots=1)
    c = choose(algo, batch.support_x[0], batch.support_y[0], SCALES, STEPS)
    assert (c.lr_scale, c.steps, c.scheme) == (1.0, 2, "none")


def test_evaluate_with_selection_scores_and_records_settings():
    algo = ALGOS["maml"]()
    episodes = [sinusoids(tasks=2)]
    res = evaluate(SupportSelected(algo, SCALES, STEPS), episodes, settings={"x": 1})
    assert res.episodes == 2 and math.isfinite(res.mean)


def test_bad_input_is_a_one_line_error():
    with pytest.raises(ConfigError, match="gradient-based"):
        SupportSelected(ProtoNet(Conv4(1, hidden=4)), SCALES, STEPS)
    base = {"data": {"dataset": "sinusoid", "ways": 1}, "model": {"name": "mlp"}, "algorithm": {"name": "maml"}}
    for key, value, match in (
        ("select", "loo", "eval.select"),
        ("select_lr_scales", [], "select_lr_scales"),
        ("select_lr_scales", [0.0], "select_lr_scales"),
        ("select_steps", [-1], "select_steps"),
    ):
        with pytest.raises(ConfigError, match=match):
            config_from_dict({**base, "eval": {key: value}})
    with pytest.raises(ConfigError, match="both set"):
        config_from_dict({**base, "eval": {"select": "support_cv", "finetune": "head"}})
