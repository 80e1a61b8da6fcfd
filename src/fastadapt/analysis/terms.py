"""The terms of the meta-gradient (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms",
sec. 5): AvgGrad and AvgGradInner by Hessian-vector products, the meta-gradients of MAML, first-order MAML and
Reptile they predict, the same meta-gradients measured through the library's inner loop, and the first-order error
of Fallah, Mokhtari & Ozdaglar (2020)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fastadapt.algorithms import inner
from fastadapt.analysis.hessian import Params, flat, gradient, hvp, leaves, top_eigenvalue, unflat
from fastadapt.core.errors import ConfigError

Loss = Callable[[Params, Tensor, Tensor], Tensor]  # (weights, x [B, ...], y [B, ...]) -> a scalar loss
Minibatch = tuple[Tensor, Tensor]  # (x [B, ...], y [B, ...])
ALGORITHMS = ("maml", "fomaml", "reptile")


def split_minibatches(x: Tensor, y: Tensor, k: int, generator: torch.Generator) -> list[Minibatch]:
    """``k`` disjoint mini-batches of one task's examples ``x [n, ...]``, ``y [n, ...]``, of ``n // k`` each.

    The examples are shuffled by ``generator``; integer labels (classification) are then grouped by class and dealt
    out in turn, so every mini-batch holds the same number of examples of each class (up to one).
    """
    n = x.shape[0]
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise ConfigError(f"k={k!r} is invalid; the meta-gradient's terms need k >= 2 mini-batches")
    if n < k:
        raise ConfigError(f"a task of {n} examples cannot be split into k={k} mini-batches; lower k")
    order = torch.randperm(n, generator=generator)
    if not y.is_floating_point():
        order = order[torch.sort(y[order].reshape(n), stable=True).indices]
    size = n // k
    return [(x[order[i::k][:size]], y[order[i::k][:size]]) for i in range(k)]


@dataclass(frozen=True)
class Terms:
    """AvgGrad and AvgGradInner of a set of tasks, each split into k mini-batches (flat vectors ``[P]``).

    With ``g_i = grad L_i(phi)`` and ``H_i = hess L_i(phi)`` on mini-batch i of a task (Nichol et al. 2018, sec. 5.1):

        AvgGrad      = E[g_1]       (here: the mean over tasks and mini-batches)
        AvgGradInner = E[H_2 g_1]   (here: the mean over tasks and ordered pairs i != j of H_i g_j)
                     = 1/2 grad E[g_1 . g_2]
    """

    avg_grad: Tensor  # [P]
    avg_grad_inner: Tensor  # [P]
    task_grads: Tensor  # [T, P]: each task's mean mini-batch gradient at phi
    batch_grads: Tensor  # [T, k, P]: every mini-batch gradient at phi
    k: int


def gradient_terms(loss: Loss, theta: Params, tasks: Sequence[Sequence[Minibatch]]) -> Terms:
    """:class:`Terms` at ``theta`` for ``tasks`` (one list of k mini-batches each), by gradients and Hessian-vector
    products: for each task ``sum_{i != j} H_i g_j = sum_i H_i (G - g_i)`` with ``G = sum_j g_j`` (k products)."""
    ks = {len(t) for t in tasks}
    if len(ks) != 1 or min(ks) < 2:
        raise ConfigError("every task needs the same number k >= 2 of mini-batches")
    k = ks.pop()
    batch_grads, inner_sums = [], []
    for minibatches in tasks:
        losses = [_on(loss, mb) for mb in minibatches]
        grads = [flat(gradient(f, theta)) for f in losses]
        total = sum(grads)
        inner_sums.append(sum(flat(hvp(f, theta, unflat(total - g, theta))) for f, g in zip(losses, grads)))
        batch_grads.append(torch.stack(grads))
    stacked = torch.stack(batch_grads)
    return Terms(
        stacked.mean(dim=(0, 1)),
        torch.stack(inner_sums).mean(dim=0) / (k * (k - 1)),
        stacked.mean(dim=1),
        stacked,
        k,
    )


def avg_grad_inner_by_dot(loss: Loss, theta: Params, tasks: Sequence[Sequence[Minibatch]]) -> Tensor:
    """AvgGradInner by the identity ``E[H_2 g_1] = 1/2 grad E[g_1 . g_2]``: one double backward of the mean over
    tasks and ordered pairs ``i != j`` of ``g_i . g_j`` (a second code path for :func:`gradient_terms`)."""

    def mean_dot(params: Params) -> Tensor:
        total = 0.0
        for minibatches in tasks:
            k = len(minibatches)
            grads = [flat(gradient(_on(loss, mb), params, create_graph=True)) for mb in minibatches]
            g = sum(grads)
            total = total + ((g * g).sum() - sum((v * v).sum() for v in grads)) / (k * (k - 1))
        return 0.5 * total / len(tasks)

    return flat(gradient(mean_dot, theta))


def predicted(terms: Terms, a: float) -> dict[str, Tensor]:
    """The expected meta-gradients to first order in the step size ``a`` with ``k`` mini-batches (Nichol et al.
    2018, sec. 5.1; each leaves out ``O(a^2)``)::

        E[g_MAML]    = AvgGrad - 2 (k-1) a AvgGradInner
        E[g_FOMAML]  = AvgGrad -   (k-1) a AvgGradInner
        E[g_Reptile] = k AvgGrad - k (k-1) / 2 a AvgGradInner
    """
    k, g, h = terms.k, terms.avg_grad, terms.avg_grad_inner
    return {
        "maml": g - 2 * (k - 1) * a * h,
        "fomaml": g - (k - 1) * a * h,
        "reptile": k * g - k * (k - 1) / 2 * a * h,
    }


@dataclass(frozen=True)
class Measured:
    """Meta-gradients measured at one step size (flat ``[P]``), and each task's weights after Reptile's k steps."""

    gradients: dict[str, Tensor]  # "maml", "fomaml", "reptile" -> mean over tasks [P]
    adapted: Tensor  # [T, P]: phi after k SGD steps, one on each mini-batch in order


def _on(loss: Loss, minibatch: Minibatch) -> Callable[[Params], Tensor]:
    x, y = minibatch
    return lambda p: loss(p, x, y)


def _maml_gradient(loss: Loss, theta: Params, minibatches: Sequence[Minibatch], a: float, first_order: bool) -> Tensor:
    """``d/d theta L_k(phi_k)``: k-1 SGD steps on mini-batches 1..k-1 (the library's
    :func:`~fastadapt.algorithms.inner.inner_loop`), then the gradient on mini-batch k (Nichol et al. sec. 5.1);
    first order: the gradient at ``phi_k``."""
    at = leaves(theta)
    rates = inner.constant_rates(list(at), a, len(minibatches) - 1)
    with torch.enable_grad():
        phi = inner.inner_loop(
            lambda p, i: loss(p, *minibatches[i]), at, rates, first_order=first_order, per_step=True
        )[len(rates)]
        out = loss(phi, *minibatches[-1])
        found = torch.autograd.grad(out, list(at.values()), allow_unused=True)
    return torch.cat([(torch.zeros_like(v) if g is None else g).reshape(-1) for v, g in zip(at.values(), found)])


def _reptile_path(loss: Loss, theta: Params, minibatches: Sequence[Minibatch], a: float) -> tuple[Tensor, Tensor]:
    """Reptile's inner loop, one SGD step on each of the k mini-batches in order (the library's
    :func:`~fastadapt.algorithms.inner.inner_loop`): ``(g_Reptile, phi_{k+1})``, flat.

    ``g_Reptile = (phi_1 - phi_{k+1}) / a = sum_i grad L_i(phi_i)``; the sum of the gradients along the path is
    returned, equal for SGD and free of the cancellation of ``phi_1 - phi_{k+1}`` at small ``a``.
    """
    k = len(minibatches)
    rates = inner.constant_rates(list(theta), a, k)
    with torch.enable_grad():
        path = inner.inner_loop(
            lambda p, i: loss(p, *minibatches[i]), leaves(theta), rates, first_order=True, keep=range(k), per_step=True
        )
    total = sum(flat(gradient(_on(loss, minibatches[i]), path[i])) for i in range(k))
    return total, flat(path[k]).detach()


def measured(loss: Loss, theta: Params, tasks: Sequence[Sequence[Minibatch]], a: float) -> Measured:
    """The meta-gradients of MAML, FOMAML and Reptile at step size ``a``, with the conventions of Nichol et al.
    sec. 5.1, averaged over tasks and over mini-batch orders so that they estimate the same expectation as
    :func:`gradient_terms`:

    * MAML / FOMAML (k-1 steps, the gradient on the k-th mini-batch): each of the k rotations of the mini-batches
      (every mini-batch is the last once);
    * Reptile (``(phi_1 - phi_{k+1}) / a`` after one step on each mini-batch): the order and its reverse (every
      ordered pair of mini-batches comes one after the other once).

    Then ``measured - predicted`` is the Taylor remainder alone, ``O(a^2)``, with no sampling term.
    """
    sums = {name: 0.0 for name in ALGORITHMS}
    adapted = []
    for minibatches in tasks:
        k = len(minibatches)
        rotations = [[minibatches[(r + j) % k] for j in range(k)] for r in range(k)]
        sums["maml"] = sums["maml"] + sum(_maml_gradient(loss, theta, o, a, False) for o in rotations) / k
        sums["fomaml"] = sums["fomaml"] + sum(_maml_gradient(loss, theta, o, a, True) for o in rotations) / k
        forward, phi = _reptile_path(loss, theta, minibatches, a)
        backward, _ = _reptile_path(loss, theta, list(reversed(minibatches)), a)
        sums["reptile"] = sums["reptile"] + (forward + backward) / 2
        adapted.append(phi)
    return Measured({n: v / len(tasks) for n, v in sums.items()}, torch.stack(adapted))


@dataclass(frozen=True)
class FirstOrderError:
    """The error of first-order MAML for one inner step, per task (Fallah, Mokhtari & Ozdaglar 2020, sec. 5):

    g_MAML - g_FO = a H_A(theta) grad L_B(phi),   phi = theta - a grad L_A(theta),
    ||g_MAML - g_FO|| <= a L ||grad L_B(phi)||,   L = ||H_A(theta)||_2 (the top |eigenvalue|)
    """

    error: Tensor  # [T]: ||g_MAML - g_FO||
    bound: Tensor  # [T]: a L_t ||g_FO||
    grad_norm: Tensor  # [T]: ||g_FO|| = ||grad L_B(phi)||


def curvatures(
    loss: Loss, theta: Params, tasks: Sequence[Sequence[Minibatch]], iterations: int = 100, tol: float = 1e-8
) -> Tensor:
    """``[T]``: each task's ``L = |top eigenvalue|`` of the Hessian of its first mini-batch's loss at ``theta``
    (the inner step of :func:`first_order_error`), by power iteration on Hessian-vector products (``iterations`` and
    ``tol`` as :func:`~fastadapt.analysis.hessian.power_iteration`'s; its estimate approaches L from below)."""
    return torch.tensor(
        [abs(top_eigenvalue(_on(loss, t[0]), theta, iterations, tol).value) for t in tasks], dtype=torch.float64
    )


def first_order_error(
    loss: Loss, theta: Params, tasks: Sequence[Sequence[Minibatch]], a: float, curvature: Tensor
) -> FirstOrderError:
    """:class:`FirstOrderError` at step size ``a``: one step on each task's mini-batch A = 0, the meta-gradient on
    mini-batch B = 1, MAML's and first-order MAML's measured through the library's inner loop; ``curvature [T]``
    from :func:`curvatures`."""
    errors, norms = [], []
    for minibatches in tasks:
        pair = minibatches[:2]
        exact = _maml_gradient(loss, theta, pair, a, False)
        first = _maml_gradient(loss, theta, pair, a, True)
        errors.append(float((exact - first).norm()))
        norms.append(float(first.norm()))
    error, norm = torch.tensor(errors, dtype=torch.float64), torch.tensor(norms, dtype=torch.float64)
    return FirstOrderError(error, a * curvature * norm, norm)
