"""Classifiers fitted per task on frozen features (Baseline, Baseline++, the linear probe) and their predictor.

A head is ``weight [N, D]`` and ``bias [N]`` (linear) or a scaled cosine (Baseline++); :func:`fit_head` fits
one as Chen et al. 2019 evaluate (SGD with momentum, seeded); :class:`HeadPredictor` keeps refitting it on a
sliding window of the examples it is given.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from fastadapt.algorithms import inner
from fastadapt.algorithms.predictors import DEFAULT_WINDOW, recent, resize_window, slide, window_size
from fastadapt.core.errors import ConfigError, DataError

HEADS = ("linear", "cosine")
FINETUNE_EPOCHS = 100  # passes over the support set when finetune_steps is None (Chen et al.'s code)


def default_scale(classes: int) -> float:
    """Chen et al.'s cosine scale for a head of ``classes`` outputs: 2 up to 200 classes, 10 above."""
    return 2.0 if classes <= 200 else 10.0


def cosine_logits(features: Tensor, weight: Tensor, scale: float) -> Tensor:
    """``scale * cos(z_m, w_n)``: ``features [M, D]``, ``weight [N, D]`` -> ``[M, N]``."""
    return scale * F.normalize(features, dim=-1) @ F.normalize(weight, dim=-1).T


@dataclass(frozen=True)
class Head:
    """A classifier on features: ``weight [N, D]``, ``bias [N]`` (None for ``kind="cosine"``), its kind and scale."""

    weight: Tensor
    bias: Tensor | None
    kind: str = "linear"
    scale: float = 1.0  # cosine only


def head_logits(features: Tensor, head: Head) -> Tensor:
    """``features [M, D]`` -> logits ``[M, N]``: ``z W^T + b`` (linear) or ``scale * cos(z, w_n)`` (cosine)."""
    if head.kind == "linear":
        out = features @ head.weight.T
        return out + head.bias if head.bias is not None else out
    if head.kind == "cosine":
        return cosine_logits(features, head.weight, head.scale)
    raise ConfigError(f"head={head.kind!r}; choose one of {', '.join(HEADS)}")


def init_head(
    dim: int,
    ways: int,
    kind: str,
    scale: float | None,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Head:
    """A new head as ``nn.Linear(dim, ways)`` starts: weight, then bias (linear only), uniform in ``+-1/sqrt(dim)``,
    drawn from ``generator``."""
    check_head_kind(kind)
    bound = 1.0 / math.sqrt(dim)
    weight = (torch.rand(ways, dim, generator=generator, dtype=dtype) * 2 - 1) * bound
    bias = (torch.rand(ways, generator=generator, dtype=dtype) * 2 - 1) * bound if kind == "linear" else None
    s = default_scale(ways) if scale is None else float(scale)
    return Head(weight.to(device), None if bias is None else bias.to(device), kind, s)


def finetune_order(n: int, batch_size: int, steps: int, generator: torch.Generator) -> list[Tensor]:
    """Support indices of each of ``steps`` SGD steps: pass after pass over a fresh permutation of the
    ``n`` examples (``torch.randperm(n, generator=generator)``), read ``batch_size`` at a time; a pass's
    last mini-batch is shorter when ``batch_size`` does not divide ``n`` (as Chen et al.'s loop)."""
    order: list[Tensor] = []
    while len(order) < steps:
        perm = torch.randperm(n, generator=generator)
        order += list(perm.split(batch_size))
    return order[:steps]


def sgd_momentum_step(
    param: Tensor, grad: Tensor, buf: Tensor | None, lr: float, momentum: float, dampening: float, weight_decay: float
) -> tuple[Tensor, Tensor]:
    """One step of ``torch.optim.SGD`` (no Nesterov) as a function: returns the new parameter and momentum buffer.

    ``d = grad + weight_decay * param``; ``buf = d`` at the first step, else
    ``momentum * buf + (1 - dampening) * d``; ``param - lr * buf``.
    """
    d = grad + weight_decay * param
    buf = d if buf is None else momentum * buf + (1 - dampening) * d
    return param - lr * buf, buf


def finetune_steps_for(n: int, batch_size: int, steps: int | None) -> int:
    """``steps``, or ``FINETUNE_EPOCHS`` passes over ``n`` support examples when None."""
    return FINETUNE_EPOCHS * -(-n // batch_size) if steps is None else steps


def fit_head(
    features: Tensor,
    labels: Tensor,
    ways: int,
    kind: str = "linear",
    *,
    scale: float | None = None,
    steps: int | None = None,
    lr: float = 0.01,
    batch_size: int = 4,
    momentum: float = 0.9,
    dampening: float = 0.9,
    weight_decay: float = 1e-3,
    seed: int = 0,
) -> Head:
    """A new ``ways``-way head fitted on frozen features, as Chen et al. evaluate Baseline / Baseline++.

    Args:
        features: ``[S, D]`` support features (no graph is kept to them).
        labels: ``[S]`` in 0..ways-1.
        kind: ``"linear"`` or ``"cosine"``; ``scale``: the cosine scale (None: :func:`default_scale` of ``ways``).
        steps: SGD steps (None: 100 passes over the support set); ``lr``, ``momentum``, ``dampening``,
            ``weight_decay``: those of ``torch.optim.SGD``; ``batch_size``: examples per step.
        seed: one generator, ``torch.Generator().manual_seed(seed)``, draws the start
            (:func:`init_head`) and then the order (:func:`finetune_order`).

    Minimises the mean cross-entropy of each mini-batch; returns the fitted :class:`Head` (detached).
    Works under ``torch.no_grad()`` and ``torch.inference_mode()``: the fit enables autograd itself.
    """
    n, dim = features.shape
    generator = torch.Generator().manual_seed(seed)
    start = init_head(dim, ways, kind, scale, generator, features.dtype, features.device)
    order = finetune_order(n, batch_size, finetune_steps_for(n, batch_size, steps), generator)
    with torch.inference_mode(False), torch.enable_grad():
        z, y = features.detach().clone(), labels.clone()
        params = [p.clone().requires_grad_(True) for p in (start.weight, start.bias) if p is not None]
        bufs: list[Tensor | None] = [None] * len(params)
        for idx in order:
            idx = idx.to(z.device)
            head = Head(params[0], params[1] if len(params) > 1 else None, kind, start.scale)
            loss = F.cross_entropy(head_logits(z[idx], head), y[idx])
            grads = torch.autograd.grad(loss, params)
            stepped = [
                sgd_momentum_step(p.detach(), g, b, lr, momentum, dampening, weight_decay)
                for p, g, b in zip(params, grads, bufs)
            ]
            params = [p.requires_grad_(True) for p, _ in stepped]
            bufs = [b for _, b in stepped]
    weight, bias = params[0].detach(), params[1].detach() if len(params) > 1 else None
    return Head(weight, bias, kind, start.scale)


def embed(model: nn.Module, x: Tensor) -> Tensor:
    """Features ``[M, D]`` of a frozen encoder, no graph; runs on copies of its buffers, so the module
    (BatchNorm running statistics included) is never changed."""
    with torch.no_grad():
        params = dict(model.named_parameters())
        return functional_call(model, (params, inner.frozen_state(model)), (x,)).flatten(1)


def check_head_kind(kind: str) -> str:
    if kind not in HEADS:
        raise ConfigError(f"head={kind!r}; choose one of {', '.join(HEADS)}")
    return kind


HeadFit = Callable[
    [Tensor, Tensor, int], Head
]  # (x [S, *x], labels [S], ways) -> the task's head: the algorithm's own per-task fit


@dataclass(eq=False)
class HeadPredictor:
    """What ``adapt`` returns (Baseline, Baseline++, the linear probe): ``query_x [M, *x] -> logits [M, N]`` through
    the frozen encoder and the task's fitted head, that keeps adapting as labels arrive with :meth:`update`.

    ``update(x, y)`` appends the labelled batch to a sliding window of the last ``window`` examples and fits
    the head anew on that window with the algorithm's own per-task fit (``adapt_from``: the same steps,
    rates, seed and solver as ``adapt``; the window is encoded as one set). So after :meth:`reset` (an
    empty window, no head) ``update(x, y)`` equals ``algo.adapt(x, y)``. The head is per task, so a label
    beyond its width is a new class: the head widens to ``max(label) + 1`` classes; it never narrows until
    :meth:`reset` (a label that has left the window keeps its row, fitted with no example of it).

    Bounded memory: the window (at most ``window`` examples) and one head, whatever the number of
    updates; bounded work: one encoder pass over the window and one fit on it. The predictor holds no
    graph. A rejected update (:func:`~fastadapt.algorithms.predictors.check_update`) leaves the state as it was;
    the algorithm module is only read.
    """

    model: nn.Module
    head: Head | None  # None after reset(), until an update
    normalize: bool = False  # L2-normalise the features first (LinearProbe)
    adapt_from: HeadFit | None = None  # the per-task fit update() re-runs (None: a fixed head; update refuses)
    window_x: Tensor | None = None  # the last `window` inputs [W, *x_shape]
    window_y: Tensor | None = None  # their labels [W]
    window: int = DEFAULT_WINDOW
    classes: int = 0  # the head's width

    @staticmethod
    def start(
        model: nn.Module,
        adapt_from: HeadFit,
        support_x: Tensor,
        support_y: Tensor,
        normalize: bool = False,
        window: int = 0,
    ) -> HeadPredictor:
        """The head fitted on ``support_x, support_y`` (``int(max(support_y)) + 1`` classes), keeping them as its
        window (``window`` examples: at least as many as the support set,
        :data:`~fastadapt.algorithms.predictors.DEFAULT_WINDOW` by default)."""
        ways = int(support_y.max()) + 1
        size = window_size(support_y, window)
        wx, wy = recent(support_x, support_y, size)
        return HeadPredictor(model, adapt_from(support_x, support_y, ways), normalize, adapt_from, wx, wy, size, ways)

    def __call__(self, query_x: Tensor) -> Tensor:
        if self.head is None:
            raise DataError("this predictor has seen no labelled example yet (after reset()); update it first")
        z = embed(self.model, query_x)
        if self.normalize:
            z = F.normalize(z, dim=-1)
        with torch.no_grad():
            return head_logits(z, self.head)

    def configure(self, window: int | None = None) -> HeadPredictor:
        """``window``: the examples the head is fitted on at each update (the last ones); returns the predictor."""
        if window is not None:
            resize_window(self, window)
        return self

    def grad_forward(self, x: Tensor) -> Tensor:
        """``self(x)`` with a graph to ``x`` (for an input attribution): the encoder on copies of its buffers."""
        model = self.model
        z = functional_call(model, (dict(model.named_parameters()), inner.frozen_state(model)), (x,)).flatten(1)
        return head_logits(F.normalize(z, dim=-1) if self.normalize else z, self.head)  # type: ignore[arg-type]

    def reset(self) -> None:
        """Forget the window and the head (the encoder is what was learnt before the task)."""
        if self.window_x is not None and self.window_y is not None:
            self.window_x, self.window_y = self.window_x[:0].clone(), self.window_y[:0].clone()
        self.head, self.classes = None, 0

    def update(self, x: Tensor, y: Tensor) -> None:
        """Learn from the labelled batch ``x [B, *x_shape]``, ``y [B]`` (integer labels); returns nothing."""
        if self.adapt_from is None or self.window_x is None or self.window_y is None:
            raise ConfigError(
                "this HeadPredictor was built with a fixed head and no fit; "
                "use algo.adapt(x, y) to get one that updates"
            )
        wx, wy = slide(self.window_x, self.window_y, x, y, self.window)
        if not y.numel():
            return
        ways = max(self.classes, int(wy.max()) + 1)
        head = self.adapt_from(wx, wy, ways)
        self.head, self.window_x, self.window_y, self.classes = head, wx, wy, ways
