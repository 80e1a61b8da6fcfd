"""Prototypical Networks (Snell, Swersky & Zemel 2017, "Prototypical Networks for Few-shot Learning").

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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.algorithms.base import MetaOutput, batch_metrics, task_loss
from fastadapt.episodes import TaskBatch
from fastadapt.errors import ConfigError

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
        return 2 * queries @ protos.transpose(1, 2) - queries.pow(2).sum(-1, keepdim=True) - protos.pow(2).sum(-1).unsqueeze(1)
    if distance == "cosine":
        return scale * F.normalize(queries, dim=-1) @ F.normalize(protos, dim=-1).transpose(1, 2)
    raise ConfigError(f"distance={distance!r}; choose one of {', '.join(DISTANCES)}")


@dataclass(frozen=True)
class PrototypeState:
    """What ``adapt`` returns: the task's prototypes ``[N, D]``, and how to score against them."""

    prototypes: Tensor
    distance: str
    scale: float


class ProtoNet(nn.Module):
    """Prototypical Networks over any embedding network ``model`` (``[B, *x] -> [B, D]``).

    Args:
        model: the encoder f.
        distance: ``"euclidean"`` (squared, as in the paper) or ``"cosine"``.
        scale: multiplier of cosine similarities (ignored for euclidean).
    """

    needs_head: ClassVar[bool] = False
    encodes_meta_batch: ClassVar[bool] = True  # meta_loss encodes every image of the meta-batch at once

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
        """``[T, N*Q, N]`` logits, one task at a time (see the module docstring)."""
        with torch.no_grad():
            return torch.cat([self._logits(batch.select(slice(i, i + 1))) for i in range(batch.num_tasks)])

    def adapt(self, support_x: Tensor, support_y: Tensor):
        """Prototypes of one task; returns ``query_x [Q, *x] -> logits [Q, N]``."""
        ways = int(support_y.max()) + 1
        with torch.no_grad():
            protos = prototypes(self.model(support_x).unsqueeze(0), support_y.unsqueeze(0), ways)[0]
        state = PrototypeState(protos, self.distance, self.scale)

        def predictor(query_x: Tensor) -> Tensor:
            with torch.no_grad():
                return prototype_logits(self.model(query_x).unsqueeze(0), state.prototypes.unsqueeze(0), state.distance, state.scale)[0]

        predictor.state = state  # type: ignore[attr-defined]
        return predictor
