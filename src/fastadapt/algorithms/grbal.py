"""GrBAL: meta-learning to adapt online from a recent window (Nagabandi, Clavera, Liu, Fearing,
Abbeel, Levine & Finn 2019, "Learning to Adapt in Dynamic, Real-World Environments through
Meta-Reinforcement Learning", ICLR; the gradient-based adaptive learner, sec. 4.1).

Meta-learns the weights and the step sizes of an update rule so that adapting on the recent window of a stream
predicts what comes next: the objective, the episodes and the test-time predictor are on :class:`GrBAL`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from fastadapt.algorithms import inner
from fastadapt.algorithms.base import MetaOutput
from fastadapt.algorithms.predictors import DEFAULT_WINDOW, FastWeightsPredictor
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError


class GrBAL(nn.Module):
    """GrBAL over any ``nn.Module`` with a regression output (or a ``ways``-way head).

    On a stream the task may change at any step, but it is locally consistent: the M most recent points
    come from (nearly) the task of the next K. GrBAL meta-learns the weights theta and the step sizes psi
    of an update rule so that adapting on the recent window predicts what comes next:

        phi_0 = theta,   phi_{k+1} = phi_k - psi * grad L(phi_k; x_{t-M..t-1})      (k < K_inner)
        min_{theta, psi}  E_{streams, t} [ L(phi_{K_inner}; x_{t..t+K-1}) ]

    ``psi`` holds one learnt step size per parameter tensor, shared by the inner steps (``learn_inner_lr``;
    off: the fixed ``inner_lr``). The episodes come from a stream source
    (:class:`~fastadapt.data.streams.StreamTasks`): support = the M points before a step t in time order,
    query = the K points from t on; windows that straddle a change point are part of the distribution,
    as in the paper's trajectories. ``meta_loss`` is the mean query loss over the batch's windows (second
    order by default: the outer gradient differentiates through the inner gradients).

    At test time the predictor does what was meta-trained: ``update(x, y)`` re-adapts from theta on the
    sliding window of the last M points at every step (:class:`~fastadapt.algorithms.predictors.FastWeightsPredictor`,
    policy ``"window"``); M is ``window``, or by default the window the method was meta-trained with
    (recorded from the training episodes, saved with the weights). Shapes: see :class:`~fastadapt.TaskBatch`.

    Args:
        model: the network; all its parameters that require grad are adapted.
        inner_lr: the inner step size (the initial value of psi when ``learn_inner_lr``).
        inner_steps: inner steps on the window, in training and in ``update``.
        inner_steps_eval: inner steps in ``adapt`` / ``predict`` / ``update`` (default: ``inner_steps``).
        learn_inner_lr: learn psi, one step size per parameter tensor (``self.step_sizes[key]``).
        first_order: drop second derivatives through the inner gradient (psi still learns).
        window: M, the examples the predictor adapts on at test; 0: the support size of the training
            episodes (:attr:`trained_window`), else :data:`~fastadapt.algorithms.predictors.DEFAULT_WINDOW`.
        execution, chunk_size: how tasks are mapped (see :mod:`fastadapt.algorithms.inner`).
    """

    needs_head: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        inner_steps_eval: int | None = None,
        learn_inner_lr: bool = True,
        first_order: bool = False,
        window: int = 0,
        execution: str = inner.DEFAULT_EXECUTION,
        chunk_size: int = inner.DEFAULT_CHUNK_SIZE,
    ) -> None:
        super().__init__()
        self.model = model
        self.inner_lr = inner.check_positive("inner_lr", inner_lr)
        self.inner_steps, self.inner_steps_eval = inner.step_counts(inner_steps, inner_steps_eval, 1)
        self.first_order = bool(first_order)
        self.window = inner.check_steps("window", window)
        self.execution, self.chunk_size = inner.execution_options(execution, chunk_size)
        if not inner.trainable_params(model):
            raise ConfigError("GrBAL needs a model with trainable parameters; this one has none")
        self.step_sizes: nn.ParameterDict | None = None
        if learn_inner_lr:
            self.step_sizes = inner.rate_parameters(
                model, lambda p: torch.tensor(self.inner_lr, dtype=p.dtype, device=p.device)
            )
        self.register_buffer(
            "trained_window", torch.zeros((), dtype=torch.int64)
        )  # support size of the training episodes

    def rates(self, steps: int) -> list[dict[str, inner.Rate]]:
        """psi (or the fixed rate) for every parameter, the same at each of ``steps`` steps."""
        names = list(inner.trainable_params(self.model))
        if self.step_sizes is None:
            return inner.constant_rates(names, self.inner_lr, steps)
        psi: dict[str, inner.Rate] = {n: self.step_sizes[inner.param_key(n)] for n in names}
        return [psi] * steps

    def learning_rates(self) -> dict[str, dict[str, float]]:
        """Per parameter tensor, its learnt step size psi (``mean = min = max``, ``std = 0``), for plots."""
        out = {}
        for name, r in self.rates(1)[0].items():
            v = float(r.detach()) if isinstance(r, Tensor) else float(r)
            out[name] = {"mean": v, "std": 0.0, "min": v, "max": v}
        return out

    def adapt_window(self) -> int:
        """M, the window the predictor adapts on (see ``window``)."""
        return self.window or int(self.trained_window) or DEFAULT_WINDOW

    # --- the contract ----------------------------------------------------------------------

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        """Mean over the batch's windows of the loss on the next points after ``inner_steps`` steps on the recent
        ones."""
        if self.training and torch.is_grad_enabled():
            self.trained_window.fill_(batch.support_x.shape[1])
        params, rates = inner.trainable_params(self.model), self.rates(self.inner_steps)
        return inner.final_loss(self._forward, params, batch, rates, self.first_order, self.execution, self.chunk_size)

    def adapt(self, support_x: Tensor, support_y: Tensor) -> FastWeightsPredictor:
        """Fast weights after ``inner_steps_eval`` steps on ``support_x, support_y`` (the recent window); detached.
        ``update(x, y)`` re-adapts from theta on the sliding window of the last M examples."""
        theta = inner.trainable_params(self.model)
        fast = self._adapt_from(theta, support_x, support_y, self.inner_steps_eval)
        return FastWeightsPredictor.start(
            self.model,
            fast,
            theta,
            self._adapt_from,
            support_x,
            support_y,
            self.inner_steps_eval,
            max(self.adapt_window(), support_y.shape[0]),
        )

    def predict(self, batch: TaskBatch) -> Tensor:
        """Query outputs of every window after ``inner_steps_eval`` steps, ``[T, Q, *y]`` (``[T, N*Q, N]``); no
        graph."""
        params, rates = inner.trainable_params(self.model), self.rates(self.inner_steps_eval)
        return inner.predict_after(self._forward, params, batch, rates, self.execution, self.chunk_size)

    def _adapt_from(self, start: inner.Params, x: Tensor, y: Tensor, steps: int) -> inner.Params:
        """``steps`` steps with psi from ``start`` on ``(x, y)``; detached."""
        return inner.fine_tune(self._forward, start, x, y, self.rates(steps))

    def _forward(self, params: inner.Params, x: Tensor) -> Tensor:
        return inner.call(self.model, params, x)
