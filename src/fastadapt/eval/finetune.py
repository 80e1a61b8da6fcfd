"""Test-time fine-tuning of embedding-based algorithms on each task's support set (``eval.finetune``;
:class:`FineTuned` says how)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from fastadapt.algorithms.protonet import prototypes
from fastadapt.core.contract import needs_head
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError

MODES = ("head", "encoder")


def prototype_head(features: Tensor, labels: Tensor, ways: int) -> tuple[Tensor, Tensor]:
    """``W = 2 c``, ``b = -||c||^2`` from the class means ``c`` of ``features [M, D]``."""
    c = prototypes(features.unsqueeze(0), labels.unsqueeze(0), ways)[0]
    return 2 * c, -(c * c).sum(1)


def finetune_logits(
    model: nn.Module, support_x: Tensor, support_y: Tensor, query_x: Tensor, mode: str, steps: int, lr: float
) -> Tensor:
    """Query logits ``[Q, N]`` after ``steps`` of fine-tuning ``mode`` on one task (see :class:`FineTuned`)."""
    if mode not in MODES:
        raise ConfigError(f"fine-tuning mode {mode!r} is not supported; choose one of {', '.join(MODES)}")
    ways = int(support_y.max()) + 1
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}

    def embed(x: Tensor) -> Tensor:
        return functional_call(model, (params, buffers), (x,))

    with torch.enable_grad():
        with torch.no_grad():
            zs = embed(support_x)
        w, b = prototype_head(zs, support_y, ways)
        w, b = w.requires_grad_(), b.requires_grad_()
        trainable = [w, b]
        if mode == "encoder":
            for p in params.values():
                p.requires_grad_()
            trainable += list(params.values())
        opt = torch.optim.SGD(trainable, lr=lr, momentum=0.9)
        for _ in range(steps):
            z = embed(support_x) if mode == "encoder" else zs
            loss = F.cross_entropy(z @ w.T + b, support_y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return embed(query_x) @ w.T + b


class FineTuned(nn.Module):
    """``algo`` evaluated with test-time fine-tuning of its embedding ``algo.model``.

    Cross-domain studies (Chen et al. 2019; Triantafillou et al. 2020, Meta-Dataset) found that
    metric-based learners gain from a few gradient steps on the support set of a task from another
    domain. For an algorithm whose model is an embedding (``needs_head = False``: ProtoNets, Matching
    Networks, Baseline, the linear probe), this predicts with

        logits(x) = W f(x) + b,   W = 2 c,  b = -||c||^2   (c: the class means of the support features)

    which, before any step, ranks classes exactly as ProtoNets' negative squared distances do
    (``-||f(x) - c||^2 = 2 c.f(x) - ||c||^2 - ||f(x)||^2``; the last term is the same for every class).
    ``mode = "head"`` trains ``W, b`` on the support set's cross-entropy with the features frozen;
    ``mode = "encoder"`` trains the encoder's weights too. ``steps`` of SGD (momentum 0.9) on the whole
    support set, from the run's weights for every task: the algorithm is never changed. The support set
    and the query set go through the encoder as separate batches (BatchNorm with batch statistics sees
    one set at a time, as MAML's evaluation here does): fine-tuning steps cost a pass over the support
    images only, and no query image shapes the fitted head.
    """

    needs_head = False

    def __init__(self, algo: nn.Module, mode: str, steps: int, lr: float) -> None:
        super().__init__()
        if needs_head(type(algo)) or not isinstance(getattr(algo, "model", None), nn.Module):
            raise ConfigError(
                "eval.finetune applies to algorithms whose model is an embedding (ProtoNets, Matching Networks, "
                f"Baseline, linear probe); {type(algo).__name__} adapts by its own inner loop: set its inner "
                "steps instead"
            )
        if mode not in MODES:
            raise ConfigError(f"eval.finetune={mode!r} is not supported; choose none or one of {', '.join(MODES)}")
        self.algo, self.mode, self.steps, self.lr = algo, mode, int(steps), float(lr)

    def meta_loss(self, batch: TaskBatch):  # evaluation only
        raise ConfigError("FineTuned is an evaluation wrapper; train the algorithm itself")

    def adapt(self, support_x: Tensor, support_y: Tensor):
        return lambda query_x: finetune_logits(
            self.algo.model, support_x, support_y, query_x, self.mode, self.steps, self.lr
        )

    def predict(self, batch: TaskBatch) -> Tensor:
        return torch.stack(
            [
                finetune_logits(
                    self.algo.model,
                    batch.support_x[t],
                    batch.support_y[t],
                    batch.query_x[t],
                    self.mode,
                    self.steps,
                    self.lr,
                )
                for t in range(batch.num_tasks)
            ]
        )
