"""``fastadapt analyze`` for an algorithm without an inner loop of gradient steps (ProtoNets, Matching Networks, ...):
what of the theory applies to its episode loss, and what does not and why.

Applies: the curvature of the meta-loss (the Hessian's top eigenvalue of the mean episode loss over the tasks, by
power iteration on Hessian-vector products) and the alignment of the tasks' meta-gradients (the mean cosine between
the gradients of different tasks' episode losses). Does not apply: Nichol et al.'s expansion (AvgGrad,
AvgGradInner, the meta-gradients of MAML, first-order MAML and Reptile), the first-order error of Fallah et al. and
the spread of adapted weights: all are about inner gradient steps on the model's own loss, and here adaptation is
not a gradient step (ProtoNets' adapted state is the class prototypes).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import nn

from fastadapt.analysis.hessian import flat, gradient, top_eigenvalue
from fastadapt.analysis.objective import meta_loss_of, meta_parameters
from fastadapt.analysis.transfer import task_gradient_alignment
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError

NOT_APPLICABLE = {
    "taylor": "Nichol et al.'s expansion (AvgGrad, AvgGradInner, the MAML / FOMAML / Reptile meta-gradients) is about "
    "inner gradient steps; {name} adapts without one",
    "first_order_error": "the first-order error of Fallah et al. is the Hessian term of an inner gradient step; "
    "{name} takes none",
    "adapted_spread": "{name}'s adapted state is not a set of weights (ProtoNets: class prototypes), so there is no "
    "spread of adapted weights",
    "within_task_cosine": "one task is one episode loss here (its support set makes the prototypes), not k "
    "mini-batches of one loss",
}


def pairwise_cosines(vectors: torch.Tensor) -> torch.Tensor:
    """``[N, N]``: the cosine between every two rows of ``vectors [N, P]`` (a zero row: cosine 0)."""
    norms = vectors.norm(dim=1, keepdim=True)
    units = torch.where(norms > 0, vectors / norms.clamp_min(torch.finfo(vectors.dtype).tiny), 0.0)
    return units @ units.T


def analyze_episodes(
    algorithm: nn.Module,
    batch: TaskBatch,
    dtype: torch.dtype = torch.float64,
    iterations: int = 100,
) -> dict[str, Any]:
    """The analysis of an algorithm whose adaptation is not a gradient step, on ``batch``'s tasks (a JSON-ready
    record; nothing is written; ``algorithm`` is copied, never changed): the Hessian's top eigenvalue of the mean
    episode loss ``algorithm.meta_loss(batch)`` over its meta-learnt weights, each task's meta-gradient and their
    alignment, and what does not apply (``not_applicable``, with the reason)."""
    if batch.num_tasks < 2:
        raise ConfigError(f"--tasks={batch.num_tasks} is invalid; the alignment of task gradients needs at least 2")
    started = time.perf_counter()
    algo = copy.deepcopy(algorithm).to(dtype).train()
    batch = batch.to(dtype=dtype)
    theta = meta_parameters(algo)
    if not theta:
        raise ConfigError(f"{type(algorithm).__name__} has no meta-learnt weights to analyse")
    top = top_eigenvalue(meta_loss_of(algo, batch), theta, iterations)
    grads = torch.stack(
        [flat(gradient(meta_loss_of(algo, batch.select(slice(t, t + 1))), theta)) for t in range(batch.num_tasks)]
    )
    with torch.no_grad():
        loss = float(algo.meta_loss(batch).loss)
    name = type(algorithm).__name__
    return {
        "kind": "episodes",
        "settings": {"tasks": batch.num_tasks, "parameters": int(grads.shape[1]), "power_iterations": iterations},
        "episode_loss": loss,
        "hessian": {"top_eigenvalue": top.value, "iterations": top.iterations, "converged": top.converged},
        "alignment": {
            "task_gradient_cosine": task_gradient_alignment(grads),
            "pairwise": pairwise_cosines(grads).tolist(),
            "mean_gradient_norm": float(grads.mean(0).norm()),
            "task_gradient_norms": grads.norm(dim=1).tolist(),
        },
        "not_applicable": {k: v.format(name=name) for k, v in NOT_APPLICABLE.items()},
        "seconds": time.perf_counter() - started,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
