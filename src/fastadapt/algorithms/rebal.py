"""ReBAL: meta-learning to adapt online by a recurrent update (Nagabandi, Clavera, Liu, Fearing, Abbeel, Levine &
Finn 2019, "Learning to Adapt in Dynamic, Real-World Environments through Meta-Reinforcement Learning", ICLR; the
recurrence-based adaptive learner, sec. 4.2).

A GRU reads the recent window of a stream into a task state that conditions the network predicting what comes next:
the objective, the conditioning and the test-time rule are on :class:`ReBAL`, the predictor on
:class:`RecurrentPredictor`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import vmap

from fastadapt.algorithms import inner
from fastadapt.algorithms.base import MetaOutput, batch_metrics, task_loss
from fastadapt.algorithms.predictors import (
    DEFAULT_WINDOW,
    check_head_width,
    configure_window,
    layer_changes,
    recent,
    slide,
    window_size,
)
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError, FastAdaptError


def input_layer(model: nn.Module, layer: str = "") -> tuple[str, nn.Linear]:
    """The ``nn.Linear`` that ReBAL conditions: the module named ``layer``, by default the model's first
    ``nn.Linear`` (in registration order: ``net.0`` of :class:`~fastadapt.nn.MLP`); one-line :class:`ConfigError`
    when there is none or it has no bias."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if layer:
        linears = [(n, m) for n, m in linears if n == layer]
        if not linears:
            raise ConfigError(f"layer={layer!r} is not an nn.Linear of the model; name its input layer, e.g. 'net.0'")
    if not linears:
        raise ConfigError(
            f"ReBAL conditions the model's input nn.Linear on the task state; {type(model).__name__} has none "
            "(use model.name=mlp)"
        )
    name, linear = linears[0]
    if linear.bias is None:
        raise ConfigError(f"ReBAL conditions the bias of the model's input layer {name!r}; that nn.Linear has no bias")
    return name, linear


def output_width(model: nn.Module, linear: nn.Linear) -> int:
    """Outputs per example of ``model`` on vectors of ``linear.in_features`` (one trial forward, eval mode, no graph);
    one-line :class:`ConfigError` when the model does not take such vectors (``linear`` is not its input layer)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, linear.in_features, dtype=linear.weight.dtype, device=linear.weight.device))
    except FastAdaptError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"ReBAL conditions the model's input layer, an nn.Linear of {linear.in_features} inputs, but the model "
            f"does not take vectors of that width ({reason}); name its input layer with algorithm.layer"
        ) from None
    finally:
        model.train(was_training)
    return int(out.reshape(2, -1).shape[1])


def transitions(x: Tensor, y: Tensor, width: int) -> Tensor:
    """What the GRU reads of each labelled example: ``x [T, S, *x]``, ``y [T, S, *y]`` (or class labels ``[T, S]``)
    -> ``[T, S, |x| + width]``, the flattened input beside its target (class labels one-hot of ``width``)."""
    xs = x.reshape(*x.shape[:2], -1)
    ys = y.reshape(*y.shape[:2], -1) if y.is_floating_point() else F.one_hot(y, width)
    return torch.cat([xs, ys.to(xs.dtype)], -1)


def conditioned_call(model: nn.Module, layer: str, bias: Tensor, x: Tensor) -> Tensor:
    """``model(x)`` with its input layer's bias replaced by ``bias [hidden]`` (every other weight the model's own):
    the input layer computes ``W x + bias``."""
    return inner.call(model, {f"{layer}.bias": bias}, x)


class ReBAL(nn.Module):
    """ReBAL over a regression network (or a ``ways``-way classifier) whose input layer is an ``nn.Linear``.

    On a stream the task may change at any step, but it is locally consistent: the M most recent points come from
    (nearly) the task of the next K. ReBAL's update rule is a recurrent network: a GRU reads the recent window
    ``(x_i, y_i)``, i = t-M..t-1, and its final hidden state ``h`` is the adapted state that conditions the network
    ``f`` predicting y for new x; the GRU and ``f`` are meta-trained together on what comes next:

        h_0 = 0,   h_i = GRU(h_{i-1}, [x_i, y_i]),   y_hat = f_theta(x; h_M)
        min_{theta, GRU, U}  E_{streams, t} [ L(f_theta(x_{t..t+K-1}; h_M), y_{t..t+K-1}) ]

    **The conditioning.** ``f`` is the configured model (``model.name = "mlp"``: the dynamics network as GrBAL's
    presets build it), and ``h`` enters it as a second input of its input layer: that ``nn.Linear`` computes
    ``W x + b + U h`` instead of ``W x + b``, i.e. the layer applied to the concatenation ``[x, h]`` with weight
    ``[W, U]``. It is done by giving the layer the bias ``b + U h`` through ``functional_call`` (a task's bias; the
    windows of a batch under ``vmap``), so the model is used as the registry built it, for the input width the data
    has, and nothing about it is changed or copied. Concatenation rather than FiLM: it is the plain context-
    conditioned dynamics model, every layer above sees ``h`` through the first hidden activations, and ``h = 0``
    gives back the model itself: the state of an empty window (the GRU starts at 0), so the trained model alone is
    the prediction before any transition, as :class:`~fastadapt.rl.OnlineDynamics` uses it.

    The episodes are windows of a stream (``cheetah-transitions``: :class:`~fastadapt.rl.transitions.TransitionWindows`;
    :class:`~fastadapt.data.streams.StreamTasks`): support = the M points before a step t in time order (what the GRU
    reads), query = the K points from t on.
    ``meta_loss`` is the mean query loss (MSE for regression, as GrBAL's; cross-entropy for class labels, read one-hot
    by the GRU) over the batch's windows. At test time the predictor does what was meta-trained: ``update(x, y)``
    reads the sliding window of the last M points again from ``h = 0`` (:class:`RecurrentPredictor`, policy
    ``"window"``); M is ``window``, or by default the support size of the training episodes (saved with the weights).
    Shapes: see :class:`~fastadapt.TaskBatch`.

    Args:
        model: the network ``f``; its input layer (``layer``) must be an ``nn.Linear`` with a bias.
        hidden_size: the GRU's state, the width of ``h``.
        window: M, the examples the predictor reads at test; 0: the support size of the training episodes
            (:attr:`trained_window`), else :data:`~fastadapt.algorithms.predictors.DEFAULT_WINDOW`.
        layer: the name of the model's input ``nn.Linear`` (e.g. ``"net.0"``); empty: its first ``nn.Linear``.
    """

    needs_head: ClassVar[bool] = True
    trained_window: Tensor  # a buffer: the support size of the training episodes

    def __init__(self, model: nn.Module, hidden_size: int = 64, window: int = 0, layer: str = "") -> None:
        super().__init__()
        self.model = model
        self.hidden_size = inner.check_steps("hidden_size", hidden_size, 1)
        self.window = inner.check_steps("window", window)
        if not isinstance(layer, str):
            raise ConfigError(f"layer={layer!r} is invalid; give the name of the model's input nn.Linear, e.g. 'net.0'")
        self.layer, linear = input_layer(model, layer)
        self.target_width = output_width(model, linear)
        kind = {"dtype": linear.weight.dtype, "device": linear.weight.device}
        self.recurrent = nn.GRU(linear.in_features + self.target_width, self.hidden_size, batch_first=True, **kind)
        self.condition = nn.Linear(self.hidden_size, linear.out_features, bias=False, **kind)  # U
        self.register_buffer("trained_window", torch.zeros((), dtype=torch.int64))

    def adapt_window(self) -> int:
        """M, the window the predictor reads (see ``window``)."""
        return self.window or int(self.trained_window) or DEFAULT_WINDOW

    # --- the recurrent update and the conditioned network ------------------------------------------

    def read(self, x: Tensor, y: Tensor, h: Tensor | None = None) -> Tensor:
        """The GRU's state after reading ``x [T, S, *x]``, ``y [T, S, *y]`` (or labels ``[T, S]``) in order from
        ``h [T, H]`` (None: zeros): ``[T, H]``; ``h`` itself when ``S = 0``."""
        if h is None:
            h = x.new_zeros(x.shape[0], self.hidden_size)
        if x.shape[1] == 0:
            return h
        _, last = self.recurrent(transitions(x, y, self.target_width), h.unsqueeze(0).contiguous())
        return last[0]

    def task_bias(self, h: Tensor) -> Tensor:
        """The input layer's bias under the task state ``h [..., H]``: ``b + U h``, ``[..., hidden]``."""
        bias = self.model.get_parameter(f"{self.layer}.bias")
        return bias + self.condition(h)

    def outputs(self, h: Tensor, query_x: Tensor) -> Tensor:
        """The network's outputs for ``query_x [T, Q, *x]`` under the task states ``h [T, H]``: ``[T, Q, *y]``."""
        return vmap(lambda b, x: conditioned_call(self.model, self.layer, b, x))(self.task_bias(h), query_x)

    # --- the contract ----------------------------------------------------------------------------

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        """Mean over the batch's windows of the loss on the next points after reading the recent ones."""
        if self.training and torch.is_grad_enabled():
            self.trained_window.fill_(batch.support_x.shape[1])
        out = self.outputs(self.read(batch.support_x, batch.support_y), batch.query_x)
        loss = task_loss(out, batch.query_y)
        return MetaOutput(loss, batch_metrics(out, batch.query_y, loss))

    def adapt(self, support_x: Tensor, support_y: Tensor) -> RecurrentPredictor:
        """The state after reading ``support_x, support_y`` (the recent window), as a predictor; no graph. Its
        ``update(x, y)`` reads the sliding window of the last M examples again from ``h = 0``."""
        return RecurrentPredictor.start(self, support_x, support_y, max(self.adapt_window(), support_y.shape[0]))

    def predict(self, batch: TaskBatch) -> Tensor:
        """Query outputs of every window after reading its support set, ``[T, Q, *y]`` (``[T, N*Q, N]``); no
        graph."""
        with torch.no_grad():
            return self.outputs(self.read(batch.support_x, batch.support_y), batch.query_x)

    def state_after(self, x: Tensor, y: Tensor, h: Tensor | None = None) -> Tensor:
        """One task's state ``[H]`` after reading ``x [S, *x]``, ``y [S, *y]`` from ``h [H]`` (None: zeros); no
        graph."""
        with torch.no_grad():
            return self.read(x.unsqueeze(0), y.unsqueeze(0), None if h is None else h.unsqueeze(0))[0].detach()


@dataclass(eq=False)
class RecurrentPredictor:
    """What :meth:`ReBAL.adapt` returns: the network conditioned on the task state ``h``,
    ``query_x [B, *x] -> outputs [B, ...]``, that keeps adapting as labels arrive with :meth:`update`.

    ``update(x, y)`` appends the labelled batch to a sliding window of the last ``window`` examples and
    sets the state by

    * ``policy="window"`` (default): the GRU reading the whole window again from ``h = 0``: what ReBAL was
      meta-trained on (Nagabandi et al. 2019's test-time rule). After :meth:`reset` (an empty window)
      ``update(x, y)`` equals ``algo.adapt(x, y)``.
    * ``policy="continue"``: the GRU reading only the new batch from the current state: the recurrence runs on
      over the whole stream (a state it was not meta-trained for past M points).

    Bounded memory: the window (at most ``window`` examples) and one state ``[H]``; bounded work: one GRU pass over
    at most ``window`` examples. The predictor holds no graph; the algorithm module is only read. ``steps`` (in
    :meth:`configure`) is 1 or None: the recurrence reads each example once, it takes no inner steps. Labels must
    fit the model's head (one-line :class:`DataError`); a rejected update leaves the state as it was.
    :meth:`explain` gives the state and how far it moved the input layer's bias.
    """

    algorithm: ReBAL
    hidden: Tensor  # [H] the task state h (detached)
    window_x: Tensor  # the last `window` inputs [W, *x_shape]
    window_y: Tensor
    window: int = DEFAULT_WINDOW
    policy: str = "window"
    classes: int | None = None  # the head's width (classification), read on the first update

    @staticmethod
    def start(algorithm: ReBAL, support_x: Tensor, support_y: Tensor, window: int = 0) -> RecurrentPredictor:
        """The state after reading ``support_x, support_y``, keeping them as the window (``window`` examples: at
        least as many as the support set, :data:`DEFAULT_WINDOW` by default)."""
        size = window_size(support_y, window)
        wx, wy = recent(support_x, support_y, size)
        return RecurrentPredictor(algorithm, algorithm.state_after(support_x, support_y), wx, wy, size)

    def __call__(self, x: Tensor) -> Tensor:
        algo = self.algorithm
        return conditioned_call(algo.model, algo.layer, algo.task_bias(self.hidden).detach(), x)

    def configure(
        self, window: int | None = None, policy: str | None = None, steps: int | None = None
    ) -> RecurrentPredictor:
        """Set the update policy and the window (see the class docstring); returns the predictor."""
        if steps is not None and steps != 1:
            raise ConfigError(
                f"steps={steps!r} does not apply to ReBAL: its recurrent update reads each example once (give 1)"
            )
        return configure_window(self, window, policy, None)

    def reset(self) -> None:
        """Back to the empty state ``h = 0`` with an empty window."""
        self.hidden = torch.zeros_like(self.hidden)
        self.window_x, self.window_y = self.window_x[:0].clone(), self.window_y[:0].clone()

    def update(self, x: Tensor, y: Tensor) -> None:
        """Learn from the labelled batch ``x [B, *x_shape]``, ``y [B]`` (or ``[B, *y_shape]``); returns nothing."""
        wx, wy = slide(self.window_x, self.window_y, x, y, self.window)
        if not y.shape[0]:
            return
        check_head_width(self, x.detach().to(self.window_x.dtype), y)
        if self.policy == "window":
            h = self.algorithm.state_after(wx, wy)
        else:
            h = self.algorithm.state_after(x.detach().to(self.window_x.dtype), y.detach(), self.hidden)
        self.hidden, self.window_x, self.window_y = h, wx, wy

    def explain(self, x: Tensor) -> dict[str, Any]:
        """``hidden``: the task state; ``layers``: how far it moved the input layer's bias (``||U h||``)."""
        algo = self.algorithm
        name = f"{algo.layer}.bias"
        start = {name: algo.model.get_parameter(name).detach()}
        moved = {name: algo.task_bias(self.hidden).detach()}
        return {
            "kind": "adaptation",
            "hidden": self.hidden,
            "layers": layer_changes(start, moved),
            "notes": [
                "ReBAL's adapted state is the GRU's state after reading "
                + (f"the last {self.window_y.shape[0]} examples" if self.policy == "window" else "the whole stream")
            ],
        }
