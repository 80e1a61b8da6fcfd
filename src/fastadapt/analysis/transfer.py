"""How close the tasks are, measured at an initialization: the spread of the adapted weights and the alignment of
the tasks' gradients (the quantities of the task-similarity line, e.g. Khodak, Balcan & Talwalkar 2019, ARUBA)."""

from __future__ import annotations

import torch
from torch import Tensor


def mean_pairwise_cosine(vectors: Tensor) -> float:
    """The mean cosine similarity over the ordered pairs ``i != j`` of the rows of ``vectors [N, P]`` (N >= 2).

    ``sum_{i != j} cos_ij = ||sum_i u_i||^2 - N`` with ``u_i`` the unit rows; a zero row counts as cosine 0.
    """
    n = vectors.shape[0]
    if n < 2:
        raise ValueError(f"a mean pairwise cosine needs at least 2 vectors, got {n}")
    norms = vectors.norm(dim=1, keepdim=True)
    units = torch.where(norms > 0, vectors / norms.clamp_min(torch.finfo(vectors.dtype).tiny), 0.0)
    total = units.sum(dim=0)
    return float(((total @ total) - (units * units).sum()) / (n * (n - 1)))


def task_gradient_alignment(task_grads: Tensor) -> float:
    """The mean cosine between the gradients of different tasks at the initialization (``task_grads [T, P]``):
    near 1 when one step helps every task, near 0 when the tasks pull apart."""
    return mean_pairwise_cosine(task_grads)


def within_task_alignment(batch_grads: Tensor) -> float:
    """The mean over tasks of the mean cosine between the gradients of one task's different mini-batches
    (``batch_grads [T, k, P]``): the agreement that AvgGradInner rewards (Nichol et al. 2018, sec. 5.1)."""
    return float(sum(mean_pairwise_cosine(g) for g in batch_grads) / batch_grads.shape[0])


def adapted_spread(adapted: Tensor, theta: Tensor) -> dict[str, float]:
    """How far the tasks' adapted weights ``adapted [T, P]`` lie from each other and from ``theta [P]``:

    ``spread``: the root mean squared distance to their mean, ``sqrt(1/T sum_t ||phi_t - mean phi||^2)``;
    ``distance``: the mean distance to the initialization, ``1/T sum_t ||phi_t - theta||``.
    """
    centre = adapted.mean(dim=0)
    return {
        "spread": float(((adapted - centre) ** 2).sum(dim=1).mean().sqrt()),
        "distance": float((adapted - theta).norm(dim=1).mean()),
    }
