"""A linear probe on frozen features (Tian, Wang, Krishnan, Tenenbaum & Isola 2020, "Rethinking Few-Shot
Image Classification: a Good Embedding Is All You Need?", ECCV; "RFS").

Baseline's pretraining, then a multinomial logistic regression on the L2-normalised frozen features of each task's
support set: the problem and how it is solved are on :class:`LinearProbe`, the solver is
:func:`fit_logistic_regression`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.algorithms import inner
from fastadapt.algorithms.base import MetaOutput
from fastadapt.algorithms.baseline import model_embedding_dim, predict_tasks, pretrain_loss
from fastadapt.algorithms.heads import Head, HeadPredictor, embed
from fastadapt.core.episodes import TaskBatch


def logistic_objective(features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor, C: float) -> Tensor:
    """``mean_i CE(W u_i + b, y_i) + ||W||^2 / (2 C S)``: scikit-learn's L2 logistic regression divided by ``C * S``."""
    n = features.shape[0]
    return F.cross_entropy(features @ weight.T + bias, labels) + weight.pow(2).sum() / (2 * C * n)


def fit_logistic_regression(
    features: Tensor, labels: Tensor, ways: int, C: float = 1.0, max_iter: int = 1000, tol: float = 1e-9
) -> Head:
    """Multinomial L2 logistic regression on ``features [S, D]``, ``labels [S]`` -> a linear :class:`Head` ``[ways,
    D]``.

    Minimises :func:`logistic_objective` by L-BFGS (see :class:`LinearProbe`) in float64; the head has the
    features' dtype. Works under ``torch.no_grad()`` and ``torch.inference_mode()``.
    """
    dim = features.shape[1]
    with torch.inference_mode(False), torch.enable_grad():
        u, y = features.detach().clone().double(), labels.clone()
        weight = torch.zeros(ways, dim, dtype=torch.float64, device=u.device, requires_grad=True)
        bias = torch.zeros(ways, dtype=torch.float64, device=u.device, requires_grad=True)
        opt = torch.optim.LBFGS(
            [weight, bias],
            lr=1,
            max_iter=max_iter,
            max_eval=2 * max_iter,
            tolerance_grad=tol,
            tolerance_change=0.0,
            history_size=10,
            line_search_fn="strong_wolfe",
        )

        def closure() -> Tensor:
            opt.zero_grad()
            loss = logistic_objective(u, y, weight, bias, C)
            loss.backward()
            return loss

        opt.step(closure)
    return Head(weight.detach().to(features.dtype), bias.detach().to(features.dtype), "linear")


class LinearProbe(nn.Module):
    """RFS's linear probe: Baseline's pretraining, a logistic regression per task.

    Pretraining (``meta_loss``) is Baseline's (:mod:`fastadapt.algorithms.baseline`): every image of the
    meta-batch classified among all training classes by a linear head, cross-entropy.

    Evaluation (``adapt``): the frozen encoder's features are L2-normalised, ``u = f(x) / ||f(x)||``, and
    a multinomial logistic regression is fitted on the support set; its logits ``W u + b`` score the
    queries. RFS fits scikit-learn's ``LogisticRegression(solver="lbfgs", multinomial)`` with its default
    L2 penalty, ``C = 1`` (github.com/WangYueFt/rfs, ``eval/meta_eval.py``). The same problem,

        min_{W, b}  C * sum_i CE(W u_i + b, y_i) + ||W||_F^2 / 2        (the bias is not penalised)

    is solved here in torch, divided by ``C * S`` (the same minimiser, an objective of order one):
    ``mean_i CE + ||W||^2 / (2 C S)``, by full-batch L-BFGS (strong-Wolfe line search, 10 pairs of
    history as scipy's) from ``W = 0, b = 0`` until the largest gradient entry is below ``tol``, in
    float64 whatever the features' dtype. Softmax ignores a constant added to every class's bias; from
    ``b = 0`` the gradient steps keep ``sum(b) = 0``, which picks the one minimiser.

    Args:
        model: the encoder ``f``, ``[B, *x] -> [B, D]`` (an embedding: no head).
        num_classes: C, the training classes (the engine passes the training source's count).
        embedding_dim: D; None: ``model.embedding_dim``.
        C: inverse L2 strength of the logistic regression (scikit-learn's C; 1.0, its default, as RFS).
        max_iter: L-BFGS iterations at most (RFS: 1000); tol: the largest gradient entry at convergence.
    """

    needs_head: ClassVar[bool] = False
    variable_ways: ClassVar[bool] = True  # reads N from the support labels: variable-way episodes
    encodes_meta_batch: ClassVar[bool] = True  # meta_loss encodes every image of the meta-batch at once

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        embedding_dim: int | None = None,
        C: float = 1.0,
        max_iter: int = 1000,
        tol: float = 1e-9,
    ) -> None:
        super().__init__()
        self.num_classes = inner.check_steps("num_classes", num_classes, 2)
        self.model = model
        self.embedding_dim = model_embedding_dim(model, embedding_dim, "LinearProbe")
        self.classifier = nn.Linear(self.embedding_dim, num_classes)
        nn.init.zeros_(self.classifier.bias)
        self.C = inner.check_positive("C", C)
        self.max_iter = inner.check_steps("max_iter", max_iter, 1)
        self.tol = inner.check_positive("tol", tol)

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        """Classification of every image of the meta-batch over the ``num_classes`` training classes (as Baseline)."""
        return pretrain_loss(self.model, self.classifier, "linear", 1.0, batch)

    def adapt(self, support_x: Tensor, support_y: Tensor) -> HeadPredictor:
        """One task: logistic regression on the L2-normalised frozen support features; the module is not changed.
        ``update(x, y)`` on the result refits it on a sliding window of the last examples
        (:class:`~fastadapt.algorithms.baseline.HeadPredictor`)."""
        return HeadPredictor.start(self.model, self._fit, support_x, support_y, normalize=True)

    def _fit(self, x: Tensor, y: Tensor, ways: int) -> Head:
        """The per-task logistic regression on ``x, y`` with ``ways`` classes; what the predictor's ``update`` re-runs
        on its window."""
        return fit_logistic_regression(
            F.normalize(embed(self.model, x), dim=-1), y, ways, self.C, self.max_iter, self.tol
        )

    def predict(self, batch: TaskBatch) -> Tensor:
        """``[T, N*Q, N]`` logits: ``adapt`` per task (support and query sets encoded per task)."""
        return predict_tasks(self.adapt, batch)


__all__ = ["LinearProbe", "fit_logistic_regression", "logistic_objective"]
