"""Free functions every algorithm shares; the contract itself is :class:`fastadapt.core.contract.Algorithm`.

An algorithm is an ``nn.Module`` that holds the user's model and its own meta-parameters (learnt inner rates, an
LSTM meta-learner, ...); ``algo.parameters()`` is what the outer optimizer trains. ``adapt`` never changes the module;
``predict`` may need autograd inside (gradient-based algorithms) but keeps no graph to the meta-parameters.
Algorithms share code by calling the free functions here and in their modules, not by inheritance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fastadapt.core.contract import MetaOutput, Predictor

__all__ = ["MetaOutput", "Predictor", "batch_metrics", "is_classification", "per_task_scores", "task_loss"]


def is_classification(y: Tensor) -> bool:
    return not y.is_floating_point()


def task_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy for integer targets, mean squared error for float targets (mean over examples)."""
    if is_classification(targets):
        return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))
    return F.mse_loss(outputs, targets)


def batch_metrics(outputs: Tensor, targets: Tensor, loss: Tensor) -> dict[str, float]:
    """``loss`` and ``acc`` (classification) or ``mse`` (regression) as floats, for logging."""
    with torch.no_grad():
        metrics = {"loss": float(loss.detach())}
        if is_classification(targets):
            metrics["acc"] = float((outputs.argmax(-1) == targets).float().mean())
        else:
            metrics["mse"] = float(F.mse_loss(outputs, targets))
    return metrics


def per_task_scores(outputs: Tensor, targets: Tensor) -> Tensor:
    """``[T]`` accuracy per task (classification) or MSE per task (regression)."""
    with torch.no_grad():
        if is_classification(targets):
            return (outputs.argmax(-1) == targets).double().mean(dim=1)
        return ((outputs - targets) ** 2).double().flatten(1).mean(dim=1)
