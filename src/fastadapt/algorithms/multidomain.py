"""Multi-domain pretraining of one backbone with a head per domain (the multi-domain baseline of Li, Liu & Bilen 2021,
"Universal Representation Learning from Multiple Domains for Few-shot Classification", ICCV, sec. 3: one network,
one classifier per training domain; as in SUR's and URL's multi-domain learner).

The training classes of several domains (the ``domains`` task source names them ``<domain>:<class>``, its classes
sorted by name, so each domain's classes are one contiguous block of class ids) are classified by a shared encoder
``f`` and one head per domain ``d``, ``h_d(z) = W_d z + b_d`` over the ``C_d`` classes of ``d`` only:

    loss = mean_i CE(h_{d(i)}(f(x_i)), y_i - start_{d(i)})

An image competes only with the classes of its own domain: a kanji is never pushed away from an Omniglot character,
which a shared head over all classes (:class:`~fastadapt.algorithms.baseline.Baseline` on the same source) does.
Computed as one ``[B, C]`` product with the logits of other domains' classes set to ``-inf`` (the per-domain softmax
exactly; tests/test_multidomain.py checks it against separate heads in float64). Tasks with
``data.episode_scope = "domain"`` give per-domain batches: every task's images come from one domain.

Evaluation drops the heads. ``classifier = "ncc"`` (the default, as the multi-domain learners of SUR and URL are
evaluated): a nearest-centroid classifier on the frozen features, ProtoNets' prediction with ``distance`` (cosine by
default; Euclidean as ProtoNets); ``classifier = "head"``: Baseline's new linear head fitted per task (100 passes of
SGD over the support set: slow on Meta-Dataset's variable episodes, whose support sets reach 500 images). With
``eval.finetune`` the fine-tuning and adapter modes of ``fastadapt.eval.finetune`` apply instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from fastadapt.algorithms.base import MetaOutput, batch_metrics
from fastadapt.algorithms.baseline import Baseline, labelled_examples
from fastadapt.algorithms.heads import Head, default_scale, head_logits
from fastadapt.algorithms.protonet import DISTANCES, ProtoNet
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError

CLASSIFIERS = ("ncc", "head")  # how a test task is classified (MultiDomain's classifier option)


def domain_of_class(domain_sizes: Sequence[int]) -> Tensor:
    """``[C]``: the domain index of every class id, domains being consecutive blocks of ``domain_sizes`` classes."""
    return torch.repeat_interleave(torch.arange(len(domain_sizes)), torch.tensor(list(domain_sizes)))


def per_domain_logits(logits: Tensor, labels: Tensor, domains: Tensor) -> Tensor:
    """``logits [B, C]`` with every class outside the domain of the example's label set to ``-inf``."""
    own = domains[labels]  # [B]
    return logits.masked_fill(domains.unsqueeze(0) != own.unsqueeze(1), float("-inf"))


class MultiDomain(Baseline):
    """A shared encoder pretrained with one classification head per training domain (see the module's docstring).

    Args:
        model: the encoder ``f`` (an embedding).
        num_classes: C, the training classes of all domains (the engine passes the training source's count).
        domain_sizes: the classes of each domain, in class-id order (the engine passes them for a ``domains``
            training source; they must add up to ``num_classes``); None or one entry: one domain, i.e. Baseline.
        classifier: how a test task is classified: ``"ncc"`` (nearest centroid on the features) or ``"head"``
            (Baseline's per-task head).
        distance: the nearest-centroid distance, ``"cosine"`` or ``"euclidean"``.
        head, scale, embedding_dim, finetune_*, seed: as :class:`~fastadapt.algorithms.baseline.Baseline` (the
            pretraining head; ``finetune_*`` for ``classifier = "head"``); a cosine head's default scale is chosen per
            domain's class count.
    """

    needs_head: ClassVar[bool] = False
    variable_ways: ClassVar[bool] = True  # as Baseline: reads N from the support labels
    encodes_meta_batch: ClassVar[bool] = True

    def __init__(
        self,
        model,
        num_classes: int,
        domain_sizes: Sequence[int] | None = None,
        classifier: str = "ncc",
        distance: str = "cosine",
        head: str = "linear",
        scale: float | None = None,
        **baseline_options,
    ) -> None:
        super().__init__(model, num_classes, head=head, scale=scale, **baseline_options)
        if classifier not in CLASSIFIERS:
            raise ConfigError(f"classifier={classifier!r} is not supported; choose one of {', '.join(CLASSIFIERS)}")
        if distance not in DISTANCES:
            raise ConfigError(f"distance={distance!r} is not supported; choose one of {', '.join(DISTANCES)}")
        self.classifier_kind, self.distance = classifier, distance
        sizes = [num_classes] if domain_sizes is None or len(domain_sizes) == 0 else list(domain_sizes)
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes) or sum(sizes) != num_classes:
            raise ConfigError(
                f"domain_sizes={list(sizes)!r} must be positive class counts adding up to num_classes={num_classes}"
            )
        self.domain_sizes = tuple(sizes)
        self.register_buffer("domains", domain_of_class(self.domain_sizes), persistent=False)

    def pretrain_scale(self) -> float:
        """The cosine scale: the default for the largest domain's head (each head sees one domain's classes)."""
        return default_scale(max(self.domain_sizes)) if self.scale is None else self.scale

    def domain_logits(self, batch: TaskBatch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(x, y, z, masked)``: every image of the meta-batch, its class id, its features and its logits over the
        classes of its own domain (the others masked out)."""
        x, y = labelled_examples(batch)
        if int(y.max()) >= self.num_classes:
            raise ConfigError(
                f"the batch holds class id {int(y.max())} but num_classes={self.num_classes}; set "
                "algorithm.num_classes to the training classes"
            )
        z = self.model(x).flatten(1)
        c = self.classifier
        logits = head_logits(z, Head(c.weight, c.bias, self.head_kind, self.pretrain_scale()))
        return x, y, z, per_domain_logits(logits, y, self.domains)

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        """Cross-entropy of every image of the meta-batch over the classes of its own domain."""
        _, y, _, masked = self.domain_logits(batch)
        loss = F.cross_entropy(masked, y)
        return MetaOutput(loss, batch_metrics(masked, y, loss))

    def _nearest_centroid(self) -> ProtoNet:
        return ProtoNet(self.model, self.distance)

    def adapt(self, support_x: Tensor, support_y: Tensor):
        """One task: nearest centroid on the frozen features (``classifier = "ncc"``: a prototype predictor whose
        ``update`` keeps running class means) or Baseline's per-task head (``"head"``); the module is not changed."""
        if self.classifier_kind == "head":
            return super().adapt(support_x, support_y)
        return self._nearest_centroid().adapt(support_x, support_y)

    def predict(self, batch: TaskBatch) -> Tensor:
        """``[T, N*Q, N]`` logits, task by task (see :meth:`adapt`)."""
        if self.classifier_kind == "head":
            return super().predict(batch)
        return self._nearest_centroid().predict(batch)


__all__ = ["MultiDomain", "domain_of_class", "per_domain_logits"]
