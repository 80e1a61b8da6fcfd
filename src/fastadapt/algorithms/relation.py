"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr & Hospedales 2018, "Learning to Compare: Relation Network for
Few-Shot Learning"): a learnt comparator scores each (class, query) pair of feature maps.

The equations are on :class:`RelationNet`; :func:`feature_maps`, :func:`class_sums` and :func:`pair_maps` are the
maths, :class:`RelationModule` holds the comparator's weights and :class:`RelationPredictor` is one adapted task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.algorithms.base import MetaOutput, batch_metrics
from fastadapt.algorithms.predictors import check_update
from fastadapt.algorithms.protonet import accumulate
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError, DataError
from fastadapt.nn.pool import max_pool2d

LOSSES = ("mse", "ce")  # the paper's mean squared error to the one-hot target; softmax cross-entropy over classes


def feature_maps(model: nn.Module, x: Tensor, pooled_blocks: int | None) -> Tensor:
    """``x [B, *x] -> [B, C, H, W]``: the encoder's feature maps before they are flattened.

    A model with a ``features`` ``nn.Sequential`` of blocks (:class:`~fastadapt.nn.Conv4`) runs its blocks one by
    one, and with ``pooled_blocks = p`` the 2x2 max-pools of blocks ``p, p+1, ...`` are skipped (the paper's
    embedding: four conv blocks, the first two pooled; ``None``: every block as it is). Any other model's output
    is used as it is when it is ``[B, C, H, W]``, and as ``[B, D, 1, 1]`` when it is ``[B, D]``.
    """
    blocks = getattr(model, "features", None)
    if isinstance(blocks, nn.Sequential):
        for i, block in enumerate(blocks):
            layers = block if isinstance(block, nn.Sequential) else [block]
            for layer in layers:
                if pooled_blocks is not None and i >= pooled_blocks and isinstance(layer, nn.MaxPool2d):
                    continue
                x = layer(x)
        return x
    z = model(x)
    return z if z.ndim == 4 else z.reshape(z.shape[0], -1, 1, 1)


def map_channels(model: nn.Module) -> int:
    """The channels of :func:`feature_maps`: the last convolution's outputs, else the last linear layer's."""
    convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    if convs:
        return int(convs[-1])
    linears = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        return int(linears[-1])
    raise ConfigError(
        f"relation cannot tell the channels of {type(model).__name__}'s feature maps; pass algorithm.channels"
    )


def check_map_options(pooled_blocks: int | None, **sizes: int | None) -> None:
    """The options every comparator on feature maps shares: ``pooled_blocks`` an integer >= 0 or None, each of
    ``sizes`` an integer >= 1 (None: read from the model); one line naming the key otherwise."""
    if pooled_blocks is not None and (isinstance(pooled_blocks, bool) or int(pooled_blocks) < 0):
        raise ConfigError(f"pooled_blocks={pooled_blocks!r} must be an integer >= 0 (or None: every block)")
    for key, v in sizes.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"{key}={v!r} must be an integer >= 1")


def encode_episode(encode, batch: TaskBatch) -> tuple[Tensor, Tensor]:
    """``encode`` applied to every support and query image of ``batch`` in one call (BatchNorm sees them together);
    ``(support [T, S, ...], query [T, Q, ...])``."""
    t, s, q = batch.num_tasks, batch.support_x.shape[1], batch.query_x.shape[1]
    z = encode(torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)]))
    return z[: t * s].view(t, s, *z.shape[1:]), z[t * s :].view(t, q, *z.shape[1:])


def class_sums(maps: Tensor, labels: Tensor, ways: int) -> Tensor:
    """The paper's class feature, the sum of its support examples' maps: ``maps [T, S, *m]``, ``labels [T, S]`` in
    ``0..ways-1`` -> ``[T, ways, *m]`` (one shot: the example's own maps)."""
    onehot = F.one_hot(labels, ways).to(maps.dtype)  # [T, S, N]
    return (onehot.transpose(1, 2) @ maps.flatten(2)).view(maps.shape[0], ways, *maps.shape[2:])


def pair_maps(classes: Tensor, queries: Tensor) -> Tensor:
    """Every (query, class) pair, the class's maps then the query's concatenated along channels:
    ``classes [T, N, C, H, W]``, ``queries [T, Q, C, H, W]`` -> ``[T, Q, N, 2C, H, W]``."""
    t, n = classes.shape[:2]
    q = queries.shape[1]
    return torch.cat(
        [
            classes.unsqueeze(1).expand(t, q, *classes.shape[1:]),
            queries.unsqueeze(2).expand(t, q, n, *queries.shape[2:]),
        ],
        dim=3,
    )


class RelationModule(nn.Module):
    """The comparator ``g``: ``[P, 2C, H, W]`` pairs -> ``[P]`` relation logits (the score is their sigmoid).

    Two blocks of [3x3 conv with ``hidden`` filters (padding 1), BatchNorm, ReLU, 2x2 max-pool], then a ReLU layer
    of ``fc`` units and a linear output (the paper's, for Omniglot: 64 filters, 8 units). A block's pool is skipped
    when the maps are already 1 pixel across; the maps left are averaged over space (on the paper's 7x7 input they
    are 1x1 after the two pools: the average is the map itself).
    """

    def __init__(self, channels: int, hidden: int = 64, fc: int = 8, batch_norm: bool = True) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [nn.Conv2d(2 * channels, hidden, 3, padding=1), nn.Conv2d(hidden, hidden, 3, padding=1)]
        )
        self.norms = nn.ModuleList(
            [nn.BatchNorm2d(hidden, track_running_stats=False) if batch_norm else nn.Identity() for _ in self.convs]
        )
        self.fc = nn.Linear(hidden, fc)
        self.out = nn.Linear(fc, 1)

    def forward(self, pairs: Tensor) -> Tensor:
        h = pairs
        for conv, norm in zip(self.convs, self.norms):
            h = F.relu(norm(conv(h)))
            if min(h.shape[-2:]) >= 2:
                h = max_pool2d(h, 2)
        return self.out(F.relu(self.fc(h.mean((-2, -1))))).squeeze(-1)


def relation_loss(logits: Tensor, labels: Tensor, loss: str) -> Tensor:
    """``logits [..., N]`` (pre-sigmoid relation scores), ``labels [...]``: ``"mse"``, the mean over pairs of
    ``(sigmoid(logit) - 1[label == n])^2`` (the paper's); ``"ce"``, softmax cross-entropy over the N classes."""
    if loss == "mse":
        return F.mse_loss(torch.sigmoid(logits), F.one_hot(labels, logits.shape[-1]).to(logits.dtype))
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


@dataclass(eq=False)
class RelationPredictor:
    """What :meth:`RelationNet.adapt` returns: ``query_x [Q, *x] -> [Q, N]`` relation logits against the class sums.

    The state is each label's sum of support maps ``[labels, C, H, W]`` and its count; ``update(x, y)`` adds a
    labelled batch to the sums (no graph), so a class feature stays the sum of every example seen (as the paper
    sums K shots; with more examples than the training shots the sums leave the range the comparator was trained
    on). Labels never seen score ``-inf``. The algorithm's modules are only read.
    """

    algo: RelationNet
    sums: Tensor  # [labels, C, H, W]
    counts: Tensor  # [labels]
    input_shape: tuple[int, ...]

    def __call__(self, query_x: Tensor) -> Tensor:
        if not bool((self.counts > 0).any()):
            raise DataError("this relation predictor has seen no labelled example yet (after reset()); update it first")
        with torch.no_grad():
            return self.grad_forward(query_x)

    def grad_forward(self, query_x: Tensor) -> Tensor:
        """The logits of :meth:`__call__` with a graph to ``query_x`` (for an input attribution)."""
        zq = self.algo.maps(query_x)
        logits = self.algo.relation(pair_maps(self.sums.unsqueeze(0), zq.unsqueeze(0)).flatten(0, 2))
        logits = logits.view(len(query_x), -1)
        return logits.masked_fill(self.counts == 0, float("-inf")) if bool((self.counts == 0).any()) else logits

    def explain(self, x: Tensor) -> dict[str, Any]:
        """``relations [Q, N]``: the comparator's scores in [0, 1] (the prediction is the highest)."""
        with torch.no_grad():
            scores = torch.sigmoid(self.grad_forward(x))
        return {"kind": "relations", "relations": scores}

    def configure(self) -> RelationPredictor:
        """No option: the class features are sums."""
        return self

    def reset(self) -> None:
        """Forget every class."""
        self.sums, self.counts = self.sums[:0].clone(), self.counts[:0].clone()

    def update(self, x: Tensor, y: Tensor) -> None:
        """Add the labelled batch ``x [B, *x]``, ``y [B]`` to the class sums; returns nothing."""
        check_update(x, y, torch.empty(0, *self.input_shape), torch.empty(0, dtype=torch.long))
        with torch.no_grad():
            z = self.algo.maps(x)
        sums, counts = accumulate(self.sums, self.counts, z, y)  # ProtoNets' running sums, over feature maps
        self.sums, self.counts = sums.to(z.dtype), counts.to(self.counts.dtype)


class RelationNet(nn.Module):
    """Relation Networks over an encoder ``model`` whose feature maps are compared by a learnt module.

    With ``f`` the encoder's feature maps (:func:`feature_maps`), a class's feature is the sum of its support
    examples' maps and every (class, query) pair is scored by the relation module ``g``:

        c_n = sum_{i: y_i = n} f(x_i)                                               [N, C, H, W]
        r[q, n] = sigmoid(g([c_n ; f(x_q)]))          ([;]: concatenated along channels)

    trained on the mean squared error ``mean_{q,n} (r[q, n] - 1[y_q = n])^2`` (the paper's; ``loss="ce"``: softmax
    cross-entropy of the logits ``g(...)`` over the classes instead). The prediction is ``argmax_n r[q, n]``;
    ``predict`` and the predictor return the logits ``g(...)`` (the same order).

    Paper's (Omniglot): the embedding of four blocks [3x3 conv, 64 filters, BatchNorm, ReLU], the first two
    max-pooled (``pooled_blocks = 2`` on Conv4), the relation module of two such blocks, both pooled, then 8 ReLU
    units and a sigmoid (:class:`RelationModule`), summed class features, MSE. Not the paper's: padding 1 in every
    conv (28x28 -> 7x7 maps rather than 5x5), the spatial average before the fully connected layers (identity on
    the paper's sizes), BatchNorm with batch statistics only (fastadapt's Conv4), ``loss="ce"``.

    As in ProtoNets, ``meta_loss`` encodes every image of the meta-batch at once and scores every pair of the
    meta-batch in one pass (BatchNorm statistics over the meta-batch); ``predict`` one task at a time.

    Args:
        model: the encoder f (see :func:`feature_maps` for what is read of it).
        pooled_blocks: the encoder's blocks that keep their pooling (None: all).
        channels: the channels of f's maps (None: read from the model, :func:`map_channels`).
        hidden, fc: the relation module's filters and fully connected units.
        batch_norm: BatchNorm in the relation module (batch statistics: a task's pairs are normalised together).
        loss: ``"mse"`` or ``"ce"``.
    """

    needs_head: ClassVar[bool] = False
    variable_ways: ClassVar[bool] = True  # reads N from the support labels: variable-way episodes
    encodes_meta_batch: ClassVar[bool] = True  # meta_loss encodes every image of the meta-batch at once
    predicts_task_by_task: ClassVar[bool] = True  # predict encodes one task at a time (the memory estimate, preflight)
    single_forward_loss: ClassVar[bool] = True  # meta_loss is one forward pass: preflight measures it on a probe task

    def __init__(
        self,
        model: nn.Module,
        pooled_blocks: int | None = 2,
        channels: int | None = None,
        hidden: int = 64,
        fc: int = 8,
        batch_norm: bool = True,
        loss: str = "mse",
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ConfigError(f"loss={loss!r}; choose one of {', '.join(LOSSES)}")
        check_map_options(pooled_blocks, hidden=hidden, fc=fc, channels=channels)
        self.model, self.pooled_blocks, self.loss = model, pooled_blocks, loss
        self.relation = RelationModule(channels or map_channels(model), hidden, fc, batch_norm)

    def maps(self, x: Tensor) -> Tensor:
        """``x [B, *x] -> [B, C, H, W]`` (:func:`feature_maps`)."""
        return feature_maps(self.model, x, self.pooled_blocks)

    def _logits(self, batch: TaskBatch) -> Tensor:
        zs, zq = encode_episode(self.maps, batch)
        pairs = pair_maps(class_sums(zs, batch.support_y, batch.ways), zq)  # [T, Q, N, 2C, H, W]
        return self.relation(pairs.flatten(0, 2)).view(*zq.shape[:2], batch.ways)

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        logits = self._logits(batch)
        loss = relation_loss(logits, batch.query_y, self.loss)
        return MetaOutput(loss, batch_metrics(logits, batch.query_y, loss))

    def predict(self, batch: TaskBatch) -> Tensor:
        """``[T, N*Q, N]`` relation logits, one task at a time."""
        with torch.no_grad():
            return torch.cat([self._logits(batch.select(slice(i, i + 1))) for i in range(batch.num_tasks)])

    def adapt(self, support_x: Tensor, support_y: Tensor) -> RelationPredictor:
        """The class sums of one task; returns ``query_x [Q, *x] -> logits [Q, N]`` (a :class:`RelationPredictor`)."""
        with torch.no_grad():
            z = self.maps(support_x)
        ways = int(support_y.max()) + 1
        sums = class_sums(z.unsqueeze(0), support_y.unsqueeze(0), ways)[0]
        counts = torch.bincount(support_y, minlength=ways).to(z.dtype)
        return RelationPredictor(self, sums, counts, tuple(support_x.shape[1:]))


__all__ = [
    "LOSSES",
    "RelationModule",
    "RelationNet",
    "RelationPredictor",
    "check_map_options",
    "class_sums",
    "encode_episode",
    "feature_maps",
    "pair_maps",
]
