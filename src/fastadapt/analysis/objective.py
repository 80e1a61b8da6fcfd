"""Any algorithm's meta-loss on a batch of tasks as a function of its meta-learnt weights, for the curvature and
gradient tools of :mod:`fastadapt.analysis.hessian` (ProtoNets' episode loss, Matching Networks', MAML's, ...)."""

from __future__ import annotations

from torch import Tensor, nn
from torch.func import functional_call

from fastadapt.analysis.hessian import LossOf, Params
from fastadapt.core.episodes import TaskBatch


class _MetaLoss(nn.Module):
    """``forward(batch) = algorithm.meta_loss(batch).loss``, so that :func:`torch.func.functional_call` can swap the
    algorithm's weights for the call (it replaces the parameters of ``forward``'s module tree)."""

    def __init__(self, algorithm: nn.Module) -> None:
        super().__init__()
        self.algorithm = algorithm

    def forward(self, batch: TaskBatch) -> Tensor:
        return self.algorithm.meta_loss(batch).loss


def meta_parameters(algorithm: nn.Module) -> Params:
    """The weights the algorithm meta-learns (every parameter that requires grad), by name, detached."""
    return {n: p.detach() for n, p in algorithm.named_parameters() if p.requires_grad}


def meta_loss_of(algorithm: nn.Module, batch: TaskBatch) -> LossOf:
    """``params -> algorithm.meta_loss(batch).loss`` with the algorithm's weights replaced by ``params`` (names as
    :func:`meta_parameters`'); the algorithm itself is not changed. Differentiable twice where the algorithm's loss
    is (Hessian-vector products, :func:`~fastadapt.analysis.hessian.top_eigenvalue`)."""
    wrapper = _MetaLoss(algorithm)

    def loss_of(params: Params) -> Tensor:
        return functional_call(wrapper, {f"algorithm.{n}": v for n, v in params.items()}, (batch,), strict=False)

    return loss_of
