"""Meta-SGD (Li, Zhou, Chen & Li 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning").

Meta-SGD learns, together with the initialisation theta, a learning rate for every scalar parameter: the update and
the meta-gradient are on :class:`MetaSGD`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from fastadapt.algorithms import inner
from fastadapt.algorithms.base import MetaOutput
from fastadapt.algorithms.predictors import FastWeightsPredictor
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError


class MetaSGD(nn.Module):
    """Meta-SGD over any ``nn.Module`` ending in a ``ways``-way head (or a regression output).

    Meta-SGD learns, together with the initialisation theta, a learning rate for every scalar
    parameter: alpha has the shape of theta, and the inner update is elementwise

        phi_i = theta - alpha * grad L_{S_i}(theta)          (repeated ``inner_steps`` times, same alpha)

    The meta-loss is the mean query loss after adaptation, 1/T sum_i L_{Q_i}(phi_i), differentiated
    w.r.t. both theta and alpha (alpha gets ``-grad L_{S_i} * grad L_{Q_i}`` summed over tasks / T for one
    step). Shapes: see :class:`~fastadapt.TaskBatch`. BatchNorm is transductive (per-task statistics),
    as in MAML; see :mod:`fastadapt.algorithms.inner`.

    Args:
        model: the network; all its parameters that require grad are adapted.
        init_lr: initial value of every learnt rate (``self.lrs[key]`` has its parameter's shape;
            keys are parameter names with dots as dashes).
        inner_steps: inner steps in training (the paper uses 1).
        inner_steps_eval: inner steps in ``adapt`` / ``predict`` (default: ``inner_steps``).
        first_order: drop second derivatives through the inner gradient (alpha still learns).
        execution, chunk_size: how tasks are mapped (see :mod:`fastadapt.algorithms.inner`).
        checkpoint_inner: recompute the inner steps in the backward pass instead of keeping their graphs (one step's
            graph alive, the same meta-gradient; about one more forward and support backward per step; tasks then
            run one at a time): :mod:`fastadapt.algorithms.checkpointed`.
    """

    needs_head: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        init_lr: float = 0.4,
        inner_steps: int = 1,
        inner_steps_eval: int | None = None,
        first_order: bool = False,
        execution: str = inner.DEFAULT_EXECUTION,
        chunk_size: int = inner.DEFAULT_CHUNK_SIZE,
        checkpoint_inner: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.checkpoint_inner = bool(checkpoint_inner)
        init = inner.check_positive("init_lr", init_lr)
        self.inner_steps, self.inner_steps_eval = inner.step_counts(inner_steps, inner_steps_eval)
        self.first_order = bool(first_order)
        self.execution, self.chunk_size = inner.execution_options(execution, chunk_size)
        if not inner.trainable_params(model):
            raise ConfigError("MetaSGD needs a model with trainable parameters; this one has none")
        self.lrs = inner.rate_parameters(model, lambda p: torch.full_like(p, init))

    def rates(self, steps: int) -> list[dict[str, inner.Rate]]:
        """The learnt rates, the same at each of ``steps`` steps."""
        alpha: dict[str, inner.Rate] = {n: self.lrs[inner.param_key(n)] for n in inner.trainable_params(self.model)}
        return [alpha] * steps

    def learning_rates(self) -> dict[str, dict[str, float]]:
        """Per parameter tensor: ``mean``, ``std`` (population), ``min``, ``max`` of its learnt rates, for inspection
        and plots."""
        return {n: inner.rate_summary(self.lrs[inner.param_key(n)]) for n in inner.trainable_params(self.model)}

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        """Mean query loss over tasks after ``inner_steps`` steps with the learnt rates."""
        params, rates = inner.trainable_params(self.model), self.rates(self.inner_steps)
        how = (self.execution, self.chunk_size, self.checkpoint_inner)
        return inner.final_loss(self._forward, params, batch, rates, self.first_order, *how)

    def adapt(
        self, support_x: Tensor, support_y: Tensor, steps: int | None = None, lr_scale: float = 1.0
    ) -> FastWeightsPredictor:
        """The model with fast weights for one task after ``steps`` (default ``inner_steps_eval``) steps, the learnt
        rates
        times ``lr_scale``; detached.

        ``update(x, y)`` keeps adapting: the learnt-rate steps on a sliding window (:class:`FastWeightsPredictor`).
        """
        steps = self.inner_steps_eval if steps is None else inner.check_steps("steps", steps)
        return FastWeightsPredictor.adapted(self.model, self._adapt_from, support_x, support_y, steps, lr_scale)

    def _adapt_from(self, start: inner.Params, x: Tensor, y: Tensor, steps: int, lr_scale: float = 1.0) -> inner.Params:
        """``steps`` steps with the learnt rates (times ``lr_scale``) from ``start`` on ``(x, y)``; detached."""
        return inner.fine_tune(self._forward, start, x, y, inner.scaled_rates(self.rates(steps), lr_scale))

    def predict(self, batch: TaskBatch) -> Tensor:
        """Query outputs of every task after ``inner_steps_eval`` steps, ``[T, N*Q, N]``; no graph."""
        params, rates = inner.trainable_params(self.model), self.rates(self.inner_steps_eval)
        return inner.predict_after(self._forward, params, batch, rates, self.execution, self.chunk_size)

    def _forward(self, params: inner.Params, x: Tensor) -> Tensor:
        return inner.call(self.model, params, x)
