"""The inner update rules as functions: an SGD and an Adam step on a dict of fast weights, the mini-batch
order of mini-batch inner loops, and plain-autograd gradients for one task outside ``vmap``. Used by
:mod:`fastadapt.algorithms.inner` (and re-exported there)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

Params = dict[str, Tensor]
Rate = float | Tensor  # a learning rate: a number, a scalar tensor, or a tensor shaped like its parameter


def sgd_update(params: Mapping[str, Tensor], grads: Mapping[str, Tensor], rates: Mapping[str, Rate]) -> Params:
    """``phi - alpha * g`` per parameter; ``alpha`` a number or a tensor broadcastable to ``phi``."""
    return {k: v - rates[k] * grads[k] for k, v in params.items()}


def adam_update(
    params: Mapping[str, Tensor],
    grads: Mapping[str, Tensor],
    rates: Mapping[str, Rate],
    state: tuple[Params, Params],
    step: int,
    betas: tuple[float, float],
    eps: float,
) -> tuple[Params, tuple[Params, Params]]:
    """One Adam step (Kingma & Ba 2015) with bias correction; ``step`` counts from 1.

    m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2,
    phi - alpha * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    """
    b1, b2 = betas
    m, v = state
    m = {k: b1 * m[k] + (1 - b1) * g for k, g in grads.items()}
    v = {k: b2 * v[k] + (1 - b2) * g * g for k, g in grads.items()}
    c1, c2 = 1 - b1**step, 1 - b2**step
    new = {k: p - rates[k] * (m[k] / c1) / ((v[k] / c2).sqrt() + eps) for k, p in params.items()}
    return new, (m, v)


def minibatch_indices(n: int, batch_size: int, steps: int, generator: torch.Generator | None = None) -> Tensor:
    """Support indices of every inner step, ``[steps, batch_size]``, for mini-batch inner loops.

    The ``n`` support examples are shuffled and read in order, ``batch_size`` at a time, and
    reshuffled whenever they run out (a mini-batch may span two shuffles), as the Reptile authors'
    code does; ``batch_size`` may exceed ``n``. Draws from ``generator`` (default: torch's global RNG).
    """
    rounds = -(-steps * batch_size // n)
    order = torch.cat([torch.randperm(n, generator=generator) for _ in range(rounds)])
    return order[: steps * batch_size].view(steps, batch_size)


def plain_grad(loss_of: Callable[..., Any], has_aux: bool = False) -> Callable[..., Any]:
    """``torch.func.grad(loss_of, has_aux=has_aux)`` computed with ``torch.autograd.grad`` on leaf copies of the
    parameters: the same gradients (unused parameters get zeros, as there), for one task outside ``vmap``,
    without ``torch.func``'s transform layers (about 12 % of MAML's 5-step Conv4 adaptation on CPU,
    benchmarks/latency.py)."""

    def grad_fn(params: Params, *args: Any) -> Any:
        with torch.enable_grad():
            leaves = {n: v.detach().requires_grad_() for n, v in params.items()}
            out = loss_of(leaves, *args)
            loss, aux = out if has_aux else (out, None)
            found = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        grads = {n: torch.zeros_like(v) if g is None else g for (n, v), g in zip(leaves.items(), found)}
        return (grads, aux) if has_aux else grads

    return grad_fn
