"""LSTM meta-learner, Ravi & Larochelle 2017, "Optimization as a Model for Few-Shot Learning" (ICLR).

:class:`MetaLSTM` holds the update rule, the paper's details and how tasks run together; :class:`MetaLSTMPredictor`
is what ``adapt`` returns, :func:`preprocess` the gradient preprocessing of Andrychowicz et al. 2016.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

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
from fastadapt.core.errors import ConfigError

BATCHNORM_SETTING = "transductive"  # what every number from this algorithm is measured with


def preprocess(x: Tensor, p: float = 10.0) -> Tensor:
    """Andrychowicz et al. 2016 (appendix A): ``x -> (log|x| / p, sign x)`` if ``|x| >= e^-p``, else ``(-1, e^p x)``.

    ``[...]`` -> ``[..., 2]``. Brings gradients and losses of very different magnitudes to a range an
    LSTM can take while keeping their sign and (log) scale.
    """
    big = x.abs() >= math.exp(-p)
    first = torch.where(big, x.abs().clamp_min(math.exp(-p)).log() / p, torch.full_like(x, -1.0))
    second = torch.where(big, torch.sign(x), math.exp(p) * x)
    return torch.stack([first, second], dim=-1)


def cell_update(c_prev: Tensor, grad: Tensor, input_gate: Tensor, forget_gate: Tensor) -> Tensor:
    """``c_t = f_t * c_{t-1} - i_t * grad_t`` (all ``[..., n]``)."""
    return forget_gate * c_prev - input_gate * grad


class MetaLSTMState(NamedTuple):
    """Coordinate-wise state for ``T`` tasks and ``n`` learner coordinates.

    h, c1: ``[T * n, H]`` the first LSTM layer's state; theta: ``[T, n]`` the cell state of the meta-LSTM
    (the learner's weights); input_gate, forget_gate: ``[T, n]`` the last ``i_t``, ``f_t`` (zeros at the start).
    """

    h: Tensor
    c1: Tensor
    theta: Tensor
    input_gate: Tensor
    forget_gate: Tensor


@dataclass(frozen=True)
class GateTrace:
    """Gate values during one adaptation, for plotting (Ravi & Larochelle, figure 3).

    names: the learner's parameter tensors (``model.named_parameters()`` order); input_gate,
    forget_gate: ``[steps, len(names)]`` the mean of ``i_t`` / ``f_t`` over each tensor's coordinates
    (averaged over the tasks given).
    """

    names: tuple[str, ...]
    input_gate: Tensor
    forget_gate: Tensor


@dataclass(eq=False)
class MetaLSTMPredictor:
    """What :meth:`MetaLSTM.adapt` returns: the learner under the weights the meta-LSTM wrote,
    ``query_x [B, *x] -> outputs [B, N]``, that keeps adapting as labels arrive with :meth:`update`.

    ``update(x, y)`` appends the labelled batch to a sliding window of the last ``window`` examples and
    runs the learnt optimiser (:meth:`MetaLSTM.unroll_from`) for ``steps`` updates on that window, from

    * ``policy="window"`` (default): the meta-learnt ``theta_0 = c_0`` with a fresh optimiser state (zero
      LSTM state and gates), as ``adapt`` starts. After :meth:`reset` (an empty window) ``update(x, y)``
      equals ``algo.adapt(x, y)``.
    * ``policy="continue"``: the current state: the learner's weights *and* the optimiser's own state
      (its LSTM state and last gates), so the learnt optimiser simply runs on, past the ``inner_steps``
      it was trained for.

    ``state`` holds the :class:`MetaLSTMState` of one task as a dict (``h``, ``c1`` ``[n, H]``; ``theta``,
    ``input_gate``, ``forget_gate`` ``[1, n]``). Bounded memory: that state, ``theta_0`` and the window,
    whatever the number of updates; bounded work: ``steps`` updates on at most ``window`` examples. No
    graph is kept. Labels must fit the learner's head (a fixed width: a larger label is a one-line
    :class:`DataError`); a rejected update leaves the state as it was. The algorithm module is only read.
    """

    net: MetaLSTM
    state: dict[str, Tensor]
    init_theta: Tensor  # [n] the meta-learnt theta_0 (detached)
    window_x: Tensor
    window_y: Tensor
    steps: int  # updates of the learnt optimiser per update()
    window: int = DEFAULT_WINDOW
    policy: str = "window"
    classes: int | None = None  # the head's width (classification), read on the first update

    @property
    def weights(self) -> Tensor:
        """The learner's current weights ``[n]``."""
        return self.state["theta"][0]

    def __call__(self, x: Tensor) -> Tensor:
        return self.net._learner(self.weights, x)

    def configure(
        self, window: int | None = None, policy: str | None = None, steps: int | None = None
    ) -> MetaLSTMPredictor:
        """Set the update policy (see the class docstring); returns the predictor."""
        return configure_window(self, window, policy, steps)

    def reset(self) -> None:
        """Back to ``theta_0`` and a fresh optimiser state, with an empty window."""
        self.state = _state_dict(self.net.state_from(self.init_theta.unsqueeze(0)))
        self.window_x, self.window_y = self.window_x[:0].clone(), self.window_y[:0].clone()

    def update(self, x: Tensor, y: Tensor) -> None:
        """Learn from the labelled batch ``x [B, *x_shape]``, ``y [B]`` (or ``[B, *y_shape]``); returns nothing."""
        wx, wy = slide(self.window_x, self.window_y, x, y, self.window)
        if not y.shape[0]:
            return
        check_head_width(self, x.detach().to(self.window_x.dtype), y)
        start = (
            self.net.state_from(self.init_theta.unsqueeze(0))
            if self.policy == "window"
            else MetaLSTMState(**self.state)
        )
        with torch.no_grad():
            end, _ = self.net.unroll_from(start, wx.unsqueeze(0), wy.unsqueeze(0), self.steps)
        self.state, self.window_x, self.window_y = _state_dict(end), wx, wy

    def explain(self, x: Tensor) -> dict[str, Any]:
        """``gates``: the learnt optimiser's input and forget gates per step and parameter tensor while it adapts
        on the window (:meth:`MetaLSTM.gate_trace`); ``layers``: how far it moved each of the learner's tensors."""
        net = self.net
        return {
            "kind": "gates",
            "gates": net.gate_trace(self.window_x, self.window_y),
            "layers": layer_changes(net.unflatten(self.init_theta), net.unflatten(self.weights)),
        }


def _state_dict(state: MetaLSTMState) -> dict[str, Tensor]:
    return {k: v.detach() for k, v in state._asdict().items()}


class MetaLSTM(nn.Module):
    """The LSTM meta-learner around ``model`` (the learner; Conv4 with hidden=32 in the paper).

    The learner's parameters ``theta`` (all of ``model``'s parameters, flattened: ``n`` coordinates) are
    the cell state of an LSTM that plays the optimizer. With ``grad_t`` the gradient of the learner's
    support loss ``L_t`` at ``theta_{t-1}``:

        c_t = f_t * c_{t-1} + i_t * (-grad_t),          theta_t = c_t,        c_0 = theta_0 (learnt)
        i_t = sigmoid(W_I [h_t, L~_t, c_{t-1}, i_{t-1}] + b_I)
        f_t = sigmoid(W_F [h_t, L~_t, c_{t-1}, f_{t-1}] + b_F)

    So ``f_t = 1, i_t = lr`` is plain gradient descent; the meta-learner learns per-coordinate,
    per-step rates (``i_t``) and shrinkage (``f_t``). ``h_t`` is the output of a first, ordinary LSTM layer
    (``hidden_size`` = 20 in the paper) whose input is the preprocessed ``(grad_t, L_t)``, and ``L~_t``
    the preprocessed loss; the preprocessing is that of Andrychowicz et al. 2016 (:func:`preprocess`).

    Both layers are *coordinate-wise*: their parameters are shared by all ``n`` learner coordinates,
    which form the batch dimension of the LSTMs (``T * n`` rows for ``T`` tasks).

    Paper details kept here:

    * ``c_0`` is the learnt initialisation: it *is* ``model``'s parameters (flattened), so after
      meta-training ``algo.model`` holds theta_0 and a checkpoint of it loads into the plain model.
    * ``b_F`` starts large (uniform in [4, 6]: ``f ~ 1``) and ``b_I`` small (uniform in [-5, -4]: ``i ~
      0.01``), the other gate weights uniform in [-0.01, 0.01], as in the authors' code.
    * The meta-gradient ignores second derivatives: ``grad_t`` and ``L_t`` are inputs computed at a
      detached ``theta_{t-1}`` (the meta-gradient flows along ``c_t`` and through the gates).
    * BatchNorm uses batch statistics at meta-training *and* at meta-test time (no running
      statistics), i.e. transductively per task, as the paper does: the support set when learning,
      the query set when predicting. A model whose BatchNorm tracks running statistics is rejected.
      Metrics and reports should say ``batchnorm=transductive``.

    Tasks of a batch run together: with ``vectorize=True`` (default) the learner's forward/gradient
    runs for all tasks at once with ``torch.func.vmap``; ``vectorize=False`` loops over tasks (same
    numbers; the loop is there for models vmap cannot handle). The learner runs with the cell-state
    weights through ``torch.func.functional_call``; nothing of ``model`` is ever changed.

    Args:
        model: the learner, ending in a ``ways``-way head; its parameters are ``c_0``.
        inner_steps: T, updates of the learner on the support set (the paper: 5 for 5-shot, 12 for 1-shot).
        hidden_size: width of the first, ordinary LSTM layer (20 in the paper).
        preprocess_p: ``p`` of :func:`preprocess` (10).
        forget_bias, input_bias: ranges of the uniform initialisation of ``b_F`` and ``b_I``.
        vectorize: run tasks with ``torch.func.vmap`` (True) or a loop (False).
    """

    needs_head = True
    inner_graph = False  # the learner's support passes run at detached weights: no graph of them (memory estimate)
    unrolls_coordinatewise = True  # state_from / step: preflight measures one step's state per coordinate

    def __init__(
        self,
        model: nn.Module,
        inner_steps: int = 5,
        hidden_size: int = 20,
        preprocess_p: float = 10.0,
        forget_bias: tuple[float, float] = (4.0, 6.0),
        input_bias: tuple[float, float] = (-5.0, -4.0),
        vectorize: bool = True,
    ) -> None:
        super().__init__()
        for name, v in (("inner_steps", inner_steps), ("hidden_size", hidden_size)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"meta_lstm {name}={v!r} is invalid; it must be a positive integer")
        if not float(preprocess_p) > 0:
            raise ConfigError(f"meta_lstm preprocess_p={preprocess_p!r} is invalid; it must be > 0")
        for name, rng in (("forget_bias", forget_bias), ("input_bias", input_bias)):
            if len(rng) != 2 or not float(rng[0]) <= float(rng[1]):
                raise ConfigError(f"meta_lstm {name}={rng!r} is invalid; give a range (low, high) with low <= high")
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.track_running_stats:
                raise ConfigError(
                    "meta_lstm uses batch statistics (transductive BatchNorm); build the "
                    "model's BatchNorm with track_running_stats=False"
                )
        self.model = model
        self.names = tuple(name for name, p in model.named_parameters() if p.requires_grad)
        if not self.names:
            raise ConfigError("meta_lstm: the model has no trainable parameters to adapt")
        params = dict(model.named_parameters())
        self.shapes = tuple(tuple(params[n].shape) for n in self.names)
        self.numels = tuple(params[n].numel() for n in self.names)
        self.inner_steps, self.preprocess_p, self.vectorize = inner_steps, float(preprocess_p), bool(vectorize)
        # first layer: an ordinary LSTM over the preprocessed (gradient, loss), coordinate-wise
        self.lstm = nn.LSTMCell(4, hidden_size)
        # second layer: the gates of the meta-LSTM; rows: [h (H), loss~ (2), c_{t-1} (1), gate_{t-1} (1)]
        self.weight_input = nn.Parameter(torch.empty(hidden_size + 4).uniform_(-0.01, 0.01))
        self.weight_forget = nn.Parameter(torch.empty(hidden_size + 4).uniform_(-0.01, 0.01))
        self.bias_input = nn.Parameter(torch.empty(()).uniform_(float(input_bias[0]), float(input_bias[1])))
        self.bias_forget = nn.Parameter(torch.empty(()).uniform_(float(forget_bias[0]), float(forget_bias[1])))

    # -- the learner's weights as one vector -------------------------------------------------------

    def initial_theta(self) -> Tensor:
        """``c_0 = theta_0``: the model's parameters flattened, ``[n]`` (differentiable)."""
        params = dict(self.model.named_parameters())
        return torch.cat([params[name].reshape(-1) for name in self.names])

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """``[..., n]`` -> ``{name: [..., *shape]}``."""
        lead = theta.shape[:-1]
        return {
            name: chunk.reshape(*lead, *shape)
            for name, chunk, shape in zip(self.names, theta.split(self.numels, dim=-1), self.shapes)
        }

    def _learner(self, theta: Tensor, x: Tensor) -> Tensor:
        """The learner with weights ``theta [n]`` on one task's ``x``."""
        return functional_call(self.model, self.unflatten(theta), (x,))

    def _loss(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return task_loss(self._learner(theta, x), y)

    def learner_outputs(self, theta: Tensor, x: Tensor) -> Tensor:
        """Outputs for ``T`` tasks: ``theta [T, n]``, ``x [T, B, ...]`` -> ``[T, B, out]``."""
        if self.vectorize:
            return vmap(self._learner)(theta, x)
        return torch.stack([self._learner(theta[i], x[i]) for i in range(theta.shape[0])])

    def learner_gradients(self, theta: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(grad [T, n], loss [T])`` of the support losses at ``theta`` (detached: no second derivatives)."""
        theta = theta.detach()
        fn = grad_and_value(self._loss)
        if self.vectorize:
            g, v = vmap(fn)(theta, x, y)
        else:
            pairs = [fn(theta[i], x[i], y[i]) for i in range(theta.shape[0])]
            g, v = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        return g.detach(), v.detach()

    # -- the meta-learner ---------------------------------------------------------------------------

    def initial_state(self, num_tasks: int) -> MetaLSTMState:
        """The state before the first update: ``theta = c_0`` for every task, zero LSTM state and gates."""
        return self.state_from(self.initial_theta().unsqueeze(0).expand(num_tasks, -1))

    def state_from(self, theta: Tensor) -> MetaLSTMState:
        """A fresh optimiser state (zero LSTM state and gates) at learner weights ``theta [T, n]``."""
        rows = theta.numel()
        h = theta.new_zeros(rows, self.lstm.hidden_size)
        z = torch.zeros_like(theta)
        return MetaLSTMState(h, h, theta, z, z)

    def step(self, state: MetaLSTMState, grad: Tensor, loss: Tensor) -> MetaLSTMState:
        """One update of all coordinates: ``grad [T, n]``, ``loss [T]`` -> the new state (``theta = c_t``)."""
        t, n = grad.shape
        g = preprocess(grad, self.preprocess_p)  # [T, n, 2]
        lp = preprocess(loss, self.preprocess_p).unsqueeze(1).expand(t, n, 2)  # [T, n, 2]
        h, c1 = self.lstm(torch.cat([g, lp], dim=-1).reshape(t * n, 4), (state.h, state.c1))
        common = torch.cat([h.view(t, n, -1), lp], dim=-1)  # [T, n, H + 2]
        k = common.shape[-1]
        wi, wf = self.weight_input, self.weight_forget
        i = torch.sigmoid(common @ wi[:k] + state.theta * wi[k] + state.input_gate * wi[k + 1] + self.bias_input)
        f = torch.sigmoid(common @ wf[:k] + state.theta * wf[k] + state.forget_gate * wf[k + 1] + self.bias_forget)
        return MetaLSTMState(h, c1, cell_update(state.theta, grad, i, f), i, f)

    def unroll(self, support_x: Tensor, support_y: Tensor) -> tuple[Tensor, list[MetaLSTMState]]:
        """``inner_steps`` updates on the support sets of ``T`` tasks; ``(theta_T [T, n], states after each step)``."""
        state, states = self.unroll_from(self.initial_state(support_x.shape[0]), support_x, support_y, self.inner_steps)
        return state.theta, states

    def unroll_from(
        self, state: MetaLSTMState, support_x: Tensor, support_y: Tensor, steps: int
    ) -> tuple[MetaLSTMState, list[MetaLSTMState]]:
        """``steps`` updates from ``state`` on the support sets ``[T, S, ...]``: ``(the last state, the states after
        each step)``."""
        states = []
        for _ in range(steps):
            grad, loss = self.learner_gradients(state.theta, support_x, support_y)
            state = self.step(state, grad, loss)
            states.append(state)
        return state, states

    # -- the contract -------------------------------------------------------------------------------

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        """Adapt on every task's support set, cross-entropy of the adapted learner on its query set (mean over
        tasks)."""
        theta, _ = self.unroll(batch.support_x, batch.support_y)
        out = self.learner_outputs(theta, batch.query_x)
        loss = task_loss(out, batch.query_y)
        return MetaOutput(loss, batch_metrics(out, batch.query_y, loss))

    def adapt(self, support_x: Tensor, support_y: Tensor) -> MetaLSTMPredictor:
        """Learner weights written by the meta-LSTM for one task (no graph); the predictor runs the learner with them,
        and its ``update(x, y)`` re-runs the learnt optimiser on a sliding window (:class:`MetaLSTMPredictor`)."""
        theta0 = self.initial_theta().detach()
        with torch.no_grad():
            end, _ = self.unroll_from(
                self.state_from(theta0.unsqueeze(0)), support_x.unsqueeze(0), support_y.unsqueeze(0), self.inner_steps
            )
        size = window_size(support_y)
        return MetaLSTMPredictor(
            self, _state_dict(end), theta0.clone(), *recent(support_x, support_y, size), self.inner_steps, size
        )

    def predict(self, batch: TaskBatch) -> Tensor:
        """Query outputs ``[T, N*Q, N]`` of every task after adaptation (no graph is kept)."""
        with torch.no_grad():
            theta, _ = self.unroll(batch.support_x, batch.support_y)
            return self.learner_outputs(theta, batch.query_x)

    def gate_trace(self, support_x: Tensor, support_y: Tensor) -> GateTrace:
        """Record ``i_t`` and ``f_t`` during adaptation on ``support_x [T, S, ...]`` (or one task ``[S, ...]``).

        Returns the per-step, per-parameter-tensor means (see :class:`GateTrace`); pure, like ``adapt``.
        """
        if support_y.ndim == 1:
            support_x, support_y = support_x.unsqueeze(0), support_y.unsqueeze(0)
        with torch.no_grad():
            _, states = self.unroll(support_x, support_y)

        def per_tensor(g: Tensor) -> Tensor:
            return torch.stack([chunk.mean() for chunk in g.split(self.numels, dim=-1)])

        return GateTrace(
            self.names,
            torch.stack([per_tensor(s.input_gate) for s in states]),
            torch.stack([per_tensor(s.forget_gate) for s in states]),
        )
