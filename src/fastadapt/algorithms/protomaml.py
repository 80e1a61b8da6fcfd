"""Proto-MAML (Triantafillou et al. 2020, "Meta-Dataset: A Dataset of Datasets for Learning to Learn from Few
Examples", sec. 3.3): MAML over an embedding and a linear head initialised per task from the support prototypes.

The equations are on :class:`ProtoMAML`; :func:`prototype_head` is the head's initialisation.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from fastadapt.algorithms import inner
from fastadapt.algorithms.base import MetaOutput, batch_metrics, task_loss
from fastadapt.algorithms.heads import Head, head_logits
from fastadapt.algorithms.predictors import FastWeightsPredictor
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError

__all__ = ["HEAD", "ProtoMAML", "prototype_head"]

HEAD = ("head_weight", "head_bias")  # the head's names among the fast weights (the encoder's are "model.<name>")
PREFIX = "model."  # the encoder's parameters among the fast weights, named as in the algorithm's state dict


def prototype_head(z: Tensor, y: Tensor, ways: int) -> tuple[Tensor, Tensor]:
    """Proto-MAML's head for one task: ``z [S, D]`` support embeddings, ``y [S]`` labels in ``0..ways-1`` ->
    ``weight [ways, D] = 2 c_k``, ``bias [ways] = -||c_k||^2`` with ``c_k`` the mean of class k's embeddings.

    A class with no example gets ``weight 0`` and ``bias -inf`` (never predicted, as ProtoNet's predictor does).
    Differentiable in ``z``; works under ``vmap`` (``ways`` is a Python int).
    """
    onehot = (y.unsqueeze(-1) == torch.arange(ways, device=y.device)).to(z.dtype)  # [S, N]
    counts = onehot.sum(0)  # [N]
    protos = (onehot.T @ z) / counts.clamp_min(1).unsqueeze(-1)  # [N, D]
    bias = torch.where(counts > 0, -protos.pow(2).sum(-1), torch.full_like(counts, float("-inf")))
    return 2 * protos, bias


class _Headed(nn.Module):
    """The encoder followed by a linear head, for ``functional_call`` only: the head's weights always come from the
    fast weights (:data:`HEAD`); its own are empty placeholders. Never registered on the algorithm."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.head_weight = nn.Parameter(torch.empty(0))
        self.head_bias = nn.Parameter(torch.empty(0))

    def forward(self, x: Tensor) -> Tensor:
        return head_logits(self.model(x).flatten(1), Head(self.head_weight, self.head_bias))


class ProtoMAML(nn.Module):
    """Proto-MAML over any embedding network ``model`` (``[B, *x] -> [B, D]``; no head of its own).

    For each task, the support prototypes under the encoder's weights theta, ``c_k = 1/|S_k| sum_{i in S_k}
    f_theta(x_i)``, initialise a linear head (Triantafillou et al. 2020, sec. 3.3)

        W_k = 2 c_k,    b_k = -||c_k||^2,    so    z.W_k + b_k = -||z - c_k||^2 + ||z||^2

    (at step 0 the logits are ProtoNets' negative squared distances plus a per-query constant: the same softmax).
    Then MAML's inner loop adapts the encoder AND the head on the support cross-entropy, from
    ``phi_0 = (theta, W(theta), b(theta))``,

        phi_{k+1} = phi_k - alpha * grad L_S(phi_k),    k = 0 .. K-1,

    and the meta-loss is the mean query cross-entropy ``1/T sum_i L_{Q_i}(phi_i^K)``. Its gradient flows through
    the inner loop (second order; first order drops the inner Hessians: ``d phi_K / d phi_0 = I``) and, in both,
    through the prototype initialisation of the head, which depends on theta (fo-Proto-MAML of the paper). The inner
    loop is :func:`~fastadapt.algorithms.inner.inner_loop`, mapped over tasks by
    :func:`~fastadapt.algorithms.inner.map_tasks` (``execution="shared_first"`` runs the plain loop here).

    BatchNorm is transductive as in MAML: each task's support and query passes use their own batch statistics.
    Shapes: see :class:`~fastadapt.TaskBatch`; ``predict`` returns ``[T, N*Q, N]``.

    Args:
        model: the encoder f; all its parameters that require grad are adapted, with the head.
        inner_lr: alpha, the inner SGD rate (encoder and head alike).
        inner_steps: K, inner steps in training (0: the prototype head as it is, ProtoNets' predictions).
        inner_steps_eval: inner steps in ``adapt`` / ``predict`` (default: ``inner_steps``).
        first_order: drop the second derivatives of the inner loop (not the prototype path).
        execution: ``"auto"``, ``"vmap"``, ``"chunks"``, ``"loop"`` or ``"shared_first"`` over tasks (same numbers).
        chunk_size: tasks per ``vmap`` call with ``execution="chunks"``.
        checkpoint_inner: recompute the inner steps in the backward pass instead of keeping their graphs (one step's
            graph alive, the same meta-gradient; about one more forward and support backward per step; tasks then
            run one at a time): :mod:`fastadapt.algorithms.checkpointed`.
    """

    needs_head: ClassVar[bool] = False
    variable_ways: ClassVar[bool] = True  # reads N from the support labels: variable-way episodes
    encodes_meta_batch: ClassVar[bool] = False  # every task is encoded on its own (per-task BatchNorm statistics)

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.1,
        inner_steps: int = 1,
        inner_steps_eval: int | None = None,
        first_order: bool = False,
        execution: str = inner.DEFAULT_EXECUTION,
        chunk_size: int = inner.DEFAULT_CHUNK_SIZE,
        checkpoint_inner: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.checkpoint_inner = bool(checkpoint_inner)
        self.inner_lr = inner.check_positive("inner_lr", inner_lr)
        self.inner_steps, self.inner_steps_eval = inner.step_counts(inner_steps, inner_steps_eval)
        self.first_order = bool(first_order)
        self.execution, self.chunk_size = inner.execution_options(execution, chunk_size)
        if not inner.trainable_params(model):
            raise ConfigError("ProtoMAML needs a model with trainable parameters; this one has none")

    # --- the pieces ------------------------------------------------------------------------

    def _headed(self) -> _Headed:
        return _Headed(self.model)

    def encoder_params(self) -> inner.Params:
        """The encoder's trainable parameters, named as among the fast weights (``model.<name>``)."""
        return inner.trainable_params(self.model, prefix=PREFIX)

    def rates(self, steps: int) -> list[dict[str, inner.Rate]]:
        """``inner_lr`` for every encoder parameter and the head at each of ``steps`` steps."""
        return inner.constant_rates([*self.encoder_params(), *HEAD], self.inner_lr, steps)

    def _embed(self, params: inner.Params, x: Tensor) -> Tensor:
        """``f(x)`` under the encoder's fast weights in ``params``, ``[B, D]``."""
        encoder = {k[len(PREFIX) :]: v for k, v in params.items() if k.startswith(PREFIX)}
        return inner.call(self.model, encoder, x).flatten(1)

    def _forward(self, params: inner.Params, x: Tensor) -> Tensor:
        """Logits ``[B, N]`` of the encoder and the head under the fast weights ``params``."""
        return head_logits(self._embed(params, x), Head(params[HEAD[0]], params[HEAD[1]]))

    def initialised(self, params: inner.Params, x: Tensor, y: Tensor, ways: int) -> inner.Params:
        """``phi_0``: the encoder weights of ``params`` and the head from the prototypes of ``(x, y)`` under them."""
        weight, bias = prototype_head(self._embed(params, x), y, ways)
        encoder = {k: v for k, v in params.items() if k.startswith(PREFIX)}
        return {**encoder, HEAD[0]: weight, HEAD[1]: bias}

    def _task(
        self,
        params: inner.Params,
        rates: inner.Rates,
        first_order: bool,
        ways: int,
        sx: Tensor,
        sy: Tensor,
        qx: Tensor,
        qy: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """One task: the prototype head, ``len(rates)`` inner steps on the support set, the query loss and logits."""
        phi = self.initialised(params, sx, sy, ways)
        support_loss = lambda p: task_loss(self._forward(p, sx), sy)  # noqa: E731
        phi = inner.inner_loop(support_loss, phi, rates, first_order, checkpoint=self.checkpoint_inner)[len(rates)]
        out = self._forward(phi, qx)
        return task_loss(out, qy), out

    def _map(self, batch: TaskBatch, params: inner.Params, steps: int, first_order: bool) -> tuple[Tensor, Tensor]:
        """Query losses ``[T]`` and logits ``[T, N*Q, N]`` of every task; autograd is on inside."""
        rates, ways = self.rates(steps), batch.ways

        def task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Tensor]:
            return self._task(params, rates, first_order, ways, sx, sy, qx, qy)

        tensors = (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        with torch.enable_grad():
            execution = "loop" if self.checkpoint_inner else self.execution  # a checkpoint cannot run under vmap
            losses, outputs = inner.map_tasks(task, tensors, execution, self.chunk_size)
        return losses, outputs

    # --- the contract ----------------------------------------------------------------------

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        """Mean query cross-entropy over tasks after ``inner_steps`` steps from the prototype-initialised head."""
        losses, outputs = self._map(batch, self.encoder_params(), self.inner_steps, self.first_order)
        loss = losses.mean()
        return MetaOutput(loss, batch_metrics(outputs, batch.query_y, loss))

    def predict(self, batch: TaskBatch) -> Tensor:
        """Query logits of every task after ``inner_steps_eval`` steps, ``[T, N*Q, N]``; no graph."""
        params = inner.detached(self.encoder_params())
        return self._map(batch, params, self.inner_steps_eval, True)[1].detach()

    def adapt(
        self, support_x: Tensor, support_y: Tensor, steps: int | None = None, lr_scale: float = 1.0
    ) -> FastWeightsPredictor:
        """The encoder and the prototype head adapted on one task (``support_x [S, *x]``, labels ``0..N-1``,
        ``N = max + 1``) for ``steps`` (default ``inner_steps_eval``) steps at ``lr_scale`` times ``inner_lr``;
        detached. The module is only read.

        A :class:`~fastadapt.algorithms.predictors.FastWeightsPredictor` (``update``, ``reset``, ``configure``,
        ``explain``): its meta-learnt start (``init``, what ``reset`` returns to and ``explain`` measures from)
        is the encoder with the head at its prototype initialisation from this support set. ``update(x, y)``
        re-initialises the head from the prototypes of the window under the starting encoder (the meta-learnt
        one, or the current one with ``policy="continue"``) and takes the steps; a head row whose class has no
        example in the window keeps its start value. So after ``reset()``, ``update(x, y)`` with every class
        equals ``adapt(x, y)``.
        """
        steps = self.inner_steps_eval if steps is None else inner.check_steps("steps", steps)
        scale = inner.check_positive("lr_scale", lr_scale)

        def adapt_from(start: inner.Params, x: Tensor, y: Tensor, k: int) -> inner.Params:
            return self._adapt_from(start, x, y, k, scale)

        with torch.no_grad():
            init = self.initialised(self.encoder_params(), support_x, support_y, int(support_y.max()) + 1)
        fast = self._fine_tune(inner.detached(init), support_x, support_y, steps, scale)
        return FastWeightsPredictor.start(self._headed(), fast, init, adapt_from, support_x, support_y, steps)

    def _adapt_from(self, start: inner.Params, x: Tensor, y: Tensor, steps: int, lr_scale: float) -> inner.Params:
        """From ``start``: the head re-initialised from the prototypes of ``(x, y)`` (rows of classes absent from
        ``x`` keep ``start``'s), then ``steps`` steps; detached."""
        width = start[HEAD[0]].shape[0] if HEAD[0] in start else 0
        with torch.no_grad():
            phi = self.initialised(start, x, y, max(width, int(y.max()) + 1))
            if width:
                absent = torch.bincount(y, minlength=phi[HEAD[1]].shape[0])[:width] == 0
                for name in HEAD:
                    phi[name][:width][absent] = start[name][absent]
        return self._fine_tune(phi, x, y, steps, lr_scale)

    def _fine_tune(self, phi: inner.Params, x: Tensor, y: Tensor, steps: int, lr_scale: float) -> inner.Params:
        rates = inner.scaled_rates(self.rates(steps), lr_scale)
        return inner.fine_tune(self._forward, phi, x, y, rates)
