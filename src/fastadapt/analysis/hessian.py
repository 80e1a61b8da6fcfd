"""Curvature of a loss over a dict of weights: flattening, Hessian-vector products, the full Hessian of a small
model (for checks) and the dominant eigenvalue by power iteration."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from fastadapt.core.errors import ConfigError

Params = dict[str, Tensor]
LossOf = Callable[[Params], Tensor]  # weights by name -> a scalar loss


def flat(tensors: Mapping[str, Tensor]) -> Tensor:
    """The tensors of ``tensors`` as one vector ``[P]``, in the mapping's order."""
    return torch.cat([t.reshape(-1) for t in tensors.values()])


def unflat(vector: Tensor, like: Mapping[str, Tensor]) -> Params:
    """``vector [P]`` cut back into tensors shaped as ``like``'s (the inverse of :func:`flat`)."""
    out, at = {}, 0
    for name, t in like.items():
        out[name] = vector[at : at + t.numel()].view_as(t)
        at += t.numel()
    if at != vector.numel():
        raise ValueError(f"a vector of {vector.numel()} numbers does not fit weights of {at} numbers")
    return out


def leaves(params: Mapping[str, Tensor]) -> Params:
    """Detached copies of ``params`` that require grad: the variables a gradient is taken with respect to."""
    return {k: v.detach().clone().requires_grad_() for k, v in params.items()}


def gradient(loss_of: LossOf, params: Mapping[str, Tensor], create_graph: bool = False) -> Params:
    """``grad loss_of(params)`` by name (zeros for weights the loss does not use).

    ``create_graph``: the gradient stays differentiable with respect to ``params`` (which must then require grad);
    otherwise it is taken at detached leaf copies and returned detached.
    """
    with torch.enable_grad():
        at = dict(params) if create_graph else leaves(params)
        found = torch.autograd.grad(loss_of(at), list(at.values()), create_graph=create_graph, allow_unused=True)
    return {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(at.items(), found)}


def hvp(loss_of: LossOf, params: Mapping[str, Tensor], vector: Mapping[str, Tensor]) -> Params:
    """The Hessian-vector product ``H v`` of ``loss_of`` at ``params``, by double backward (Pearlmutter 1994):
    ``H v = grad_w (grad_w L(w) . v)``; detached, by name."""
    with torch.enable_grad():
        at = leaves(params)
        grads = gradient(loss_of, at, create_graph=True)
        dot = sum((g * vector[k].detach()).sum() for k, g in grads.items())
        if not isinstance(dot, Tensor) or not dot.requires_grad:  # a loss linear in every weight: H = 0
            return {k: torch.zeros_like(v) for k, v in at.items()}
        found = torch.autograd.grad(dot, list(at.values()), allow_unused=True)
    return {k: torch.zeros_like(v) if h is None else h.detach() for (k, v), h in zip(at.items(), found)}


def full_hessian(loss_of: LossOf, params: Mapping[str, Tensor]) -> Tensor:
    """The Hessian ``[P, P]`` of ``loss_of`` at ``params`` over the flattened weights, by
    ``torch.autograd.functional.hessian``: an independent reference for :func:`hvp` on small models."""
    like = {k: v.detach() for k, v in params.items()}

    def of_vector(vector: Tensor) -> Tensor:
        return loss_of(unflat(vector, like))

    with torch.enable_grad():
        return torch.autograd.functional.hessian(of_vector, flat(like))


@dataclass(frozen=True)
class Eigen:
    """The dominant eigenvalue of a symmetric operator found by :func:`top_eigenvalue`."""

    value: float  # the eigenvalue of largest magnitude (with its sign): the Rayleigh quotient v.Hv at the end
    vector: Tensor  # its unit eigenvector [P]
    iterations: int  # matrix-vector products taken
    converged: bool  # the relative change of the estimate fell below the tolerance


def power_iteration(
    matvec: Callable[[Tensor], Tensor],
    size: int,
    iterations: int = 100,
    tol: float = 1e-6,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> Eigen:
    """The eigenvalue of largest magnitude of a symmetric ``[size, size]`` operator given by ``matvec``.

        v_0 random (a local generator at ``seed``),   w = A v_t,   lambda_t = v_t . w,   v_{t+1} = w / ||w||

    stops when ``|lambda_t - lambda_{t-1}| <= tol * |lambda_t|`` or after ``iterations`` products. It converges at
    the rate ``|lambda_2 / lambda_1|`` to the eigenvalue of largest magnitude, which may be negative.
    """
    if iterations < 1:
        raise ConfigError(f"iterations={iterations!r} is invalid; power iteration needs at least 1")
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(size, generator=g, dtype=dtype).to(device)
    v = v / v.norm()
    value, done, t = 0.0, False, 0
    for t in range(1, iterations + 1):
        w = matvec(v)
        new = float(v @ w)
        norm = float(w.norm())
        if norm == 0.0:  # v is in the null space: the operator may be 0
            return Eigen(0.0, v, t, True)
        done = t > 1 and abs(new - value) <= tol * abs(new)
        value, v = new, w / norm
        if done:
            break
    return Eigen(value, v, t, done)


def top_eigenvalue(loss_of: LossOf, params: Mapping[str, Tensor], iterations: int = 100, tol: float = 1e-6) -> Eigen:
    """The Hessian's eigenvalue of largest magnitude at ``params`` by :func:`power_iteration` on :func:`hvp`."""
    like = {k: v.detach() for k, v in params.items()}
    first = next(iter(like.values()))

    def matvec(v: Tensor) -> Tensor:
        return flat(hvp(loss_of, like, unflat(v, like)))

    size = sum(v.numel() for v in like.values())
    return power_iteration(matvec, size, iterations, tol, dtype=first.dtype, device=first.device)
