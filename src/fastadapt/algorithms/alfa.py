"""ALFA (Baik, Choi, Kim, Cho, Min & Lee 2020, "Meta-Learning with Adaptive Hyperparameters", NeurIPS).

MAML's inner loop with a learning rate and a weight decay that a small meta-learnt network sets at every inner step:
the update rule, our initialisation choice and "ALFA + Random Init" are on :class:`ALFA`; the network is
:class:`HyperGenerator`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import ClassVar

import torch
from torch import Tensor, nn

from fastadapt.algorithms import inner
from fastadapt.algorithms.base import MetaOutput, batch_metrics, task_loss
from fastadapt.algorithms.predictors import FastWeightsPredictor
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError

Hyper = Callable[
    [int, inner.Params, inner.Params], tuple[dict[str, Tensor], dict[str, Tensor]]
]  # (step, phi, grads) -> (alpha, beta)


class HyperGenerator(nn.Module):
    """``g_psi``: ``tau [2L] -> (a [L], b [L])``, a 3-layer MLP with ReLU, width ``2L``; outputs ``1 + h`` (see
    :class:`ALFA`)."""

    def __init__(self, layers: int) -> None:
        super().__init__()
        width = 2 * layers
        self.layers = layers
        self.net = nn.Sequential(
            nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width)
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, tau: Tensor) -> tuple[Tensor, Tensor]:
        out = 1 + self.net(tau)
        return out[..., : self.layers], out[..., self.layers :]


def layer_summary(params: Mapping[str, Tensor], grads: Mapping[str, Tensor]) -> Tensor:
    """``tau [2L]``: the mean of every weight tensor, then the mean of every gradient tensor (ALFA's input)."""
    return torch.stack([p.mean() for p in params.values()] + [grads[k].mean() for k in params])


def alfa_update(
    params: Mapping[str, Tensor], grads: Mapping[str, Tensor], alpha: Mapping[str, Tensor], beta: Mapping[str, Tensor]
) -> inner.Params:
    """``beta * phi - alpha * g`` per parameter tensor (``alpha``, ``beta``: scalars per tensor)."""
    return {k: beta[k] * v - alpha[k] * grads[k] for k, v in params.items()}


def alfa_loop(
    loss_of: Callable[[inner.Params], Tensor], params: inner.Params, hyper: Hyper, steps: int, first_order: bool = False
) -> inner.Params:
    """Fast weights after ``steps`` ALFA steps on ``loss_of`` (one task's support loss) from ``params``.

    ``hyper(j, phi_j, g_j)`` gives the step's ``alpha`` and ``beta`` per tensor. Second order: the
    gradients stay functions of ``params`` (and of psi through tau); first order: each gradient is
    taken at a detached copy and detached. Works under ``vmap``.
    """
    grad_fn = torch.func.grad(loss_of)
    phi = params
    for j in range(steps):
        grads = inner.detached(grad_fn(inner.detached(phi))) if first_order else grad_fn(phi)
        alpha, beta = hyper(j, inner.detached(phi) if first_order else phi, grads)
        phi = alfa_update(phi, grads, alpha, beta)
    return phi


class ALFA(nn.Module):
    """ALFA over any ``nn.Module`` ending in a ``ways``-way head (or a regression output).

    MAML's inner loop with a learning rate and a weight decay that a small meta-learnt network sets at
    every inner step, per layer (here: per parameter tensor), from the task's current state. For task i,
    step j, with fast weights phi_j (phi_0 = theta) and support gradient g_j = grad L_{S_i}(phi_j):

        tau_j     = [ mean(phi_j^1), ..., mean(phi_j^L), mean(g_j^1), ..., mean(g_j^L) ]      (layer-wise means, [2L])
        (a_j, b_j) = g_psi(tau_j)                                                              (two [L] vectors)
        alpha_j^l = alpha0[j, l] * a_j^l,     beta_j^l = beta0[j, l] * b_j^l
        phi_{j+1}^l = beta_j^l * phi_j^l - alpha_j^l * g_j^l

    ``g_psi`` is the paper's 3-layer MLP (ReLU between layers, hidden width 2L) and ``alpha0``/``beta0``
    the paper's learnt per-step, per-layer coefficients that the generated values multiply (initialised
    to ``inner_lr`` and 1). One choice of ours: the network outputs ``1 + h`` with its last layer
    initialised to zero, so that an untrained ALFA is MAML with per-step rates ``alpha0`` and no decay
    (the paper does not say how its outputs are initialised). The meta-loss is MAML's, the mean query
    loss after ``inner_steps`` steps, differentiated w.r.t. theta, psi, alpha0 and beta0 (second order
    by default; ``first_order`` detaches the support gradients and tau, so psi learns only through the
    update itself).

    ``random_init=True`` is the paper's "ALFA + Random Init": theta is not meta-learnt; every task starts
    from the model's own random initialisation (drawn once, seeded by ``run.seed``, saved with the run)
    and only psi, alpha0 and beta0 learn: the adaptive rule alone has to make a random network fit the
    task. (The paper uses one random initialisation that is not meta-trained; it is not re-drawn per task.)

    Shapes: see :class:`~fastadapt.TaskBatch`. BatchNorm is transductive (per-task statistics), as in
    MAML; tasks are mapped by :func:`fastadapt.algorithms.inner.map_tasks` (``execution``).

    Args:
        model: the network; all its parameters that require grad are adapted.
        inner_lr: initial value of the per-step, per-layer base rates ``alpha0`` (``beta0`` starts at 1).
        inner_steps: inner steps in training (the paper: 5).
        inner_steps_eval: inner steps in ``adapt`` / ``predict`` (default: ``inner_steps``); steps past
            ``inner_steps`` reuse the last step's ``alpha0`` and ``beta0``.
        first_order: drop second derivatives through the inner gradient (psi, alpha0, beta0 still learn).
        random_init: theta stays at the model's random initialisation and is not meta-learnt
            ("ALFA + Random Init"; see above).
        execution, chunk_size: how tasks are mapped (see :mod:`fastadapt.algorithms.inner`).
    """

    needs_head: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.4,
        inner_steps: int = 5,
        inner_steps_eval: int | None = None,
        first_order: bool = False,
        random_init: bool = False,
        execution: str = inner.DEFAULT_EXECUTION,
        chunk_size: int = inner.DEFAULT_CHUNK_SIZE,
    ) -> None:
        super().__init__()
        self.model = model
        self.inner_lr = inner.check_positive("inner_lr", inner_lr)
        self.inner_steps, self.inner_steps_eval = inner.step_counts(inner_steps, inner_steps_eval, 1)
        self.first_order, self.random_init = bool(first_order), bool(random_init)
        self.execution, self.chunk_size = inner.execution_options(execution, chunk_size)
        names = list(inner.trainable_params(model))
        if not names:
            raise ConfigError("ALFA needs a model with trainable parameters; this one has none")
        dtype = next(iter(inner.trainable_params(model).values())).dtype
        self.names = names
        self.generator = HyperGenerator(len(names)).to(dtype)
        self.alpha0 = nn.Parameter(torch.full((self.inner_steps, len(names)), self.inner_lr, dtype=dtype))
        self.beta0 = nn.Parameter(torch.ones(self.inner_steps, len(names), dtype=dtype))

    # --- the rule --------------------------------------------------------------------------

    def _hyper(
        self, j: int, phi: inner.Params, grads: inner.Params, lr_scale: float = 1.0, detach: bool = False
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Step ``j``'s ``alpha`` and ``beta`` per tensor from ``tau(phi, grads)``; ``lr_scale`` multiplies every
        alpha."""
        tau = layer_summary(phi, grads)
        k = min(j, self.inner_steps - 1)
        if detach:
            with torch.no_grad():
                a, b = self.generator(tau.detach())
        else:
            a, b = self.generator(tau)
        alpha, beta = self.alpha0[k] * a, self.beta0[k] * b
        if lr_scale != 1.0:
            alpha = alpha * lr_scale
        if detach:
            alpha, beta = alpha.detach(), beta.detach()
        return {n: alpha[i] for i, n in enumerate(phi)}, {n: beta[i] for i, n in enumerate(phi)}

    def _theta(self) -> inner.Params:
        theta = inner.trainable_params(self.model)
        return inner.detached(theta) if self.random_init else theta

    def learning_rates(self) -> dict[str, dict[str, float]]:
        """Per parameter tensor: ``mean``, ``std`` (population), ``min``, ``max`` over steps of the learnt base rates
        ``alpha0``
        (the rates of a task are these times the generated multipliers)."""
        return {name: inner.rate_summary(self.alpha0[:, i]) for i, name in enumerate(self.names)}

    # --- the contract ----------------------------------------------------------------------

    def _run(self, batch: TaskBatch, steps: int, first_order: bool, train: bool) -> tuple[Tensor, Tensor]:
        theta = self._theta() if train else inner.detached(inner.trainable_params(self.model))
        hyper = self._hyper if train else partial(self._hyper, detach=True)

        def task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, ...]:
            phi = alfa_loop(lambda p: task_loss(self._forward(p, sx), sy), theta, hyper, steps, first_order)
            outputs = self._forward(phi, qx)
            return task_loss(outputs, qy).unsqueeze(0), outputs

        with torch.enable_grad():
            losses, outputs = inner.map_tasks(
                task, (batch.support_x, batch.support_y, batch.query_x, batch.query_y), self.execution, self.chunk_size
            )
        return losses[:, 0], outputs

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        """Mean query loss over tasks after ``inner_steps`` ALFA steps."""
        losses, outputs = self._run(batch, self.inner_steps, self.first_order, train=True)
        loss = losses.mean()
        return MetaOutput(loss, batch_metrics(outputs, batch.query_y, loss))

    def adapt(
        self, support_x: Tensor, support_y: Tensor, steps: int | None = None, lr_scale: float = 1.0
    ) -> FastWeightsPredictor:
        """The model with fast weights for one task after ``steps`` (default ``inner_steps_eval``) ALFA steps, every
        generated rate times ``lr_scale``; detached. ``update(x, y)`` keeps adapting (:class:`FastWeightsPredictor`)."""
        steps = self.inner_steps_eval if steps is None else inner.check_steps("steps", steps)
        return FastWeightsPredictor.adapted(self.model, self._adapt_from, support_x, support_y, steps, lr_scale)

    def _adapt_from(self, start: inner.Params, x: Tensor, y: Tensor, steps: int, lr_scale: float = 1.0) -> inner.Params:
        """``steps`` ALFA steps from ``start`` on ``(x, y)`` (first order, no graph to the meta-parameters);
        detached."""
        hyper = partial(self._hyper, lr_scale=lr_scale, detach=True)
        with torch.enable_grad():
            return inner.detached(
                alfa_loop(lambda p: task_loss(self._forward(p, x), y), inner.detached(start), hyper, steps, True)
            )

    def predict(self, batch: TaskBatch) -> Tensor:
        """Query outputs of every task after ``inner_steps_eval`` steps, ``[T, N*Q, N]``; no graph."""
        return self._run(batch, self.inner_steps_eval, True, train=False)[1].detach()

    def _forward(self, params: inner.Params, x: Tensor) -> Tensor:
        return inner.call(self.model, params, x)
