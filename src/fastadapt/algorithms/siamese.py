"""Siamese verification networks for one-shot recognition (Koch, Zemel & Salakhutdinov 2015, "Siamese Neural
Networks for One-shot Image Recognition").

The equations are on :class:`Siamese`; :func:`pair_logits`, :func:`pair_targets` and :func:`verification_loss`
are the maths, :class:`SiamesePredictor` is one adapted task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.algorithms import inner
from fastadapt.algorithms.base import MetaOutput
from fastadapt.algorithms.predictors import check_update, window_size
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError, DataError


def pair_logits(za: Tensor, zb: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Koch et al.'s verification logit of every pair: ``za [..., A, D]``, ``zb [..., B, D]`` -> ``[..., A, B]``,
    ``s[a, b] = sum_j alpha_j |za[a, j] - zb[b, j]| + beta`` (``weight`` alpha ``[D]``, ``bias`` beta ``[]``);
    ``p(same) = sigmoid(s)``. Symmetric: ``pair_logits(zb, za) = pair_logits(za, zb)^T``."""
    return (za.unsqueeze(-2) - zb.unsqueeze(-3)).abs() @ weight + bias


def pair_targets(labels: Tensor) -> tuple[Tensor, Tensor]:
    """``labels [T, M]`` -> ``same [T, M, M]`` (1.0 where two examples share a class) and ``mask [M, M]`` (True on
    the pairs ``a < b``: every unordered pair of distinct examples once)."""
    same = (labels.unsqueeze(-1) == labels.unsqueeze(-2)).to(torch.get_default_dtype())
    m = labels.shape[-1]
    return same, torch.ones(m, m, dtype=torch.bool, device=labels.device).triu(1)


def verification_loss(logits: Tensor, same: Tensor, mask: Tensor) -> Tensor:
    """Binary cross-entropy of ``p(same) = sigmoid(logits)``, the same-class and the different-class pairs
    weighted half and half: ``1/2 mean_{same pairs} BCE + 1/2 mean_{different pairs} BCE`` over the pairs of
    ``mask`` of every task (``logits``, ``same [T, M, M]``). A task batch with no pair of one kind leaves that
    half out."""
    bce = F.binary_cross_entropy_with_logits(logits, same.to(logits.dtype), reduction="none")
    keep = mask.expand_as(same)
    halves = []
    for kind in (same > 0.5, same < 0.5):
        chosen = keep & kind
        if bool(chosen.any()):
            halves.append(bce[chosen].mean())
    return torch.stack(halves).mean()


def embedding_width(model: nn.Module) -> int:
    """D of an encoder: its ``embedding_dim`` (:class:`~fastadapt.nn.Conv4`), else its last linear layer's outputs."""
    d = getattr(model, "embedding_dim", None)
    if isinstance(d, int) and d > 0:
        return d
    linears = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        return int(linears[-1])
    raise ConfigError(f"siamese cannot tell how many features {type(model).__name__} gives; pass algorithm.features")


def class_logits(pairs: Tensor, support_y: Tensor, ways: int) -> Tensor:
    """``pairs [..., Q, S]`` (query, support) verification logits -> ``[..., Q, ways]``: each class's best support
    example (one shot: the logit of its one example). A class with no support example gets ``-inf``."""
    member = F.one_hot(support_y, ways).bool()  # [..., S, N]
    masked = pairs.unsqueeze(-1).masked_fill(~member.unsqueeze(-3), float("-inf"))  # [..., Q, S, N]
    return masked.amax(-2)


@dataclass(eq=False)
class SiamesePredictor:
    """What :meth:`Siamese.adapt` returns: ``query_x [Q, *x] -> [Q, N]``, each class's best verification logit
    against the support examples kept. ``update(x, y)`` adds labelled examples (embedded once, no graph) to a
    sliding window of the last ``window`` embeddings (bounded memory and work; default: the support set's size, at
    least 10); ``reset()`` forgets them. The algorithm is only read."""

    algo: Siamese
    support_z: Tensor  # [S, D]
    support_y: Tensor  # [S]
    input_shape: tuple[int, ...]
    window: int = 10

    def __call__(self, query_x: Tensor) -> Tensor:
        if not len(self.support_y):
            raise DataError("this siamese predictor has seen no labelled example yet (after reset()); update it first")
        with torch.no_grad():
            return self.grad_forward(query_x)

    def grad_forward(self, query_x: Tensor) -> Tensor:
        """The logits of :meth:`__call__` with a graph to ``query_x`` (for an input attribution)."""
        pairs = self.algo.query_support_logits(self.algo.model(query_x).flatten(1), self.support_z)
        return class_logits(pairs, self.support_y, int(self.support_y.max()) + 1)

    def explain(self, x: Tensor) -> dict[str, Any]:
        """``p_same [Q, S]``: the probability that query ``q`` and support example ``s`` show the same class (the
        prediction is the class of the highest)."""
        with torch.no_grad():
            pairs = self.algo.query_support_logits(self.algo.model(x).flatten(1), self.support_z)
        return {"kind": "verification", "p_same": torch.sigmoid(pairs), "support_labels": self.support_y}

    def configure(self, window: int | None = None) -> SiamesePredictor:
        """``window``: support embeddings kept (>= 1); the last ones stay."""
        if window is not None:
            self.window = inner.check_steps("window", window, 1)
            self.support_z, self.support_y = self.support_z[-self.window :], self.support_y[-self.window :]
        return self

    def reset(self) -> None:
        """Forget every support example."""
        self.support_z, self.support_y = self.support_z[:0].clone(), self.support_y[:0].clone()

    def update(self, x: Tensor, y: Tensor) -> None:
        """Add the labelled batch ``x [B, *x]``, ``y [B]`` to the support examples; returns nothing."""
        check_update(x, y, torch.empty(0, *self.input_shape), torch.empty(0, dtype=torch.long))
        with torch.no_grad():
            z = self.algo.model(x).flatten(1)
        self.support_z = torch.cat([self.support_z, z])[-self.window :]
        self.support_y = torch.cat([self.support_y, y.to(self.support_y.device)])[-self.window :]


class Siamese(nn.Module):
    """Koch et al.'s siamese verification network over a shared encoder ``model`` (``[B, *x] -> [B, D]``).

    Two images are compared by the weighted L1 distance of their embeddings,

        p(same | x_a, x_b) = sigmoid(sum_j alpha_j |f(x_a)_j - f(x_b)_j| + beta)          (:func:`pair_logits`)

    trained as a binary classifier on the pairs of each task: every unordered pair of distinct images of the
    task's support and query sets, labelled 1 when they show the same class, the binary cross-entropies of the
    same-class and of the different-class pairs averaged half and half (:func:`verification_loss`; a task of N
    classes has far more different pairs). One-shot prediction: a query takes the class of the support image
    with the highest p(same) (K shots: each class scores its best example, an extension of ours); ``predict``
    and the predictor return the logits ``[Q, N]`` of each class's best example.

    ``two_way`` (Lake et al.'s two-way scoring) averages the score of query -> support and support -> query. The
    L1 comparator is symmetric, so it is the same number (kept so that scoring reads as Lake's protocol; a test
    pins the equality).

    Paper's: the weighted L1 distance, the sigmoid, the cross-entropy on same / different pairs, the nearest
    support image by p(same). Not the paper's (fastadapt's settings instead): their encoder (four convolutions
    of 10x10, 7x7, 4x4, 4x4 on 105x105 images and a 4096-unit sigmoid layer: here ``model``, e.g. Conv4 on
    28x28), their pairs (150k to 1.35M pairs drawn once, augmented 8 times by affine distortions: here the pairs of
    each training task, ``data.augment = ["affine"]`` for the distortions), their layer-wise L2 and momentum
    schedule (here ``optim.*``), the half-and-half weighting (they drew balanced pairs).

    Args:
        model: the shared encoder f.
        two_way: average both directions of every query-support score.
        features: D, the encoder's outputs (None: read from the model, :func:`embedding_width`).
    """

    needs_head: ClassVar[bool] = False
    variable_ways: ClassVar[bool] = True  # reads N from the support labels: variable-way episodes
    encodes_meta_batch: ClassVar[bool] = True  # meta_loss encodes every image of the meta-batch at once
    predicts_task_by_task: ClassVar[bool] = True  # predict encodes one task at a time (the memory estimate, preflight)
    single_forward_loss: ClassVar[bool] = True  # meta_loss is one forward pass: preflight measures it on a probe task

    def __init__(self, model: nn.Module, two_way: bool = False, features: int | None = None) -> None:
        super().__init__()
        if not isinstance(two_way, bool):
            raise ConfigError(f"two_way={two_way!r} must be true or false")
        if features is not None and (isinstance(features, bool) or not isinstance(features, int) or features < 1):
            raise ConfigError(f"features={features!r} must be an integer >= 1 (or left out: read from the model)")
        self.model, self.two_way = model, two_way
        d = features or embedding_width(model)
        # Koch et al.'s initialisation of fully connected layers: weights N(0, 0.2^2), biases N(0.5, 0.01^2)
        self.weight = nn.Parameter(0.2 * torch.randn(d))  # alpha [D]
        self.bias = nn.Parameter(0.5 + 0.01 * torch.randn(()))  # beta

    def _alpha(self, d: int) -> Tensor:
        if self.weight.numel() != d:
            raise ConfigError(
                f"siamese: the encoder gives {d} features, alpha has {self.weight.numel()}; pass algorithm.features={d}"
            )
        return self.weight

    def query_support_logits(self, zq: Tensor, zs: Tensor) -> Tensor:
        """``zq [..., Q, D]``, ``zs [..., S, D]`` -> ``[..., Q, S]`` verification logits (both ways averaged with
        ``two_way``)."""
        w = self._alpha(zq.shape[-1])
        out = pair_logits(zq, zs, w, self.bias)
        if self.two_way:
            out = (out + pair_logits(zs, zq, w, self.bias).transpose(-1, -2)) / 2
        return out

    def _embed(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        t, s, q = batch.num_tasks, batch.support_x.shape[1], batch.query_x.shape[1]
        z = self.model(torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)])).flatten(1)
        return z[: t * s].view(t, s, -1), z[t * s :].view(t, q, -1)

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        zs, zq = self._embed(batch)
        z = torch.cat([zs, zq], 1)  # [T, M, D]
        same, mask = pair_targets(torch.cat([batch.support_y, batch.query_y], 1))
        loss = verification_loss(pair_logits(z, z, self._alpha(z.shape[-1]), self.bias), same, mask)
        with torch.no_grad():
            logits = class_logits(self.query_support_logits(zq, zs), batch.support_y, batch.ways)
            acc = float((logits.argmax(-1) == batch.query_y).double().mean())
        return MetaOutput(loss, {"loss": float(loss.detach()), "acc": acc})

    def predict(self, batch: TaskBatch) -> Tensor:
        """``[T, N*Q, N]``: each class's best verification logit, one task at a time."""
        out = []
        with torch.no_grad():
            for i in range(batch.num_tasks):
                zs, zq = self._embed(batch.select(slice(i, i + 1)))
                out.append(class_logits(self.query_support_logits(zq, zs), batch.support_y[i : i + 1], batch.ways))
        return torch.cat(out)

    def adapt(self, support_x: Tensor, support_y: Tensor) -> SiamesePredictor:
        """The task's support embeddings; returns ``query_x [Q, *x] -> logits [Q, N]`` (a :class:`SiamesePredictor`)."""
        with torch.no_grad():
            z = self.model(support_x).flatten(1)
        return SiamesePredictor(self, z, support_y.clone(), tuple(support_x.shape[1:]), window_size(support_y))


__all__ = [
    "Siamese",
    "SiamesePredictor",
    "class_logits",
    "embedding_width",
    "pair_logits",
    "pair_targets",
    "verification_loss",
]
