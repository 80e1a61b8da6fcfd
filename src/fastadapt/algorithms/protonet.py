"""Prototypical Networks (Snell, Swersky & Zemel 2017, "Prototypical Networks for Few-shot Learning").

A class is the mean of its embedded support examples and a query is scored by its distance to each: the equations
and how the encoder batches tasks in training and evaluation are on :class:`ProtoNet`; :class:`PrototypePredictor`
keeps adapting online.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.algorithms.base import MetaOutput, batch_metrics, task_loss
from fastadapt.algorithms.predictors import check_update
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError, DataError

DISTANCES = ("euclidean", "cosine")


def prototypes(embeddings: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Class means: ``embeddings [T, S, D]``, ``labels [T, S]`` in 0..ways-1 -> ``[T, ways, D]``."""
    onehot = F.one_hot(labels, ways).to(embeddings.dtype)  # [T, S, N]
    sums = onehot.transpose(1, 2) @ embeddings  # [T, N, D]
    return sums / onehot.sum(1).unsqueeze(-1)


def prototype_logits(queries: Tensor, protos: Tensor, distance: str = "euclidean", scale: float = 10.0) -> Tensor:
    """``queries [T, Q, D]``, ``protos [T, N, D]`` -> logits ``[T, Q, N]``.

    euclidean: ``-||q - c||^2`` expanded as ``2 q.c - ||q||^2 - ||c||^2`` (one batched matmul).
    cosine: ``scale * cos(q, c)``.
    """
    if distance == "euclidean":
        return (
            2 * queries @ protos.transpose(1, 2)
            - queries.pow(2).sum(-1, keepdim=True)
            - protos.pow(2).sum(-1).unsqueeze(1)
        )
    if distance == "cosine":
        return scale * F.normalize(queries, dim=-1) @ F.normalize(protos, dim=-1).transpose(1, 2)
    raise ConfigError(f"distance={distance!r}; choose one of {', '.join(DISTANCES)}")


@dataclass(frozen=True)
class PrototypeState:
    """What ``adapt`` returns: the task's prototypes ``[N, D]``, and how to score against them."""

    prototypes: Tensor
    distance: str
    scale: float


@dataclass(eq=False)
class PrototypePredictor:
    """What :meth:`ProtoNet.adapt` returns: ``query_x [Q, *x] -> logits [Q, N]`` against running prototypes.

    The state is, per label, the float64 sum of the embeddings seen and their count; the prototypes are
    ``sums / counts`` (:attr:`state`). ``update(x, y)`` embeds the batch once (no graph) and adds it, so
    the prototypes are always the means of every example seen (``decay = 1``, the default); with
    ``decay < 1`` (:meth:`configure`) earlier examples are down-weighted by ``decay`` per update
    (exponential forgetting, for drift). Bounded memory: ``[labels, D]`` sums and ``[labels]`` counts,
    whatever the number of updates; bounded work: one encoder pass over the batch.

    A label beyond the known ones is a new class: its prototype is added (labels never seen score
    ``-inf``, so they are never predicted). The embeddings of a batch come from one encoder pass, so
    with batch-statistics BatchNorm they depend on the batch they arrived in. A rejected update
    (:func:`~fastadapt.algorithms.predictors.check_update`) leaves the state as it was. The algorithm module is only
    read.
    """

    model: nn.Module
    distance: str
    scale: float
    sums: Tensor  # [labels, D] float64
    counts: Tensor  # [labels] float64
    input_shape: tuple[int, ...]
    dtype: torch.dtype  # the embeddings' dtype (prototypes and logits)
    decay: float = 1.0

    @property
    def state(self) -> PrototypeState:
        """The prototypes ``[labels, D]`` (labels never seen: zero rows, masked in the logits)."""
        return PrototypeState(
            (self.sums / self.counts.clamp_min(1e-300).unsqueeze(1)).to(self.dtype), self.distance, self.scale
        )

    def __call__(self, query_x: Tensor) -> Tensor:
        if not bool((self.counts > 0).any()):
            raise DataError("this ProtoNet predictor has seen no labelled example yet (after reset()); update it first")
        with torch.no_grad():
            return self.grad_forward(query_x)

    def grad_forward(self, query_x: Tensor) -> Tensor:
        """The logits of :meth:`__call__` with a graph to ``query_x`` (for an input attribution)."""
        logits = prototype_logits(
            self.model(query_x).unsqueeze(0), self.state.prototypes.unsqueeze(0), self.distance, self.scale
        )[0]
        return logits.masked_fill(self.counts == 0, float("-inf")) if bool((self.counts == 0).any()) else logits

    def explain(self, x: Tensor) -> dict[str, Any]:
        """``distances [Q, N]`` of the query embeddings to the prototypes (squared Euclidean, or ``1 - cos``) and
        ``prototypes [N, D]``: the prediction is the nearest one. Labels with no example are at distance ``inf``."""
        state = self.state
        with torch.no_grad():
            z = self.model(x)
        if state.distance == "cosine":
            d = 1 - F.normalize(z, dim=-1) @ F.normalize(state.prototypes, dim=-1).T
        else:
            d = -prototype_logits(z.unsqueeze(0), state.prototypes.unsqueeze(0), "euclidean")[0]
        d = d.masked_fill(self.counts == 0, float("inf"))
        return {"kind": "prototypes", "distances": d, "prototypes": state.prototypes, "attribute": False}

    def configure(self, decay: float | None = None) -> PrototypePredictor:
        """``decay`` in (0, 1]: the weight of what was seen before, per update (1: exact running means)."""
        if decay is not None:
            if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay <= 1:
                raise ConfigError(
                    f"decay={decay!r} is invalid; it must be in (0, 1] (1: the mean of all examples seen)"
                )
            self.decay = float(decay)
        return self

    def reset(self) -> None:
        """Forget every prototype."""
        self.sums, self.counts = self.sums[:0].clone(), self.counts[:0].clone()

    def update(self, x: Tensor, y: Tensor) -> None:
        """Add the labelled batch ``x [B, *x]``, ``y [B]`` to the running prototypes; returns nothing."""
        check_update(x, y, torch.empty(0, *self.input_shape), torch.empty(0, dtype=torch.long))
        with torch.no_grad():
            z = self.model(x)
        self.sums, self.counts = accumulate(self.sums, self.counts, z, y, self.decay)


def accumulate(sums: Tensor, counts: Tensor, z: Tensor, y: Tensor, decay: float = 1.0) -> tuple[Tensor, Tensor]:
    """New float64 ``sums [L, *F]`` and ``counts [L]`` after adding features ``z [B, *F]`` with labels ``y [B]``
    (``L`` grows to ``max(y) + 1`` for new labels; what was there is first multiplied by ``decay``)."""
    labels = max(sums.shape[0], int(y.max()) + 1 if y.numel() else 0)
    new_sums = torch.zeros(labels, *z.shape[1:], dtype=torch.float64, device=z.device)
    new_counts = torch.zeros(labels, dtype=torch.float64, device=z.device)
    new_sums[: sums.shape[0]] = sums * decay
    new_counts[: counts.shape[0]] = counts * decay
    new_sums.index_add_(0, y.to(z.device), z.detach().double())
    new_counts.index_add_(0, y.to(z.device), torch.ones(len(y), dtype=torch.float64, device=z.device))
    return new_sums, new_counts


class ProtoNet(nn.Module):
    """Prototypical Networks over any embedding network ``model`` (``[B, *x] -> [B, D]``).

    A class is represented by the mean of its embedded support examples (its prototype)

        c_n = 1/K sum_{i: y_i = n} f(x_i)                                        [N, D]

    and a query is classified by a softmax over negative squared Euclidean distances

        logits[q, n] = -||f(x_q) - c_n||^2            (or scale * cos(f(x_q), c_n) with distance="cosine")

    In training (``meta_loss``) the encoder runs once over every support and query image of every task
    in the batch; Conv4's BatchNorm (no running statistics) then normalises with the statistics of the
    whole meta-batch (with one task per batch, as in the paper's presets, that is one episode, as the
    reference implementation does). In evaluation (``predict``) each task is encoded on its own, so a
    task's score never depends on which other tasks share its evaluation batch, and memory stays that
    of one episode.

    Args:
        model: the encoder f.
        distance: ``"euclidean"`` (squared, as in the paper) or ``"cosine"``.
        scale: multiplier of cosine similarities (ignored for euclidean).
    """

    needs_head: ClassVar[bool] = False
    variable_ways: ClassVar[bool] = True  # reads N from the support labels: variable-way episodes
    encodes_meta_batch: ClassVar[bool] = True  # meta_loss encodes every image of the meta-batch at once
    predicts_task_by_task: ClassVar[bool] = True  # predict encodes one task at a time (the memory estimate, preflight)
    prefers_channels_last: ClassVar[bool] = True  # forward + one backward through the encoder: NHWC is faster on CPU

    def __init__(self, model: nn.Module, distance: str = "euclidean", scale: float = 10.0) -> None:
        super().__init__()
        if distance not in DISTANCES:
            raise ConfigError(f"distance={distance!r}; choose one of {', '.join(DISTANCES)}")
        if scale <= 0:
            raise ConfigError(f"scale={scale} must be > 0")
        self.model, self.distance, self.scale = model, distance, float(scale)

    def _embed(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        t, s, q = batch.num_tasks, batch.support_x.shape[1], batch.query_x.shape[1]
        x = torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)])
        z = self.model(x)
        return z[: t * s].view(t, s, -1), z[t * s :].view(t, q, -1)

    def _logits(self, batch: TaskBatch) -> Tensor:
        zs, zq = self._embed(batch)
        protos = prototypes(zs, batch.support_y, batch.ways)
        return prototype_logits(zq, protos, self.distance, self.scale)

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        logits = self._logits(batch)
        loss = task_loss(logits, batch.query_y)
        return MetaOutput(loss, batch_metrics(logits, batch.query_y, loss))

    def predict(self, batch: TaskBatch) -> Tensor:
        """``[T, N*Q, N]`` logits, one task at a time (see :class:`ProtoNet`)."""
        with torch.no_grad():
            return torch.cat([self._logits(batch.select(slice(i, i + 1))) for i in range(batch.num_tasks)])

    def adapt(self, support_x: Tensor, support_y: Tensor) -> PrototypePredictor:
        """Prototypes of one task; returns ``query_x [Q, *x] -> logits [Q, N]`` (a :class:`PrototypePredictor`,
        whose ``update(x, y)`` keeps the running means of every example seen)."""
        with torch.no_grad():
            z = self.model(support_x)
        empty = (
            torch.zeros(0, z.shape[1], dtype=torch.float64, device=z.device),
            torch.zeros(0, dtype=torch.float64, device=z.device),
        )
        sums, counts = accumulate(*empty, z, support_y)
        return PrototypePredictor(
            self.model, self.distance, self.scale, sums, counts, tuple(support_x.shape[1:]), z.dtype
        )
