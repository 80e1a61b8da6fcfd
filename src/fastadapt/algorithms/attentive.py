"""An attentive comparator: the query's feature map attends to each support image's feature map, and a small head
scores the aligned pair (the third learnt comparator of issue 31, in the spirit of Attentive Recurrent Comparators,
Shyam et al. 2017, and the relational cross-attention of Polis & Ilin 2021 that issue 31 cites).

The equations are on :class:`Attentive`; :func:`map_tokens`, :func:`cross_attend`, :func:`compare` and
:func:`class_means` are the maths, :class:`CrossComparator` holds the comparator's weights and
:class:`AttentivePredictor` is one adapted task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.algorithms import inner
from fastadapt.algorithms.base import MetaOutput, batch_metrics
from fastadapt.algorithms.predictors import check_update, window_size
from fastadapt.algorithms.relation import check_map_options, encode_episode, feature_maps, map_channels
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError, DataError


def map_tokens(maps: Tensor, coordinates: bool) -> Tensor:
    """``maps [..., C, H, W]`` -> ``[..., H*W, C (+2)]``: one token per location, row by row; with ``coordinates``
    each token ends with its column's and its row's position in ``[-1, 1]`` (``-1`` on a 1-pixel side), so that
    attention can tell where a stroke is as well as what it looks like."""
    tokens = maps.flatten(-2).transpose(-1, -2)
    if not coordinates:
        return tokens
    h, w = maps.shape[-2:]
    ys = torch.linspace(-1.0, 1.0, h, dtype=maps.dtype, device=maps.device)
    xs = torch.linspace(-1.0, 1.0, w, dtype=maps.dtype, device=maps.device)
    grid = torch.stack([xs.repeat(h), ys.repeat_interleave(w)], -1)  # [H*W, 2]: (column, row)
    return torch.cat([tokens, grid.expand(*tokens.shape[:-1], 2)], -1)


def cross_attend(queries: Tensor, keys: Tensor, values: Tensor) -> Tensor:
    """Scaled dot-product attention of every location of every image ``a`` over the locations of every image ``b``:
    ``queries [..., A, L, d]``, ``keys``, ``values [..., B, M, d]`` -> ``[..., A, B, L, d]``,
    ``r[a, b, l] = sum_m softmax_m(q[a, l] . k[b, m] / sqrt(d)) v[b, m]`` (image ``b`` aligned to ``a``'s locations)."""
    logits = torch.einsum("...ald,...bmd->...ablm", queries, keys) / math.sqrt(queries.shape[-1])
    return torch.einsum("...ablm,...bmd->...abld", logits.softmax(-1), values)


def compare(own: Tensor, aligned: Tensor, hidden: nn.Linear, out: nn.Linear) -> Tensor:
    """The pair head: ``own [..., A, L, d]`` (image ``a``'s values), ``aligned [..., A, B, L, d]`` (image ``b``
    aligned to ``a``, :func:`cross_attend`) -> ``[..., A, B]`` pair logits,
    ``g = w_o . mean_l relu(W_h [own_l ; aligned_l ; |own_l - aligned_l|] + b_h) + b_o``.

    ``W_h`` is ``hidden.weight [H, 3d]``, applied block by block (the ``own`` block once per image, not per pair)."""
    d = own.shape[-1]
    w_own, w_aligned, w_diff = hidden.weight[:, :d], hidden.weight[:, d : 2 * d], hidden.weight[:, 2 * d :]
    mine = own.unsqueeze(-3)  # [..., A, 1, L, d]
    h = (mine @ w_own.T) + aligned @ w_aligned.T + (mine - aligned).abs() @ w_diff.T + hidden.bias
    return out(F.relu(h).mean(-2)).squeeze(-1)


def class_means(pairs: Tensor, support_y: Tensor, ways: int) -> Tensor:
    """``pairs [..., Q, S]`` (query, support) logits -> ``[..., Q, ways]``: each class's mean over its support
    examples (one shot: the logit of its one example). A class with no support example gets ``-inf``."""
    onehot = F.one_hot(support_y, ways).to(pairs.dtype)  # [..., S, N]
    counts = onehot.sum(-2).unsqueeze(-2)  # [..., 1, N]
    means = (pairs @ onehot) / counts.clamp_min(1)
    return means.masked_fill(counts == 0, float("-inf")) if bool((counts == 0).any()) else means


class CrossComparator(nn.Module):
    """The comparator's weights: the projections ``W_q``, ``W_k``, ``W_v`` (``tokens -> dim``), the pair head's
    hidden layer (``3 dim -> hidden``, ReLU, averaged over locations) and its output (``hidden -> 1``)."""

    def __init__(self, tokens: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(tokens, dim) for _ in range(3))
        self.hidden = nn.Linear(3 * dim, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, za: Tensor, zb: Tensor, two_way: bool = False) -> Tensor:
        """``za [..., A, L, c]``, ``zb [..., B, M, c]`` tokens -> ``[..., A, B]``: ``a`` attends to ``b``
        (:func:`cross_attend`, :func:`compare`); ``two_way``: the mean with ``b`` attending to ``a``."""
        va, vb = self.value(za), self.value(zb)
        ab = compare(va, cross_attend(self.query(za), self.key(zb), vb), self.hidden, self.out)
        if not two_way:
            return ab
        ba = compare(vb, cross_attend(self.query(zb), self.key(za), va), self.hidden, self.out)
        return (ab + ba.transpose(-1, -2)) / 2


@dataclass(eq=False)
class AttentivePredictor:
    """What :meth:`Attentive.adapt` returns: ``query_x [Q, *x] -> [Q, N]``, each class's mean pair logit against the
    support examples kept. ``update(x, y)`` adds labelled examples (encoded once, no graph) to a sliding window of
    the last ``window`` examples (every query is compared with each one: bounded memory and work; default: the
    support set's size, at least 10); ``reset()`` forgets them. Labels with no example kept score ``-inf``. The
    algorithm is only read."""

    algo: Attentive
    support_z: Tensor  # [S, L, c] tokens
    support_y: Tensor  # [S]
    input_shape: tuple[int, ...]
    window: int = 10

    def __call__(self, query_x: Tensor) -> Tensor:
        if not len(self.support_y):
            raise DataError(
                "this attentive predictor has seen no labelled example yet (after reset()); update it first"
            )
        with torch.no_grad():
            return self.grad_forward(query_x)

    def pair_logits(self, query_x: Tensor) -> Tensor:
        """``[Q, S]``: the comparator's logit of every (query, kept example) pair, with a graph to ``query_x``."""
        return self.algo.comparator(self.algo.tokens(query_x), self.support_z, self.algo.two_way)

    def grad_forward(self, query_x: Tensor) -> Tensor:
        """The logits of :meth:`__call__` with a graph to ``query_x`` (for an input attribution)."""
        return class_means(self.pair_logits(query_x), self.support_y, int(self.support_y.max()) + 1)

    def explain(self, x: Tensor) -> dict[str, Any]:
        """``pair_logits [Q, S]``: the comparator's score of each query against each kept example (a class's
        output is the mean over its examples; the prediction is the highest)."""
        with torch.no_grad():
            pairs = self.pair_logits(x)
        return {"kind": "comparisons", "pair_logits": pairs, "support_labels": self.support_y}

    def configure(self, window: int | None = None) -> AttentivePredictor:
        """``window``: examples kept (>= 1); the last ones stay."""
        if window is not None:
            self.window = inner.check_steps("window", window, 1)
            self.support_z, self.support_y = self.support_z[-self.window :], self.support_y[-self.window :]
        return self

    def reset(self) -> None:
        """Forget every support example."""
        self.support_z, self.support_y = self.support_z[:0].clone(), self.support_y[:0].clone()

    def update(self, x: Tensor, y: Tensor) -> None:
        """Add the labelled batch ``x [B, *x]``, ``y [B]`` to the examples kept; returns nothing."""
        check_update(x, y, torch.empty(0, *self.input_shape), torch.empty(0, dtype=torch.long))
        with torch.no_grad():
            z = self.algo.tokens(x)
        self.support_z = torch.cat([self.support_z, z.to(self.support_z.dtype)])[-self.window :]
        self.support_y = torch.cat([self.support_y, y.to(self.support_y.device)])[-self.window :]


class Attentive(nn.Module):
    """An attentive comparator over an encoder ``model``: each query's feature map attends to each support image's.

    With ``t(x) [L, c]`` the tokens of the encoder's feature maps (:func:`feature_maps`, one per location, plus its
    coordinates: :func:`map_tokens`), every (query ``x``, support ``s``) pair is scored by

        a[l, m] = softmax_m( (W_q t(x)_l) . (W_k t(s)_m) / sqrt(d) )                (:func:`cross_attend`)
        r_l     = sum_m a[l, m] W_v t(s)_m          s aligned to x's location l
        g(x, s) = w_o . mean_l relu(W_h [v_l ; r_l ; |v_l - r_l|] + b_h) + b_o,  v_l = W_v t(x)_l   (:func:`compare`)

    ``two_way`` (Lake et al.'s two-way scoring) scores ``(g(x, s) + g(s, x)) / 2``: the support's map attends to the
    query's too. A class's logit is the mean of ``g`` over its support examples (:func:`class_means`), and the loss
    is the softmax cross-entropy over the classes; ``predict`` and the predictor return these logits.

    Close to CrossTransformers (Doersch, Gupta & Zisserman 2020: the support's locations aligned to each query
    location by attention) and to the cross-attention comparators issue 31 names; not a copy of any paper: the
    pair head (own, aligned and absolute-difference features, averaged over locations), the coordinates in the
    tokens, the mean over shots and the cross-entropy over classes are this module's choices. ARC's recurrent
    glimpses are not here: one attention step, all locations at once.

    As in Relation Networks, ``meta_loss`` encodes every image of the meta-batch at once (BatchNorm statistics over
    the meta-batch) and compares every pair of each task in one pass; ``predict`` works a task at a time.

    Args:
        model: the encoder (see :func:`feature_maps` for what is read of it).
        pooled_blocks: the encoder's blocks that keep their 2x2 pooling (Conv4 on 28x28: 2 gives 7x7 maps, 49
            tokens; None: every block, Conv4's own output).
        channels: the channels of the feature maps (None: read from the model).
        dim: d, the width of the queries, keys and values.
        hidden: the pair head's hidden units.
        coordinates: append each location's (column, row) in [-1, 1] to its token.
        two_way: average both directions of every comparison.
    """

    needs_head: ClassVar[bool] = False
    variable_ways: ClassVar[bool] = True  # reads N from the support labels: variable-way episodes
    encodes_meta_batch: ClassVar[bool] = True  # meta_loss encodes every image of the meta-batch at once
    predicts_task_by_task: ClassVar[bool] = True  # predict encodes one task at a time (the memory estimate, preflight)

    def __init__(
        self,
        model: nn.Module,
        pooled_blocks: int | None = 2,
        channels: int | None = None,
        dim: int = 32,
        hidden: int = 64,
        coordinates: bool = True,
        two_way: bool = False,
    ) -> None:
        super().__init__()
        for key, flag in (("coordinates", coordinates), ("two_way", two_way)):
            if not isinstance(flag, bool):
                raise ConfigError(f"{key}={flag!r} must be true or false")
        check_map_options(pooled_blocks, dim=dim, hidden=hidden, channels=channels)
        if channels is None:
            try:
                channels = map_channels(model)
            except ConfigError:
                raise ConfigError(
                    f"attentive cannot tell the channels of {type(model).__name__}'s feature maps; pass "
                    "algorithm.channels"
                ) from None
        self.model, self.pooled_blocks, self.coordinates, self.two_way = model, pooled_blocks, coordinates, two_way
        self.comparator = CrossComparator(channels + 2 * coordinates, dim, hidden)

    def tokens(self, x: Tensor) -> Tensor:
        """``x [B, *x] -> [B, L, c]``: the encoder's feature maps as tokens (:func:`map_tokens`)."""
        maps = feature_maps(self.model, x, self.pooled_blocks)
        width = self.comparator.query.in_features - 2 * self.coordinates
        if maps.shape[1] != width:
            raise ConfigError(
                f"attentive: the encoder's maps have {maps.shape[1]} channels, the comparator takes {width}; pass "
                f"algorithm.channels={maps.shape[1]}"
            )
        return map_tokens(maps, self.coordinates)

    def _logits(self, batch: TaskBatch) -> Tensor:
        zs, zq = encode_episode(self.tokens, batch)
        return class_means(self.comparator(zq, zs, self.two_way), batch.support_y, batch.ways)  # [T, Q, N]

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        logits = self._logits(batch)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        return MetaOutput(loss, batch_metrics(logits, batch.query_y, loss))

    def predict(self, batch: TaskBatch) -> Tensor:
        """``[T, N*Q, N]`` class logits, one task at a time."""
        with torch.no_grad():
            return torch.cat([self._logits(batch.select(slice(i, i + 1))) for i in range(batch.num_tasks)])

    def adapt(self, support_x: Tensor, support_y: Tensor) -> AttentivePredictor:
        """The task's support tokens; returns ``query_x [Q, *x] -> logits [Q, N]`` (an :class:`AttentivePredictor`)."""
        with torch.no_grad():
            z = self.tokens(support_x)
        return AttentivePredictor(self, z, support_y.clone(), tuple(support_x.shape[1:]), window_size(support_y))


__all__ = [
    "Attentive",
    "AttentivePredictor",
    "CrossComparator",
    "class_means",
    "compare",
    "cross_attend",
    "map_tokens",
]
