"""Test-time augmentation of few-shot classifiers (``eval.tta``; :class:`ViewAveraged` says how)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError
from fastadapt.data.augment import affine
from fastadapt.data.sampler import _mix

_SUPPORT, _QUERY = 0x5E, 0x9E  # keep the draws of a task's support and query sets apart


def images_key(x: Tensor) -> int:
    """A 63-bit integer of the bytes of ``x`` (on the CPU): the same images give the same key on any batching."""
    digest = hashlib.blake2b(x.detach().cpu().contiguous().numpy().tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def distorted(x: Tensor, seed: int, view: int, salt: int) -> Tensor:
    """``x [M, C, H, W]`` with every image distorted by :func:`~fastadapt.data.augment.affine`, the draws seeded by
    ``(seed, view, salt, the bytes of x)``: a pure function of its arguments. View 0 is ``x`` itself."""
    if view == 0:
        return x
    g = torch.Generator().manual_seed(_mix(seed, view, salt, images_key(x)))
    return affine(x, g)


def check_images(x: Tensor) -> None:
    """A one-line error unless ``x [M, C, H, W]`` holds float images."""
    if x.ndim != 4 or not x.is_floating_point():
        raise ConfigError(
            f"eval.tta distorts images [C, H, W]; this task's examples have shape {list(x.shape[1:])}: set eval.tta=0"
        )


class ViewAveraged(nn.Module):
    """``algo`` evaluated on ``1 + n`` views of every task, its query logits averaged over them (``eval.tta = n``).

    View 0 is the task as it is; view ``v = 1..n`` distorts every support and every query image by its own
    random affine map, as ``data.augment = ["affine"]`` does in training (Koch et al. 2015's rotation, shear,
    scale and translation, :func:`~fastadapt.data.augment.affine`). The algorithm adapts to each view's support
    set on its own and scores that view's queries; the ``[Q, N]`` logits of the views are averaged (the images are
    augmented, not the embeddings or the prototypes: it applies to any classification algorithm; an
    embedding-based one, ProtoNets, Relation Networks, siamese nets, pays ``1 + n`` encoder passes per task, a
    gradient-based one ``1 + n`` inner loops).

    The draws of a set are seeded by ``(seed, view, support or query, the set's bytes)``: a task's views are the
    same whatever the evaluation batch it sits in and whichever path scores it; ``predict(batch)`` runs the
    algorithm's own ``predict`` on each view of the batch; ``adapt(sx, sy)`` adapts to the ``1 + n`` views of the
    support set and distorts the queries it is given in the same way.

    Augmented predictions are not averaged probabilities: a class's mean logit is what is compared (for ProtoNets,
    the mean negative squared distance).
    """

    needs_head = False
    variable_ways = True  # the wrapped algorithm reads N as it does

    def __init__(self, algo: nn.Module, views: int, seed: int = 0) -> None:
        super().__init__()
        if isinstance(views, bool) or not isinstance(views, int) or views < 1:
            raise ConfigError(f"eval.tta={views!r} is invalid; give the number of distorted views, >= 1 (0: off)")
        self.algo, self.views, self.seed = algo, int(views), int(seed)

    def settings(self) -> dict[str, object]:
        """What changes the number, for the record beside it."""
        return {
            "views": self.views,
            "includes_undistorted": True,
            "distortion": "affine (Koch et al. 2015), support and query",
            "averaged": "logits",
            "seed": self.seed,
        }

    def meta_loss(self, batch: TaskBatch):  # evaluation only
        raise ConfigError("ViewAveraged is an evaluation wrapper; train the algorithm itself")

    def predict(self, batch: TaskBatch) -> Tensor:
        """``[T, N*Q, N]``: the mean over the views of ``algo.predict`` on the batch with every task distorted."""
        check_images(batch.support_x[0])
        total = None
        for v in range(self.views + 1):
            view = TaskBatch(
                torch.stack([distorted(x, self.seed, v, _SUPPORT) for x in batch.support_x]),
                batch.support_y,
                torch.stack([distorted(x, self.seed, v, _QUERY) for x in batch.query_x]),
                batch.query_y,
                batch.classes,
            )
            out = self.algo.predict(view)
            total = out if total is None else total + out
        assert total is not None
        return total / (self.views + 1)

    def adapt(self, support_x: Tensor, support_y: Tensor) -> Callable[[Tensor], Tensor]:
        """``query_x [Q, *x] -> [Q, N]``: the mean over the views of the predictor of each view's support set on
        that view's queries."""
        check_images(support_x)
        predictors = [
            self.algo.adapt(distorted(support_x, self.seed, v, _SUPPORT), support_y) for v in range(self.views + 1)
        ]

        def predict(query_x: Tensor) -> Tensor:
            outs: list[Any] = [p(distorted(query_x, self.seed, v, _QUERY)) for v, p in enumerate(predictors)]
            return torch.stack(outs).mean(0)

        return predict


__all__ = ["ViewAveraged", "distorted", "images_key"]
