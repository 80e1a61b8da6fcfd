"""What the predictors that ``adapt`` returns share: the check of an ``update`` batch, one sliding window
of recent examples, the fast-weights predictor of the gradient-based algorithms, and layer changes.
The protocol they keep is :class:`fastadapt.core.contract.Predictor`."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from fastadapt.algorithms import inner
from fastadapt.core.errors import ConfigError, DataError

UPDATE_POLICIES = ("window", "continue")
DEFAULT_WINDOW = 10  # examples a predictor keeps for update() unless adapt saw more or configure() says otherwise


def check_update(x: Tensor, y: Tensor, like_x: Tensor, like_y: Tensor, what: str = "update") -> None:
    """One-line :class:`DataError` unless ``x [B, *x_shape]``, ``y`` are a labelled batch like
    ``like_x``, ``like_y`` (a predictor's window): same example shape (the run's input shape), matching
    batch sizes, integer labels >= 0 for a classifier / finite float targets for a regressor, finite inputs."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise DataError(f"{what}: x and y must be tensors, found {type(x).__name__} and {type(y).__name__}")
    if tuple(x.shape[1:]) != tuple(like_x.shape[1:]):
        raise DataError(
            f"{what}: inputs have shape {list(x.shape[1:])} per example; this "
            f"predictor was adapted on {list(like_x.shape[1:])} "
            f"(the shape its run was trained for); convert the data to that shape"
        )
    if y.shape[:1] != x.shape[:1] or tuple(y.shape[1:]) != tuple(like_y.shape[1:]):
        raise DataError(
            f"{what}: {x.shape[0]} inputs with targets of shape {list(y.shape)}; expected [{x.shape[0]}"
            f"{''.join(f', {s}' for s in like_y.shape[1:])}]"
        )
    if like_y.is_floating_point():
        if not y.is_floating_point():
            raise DataError(f"{what}: targets are {y.dtype}; this predictor regresses float targets")
        bad = ~torch.isfinite(y)
        if bool(bad.any()):
            raise DataError(
                f"{what}: target {int(bad.flatten().nonzero()[0])} is {float(y.flatten()[bad.flatten()][0])}; "
                "targets must be finite "
                f"(the predictor's state is unchanged)"
            )
    else:
        if y.is_floating_point() or y.dtype == torch.bool:
            raise DataError(f"{what}: labels are {y.dtype}; this predictor classifies: use integer labels")
        if y.numel() and int(y.min()) < 0:
            raise DataError(f"{what}: label {int(y.min())} is negative; labels are class indices 0, 1, ...")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise DataError(f"{what}: inputs hold NaN or infinite values (the predictor's state is unchanged)")


# --- the sliding window: the last `window` labelled examples a predictor re-adapts on ----------------


def window_size(support_y: Tensor, window: int = 0, default: int = DEFAULT_WINDOW) -> int:
    """``window``, or by default at least as many examples as the support set and ``default``."""
    return window or max(default, support_y.shape[0])


def recent(x: Tensor, y: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """The last ``size`` examples of ``x``, ``y`` as detached copies: a window to keep."""
    return x.detach()[-size:].clone(), y.detach()[-size:].clone()


def slide(window_x: Tensor, window_y: Tensor, x: Tensor, y: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """The window after the labelled batch ``x``, ``y`` arrives (checked by :func:`check_update` first): its last
    ``size`` examples, new tensors (the old window is left as it was, so a rejected update changes nothing)."""
    check_update(x, y, window_x, window_y)
    wx = torch.cat([window_x, x.detach().to(window_x.dtype)])[-size:].clone()
    return wx, torch.cat([window_y, y.detach()])[-size:].clone()


def resize_window(predictor: Any, window: int) -> None:
    """Set ``predictor.window`` (an integer >= 1) and keep the last ``window`` examples of its window."""
    predictor.window = inner.check_steps("window", window, 1)
    if predictor.window_x is not None and predictor.window_y is not None:
        predictor.window_x, predictor.window_y = recent(predictor.window_x, predictor.window_y, predictor.window)


def configure_window(predictor: Any, window: int | None, policy: str | None, steps: int | None) -> Any:
    """Set a window predictor's ``window`` (keeping its last examples), ``policy`` and ``steps`` (None: unchanged);
    returns the predictor. Shared by the predictors that re-adapt on a sliding window (fast weights, meta-LSTM)."""
    if window is not None:
        resize_window(predictor, window)
    if policy is not None:
        if policy not in UPDATE_POLICIES:
            raise ConfigError(f"policy={policy!r} is unknown; choose one of {', '.join(UPDATE_POLICIES)}")
        predictor.policy = policy
    if steps is not None:
        predictor.steps = inner.check_steps("steps", steps)
    return predictor


def check_head_width(predictor: Any, x: Tensor, y: Tensor) -> None:
    """One-line :class:`DataError` unless class labels ``y`` fit the predictor's fixed-width head; the width is read
    once, from ``predictor(x[:1])``, into ``predictor.classes``. Float targets (regression) pass."""
    if y.is_floating_point():
        return
    if predictor.classes is None:
        with torch.no_grad():
            predictor.classes = int(predictor(x[:1]).shape[-1])
    if y.numel() and int(y.max()) >= predictor.classes:
        raise DataError(
            f"update: label {int(y.max())} is outside the {predictor.classes} classes of this model's head; a "
            "fixed-width head cannot add classes (use a metric-based learner, "
            "e.g. ProtoNet, or a stream with slot labels)"
        )


# --- explanations' building block -----------------------------------------------------------------------


@dataclass(frozen=True)
class LayerChange:
    """How far one parameter tensor moved in adaptation: ``change = ||phi - theta||``, ``relative = change /
    ||theta||``."""

    name: str
    change: float
    relative: float


def layer_changes(init: Mapping[str, Tensor], params: Mapping[str, Tensor]) -> list[LayerChange]:
    """``||phi - theta||`` and ``||phi - theta|| / ||theta||`` per parameter tensor, in the order of ``params``."""
    out = []
    for name, phi in params.items():
        theta = init[name].detach().double()
        change = float((phi.detach().double() - theta).norm())
        out.append(LayerChange(name, change, change / max(float(theta.norm()), 1e-12)))
    return out


# --- the fast-weights predictor (MAML, FOMAML, Meta-SGD, ANIL, Reptile, ALFA, GrBAL) ----------------------

AdaptFrom = Callable[[inner.Params, Tensor, Tensor, int], inner.Params]  # (start, x, y, steps) -> detached weights


@dataclass(eq=False)
class FastWeightsPredictor:
    """What the gradient-based algorithms' ``adapt`` returns (MAML, FOMAML, Meta-SGD, ANIL, Reptile, ALFA,
    GrBAL): the model under fast weights, ``query_x [B, *x] -> outputs [B, ...]``, that keeps adapting
    as labels arrive with :meth:`update`.

    ``update(x, y)`` appends the labelled batch to a sliding window of the last ``window`` examples and
    runs the algorithm's own inner loop (``adapt_from``: the same steps, rates and optimiser as
    ``adapt``) for ``steps`` steps on that window, from

    * ``policy="window"`` (default): the meta-learnt weights ``init``: re-adaptation on a recent window
      (Nagabandi et al. 2019). After :meth:`reset` (an empty window) ``update(x, y)`` equals
      ``algo.adapt(x, y)``.
    * ``policy="continue"``: the current weights: online fine-tuning, what a pretrained model does.

    Bounded memory: the window (at most ``window`` examples) and two sets of weights, whatever the
    number of updates; bounded work: one inner loop of ``steps`` steps on at most ``window`` examples.
    The predictor holds no graph. Test-then-train: predict ``x`` before ``update(x, y)``. Labels must
    fit the model's head (a fixed-width head cannot add classes: one-line :class:`DataError`); a
    rejected update leaves the state as it was. The algorithm module is only read. :meth:`explain`
    gives how far adaptation moved each parameter tensor.
    """

    model: nn.Module
    params: inner.Params  # current fast weights, every adapted parameter (detached)
    buffers: inner.Params
    init: inner.Params  # the meta-learnt weights the window policy restarts from (detached)
    adapt_from: AdaptFrom
    window_x: Tensor  # the last `window` inputs [W, *x_shape]
    window_y: Tensor
    steps: int  # inner steps per update
    window: int = DEFAULT_WINDOW
    policy: str = "window"
    classes: int | None = None  # the head's width (classification), read on the first update

    @staticmethod
    def start(
        model: nn.Module,
        fast: inner.Params,
        init: inner.Params,
        adapt_from: AdaptFrom,
        support_x: Tensor,
        support_y: Tensor,
        steps: int,
        window: int = 0,
    ) -> FastWeightsPredictor:
        """A predictor adapted on ``support_x, support_y`` (already run: ``fast``) that keeps them as its window
        (``window`` examples: at least as many as the support set, :data:`DEFAULT_WINDOW` by default)."""
        size = window_size(support_y, window)
        wx, wy = recent(support_x, support_y, size)
        return FastWeightsPredictor(
            model, fast, inner.frozen_state(model), inner.detached(init), adapt_from, wx, wy, steps, size
        )

    @staticmethod
    def adapted(
        model: nn.Module, adapt_from: AdaptFrom, support_x: Tensor, support_y: Tensor, steps: int, lr_scale: float = 1.0
    ) -> FastWeightsPredictor:
        """``adapt_from`` (its rates times ``lr_scale``) run for ``steps`` steps from ``model``'s trainable weights on
        the support set, as a predictor that keeps adapting with the same function: the body of a gradient-based
        ``adapt``."""
        if lr_scale != 1.0:
            adapt_from = functools.partial(adapt_from, lr_scale=float(lr_scale))
        theta = inner.detached(inner.trainable_params(model))
        fast = adapt_from(theta, support_x, support_y, steps)
        return FastWeightsPredictor.start(model, fast, theta, adapt_from, support_x, support_y, steps)

    def __call__(self, x: Tensor) -> Tensor:
        return functional_call(self.model, (self.params, self.buffers), (x,))

    def configure(
        self, window: int | None = None, policy: str | None = None, steps: int | None = None
    ) -> FastWeightsPredictor:
        """Set the update policy (see the class docstring); returns the predictor."""
        return configure_window(self, window, policy, steps)

    def reset(self) -> None:
        """Back to the meta-learnt weights with an empty window."""
        self.params = dict(self.init)
        self.window_x, self.window_y = self.window_x[:0].clone(), self.window_y[:0].clone()

    def update(self, x: Tensor, y: Tensor) -> None:
        """Learn from the labelled batch ``x [B, *x_shape]``, ``y [B]`` (or ``[B, *y_shape]``); returns nothing."""
        wx, wy = slide(self.window_x, self.window_y, x, y, self.window)
        check_head_width(self, x.detach().to(self.window_x.dtype), y)
        start = self.init if self.policy == "window" else self.params
        self.params, self.window_x, self.window_y = self.adapt_from(start, wx, wy, self.steps), wx, wy

    def explain(self, x: Tensor) -> dict[str, Any]:
        """``layers``: how far adaptation moved every parameter tensor from the meta-learnt weights."""
        return {"kind": "adaptation", "layers": layer_changes(self.init, self.params)}
