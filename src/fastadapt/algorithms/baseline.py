"""Baseline and Baseline++ (Chen, Liu, Kira, Wang & Huang 2019, "A Closer Look at Few-shot Classification", ICLR).

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

Defaults, from the paper and its code (github.com/wyharveychen/CloserLookFewShot):

* ``scale=None``: 2 for a head of at most 200 classes, 10 above (``backbone.distLinear``: Omniglot's
  thousands of training classes need the larger one). So on Omniglot the pretraining head has
  ``s = 10`` and the 5-way head fitted per task ``s = 2``. (That code also learns a norm per class,
  ``s * g_c cos``, by weight normalisation; the paper's cosine is used here.)
* fine-tuning (``methods/baselinefinetune.py``): lr 0.01, momentum 0.9, dampening 0.9, weight decay
  1e-3, mini-batches of 4, 100 passes over the support set (``finetune_steps=None``: that many
  steps, ``100 * ceil(N*K / 4)``: 200 at 5-way 1-shot, 700 at 5-way 5-shot); the new linear head
  starts as ``nn.Linear`` does, uniform in ``+-1/sqrt(D)``.
* the linear pretraining head's bias starts at zero (``methods/baselinetrain.py``); pretraining runs
  with Adam 1e-3 (the presets).

The fit is deterministic: the start and the mini-batch order come from a generator seeded with
``seed``, never torch's global one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from fastadapt.algorithms import inner
from fastadapt.algorithms.base import MetaOutput, batch_metrics
from fastadapt.algorithms.predictors import DEFAULT_WINDOW, recent, resize_window, slide, window_size
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError, DataError

HEADS = ("linear", "cosine")
FINETUNE_EPOCHS = 100  # passes over the support set when finetune_steps is None (Chen et al.'s code)


# ----------------------------------------------------------------------------------------------
# The math, as free functions (LinearProbe calls them too).
# ----------------------------------------------------------------------------------------------


def default_scale(classes: int) -> float:
    """Chen et al.'s cosine scale for a head of ``classes`` outputs: 2 up to 200 classes, 10 above."""
    return 2.0 if classes <= 200 else 10.0


def global_labels(batch: TaskBatch) -> tuple[Tensor, Tensor]:
    """Dataset class ids of every example: ``classes[t, y]``; ``([T, N*K], [T, N*Q])``."""
    if batch.classes is None or batch.support_y.is_floating_point():
        raise ConfigError(
            "pretraining a classifier needs classification tasks with class ids (TaskBatch.classes); this batch has none"
        )
    return batch.classes.gather(1, batch.support_y), batch.classes.gather(1, batch.query_y)


def labelled_examples(batch: TaskBatch) -> tuple[Tensor, Tensor]:
    """Every image of the meta-batch with its global label: ``x [T*(N*K + N*Q), *x_shape]``, ``y [T*(N*K + N*Q)]``."""
    ys, yq = global_labels(batch)
    x = torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)])
    return x, torch.cat([ys.flatten(), yq.flatten()])


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
    """A new head as ``nn.Linear(dim, ways)`` starts: weight, then bias (linear only), uniform in ``+-1/sqrt(dim)``, drawn from ``generator``."""
    if kind not in HEADS:
        raise ConfigError(f"head={kind!r}; choose one of {', '.join(HEADS)}")
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
    """Cross-entropy of every image of ``batch`` over all training classes (one encoder forward); metrics ``loss``, ``acc``."""
    x, y = labelled_examples(batch)
    classes, dim = classifier.weight.shape
    if int(y.max()) >= classes:
        raise ConfigError(
            f"the batch holds class id {int(y.max())} but the classifier has num_classes={classes}; set algorithm.num_classes "
            f"to the training classes"
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


def check_head_kind(kind: str) -> str:
    if kind not in HEADS:
        raise ConfigError(f"head={kind!r}; choose one of {', '.join(HEADS)}")
    return kind


# ----------------------------------------------------------------------------------------------
# The algorithm.
# ----------------------------------------------------------------------------------------------


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
                "this HeadPredictor was built with a fixed head and no fit; use algo.adapt(x, y) to get one that updates"
            )
        wx, wy = slide(self.window_x, self.window_y, x, y, self.window)
        if not y.numel():
            return
        ways = max(self.classes, int(wy.max()) + 1)
        head = self.adapt_from(wx, wy, ways)
        self.head, self.window_x, self.window_y, self.classes = head, wx, wy, ways


class Baseline(nn.Module):
    """Baseline (``head="linear"``) and Baseline++ (``head="cosine"``) of Chen et al. 2019 (module docstring).

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
        if (
            isinstance(finetune_weight_decay, bool)
            or not isinstance(finetune_weight_decay, (int, float))
            or not finetune_weight_decay >= 0
        ):
            raise ConfigError(f"finetune_weight_decay={finetune_weight_decay!r} is invalid; it must be a number >= 0")
        self.finetune_momentum, self.finetune_dampening = float(finetune_momentum), float(finetune_dampening)
        self.finetune_weight_decay, self.seed = float(finetune_weight_decay), int(seed)

    def pretrain_scale(self) -> float:
        """The cosine scale of the pretraining head (over ``num_classes``)."""
        return default_scale(self.num_classes) if self.scale is None else self.scale

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        """Classification of every image of the meta-batch over the ``num_classes`` training classes."""
        return pretrain_loss(self.model, self.classifier, self.head_kind, self.pretrain_scale(), batch)

    def adapt(self, support_x: Tensor, support_y: Tensor) -> HeadPredictor:
        """One task: a new N-way head fitted on the frozen support features (:func:`fit_head`); the module is not changed.
        ``update(x, y)`` on the result refits the head on a sliding window (:class:`HeadPredictor`)."""
        return HeadPredictor.start(self.model, self._fit, support_x, support_y)

    def _fit(self, x: Tensor, y: Tensor, ways: int) -> Head:
        """The per-task head on ``x, y`` with ``ways`` classes (:func:`fit_head` on the frozen features); what ``update`` re-runs."""
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
    "Baseline",
    "Head",
    "HeadFit",
    "HeadPredictor",
    "cosine_logits",
    "default_scale",
    "embed",
    "finetune_order",
    "fit_head",
    "global_labels",
    "head_logits",
    "init_head",
    "labelled_examples",
    "pretrain_loss",
    "sgd_momentum_step",
]
