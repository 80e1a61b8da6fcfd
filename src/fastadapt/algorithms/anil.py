"""ANIL, "almost no inner loop" (Raghu, Raghu, Bengio & Vinyals 2020, "Rapid Learning or Feature
Reuse? Towards Understanding the Effectiveness of MAML").

MAML with only the head adapted: the model is split at its head submodule (:func:`head_input`); the update and the
meta-loss are on :class:`ANIL`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.func import functional_call

from fastadapt.algorithms import inner, shared_first
from fastadapt.algorithms.base import MetaOutput, batch_metrics, task_loss
from fastadapt.algorithms.predictors import FastWeightsPredictor
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError


def head_input(model: nn.Module, head: str, state: tuple[inner.Params, ...], x: Tensor) -> Tensor:
    """The input of submodule ``head`` when ``model`` runs on ``x`` with ``state`` (``functional_call``).

    Raises :class:`ConfigError` unless the head's output is the model's output (ANIL adapts the head
    on these features, so nothing may follow it).

    The head's input is read with a forward pre-hook that is registered on the head submodule for the
    duration of one body pass and removed after it (not thread-safe across concurrent calls on one
    model); the head's output must be the model's output.
    """
    module = model.get_submodule(head)
    seen: dict[str, object] = {}

    def before(_: nn.Module, args: tuple[Tensor, ...]) -> None:
        seen["input"] = args[0]

    def after(_: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        seen["output"] = out

    hooks = [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        out = functional_call(model, state, (x,))
    finally:
        for h in hooks:
            h.remove()
    if "input" not in seen or seen["output"] is not out:
        raise ConfigError(
            f"ANIL needs the head {head!r} to produce the model's output "
            "(nothing after it); this model's forward differs"
        )
    return seen["input"]  # type: ignore[return-value]


class ANIL(nn.Module):
    """ANIL over any ``nn.Module`` whose last submodule call is its head.

    MAML with only the head adapted. The model is split at its head submodule: ``f_body`` is everything
    that computes the head's input, ``h`` the head (its parameters ``w``, the rest ``theta_b``). For task i
    the body runs once on the support and the query set,

        z_S = f_body(x_S; theta_b),   z_Q = f_body(x_Q; theta_b),
        w_i^0 = w,   w_i^{k+1} = w_i^k - alpha * grad_w L(h(z_S; w_i^k), y_S),

    and the meta-loss is 1/T sum_i L(h(z_Q; w_i^K), y_Q), differentiated w.r.t. w and theta_b (second
    order by default: theta_b also gets the path through the inner gradient). Shapes: see
    :class:`~fastadapt.TaskBatch`. BatchNorm in the body is transductive (per-task statistics), as in
    MAML; see :mod:`fastadapt.algorithms.inner`.

    Args:
        model: the network.
        inner_lr: alpha, the inner SGD rate of the head.
        inner_steps: inner steps in training.
        inner_steps_eval: inner steps in ``adapt`` / ``predict`` (default: ``inner_steps``).
        first_order: drop second derivatives through the inner gradient.
        head: name of the head submodule (its parameters are the ones with this prefix); Conv4's is
            ``"head"``, ``MLP``'s last layer is ``"net.<2 * len(hidden)>"``.
        execution, chunk_size: how tasks are mapped (see :mod:`fastadapt.algorithms.inner`); ``"shared_first"``
            runs the body once over all tasks' examples (BatchNorm per task), then the head per task.
    """

    needs_head: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        inner_steps_eval: int | None = None,
        first_order: bool = False,
        head: str = "head",
        execution: str = inner.DEFAULT_EXECUTION,
        chunk_size: int = inner.DEFAULT_CHUNK_SIZE,
    ) -> None:
        super().__init__()
        self.model = model
        self.inner_lr = inner.check_positive("inner_lr", inner_lr)
        self.inner_steps, self.inner_steps_eval = inner.step_counts(inner_steps, inner_steps_eval)
        self.first_order = bool(first_order)
        self.execution, self.chunk_size = inner.execution_options(execution, chunk_size)
        names = dict(model.named_modules())
        if not head or head not in names:
            raise ConfigError(
                f"head={head!r} is not a submodule of the model; choose one of {', '.join(n for n in names if n)}"
            )
        self.head = head
        if not inner.trainable_params(names[head]):
            raise ConfigError(f"head={head!r} has no trainable parameters; ANIL adapts the head's parameters")

    def _head_params(self, keep_graph: bool) -> inner.Params:
        """The head's trainable parameters, by name relative to the head."""
        p = inner.trainable_params(self.model.get_submodule(self.head))
        return p if keep_graph else inner.detached(p)

    def _run(self, batch: TaskBatch, steps: int, first_order: bool, keep_graph: bool) -> tuple[Tensor, Tensor]:
        model, head = self.model, self.model.get_submodule(self.head)
        body = inner.trainable_params(model)
        body = body if keep_graph else inner.detached(body)
        w = self._head_params(keep_graph)
        rates = inner.constant_rates(list(w), self.inner_lr, steps)
        head_state = inner.frozen_state(head)

        def head_forward(p: inner.Params, z: Tensor) -> Tensor:
            return functional_call(head, (p, head_state), (z,))

        def task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, ...]:
            state = (body, inner.frozen_state(model))
            zs, zq = head_input(model, self.head, state, sx), head_input(model, self.head, state, qx)
            return inner.adapt_and_evaluate(head_forward, w, zs, sy, zq, qy, rates, first_order, [steps], task_loss)

        def head_task(zs: Tensor, sy: Tensor, zq: Tensor, qy: Tensor) -> tuple[Tensor, ...]:
            return inner.adapt_and_evaluate(head_forward, w, zs, sy, zq, qy, rates, first_order, [steps], task_loss)

        with torch.enable_grad():
            if self.execution == "shared_first":  # the body at theta_b for every task at once, BatchNorm per task
                zs, zq = (self._shared_body(body, x) for x in (batch.support_x, batch.query_x))
                losses, outputs = inner.map_tasks(head_task, (zs, batch.support_y, zq, batch.query_y), "loop")
            else:
                losses, outputs = inner.map_tasks(
                    task,
                    (batch.support_x, batch.support_y, batch.query_x, batch.query_y),
                    self.execution,
                    self.chunk_size,
                )
        return losses[:, 0], outputs

    def _shared_body(self, body: inner.Params, x: Tensor) -> Tensor:
        """The head's input for every task of ``x [T, B, *x]`` in one body pass, ``[T, B, *z]``
        (:mod:`~fastadapt.algorithms.shared_first`)."""
        tasks, per = x.shape[:2]
        with shared_first.TaskGroups(tasks, ()):
            z = head_input(
                self.model, self.head, (body, inner.frozen_state(self.model)), x.reshape(tasks * per, *x.shape[2:])
            )
        return z.reshape(tasks, per, *z.shape[1:])

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        """Mean query loss over tasks after ``inner_steps`` steps on the head."""
        losses, outputs = self._run(batch, self.inner_steps, self.first_order, keep_graph=True)
        loss = losses.mean()
        return MetaOutput(loss, batch_metrics(outputs, batch.query_y, loss))

    def adapt(
        self, support_x: Tensor, support_y: Tensor, steps: int | None = None, lr_scale: float = 1.0
    ) -> FastWeightsPredictor:
        """The model with an adapted head for one task (``params``: all trainable parameters; the body's are theta)
        after
        ``steps`` (default ``inner_steps_eval``) head steps at ``inner_lr * lr_scale``; detached.

        ``update(x, y)`` keeps adapting the head alone on a sliding window (:class:`FastWeightsPredictor`).
        """
        steps = self.inner_steps_eval if steps is None else inner.check_steps("steps", steps)
        return FastWeightsPredictor.adapted(self.model, self._adapt_from, support_x, support_y, steps, lr_scale)

    def _adapt_from(self, start: inner.Params, x: Tensor, y: Tensor, steps: int, lr_scale: float = 1.0) -> inner.Params:
        """``steps`` head steps from ``start``'s head on ``(x, y)``; the body stays at ``start``'s (theta); detached."""
        model, head = self.model, self.model.get_submodule(self.head)
        with torch.no_grad():
            z = head_input(model, self.head, (start, inner.frozen_state(model)), x)
        head_state = inner.frozen_state(head)
        prefix = f"{self.head}."
        w = {k[len(prefix) :]: v.detach() for k, v in start.items() if k.startswith(prefix)}
        fast = inner.fine_tune(
            lambda p, xs: functional_call(head, (p, head_state), (xs,)),
            w,
            z,
            y,
            inner.scaled_rates(inner.constant_rates(list(w), self.inner_lr, steps), lr_scale),
        )
        return {**inner.detached(start), **{prefix + k: v for k, v in fast.items()}}

    def predict(self, batch: TaskBatch) -> Tensor:
        """Query outputs of every task after ``inner_steps_eval`` steps on the head, ``[T, N*Q, N]``; no graph."""
        return self._run(batch, self.inner_steps_eval, True, keep_graph=False)[1].detach()
