"""iMAML (Rajeswaran, Finn, Kakade & Levine 2019, "Meta-Learning with Implicit Gradients"): a proximal inner
problem per task, and the meta-gradient from the implicit function theorem, solved by conjugate gradients with
Hessian-vector products, so that nothing is differentiated through the inner loop.

The maths are free functions: :func:`proximal_descent` (the inner loop), :func:`conjugate_gradient` and
:func:`implicit_meta_gradient`; :class:`IMAML` puts them into the engine's contract.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn

from fastadapt.algorithms import inner
from fastadapt.algorithms.base import MetaOutput, batch_metrics, task_loss
from fastadapt.algorithms.predictors import FastWeightsPredictor
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError

__all__ = ["IMAML", "conjugate_gradient", "implicit_meta_gradient", "proximal_descent"]

LossOf = Callable[[inner.Params], Tensor]  # fast weights -> a scalar loss


# --- the maths -------------------------------------------------------------------------------------------------


def proximal_descent(loss_of: LossOf, theta: Mapping[str, Tensor], lam: float, lr: float, steps: int) -> inner.Params:
    """``steps`` of full-batch gradient descent on the proximal problem of one task, from ``theta``; detached.

        phi_0 = theta,    phi_{k+1} = phi_k - lr * (grad L(phi_k) + lam * (phi_k - theta))

    which approximates ``phi* = argmin_phi L(phi) + lam/2 ||phi - theta||^2`` (Rajeswaran et al. 2019, eq. 4).
    ``theta`` is a constant here (detached): each step's gradient is taken on leaf copies (plain autograd) and its
    graph freed at once, so memory does not grow with ``steps``. Stable for the proximal term when ``lr * lam < 2``.
    """
    anchor = inner.detached(theta)
    grad_fn = inner.plain_grad(loss_of)
    phi = dict(anchor)
    for _ in range(steps):
        grads = grad_fn(phi)
        with torch.no_grad():
            phi = {n: p - lr * (grads[n] + lam * (p - anchor[n])) for n, p in phi.items()}
    return phi


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], b: Tensor, steps: int) -> Tensor:
    """``x ~= A^-1 b`` after at most ``steps`` conjugate-gradient iterations from ``x = 0`` (``b [n]``, ``A`` given by
    ``matvec``, symmetric positive definite).

    Exact (up to rounding) after ``n`` iterations on an SPD ``A``. Stops early on a zero residual, and when a search
    direction has non-positive curvature ``p^T A p <= 0`` (``A`` not positive definite there, as the
    ``I + H / lam`` of a non-convex loss may be: the iterate so far is returned).
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = float(r @ r)
    for _ in range(steps):
        if rr == 0.0:
            break
        ap = matvec(p)
        curvature = float(p @ ap)
        if curvature <= 0.0:
            break
        alpha = rr / curvature
        x = x + alpha * p
        r = r - alpha * ap
        rr_next = float(r @ r)
        p = r + (rr_next / rr) * p
        rr = rr_next
    return x


def _flat(tensors: Mapping[str, Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors.values()])


def _unflat(vector: Tensor, like: Mapping[str, Tensor]) -> inner.Params:
    out, start = {}, 0
    for n, t in like.items():
        out[n] = vector[start : start + t.numel()].view_as(t)
        start += t.numel()
    return out


def implicit_meta_gradient(
    train_loss_of: LossOf,
    phi: Mapping[str, Tensor],
    query_grad: Mapping[str, Tensor],
    lam: float,
    cg_steps: int,
    cg_damping: float = 0.0,
) -> inner.Params:
    """The implicit meta-gradient of one task (Rajeswaran et al. 2019, eq. 6 and sec. 3.1), by name, detached:

        g = ((1 + cg_damping) I + H / lam)^-1 grad_phi L_test(phi*),    H = hess L_train(phi*)

    ``phi`` is phi* (the inner solution), ``query_grad`` ``grad_phi L_test(phi*)``; ``cg_damping = 0`` is the
    paper's formula. The system is solved by :func:`conjugate_gradient` (``cg_steps`` iterations), each one a
    Hessian-vector product by double backward through ONE evaluation of ``train_loss_of`` at ``phi`` (its graph
    is built once and reused): nothing depends on how phi* was reached, so memory does not grow with the inner steps.
    """
    leaves = {n: v.detach().requires_grad_() for n, v in phi.items()}
    with torch.enable_grad():
        loss = train_loss_of(leaves)
        found = torch.autograd.grad(loss, list(leaves.values()), create_graph=True, allow_unused=True)
    live = {n: g for n, g in zip(leaves, found) if g is not None and g.requires_grad}  # others: zero Hessian rows

    def matvec(v: Tensor) -> Tensor:
        if not live:
            return (1.0 + cg_damping) * v
        parts = _unflat(v, leaves)
        with torch.enable_grad():
            dot = sum((g * parts[n]).sum() for n, g in live.items())
            found_hv = torch.autograd.grad(dot, list(leaves.values()), retain_graph=True, allow_unused=True)
        hv = {n: torch.zeros_like(p) if h is None else h.detach() for (n, p), h in zip(leaves.items(), found_hv)}
        return (1.0 + cg_damping) * v + _flat(hv) / lam

    b = _flat({n: query_grad[n].detach() for n in leaves})
    return _unflat(conjugate_gradient(matvec, b, cg_steps), leaves)


# --- the algorithm ---------------------------------------------------------------------------------------------


class IMAML(nn.Module):
    """iMAML over any ``nn.Module`` ending in a ``ways``-way head (or a regression output).

    For each task i with support set S_i and query set Q_i, the adapted weights solve a proximal problem
    anchored at the meta-learnt weights theta (Rajeswaran et al. 2019, eq. 4)

        phi_i* = argmin_phi L_{S_i}(phi) + lam/2 ||phi - theta||^2,

    approximated by ``inner_steps`` steps of full-batch gradient descent at ``inner_lr`` from theta
    (:func:`proximal_descent`; iMAML-GD). Since ``grad L_S(phi*) + lam (phi* - theta) = 0``, the implicit
    function theorem gives ``d phi* / d theta = (I + H_i / lam)^-1`` with ``H_i`` the Hessian of ``L_{S_i}`` at
    phi*, so the meta-gradient of ``L(theta) = 1/T sum_i L_{Q_i}(phi_i*)`` is

        g = 1/T sum_i (I + H_i / lam)^-1 grad_phi L_{Q_i}(phi_i*),

    each term by ``cg_steps`` conjugate-gradient iterations with Hessian-vector products at phi_i*
    (:func:`implicit_meta_gradient`). The inner loop is never differentiated: memory does not grow with
    ``inner_steps``, and ``g`` is exact only as far as the inner loop converged and CG ran.

    ``meta_loss`` returns the surrogate ``L_Q + sum_p (p * g_p) - sum_p (p * g_p).detach()``: its value is the
    mean query loss (``metrics["loss"]``) and its gradient to theta is ``g``, so the engine's ``loss.backward()``,
    chunked accumulation and optimizer need nothing special. Tasks run one after another (a Python loop; no vmap
    path). BatchNorm is transductive as in MAML (each pass uses its own batch statistics).
    Shapes: see :class:`~fastadapt.TaskBatch`; ``predict`` returns ``[T, N*Q, N]`` (``[T, Q, *y]`` for regression).

    Args:
        model: the network; all its parameters that require grad are meta-learnt and adapted.
        lam: lambda, the proximal regularisation strength (large: phi* stays near theta).
        inner_lr: the inner gradient-descent rate; ``inner_lr * lam < 2`` (else the proximal term diverges).
        inner_steps: inner steps in training (>= 1).
        inner_steps_eval: inner steps in ``adapt`` / ``predict`` (default: ``inner_steps``).
        cg_steps: conjugate-gradient iterations per task (>= 1).
        cg_damping: extra identity in the CG system, ``(1 + cg_damping) I + H / lam`` (0: the paper's system).
    """

    needs_head: ClassVar[bool] = True
    inner_graph: ClassVar[bool] = False  # its inner steps keep no graph for the outer backward (the memory estimate)
    keeps_task_graphs: ClassVar[bool] = False  # a task's graph is freed before the next: one task held (the estimate)
    predicts_task_by_task: ClassVar[bool] = True  # predict adapts one task at a time (the memory estimate, preflight)

    def __init__(
        self,
        model: nn.Module,
        lam: float = 2.0,
        inner_lr: float = 0.1,
        inner_steps: int = 10,
        inner_steps_eval: int | None = None,
        cg_steps: int = 5,
        cg_damping: float = 0.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.lam = inner.check_positive("lam", lam)
        self.inner_lr = inner.check_positive("inner_lr", inner_lr)
        if self.inner_lr * self.lam >= 2:
            raise ConfigError(
                f"inner_lr={inner_lr} with lam={lam}: inner_lr * lam must be < 2, or the inner loop diverges"
            )
        self.inner_steps, self.inner_steps_eval = inner.step_counts(inner_steps, inner_steps_eval, 1)
        self.cg_steps = inner.check_steps("cg_steps", cg_steps, 1)
        if isinstance(cg_damping, bool) or not isinstance(cg_damping, (int, float)) or not 0 <= cg_damping < 1e30:
            raise ConfigError(f"cg_damping={cg_damping!r} is invalid; it must be a finite number >= 0")
        self.cg_damping = float(cg_damping)
        if not inner.trainable_params(model):
            raise ConfigError("iMAML needs a model with trainable parameters; this one has none")

    def _forward(self, params: inner.Params, x: Tensor) -> Tensor:
        """The model under fast weights ``params`` (:func:`~fastadapt.algorithms.inner.call`)."""
        return inner.call(self.model, params, x)

    def _solve(self, theta: inner.Params, x: Tensor, y: Tensor, steps: int, lr_scale: float = 1.0) -> inner.Params:
        """phi* of one task's support set ``(x, y)``, anchored at ``theta``; detached."""
        return proximal_descent(
            lambda p: task_loss(self._forward(p, x), y), theta, self.lam, self.inner_lr * lr_scale, steps
        )

    # --- the contract ----------------------------------------------------------------------

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        """The surrogate whose value is the mean query loss after the inner loop and whose gradient is iMAML's
        implicit meta-gradient (see the class docstring)."""
        theta = inner.trainable_params(self.model)
        anchor = inner.detached(theta)
        total = {n: torch.zeros_like(v) for n, v in anchor.items()}
        losses, outputs = [], []
        for t in range(batch.num_tasks):
            sx, sy, qx, qy = batch.support_x[t], batch.support_y[t], batch.query_x[t], batch.query_y[t]
            phi = self._solve(anchor, sx, sy, self.inner_steps)
            with torch.enable_grad():
                leaves = {n: v.detach().requires_grad_() for n, v in phi.items()}
                out = self._forward(leaves, qx)
                query_loss = task_loss(out, qy)
                found = torch.autograd.grad(query_loss, list(leaves.values()), allow_unused=True)
            query_grad = {n: torch.zeros_like(v) if g is None else g for (n, v), g in zip(leaves.items(), found)}
            g = implicit_meta_gradient(
                lambda p, sx=sx, sy=sy: task_loss(self._forward(p, sx), sy),
                phi,
                query_grad,
                self.lam,
                self.cg_steps,
                self.cg_damping,
            )
            for n in total:
                total[n] += g[n]
            losses.append(query_loss.detach())
            outputs.append(out.detach())
        mean_loss = torch.stack(losses).mean()
        link = sum((theta[n] * (total[n] / batch.num_tasks)).sum() for n in theta)
        loss = mean_loss + (link - link.detach())  # value: the query loss; gradient to theta: g
        return MetaOutput(loss, batch_metrics(torch.stack(outputs), batch.query_y, mean_loss))

    def adapt(
        self, support_x: Tensor, support_y: Tensor, steps: int | None = None, lr_scale: float = 1.0
    ) -> FastWeightsPredictor:
        """The model with fast weights for one task (``support_x [N*K, *x]``): ``steps`` (default
        ``inner_steps_eval``) proximal steps at ``lr_scale * inner_lr`` from the meta-learnt weights; detached.

        ``update(x, y)`` on the result keeps adapting (:class:`FastWeightsPredictor`): the same proximal inner loop
        on a sliding window, from (and anchored at) the meta-learnt weights by default, or from (and anchored at)
        the current weights with ``policy="continue"``.
        """
        steps = self.inner_steps_eval if steps is None else inner.check_steps("steps", steps)
        return FastWeightsPredictor.adapted(self.model, self._adapt_from, support_x, support_y, steps, lr_scale)

    def _adapt_from(self, start: inner.Params, x: Tensor, y: Tensor, steps: int, lr_scale: float = 1.0) -> inner.Params:
        """The proximal inner loop from (and anchored at) ``start`` on ``(x, y)``; detached."""
        return self._solve(start, x, y, steps, lr_scale)

    def predict(self, batch: TaskBatch) -> Tensor:
        """Query outputs of every task after ``inner_steps_eval`` proximal steps, ``[T, N*Q, N]``; no graph."""
        anchor = inner.detached(inner.trainable_params(self.model))
        outputs = []
        for t in range(batch.num_tasks):
            phi = self._solve(anchor, batch.support_x[t], batch.support_y[t], self.inner_steps_eval)
            with torch.no_grad():
                outputs.append(self._forward(phi, batch.query_x[t]))
        return torch.stack(outputs)
