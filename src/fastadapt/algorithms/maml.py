"""MAML (Finn, Abbeel & Levine 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks"), first-order MAML (sec. 5.2), and the MAML++ options of Antoniou, Edwards & Storkey 2019
("How to train your MAML"): learnt per-layer per-step inner rates (LSLR), the multi-step loss
(MSL) and derivative-order annealing (DA).

The inner loop, the meta-loss and the BatchNorm setting are on :class:`MAML`; :class:`FOMAML` is its first-order
variant, :func:`multi_step_loss_weights` MAML++'s multi-step loss weights.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from fastadapt.algorithms import inner
from fastadapt.algorithms.base import MetaOutput, batch_metrics
from fastadapt.algorithms.predictors import DEFAULT_WINDOW, FastWeightsPredictor, configure_window
from fastadapt.core import contract
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError

__all__ = ["DEFAULT_WINDOW", "FOMAML", "MAML", "FastWeightsPredictor", "configure_window", "multi_step_loss_weights"]

MSL_MIN_WEIGHT = 0.03  # MAML++: a non-final step's weight never falls below MSL_MIN_WEIGHT / K during annealing


def multi_step_loss_weights(steps: int, t: int, anneal_steps: int) -> Tensor:
    """MAML++ per-step query-loss weights ``[steps]`` after ``t`` meta-updates (float64).

    Start uniform (``1/K`` each); every non-final weight falls linearly by ``1/K`` over
    ``anneal_steps`` updates, floored at ``MSL_MIN_WEIGHT / K``, and the final weight takes up what
    they lose; from ``t >= anneal_steps`` on only the final step counts (``[0, ..., 0, 1]``), as in
    Antoniou et al.'s code (their epochs are meta-updates here). The weights sum to 1.
    """
    w = torch.zeros(steps, dtype=torch.float64)
    if steps == 0:
        return w
    if t >= anneal_steps:
        w[-1] = 1.0
        return w
    decay = t / (steps * anneal_steps)
    floor = MSL_MIN_WEIGHT / steps
    w[:-1] = max(1.0 / steps - decay, floor)
    w[-1] = 1.0 - float(w[:-1].sum())
    return w


class MAML(nn.Module):
    """MAML over any ``nn.Module`` ending in a ``ways``-way head (or a regression output).

    For each task i with support set S_i and query set Q_i, K inner steps from theta

        phi_i^0 = theta,    phi_i^{k+1} = phi_i^k - alpha_k * grad L_{S_i}(phi_i^k)

    and the meta-loss is the mean query loss after adaptation

        L(theta) = 1/T sum_i L_{Q_i}(phi_i^K)                          (MAML)
        L(theta) = 1/T sum_i sum_k w_k(t) L_{Q_i}(phi_i^k)             (MAML++ multi-step loss)

    Second order: the outer gradient differentiates through the inner gradients (Hessian-vector
    products); first order drops them (d phi^K / d theta = I). Shapes: see :class:`~fastadapt.TaskBatch`;
    ``predict`` returns ``[T, N*Q, N]`` (``[T, Q, *y]`` for regression).

    BatchNorm is transductive: each task's support pass and query pass are normalised with their own
    batch statistics (as in the MAML paper); see :mod:`fastadapt.algorithms.inner`.

    Args:
        model: the network; all its parameters that require grad are adapted.
        inner_lr: alpha, the inner SGD rate (the initial value when ``learn_inner_lr``).
        inner_steps: K, inner steps in training (0: no adaptation).
        inner_steps_eval: inner steps in ``adapt`` / ``predict`` (default: ``inner_steps``).
        first_order: drop second derivatives (first-order MAML).
        first_order_until: MAML++ derivative-order annealing: first order for the first
            ``first_order_until`` meta-updates (counted in :attr:`meta_step`), second order after.
        learn_inner_lr: MAML++ LSLR: one learnt rate per parameter tensor and step, initialised to
            ``inner_lr`` (``self.inner_lrs[name][k]``); evaluation steps beyond ``inner_steps`` use
            the last step's rate.
        multi_step_loss: MAML++ MSL: the query loss after every inner step, weighted by
            :func:`multi_step_loss_weights`, annealed to the final step over ``msl_anneal_steps``.
        msl_anneal_steps: meta-updates over which the MSL weights anneal.
        execution: ``"vmap"``, ``"chunks"``, ``"loop"`` or ``"shared_first"`` (the first inner step of all tasks
            as one computation) over tasks (same numbers; see :mod:`fastadapt.algorithms.inner`).
        chunk_size: tasks per ``vmap`` call with ``execution="chunks"``.
        checkpoint_inner: recompute the inner steps in the backward pass instead of keeping their graphs (one step's
            graph alive, the same meta-gradient; about one more forward and support backward per step; tasks then
            run one at a time): :mod:`fastadapt.algorithms.checkpointed`.

    :attr:`meta_step` (a buffer, saved with the state) counts the meta-updates: the ``meta_loss``
    calls made in training mode with grad enabled, except those that continue an update an earlier
    call began (the loop's chunked accumulation, :func:`fastadapt.core.contract.continues_update`), which
    read the schedule at the first call's step. DA and MSL schedules read it.
    """

    needs_head: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        inner_steps_eval: int | None = None,
        first_order: bool = False,
        first_order_until: int = 0,
        learn_inner_lr: bool = False,
        multi_step_loss: bool = False,
        msl_anneal_steps: int = 5000,
        execution: str = inner.DEFAULT_EXECUTION,
        chunk_size: int = inner.DEFAULT_CHUNK_SIZE,
        checkpoint_inner: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.checkpoint_inner = bool(checkpoint_inner)
        self.inner_lr = inner.check_positive("inner_lr", inner_lr)
        self.inner_steps, self.inner_steps_eval = inner.step_counts(inner_steps, inner_steps_eval)
        self.first_order = bool(first_order)
        self.first_order_until = inner.check_steps("first_order_until", first_order_until)
        self.multi_step_loss = bool(multi_step_loss)
        self.msl_anneal_steps = inner.check_steps("msl_anneal_steps", msl_anneal_steps, 1)
        self.execution, self.chunk_size = inner.execution_options(execution, chunk_size)
        self.register_buffer("meta_step", torch.zeros((), dtype=torch.int64))
        names = list(inner.trainable_params(model))
        if not names:
            raise ConfigError("MAML needs a model with trainable parameters; this one has none")
        self.inner_lrs: nn.ParameterDict | None = None
        if learn_inner_lr:
            if self.inner_steps == 0:
                raise ConfigError("learn_inner_lr=True needs inner_steps >= 1")
            self.inner_lrs = inner.rate_parameters(
                model, lambda p: torch.full((self.inner_steps,), self.inner_lr, dtype=p.dtype, device=p.device)
            )

    # --- the schedule ----------------------------------------------------------------------

    def schedule_step(self) -> int:
        """The meta-update the schedules read: :attr:`meta_step`, or the one before when this call continues
        an update already counted (:func:`fastadapt.core.contract.continues_update`)."""
        step = int(self.meta_step)
        return max(step - 1, 0) if self._counting() and contract.continues_update() else step

    def _counting(self) -> bool:
        return self.training and torch.is_grad_enabled()

    def is_first_order(self) -> bool:
        """Whether the next meta-loss drops second derivatives (``first_order``, or DA still on)."""
        return self.first_order or self.schedule_step() < self.first_order_until

    def loss_weights(self) -> Tensor:
        """``[inner_steps]`` weights of the query losses after steps 1..K (one-hot on K without MSL)."""
        if self.multi_step_loss:
            return multi_step_loss_weights(self.inner_steps, self.schedule_step(), self.msl_anneal_steps)
        w = torch.zeros(self.inner_steps, dtype=torch.float64)
        if self.inner_steps:
            w[-1] = 1.0
        return w

    def rates(self, steps: int) -> list[dict[str, inner.Rate]]:
        """Per-step, per-parameter inner rates for ``steps`` steps."""
        names = list(inner.trainable_params(self.model))
        if self.inner_lrs is None:
            return inner.constant_rates(names, self.inner_lr, steps)
        last = self.inner_steps - 1
        return [{n: self.inner_lrs[inner.param_key(n)][min(k, last)] for n in names} for k in range(steps)]

    def step_rates(self) -> dict[str, list[float]]:
        """MAML++ LSLR: per parameter tensor, its learnt rate at each training inner step; ``{}`` without
        ``learn_inner_lr``."""
        if self.inner_lrs is None:
            return {}
        return {
            n: self.inner_lrs[inner.param_key(n)].detach().cpu().double().tolist()
            for n in inner.trainable_params(self.model)
        }

    # --- the contract ----------------------------------------------------------------------

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        """Mean query loss over tasks after ``inner_steps`` steps (weighted over steps with MSL).

        ``metrics["loss"]`` and ``acc`` / ``mse`` are those of the final step's fast weights.
        """
        weights, first_order = self.loss_weights(), self.is_first_order()
        if self._counting() and not contract.continues_update():
            self.meta_step += 1
        loss_steps = [k + 1 for k in range(self.inner_steps) if weights[k] > 0] or [0]  # [0]: no inner step
        weights = weights[[k - 1 for k in loss_steps]] if self.inner_steps else torch.ones(1, dtype=torch.float64)
        losses, outputs = inner.evaluate_tasks(
            self._forward,
            inner.trainable_params(self.model),
            batch,
            self.rates(self.inner_steps),
            first_order,
            loss_steps,
            self.execution,
            self.chunk_size,
            self.checkpoint_inner,
        )
        loss = (losses * weights.to(losses.dtype)).sum(1).mean()
        return MetaOutput(
            loss, batch_metrics(outputs, batch.query_y, losses[:, -1].mean())
        )  # the last loss step is always K

    def adapt(
        self, support_x: Tensor, support_y: Tensor, steps: int | None = None, lr_scale: float = 1.0
    ) -> FastWeightsPredictor:
        """The model with fast weights for one task (``support_x [N*K, *x]``) after ``steps`` (default
        ``inner_steps_eval``)
        steps, every inner rate times ``lr_scale``; detached.

        ``update(x, y)`` on the result keeps adapting (:class:`FastWeightsPredictor`: MAML's inner loop on a
        sliding window, from the meta-learnt weights by default).
        """
        steps = self.inner_steps_eval if steps is None else inner.check_steps("steps", steps)
        return FastWeightsPredictor.adapted(self.model, self._adapt_from, support_x, support_y, steps, lr_scale)

    def _adapt_from(self, start: inner.Params, x: Tensor, y: Tensor, steps: int, lr_scale: float = 1.0) -> inner.Params:
        """MAML's inner loop from ``start`` on ``(x, y)`` for ``steps`` steps (rates times ``lr_scale``); detached."""
        return inner.fine_tune(self._forward, start, x, y, inner.scaled_rates(self.rates(steps), lr_scale))

    def predict(self, batch: TaskBatch) -> Tensor:
        """Query outputs of every task after ``inner_steps_eval`` steps, ``[T, N*Q, N]``; no graph."""
        params, rates = inner.trainable_params(self.model), self.rates(self.inner_steps_eval)
        return inner.predict_after(self._forward, params, batch, rates, self.execution, self.chunk_size)

    def _forward(self, params: inner.Params, x: Tensor) -> Tensor:
        """The model under fast weights ``params`` (:func:`~fastadapt.algorithms.inner.call`)."""
        return inner.call(self.model, params, x)


class FOMAML(MAML):
    """First-order MAML (Finn et al. 2017, sec. 5.2): :class:`MAML` with ``first_order=True``; takes MAML's other
    options."""

    inner_graph: ClassVar[bool] = False  # its inner steps keep no graph for the outer backward (the memory estimate)

    def __init__(self, model: nn.Module, **options: Any) -> None:
        if "first_order" in options:
            raise ConfigError("FOMAML is first order by definition; drop first_order (or use MAML)")
        super().__init__(model, first_order=True, **options)


_maml_sig = inspect.signature(MAML.__init__)
FOMAML.__init__.__signature__ = _maml_sig.replace(  # type: ignore[attr-defined]
    parameters=[p for name, p in _maml_sig.parameters.items() if name != "first_order"]
)
