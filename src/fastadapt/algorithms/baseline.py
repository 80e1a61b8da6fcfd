"""Baseline and Baseline++ (Chen, Liu, Kira, Wang & Huang 2019, "A Closer Look at Few-shot Classification", ICLR).

No meta-learning: an encoder pretrained as an ordinary classifier, then frozen, and a new classifier per test task
on its support features. The pretraining loss, the per-task fit and the paper's defaults are on :class:`Baseline`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.algorithms import inner
from fastadapt.algorithms.base import MetaOutput, batch_metrics
from fastadapt.algorithms.heads import (
    FINETUNE_EPOCHS,
    HEADS,
    Head,
    HeadFit,
    HeadPredictor,
    check_head_kind,
    cosine_logits,
    default_scale,
    embed,
    finetune_order,
    finetune_steps_for,
    fit_head,
    head_logits,
    init_head,
    sgd_momentum_step,
)
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError


def global_labels(batch: TaskBatch) -> tuple[Tensor, Tensor]:
    """Dataset class ids of every example: ``classes[t, y]``; ``([T, N*K], [T, N*Q])``."""
    if batch.classes is None or batch.support_y.is_floating_point():
        raise ConfigError(
            "pretraining a classifier needs classification tasks with class "
            "ids (TaskBatch.classes); this batch has none"
        )
    return batch.classes.gather(1, batch.support_y), batch.classes.gather(1, batch.query_y)


def labelled_examples(batch: TaskBatch) -> tuple[Tensor, Tensor]:
    """Every image of the meta-batch with its global label: ``x [T*(N*K + N*Q), *x_shape]``, ``y [T*(N*K + N*Q)]``."""
    ys, yq = global_labels(batch)
    x = torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)])
    return x, torch.cat([ys.flatten(), yq.flatten()])


def model_embedding_dim(model: nn.Module, embedding_dim: int | None, algorithm: str) -> int:
    """``embedding_dim``, else ``model.embedding_dim``; a one-line :class:`ConfigError` when neither says."""
    if embedding_dim is None:
        embedding_dim = getattr(model, "embedding_dim", None)
        if embedding_dim is None:
            raise ConfigError(
                f"{algorithm} needs embedding_dim: {type(model).__name__} has no embedding_dim attribute; "
                f"pass embedding_dim=<features of model(x)>"
            )
    return inner.check_steps("embedding_dim", embedding_dim, 1)


def pretrain_loss(model: nn.Module, classifier: nn.Linear, kind: str, scale: float, batch: TaskBatch) -> MetaOutput:
    """Cross-entropy of every image of ``batch`` over all training classes (one encoder forward); metrics ``loss``,
    ``acc``."""
    x, y = labelled_examples(batch)
    classes, dim = classifier.weight.shape
    if int(y.max()) >= classes:
        raise ConfigError(
            f"the batch holds class id {int(y.max())} but the classifier has num_classes={classes}; set "
            "algorithm.num_classes to the training classes"
        )
    z = model(x).flatten(1)
    if z.shape[1] != dim:
        raise ConfigError(
            f"the model outputs {z.shape[1]} features but embedding_dim={dim}; pass embedding_dim={z.shape[1]}"
        )
    logits = head_logits(z, Head(classifier.weight, classifier.bias, kind, scale))
    loss = F.cross_entropy(logits, y)
    return MetaOutput(loss, batch_metrics(logits, y, loss))


def predict_tasks(adapt: Callable[[Tensor, Tensor], Callable[[Tensor], Tensor]], batch: TaskBatch) -> Tensor:
    """``[T, N*Q, N]``: ``adapt(support)(query)`` task by task, no graph."""
    with torch.no_grad():
        return torch.stack(
            [adapt(batch.support_x[t], batch.support_y[t])(batch.query_x[t]) for t in range(batch.num_tasks)]
        )


class Baseline(nn.Module):
    """Baseline (``head="linear"``) and Baseline++ (``head="cosine"``) of Chen et al. 2019.

    No meta-learning: the encoder ``f`` is pretrained as an ordinary classifier over every training
    class, then frozen; each test task fits a *new* classifier on the features of its support set.

    Pretraining (``meta_loss``). Every image of the meta-batch (the support and the query sets of every
    task alike: the episodic sampler only serves as a source of labelled images) is classified among the
    ``C = num_classes`` training classes by its global label ``classes[t, y]``:

        loss = mean_i CE(h(f(x_i)), classes[t_i, y_i])

    with the head ``h``

    * ``head="linear"`` (Baseline): ``h(z) = W z + b``, ``W [C, D]``, ``b [C]`` (zero at the start);
    * ``head="cosine"`` (Baseline++, sec. 3.2): ``h(z)_c = s * cos(z, w_c)``, no bias; the scale ``s``
      turns cosines in [-1, 1] into logits a softmax can use.

    Evaluation (``adapt``). The support features ``z_i = f(x_i)`` (computed once, no graph) train a
    new N-way head of the same kind from a random start: cross-entropy, SGD with momentum and weight
    decay, mini-batches of the shuffled support set (:func:`fit_head`).

    Defaults, from the paper and its code (github.com/wyharveychen/CloserLookFewShot): ``scale=None`` is 2
    for a head of at most 200 classes, 10 above (``backbone.distLinear``; on Omniglot the pretraining head
    has ``s = 10``, the 5-way head per task ``s = 2``; that code's learnt per-class norm is left out);
    fine-tuning (``methods/baselinefinetune.py``) with lr 0.01, momentum 0.9, dampening 0.9, weight decay
    1e-3, mini-batches of 4, 100 passes over the support set (200 steps at 5-way 1-shot, 700 at 5-way
    5-shot), the new linear head starting as ``nn.Linear`` does; the pretraining head's bias starts at zero
    (``methods/baselinetrain.py``), pretraining with Adam 1e-3 (the presets).

    The fit is deterministic: the start and the mini-batch order come from a generator seeded with
    ``seed``, never torch's global one.

    Args:
        model: the encoder ``f``, ``[B, *x] -> [B, D]`` (an embedding: no head).
        num_classes: C, the training classes (the engine passes the training source's count).
        head: ``"linear"`` (Baseline) or ``"cosine"`` (Baseline++), for pretraining and per task alike.
        scale: the cosine scale; None: 2 for at most 200 classes, 10 above, per head.
        embedding_dim: D; None: ``model.embedding_dim``.
        finetune_steps: SGD steps of the per-task head; None: 100 passes over the support set.
        finetune_lr, finetune_batch, finetune_momentum, finetune_dampening, finetune_weight_decay: its SGD.
        seed: seed of the per-task head's start and mini-batch order.
    """

    needs_head: ClassVar[bool] = False
    variable_ways: ClassVar[bool] = True  # reads N from the support labels: variable-way episodes
    encodes_meta_batch: ClassVar[bool] = True  # meta_loss encodes every image of the meta-batch at once

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        head: str = "linear",
        scale: float | None = None,
        embedding_dim: int | None = None,
        finetune_steps: int | None = None,
        finetune_lr: float = 0.01,
        finetune_batch: int = 4,
        finetune_momentum: float = 0.9,
        finetune_dampening: float = 0.9,
        finetune_weight_decay: float = 1e-3,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.head_kind = check_head_kind(head)
        self.num_classes = inner.check_steps("num_classes", num_classes, 2)
        self.scale = None if scale is None else inner.check_positive("scale", scale)
        self.model = model
        self.embedding_dim = model_embedding_dim(model, embedding_dim, "Baseline")
        self.classifier = nn.Linear(self.embedding_dim, num_classes, bias=head == "linear")
        if self.classifier.bias is not None:
            nn.init.zeros_(self.classifier.bias)
        self.finetune_steps = None if finetune_steps is None else inner.check_steps("finetune_steps", finetune_steps, 1)
        self.finetune_lr = inner.check_positive("finetune_lr", finetune_lr)
        self.finetune_batch = inner.check_steps("finetune_batch", finetune_batch, 1)
        for name, v in (("finetune_momentum", finetune_momentum), ("finetune_dampening", finetune_dampening)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ConfigError(f"{name}={v!r} is invalid; it must be a number in [0, 1]")
        decay = finetune_weight_decay
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not decay >= 0:
            raise ConfigError(f"finetune_weight_decay={decay!r} is invalid; it must be a number >= 0")
        self.finetune_momentum, self.finetune_dampening = float(finetune_momentum), float(finetune_dampening)
        self.finetune_weight_decay, self.seed = float(finetune_weight_decay), int(seed)

    def pretrain_scale(self) -> float:
        """The cosine scale of the pretraining head (over ``num_classes``)."""
        return default_scale(self.num_classes) if self.scale is None else self.scale

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        """Classification of every image of the meta-batch over the ``num_classes`` training classes."""
        return pretrain_loss(self.model, self.classifier, self.head_kind, self.pretrain_scale(), batch)

    def adapt(self, support_x: Tensor, support_y: Tensor) -> HeadPredictor:
        """One task: a new N-way head fitted on the frozen support features (:func:`fit_head`); the module is not
        changed.
        ``update(x, y)`` on the result refits the head on a sliding window (:class:`HeadPredictor`)."""
        return HeadPredictor.start(self.model, self._fit, support_x, support_y)

    def _fit(self, x: Tensor, y: Tensor, ways: int) -> Head:
        """The per-task head on ``x, y`` with ``ways`` classes (:func:`fit_head` on the frozen features); what
        ``update`` re-runs."""
        return fit_head(
            embed(self.model, x),
            y,
            ways,
            self.head_kind,
            scale=self.scale,
            steps=self.finetune_steps,
            lr=self.finetune_lr,
            batch_size=self.finetune_batch,
            momentum=self.finetune_momentum,
            dampening=self.finetune_dampening,
            weight_decay=self.finetune_weight_decay,
            seed=self.seed,
        )

    def predict(self, batch: TaskBatch) -> Tensor:
        """``[T, N*Q, N]`` logits: ``adapt`` per task (support and query sets encoded per task)."""
        return predict_tasks(self.adapt, batch)


__all__ = [
    "FINETUNE_EPOCHS",
    "HEADS",
    "Baseline",
    "Head",
    "HeadFit",
    "HeadPredictor",
    "check_head_kind",
    "cosine_logits",
    "default_scale",
    "embed",
    "finetune_order",
    "finetune_steps_for",
    "fit_head",
    "global_labels",
    "head_logits",
    "init_head",
    "labelled_examples",
    "model_embedding_dim",
    "predict_tasks",
    "pretrain_loss",
    "sgd_momentum_step",
]
