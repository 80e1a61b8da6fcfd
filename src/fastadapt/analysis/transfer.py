"""How close the tasks are, measured at an initialization: the spread of the adapted weights and the alignment of
the tasks' gradients (the quantities of the task-similarity line, e.g. Khodak, Balcan & Talwalkar 2019, ARUBA);
similarity measures between two task sources that a user can compute before training, and the rank correlation
(with its bootstrap interval) that says whether one predicts transfer."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from fastadapt.analysis.hessian import flat, gradient
from fastadapt.analysis.objective import meta_loss_of, meta_parameters
from fastadapt.core.episodes import TaskBatch


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


def cosine(u: Tensor, v: Tensor) -> float:
    """The cosine between two vectors (0 when either is zero)."""
    norm = float(u.norm() * v.norm())
    return 0.0 if norm == 0 else float(u @ v) / norm


def ranks(values: Tensor) -> Tensor:
    """The ranks 1..n of ``values [n]``, ties sharing the mean of their ranks (float64)."""
    values = values.to(torch.float64)
    order = torch.argsort(values, stable=True)
    out = torch.empty_like(values)
    out[order] = torch.arange(1, len(values) + 1, dtype=torch.float64)
    for v in torch.unique(values):
        tied = values == v
        if int(tied.sum()) > 1:
            out[tied] = out[tied].mean()
    return out


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman's rank correlation of ``x [n]`` and ``y [n]``: Pearson's correlation of their ranks (nan when one is
    constant)."""
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = float(rx.norm() * ry.norm())
    return float("nan") if den == 0 else float(rx @ ry) / den


def bootstrap_ci(x: Tensor, y: Tensor, draws: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """The percentile bootstrap interval of :func:`spearman` over the pairs ``(x_i, y_i)``: ``draws`` resamples of the
    n pairs with replacement (a local generator at ``seed``); resamples whose rho is undefined are dropped. The pairs
    are treated as independent: when they share items (alphabet pairs share alphabets), the interval is too narrow."""
    g = torch.Generator().manual_seed(seed)
    n = len(x)
    found = []
    for _ in range(draws):
        pick = torch.randint(0, n, (n,), generator=g)
        rho = spearman(x[pick], y[pick])
        if rho == rho:
            found.append(rho)
    ordered = sorted(found)
    lo = ordered[int(math.floor((1 - level) / 2 * (len(ordered) - 1)))]
    hi = ordered[int(math.ceil((1 + level) / 2 * (len(ordered) - 1)))]
    return lo, hi


def mean_meta_gradient(algorithm: torch.nn.Module, batches: Sequence[TaskBatch]) -> Tensor:
    """``[P]``: the mean over ``batches`` of the gradient of ``algorithm.meta_loss`` with respect to its meta-learnt
    weights (:func:`~fastadapt.analysis.objective.meta_loss_of`), at its current weights; the algorithm is not
    changed."""
    theta = meta_parameters(algorithm)
    return sum(flat(gradient(meta_loss_of(algorithm, b), theta)) for b in batches) / len(batches)


def gradient_similarity(
    algorithm: torch.nn.Module, batches_a: Sequence[TaskBatch], batches_b: Sequence[TaskBatch]
) -> float:
    """The cosine between the mean meta-gradients of two task sources' batches (:func:`mean_meta_gradient`): near 1
    when a step for one is a step for the other. Computable before any training."""
    return cosine(mean_meta_gradient(algorithm, batches_a), mean_meta_gradient(algorithm, batches_b))


def embedding_similarity(model: torch.nn.Module, images_a: Tensor, images_b: Tensor) -> float:
    """Minus the distance between the mean embeddings of two sets of images under ``model`` (e.g. an untrained
    encoder: random features), ``-||mean f(a) - mean f(b)||``; both sets are embedded in one batch, so that BatchNorm's
    batch statistics do not normalise each set's mean away."""
    with torch.no_grad():
        z = model(torch.cat([images_a, images_b])).flatten(1)
    return -float((z[: len(images_a)].mean(0) - z[len(images_a) :].mean(0)).norm())


def pixel_similarity(images_a: Tensor, images_b: Tensor) -> float:
    """The cosine between the mean images of two sets (``[M, *x]``): where the ink falls on average."""
    return cosine(images_a.flatten(1).mean(0).double(), images_b.flatten(1).mean(0).double())


def bootstrap_ci_items(
    x: Tensor,
    y: Tensor,
    pairs: Sequence[tuple[str, str]],
    draws: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """The percentile bootstrap interval of :func:`spearman` over pairs of items (``pairs[i]`` = the two items of
    ``(x_i, y_i)``, e.g. a source and a target alphabet), resampling the items rather than the pairs: each draw takes
    the distinct items with replacement and keeps the pair of every two drawn items (in the order of ``pairs``), so
    pairs that share an item are resampled together (a wider, more honest interval than :func:`bootstrap_ci` when
    the pairs share items)."""
    items = sorted({i for p in pairs for i in p})
    where = {p: k for k, p in enumerate(pairs)}
    g = torch.Generator().manual_seed(seed)
    found = []
    for _ in range(draws):
        drawn = [items[i] for i in torch.randint(0, len(items), (len(items),), generator=g).tolist()]
        pick = [where[a, b] for i, a in enumerate(drawn) for j, b in enumerate(drawn) if i != j and (a, b) in where]
        if len(pick) < 3:
            continue
        rho = spearman(x[pick], y[pick])
        if rho == rho:
            found.append(rho)
    ordered = sorted(found)
    lo = ordered[int(math.floor((1 - level) / 2 * (len(ordered) - 1)))]
    hi = ordered[int(math.ceil((1 + level) / 2 * (len(ordered) - 1)))]
    return lo, hi
