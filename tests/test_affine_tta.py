"""The ``affine`` augmentation (Koch et al. 2015's distortions) and test-time augmentation (``eval.tta``): the warp's
conventions against exact pixel moves, the draws' ranges and seeding, and the evaluation wrapper's averaging."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import fastadapt
import helpers
from fastadapt import ConfigError, TaskBatch
from fastadapt.algorithms.protonet import ProtoNet
from fastadapt.data import augment
from fastadapt.data.augment import AFFINE_TRANSLATION, AugmentedTasks, affine_matrices, warp
from fastadapt.eval.tta import ViewAveraged, distorted
from helpers import mlp, tiny

pytestmark = pytest.mark.usefixtures("one_thread")


def square(seed: int = 0, m: int = 3, side: int = 8) -> torch.Tensor:
    return torch.rand(m, 1, side, side, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def maps_of(a: list[list[float]], t: list[float], m: int = 3) -> torch.Tensor:
    one = torch.cat([torch.tensor(a, dtype=torch.float64), torch.tensor(t, dtype=torch.float64).view(2, 1)], 1)
    return one.expand(m, 2, 3)


def test_the_identity_map_leaves_the_images_as_they_are():
    x = square()
    torch.testing.assert_close(warp(x, maps_of([[1, 0], [0, 1]], [0, 0])), x, rtol=0, atol=1e-12)


def test_a_translation_of_one_pixel_moves_the_image_and_fills_the_border_with_zero():
    x = square()
    out = warp(x, maps_of([[1, 0], [0, 1]], [2 / 8, 0]))  # 2 normalised units span the 8 pixels: 1 pixel right
    torch.testing.assert_close(out[..., 1:], x[..., :-1], rtol=0, atol=1e-12)
    assert bool((out[..., 0] == 0).all())


def test_a_quarter_turn_is_rot90():
    x = square()
    torch.testing.assert_close(
        warp(x, maps_of([[0, -1], [1, 0]], [0, 0])), torch.rot90(x, -1, (-2, -1)), rtol=0, atol=1e-12
    )


def test_draws_stay_in_koch_et_al_ranges_and_each_component_is_present_or_not():
    maps = affine_matrices(4000, torch.Generator().manual_seed(0))
    t = maps[:, :, 2]
    assert float(t.abs().max()) <= 2 * AFFINE_TRANSLATION and bool((t == 0).any()) and bool((t != 0).any())
    det = torch.linalg.det(maps[:, :, :2])  # rotation 1, shear (1 - rho_x rho_y), scale s_x s_y
    assert float(det.min()) >= 0.8**2 * (1 - 0.3**2) - 1e-12 and float(det.max()) <= 1.2**2 * (1 + 0.3**2) + 1e-12
    assert bool((maps[:, :, :2] == torch.eye(2, dtype=torch.float64)).all(-1).all(-1).any())  # all components absent


def test_omniglot_bundled_images_are_white_strokes_on_black_so_zero_is_the_background():
    images = np.load(Path(augment.__file__).parent / "omniglot28.npz")["images"]
    border = np.concatenate([images[..., 0, :], images[..., -1, :], images[..., :, 0], images[..., :, -1]], -1)
    assert (border == 0).mean() > 0.95 and np.median(images) == 0


class Source:
    """Three random 3-way tasks of 16x16 images in [0, 1], the same for every step."""

    ways, shots, queries = 3, 2, 2

    def sample_tasks(self, step: int, start: int, count: int) -> TaskBatch:
        return helpers.images(seed=0, draw=torch.rand, dtype=torch.float32).select(slice(start, start + count))


def test_affine_augmentation_is_a_pure_function_of_seed_step_and_task():
    source = AugmentedTasks(Source(), ["affine"], seed=7)
    a, b = source.sample_tasks(0, 0, 2), source.sample_tasks(0, 0, 2)
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
    plain = Source().sample_tasks(0, 0, 2)
    assert not torch.equal(a.support_x, plain.support_x)
    assert not torch.equal(source.sample_tasks(1, 0, 2).support_x, a.support_x)  # another step, other draws
    assert torch.equal(source.sample_tasks(0, 1, 1).support_x[0], a.support_x[1])  # task 1 alone: the same draw
    assert bool((a.support_x >= 0).all() and (a.support_x <= 1).all())  # bilinear and zero fill stay in range


def protonet() -> ProtoNet:
    return ProtoNet(mlp(0, hidden=(8,), inp=16 * 16, out=5)).eval()


def test_tta_averages_the_logits_of_the_task_and_its_distorted_copies():
    algo, batch = protonet(), helpers.images(seed=1, tasks=3)
    tta = ViewAveraged(algo, 2, seed=5)
    out = tta.predict(batch)
    views = [
        algo.predict(
            TaskBatch(
                torch.stack([distorted(x, 5, v, 0x5E) for x in batch.support_x]),
                batch.support_y,
                torch.stack([distorted(x, 5, v, 0x9E) for x in batch.query_x]),
                batch.query_y,
                batch.classes,
            )
        )
        for v in range(3)
    ]
    torch.testing.assert_close(out, sum(views) / 3, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(views[0], algo.predict(batch), rtol=0, atol=0)  # view 0 is the task itself
    assert not torch.allclose(views[1], views[0])
    # a task's views do not depend on its evaluation batch, nor on the path that scores it
    torch.testing.assert_close(tta.predict(batch.select(slice(2, 3)))[0], out[2], rtol=1e-12, atol=1e-12)
    task = batch.task(2)
    predictor = tta.adapt(task.support_x, task.support_y)
    torch.testing.assert_close(predictor(task.query_x), out[2], rtol=1e-12, atol=1e-12)


def test_tta_refuses_non_images_and_bad_counts():
    with pytest.raises(ConfigError, match="eval.tta"):
        ViewAveraged(protonet(), 0)
    vectors = TaskBatch(
        torch.zeros(1, 3, 4), torch.arange(3).view(1, 3), torch.zeros(1, 3, 4), torch.arange(3).view(1, 3)
    )
    with pytest.raises(ConfigError, match="eval.tta distorts images"):
        ViewAveraged(protonet(), 1).predict(vectors)


def test_eval_tta_is_applied_and_recorded_by_the_engine(tmp_path):
    result = fastadapt.train(tiny(tmp_path, "eval.tta=2", "optim.steps=2", "eval.val_every=0"))
    test = result.tests["5w1s"]
    assert test.settings["tta"]["views"] == 2 and test.episodes == 6 and math.isfinite(test.mean)
    plain = fastadapt.train(tiny(tmp_path, "optim.steps=2", "eval.val_every=0", name="plain"))
    assert "tta" not in plain.tests["5w1s"].settings
