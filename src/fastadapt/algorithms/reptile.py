"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms").

:class:`Reptile` holds the update, the inner Adam's state and the inner mini-batches; :func:`reptile_surrogate` is
the loss whose gradient step is Reptile's meta-update.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from fastadapt.algorithms import inner
from fastadapt.algorithms.base import MetaOutput, batch_metrics, task_loss
from fastadapt.algorithms.predictors import FastWeightsPredictor
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError

INNER_STATES = ("persistent", "fresh")


def reptile_surrogate(theta: inner.Params, target: inner.Params) -> Tensor:
    """``1/2 sum_k ||theta_k - stopgrad(target_k)||^2``, whose gradient w.r.t. theta is ``theta - target``."""
    return 0.5 * sum(((theta[k] - target[k].detach()) ** 2).sum() for k in theta)  # type: ignore[return-value]


class Reptile(nn.Module):
    """Reptile over any ``nn.Module`` ending in a ``ways``-way head (or a regression output).

    For each task i, K steps of SGD or Adam on its support set from theta give phi_i (the whole support
    set at every step, or, in training, mini-batches of ``inner_batch`` examples); the meta-update moves
    theta towards the mean adapted weights,

        theta <- theta + epsilon * (1/T sum_i phi_i - theta).

    That update is the gradient step of the surrogate loss

        L(theta) = 1/2 * sum_params ||theta - stopgrad(mean_i phi_i)||^2,    grad L = theta - mean_i phi_i,

    which ``meta_loss`` returns, so the engine's loop and any torch optimiser run Reptile (plain SGD
    with learning rate epsilon is the paper's update; the paper's Omniglot runs use Adam in the inner
    loop with beta1 = 0). BatchNorm is transductive (per-task statistics, per mini-batch in training),
    as in MAML; see :mod:`fastadapt.algorithms.inner`.

    The inner Adam's state. In the authors' implementation (openai/supervised-reptile) only the
    model's weights are reset to theta before each task; the inner Adam's moments and step count are
    *not* reset: they carry over from task to task and from meta-step to meta-step, and evaluation
    starts from them without keeping its changes. ``inner_state="persistent"`` (the default) does the
    same: in training the tasks of a batch adapt one after the other, each from the state the previous
    one left, and the state is a buffer of this module (checkpointed with it); ``adapt`` / ``predict``
    start every task from that state and change nothing. ``inner_state="fresh"`` starts every task from
    zero moments (tasks independent, any ``execution``). With fresh moments every inner step moves every
    weight by about ``inner_lr`` whatever its gradient (the first bias-corrected Adam step is
    ``inner_lr * sign(g)``), which made the initialization worse than a random one on Omniglot 5-way
    1-shot (measured: docs/RESULTS.md, the Reptile notes). Under torch.distributed each process carries
    its own state over its own tasks.

    Mini-batches. The paper's analysis (sec. 5) credits Reptile's generalisation to the inner steps
    seeing *different* mini-batches of a task: the meta-gradient then rewards an initialization whose
    gradients on different batches of the same task agree. With the whole support set at every step
    that term only rewards fitting the support set faster. So the authors train on more examples per
    class than they test with (``--train-shots``, here ``data.shots`` > ``data.test_shots``) and take
    inner steps on mini-batches (``--inner-batch``, here ``inner_batch``) drawn by
    :func:`~fastadapt.algorithms.inner.minibatch_indices`. Evaluation always uses the whole support set.

    Args:
        model: the network; all its parameters that require grad are adapted.
        inner_lr: rate of the inner optimiser.
        inner_steps: K, inner steps on the support set in training (>= 1).
        inner_steps_eval: inner steps in ``adapt`` / ``predict`` (default: ``inner_steps``).
        inner_optimizer: ``"adam"`` or ``"sgd"``.
        adam_beta1, adam_beta2: Adam's betas (the paper sets beta1 = 0).
        inner_state: ``"persistent"`` (Adam's state carried across tasks, as the authors' code) or
            ``"fresh"`` (zero moments for every task); see above. Unused with SGD.
        inner_batch: in training, each inner step uses this many support examples, read from
            successive shuffles of the support set (may exceed its size); ``None``: the whole
            support set at every step. Evaluation always uses the whole support set.
        execution, chunk_size: how tasks are mapped (see :mod:`fastadapt.algorithms.inner`).

    The outer learning rate of the engine's optimiser plays Reptile's epsilon.
    """

    needs_head: ClassVar[bool] = True
    inner_graph: ClassVar[bool] = False  # its inner steps keep no graph for the outer backward (the memory estimate)
    keeps_task_graphs: ClassVar[bool] = False  # a task's graph is freed before the next: one task held (the estimate)
    step_encodes_queries: ClassVar[bool] = False  # training runs only support passes (of inner_batch examples)

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 1e-3,
        inner_steps: int = 5,
        inner_steps_eval: int | None = None,
        inner_optimizer: str = "adam",
        adam_beta1: float = 0.0,
        adam_beta2: float = 0.999,
        inner_state: str = "persistent",
        inner_batch: int | None = None,
        execution: str = inner.DEFAULT_EXECUTION,
        chunk_size: int = inner.DEFAULT_CHUNK_SIZE,
    ) -> None:
        super().__init__()
        self.model = model
        self.inner_lr = inner.check_positive("inner_lr", inner_lr)
        self.inner_steps, self.inner_steps_eval = inner.step_counts(inner_steps, inner_steps_eval, 1)
        if inner_optimizer not in inner.OPTIMIZERS:
            raise ConfigError(
                f"inner_optimizer={inner_optimizer!r} is unknown; choose one of {', '.join(inner.OPTIMIZERS)}"
            )
        self.inner_optimizer = inner_optimizer
        for name, b in (("adam_beta1", adam_beta1), ("adam_beta2", adam_beta2)):
            if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 <= b < 1:
                raise ConfigError(f"{name}={b!r} is invalid; it must be in [0, 1)")
        self.betas = (float(adam_beta1), float(adam_beta2))
        self.execution, self.chunk_size = inner.execution_options(execution, chunk_size)
        theta = inner.trainable_params(model)
        if not theta:
            raise ConfigError("Reptile needs a model with trainable parameters; this one has none")
        if inner_state not in INNER_STATES:
            raise ConfigError(f"inner_state={inner_state!r} is unknown; choose one of {', '.join(INNER_STATES)}")
        self.inner_state = inner_state
        if inner_batch is not None and (
            isinstance(inner_batch, bool) or not isinstance(inner_batch, int) or inner_batch < 1
        ):
            raise ConfigError(
                f"inner_batch={inner_batch!r} is invalid; it must be an integer >= 1 (or unset: the whole support set)"
            )
        self.inner_batch = inner_batch
        self.persistent = inner_optimizer == "adam" and inner_state == "persistent"
        if self.persistent:  # Adam's moments per adapted tensor (buffer names cannot hold dots) and its step count
            self._names = list(theta)
            for i, v in enumerate(theta.values()):
                self.register_buffer(f"adam_m{i}", torch.zeros_like(v.detach()))
                self.register_buffer(f"adam_v{i}", torch.zeros_like(v.detach()))
            self.register_buffer("adam_step", torch.zeros((), dtype=torch.long))

    def _adam_state(self) -> tuple[tuple[inner.Params, inner.Params], int]:
        m = {k: getattr(self, f"adam_m{i}") for i, k in enumerate(self._names)}
        v = {k: getattr(self, f"adam_v{i}") for i, k in enumerate(self._names)}
        return (m, v), int(self.adam_step)

    def _store_adam_state(self, state: tuple[inner.Params, inner.Params], step: int) -> None:
        with torch.no_grad():
            for i, k in enumerate(self._names):
                getattr(self, f"adam_m{i}").copy_(state[0][k])
                getattr(self, f"adam_v{i}").copy_(state[1][k])
            self.adam_step.fill_(step)

    def _forward(self, params: inner.Params, x: Tensor) -> Tensor:
        return inner.call(self.model, params, x)

    def _minibatches(self, batch: TaskBatch) -> Tensor | None:
        """Training mini-batch indices ``[T, K, inner_batch]`` (task by task from torch's RNG), or None."""
        if self.inner_batch is None:
            return None
        n = batch.support_y.shape[1]
        return torch.stack(
            [inner.minibatch_indices(n, self.inner_batch, self.inner_steps) for _ in range(batch.num_tasks)]
        ).to(batch.support_y.device)

    def _support_loss(self, sx: Tensor, sy: Tensor, idx: Tensor | None):
        """The support loss of one task: ``loss(p)`` on the whole set, or ``loss(p, k)`` on mini-batch ``k``."""
        if idx is None:
            return lambda p: task_loss(self._forward(p, sx), sy)
        return lambda p, k: task_loss(self._forward(p, sx[idx[k]]), sy[idx[k]])

    def _scored_support_loss(self, sx: Tensor, sy: Tensor, idx: Tensor | None):
        """:meth:`_support_loss` returning ``(loss, (loss, outputs, targets))`` for ``torch.func.grad(...,
        has_aux=True)``."""

        def scored(p: inner.Params, x: Tensor, y: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
            out = self._forward(p, x)
            loss = task_loss(out, y)
            return loss, (loss.detach(), out.detach(), y)

        if idx is None:
            return lambda p: scored(p, sx, sy)
        return lambda p, k: scored(p, sx[idx[k]], sy[idx[k]])

    def _train_steps(
        self,
        loss_of,
        theta: inner.Params,
        rates: inner.Rates,
        state: tuple[inner.Params, inner.Params] | None,
        step: int,
        per_step: bool,
        plain_autograd: bool = False,
    ) -> tuple[inner.Params, tuple[inner.Params, inner.Params] | None, tuple[Tensor, Tensor, Tensor]]:
        """The inner optimiser's steps in training, from ``theta`` (Adam from ``state`` after ``step`` steps; SGD:
        ``state`` None).

        The same operations as :func:`~fastadapt.algorithms.inner.adam_steps` and the first-order
        :func:`~fastadapt.algorithms.inner.inner_loop`; ``loss_of`` is :meth:`_scored_support_loss`'s, and the
        last step's ``(loss, outputs, targets)`` is returned for the metrics. ``plain_autograd``: the gradients
        come from ``torch.autograd.grad`` on leaf copies (one task at a time, outside ``vmap``: the same
        gradients without ``torch.func``'s transform layers, as :func:`~fastadapt.algorithms.inner.fine_tune`);
        otherwise from ``torch.func.grad`` (works under ``vmap``). Returns the detached final weights, the Adam
        state and those scores.
        """
        grad_fn = inner.plain_grad(loss_of, has_aux=True) if plain_autograd else torch.func.grad(loss_of, has_aux=True)
        phi = theta
        scores = None
        for k, step_rates in enumerate(rates):
            grads, scores = grad_fn(inner.detached(phi), *((k,) if per_step else ()))
            grads = inner.detached(grads)
            if state is None:
                phi = inner.sgd_update(phi, grads, step_rates)
            else:
                phi, state = inner.adam_update(phi, grads, step_rates, state, step + k + 1, self.betas, 1e-8)
        assert scores is not None  # inner_steps >= 1
        if state is not None:
            state = (inner.detached(state[0]), inner.detached(state[1]))
        return inner.detached(phi), state, scores

    def _adapt_all(self, batch: TaskBatch, steps: int, idx: Tensor | None = None) -> tuple[inner.Params, Tensor]:
        """Adapted weights of every task (``[T, *shape]`` per parameter) and their query outputs; no graph.

        With the persistent Adam state every task starts from it and it is not changed (evaluation).
        ``idx``: mini-batch indices from :meth:`_minibatches` (training), else the whole support set.
        """
        theta = inner.detached(inner.trainable_params(self.model))
        names = list(theta)
        rates = inner.constant_rates(names, self.inner_lr, steps)
        start = self._adam_state() if self.persistent else None

        def task(sx: Tensor, sy: Tensor, qx: Tensor, *ix: Tensor) -> tuple[Tensor, ...]:
            loss, per_step = self._support_loss(sx, sy, ix[0] if ix else None), bool(ix)
            if start is not None:
                phi = inner.adam_steps(loss, theta, rates, start[0], start[1], self.betas, per_step=per_step)[0]
            else:
                phi = inner.inner_loop(
                    loss,
                    theta,
                    rates,
                    first_order=True,
                    optimizer=self.inner_optimizer,
                    betas=self.betas,
                    per_step=per_step,
                )[steps]
            return (*(phi[k].detach() for k in names), self._forward(phi, qx).detach())

        tensors = (batch.support_x, batch.support_y, batch.query_x) + (() if idx is None else (idx,))
        with torch.enable_grad():
            *finals, outputs = inner.map_tasks(task, tensors, self.execution, self.chunk_size)
        return dict(zip(names, finals)), outputs

    def _train_all(
        self, batch: TaskBatch, idx: Tensor | None = None
    ) -> tuple[inner.Params, tuple[Tensor, Tensor, Tensor]]:
        """Training without the persistent Adam state (tasks independent, any ``execution``): adapted weights of every
        task (``[T, *shape]`` per parameter, no graph) and the last inner step's support ``(losses [T], outputs,
        targets)``."""
        theta = inner.detached(inner.trainable_params(self.model))
        names = list(theta)
        rates = inner.constant_rates(names, self.inner_lr, self.inner_steps)

        def task(sx: Tensor, sy: Tensor, *ix: Tensor) -> tuple[Tensor, ...]:
            zeros = {k: torch.zeros_like(v) for k, v in theta.items()}
            state = (zeros, zeros) if self.inner_optimizer == "adam" else None  # fresh moments, as inner.inner_loop
            phi, _, scores = self._train_steps(
                self._scored_support_loss(sx, sy, ix[0] if ix else None), theta, rates, state, 0, bool(ix)
            )
            return (*(phi[k] for k in names), *scores)

        tensors = (batch.support_x, batch.support_y) + (() if idx is None else (idx,))
        with torch.enable_grad():
            *finals, losses, outputs, targets = inner.map_tasks(task, tensors, self.execution, self.chunk_size)
        return dict(zip(names, finals)), (losses, outputs, targets)

    def _adapt_sequential(
        self, batch: TaskBatch, idx: Tensor | None = None
    ) -> tuple[inner.Params, tuple[Tensor, Tensor, Tensor]]:
        """Training with the persistent Adam state: the tasks adapt one after the other, each from the
        state the previous one left; the final state is stored. Same arguments and returns as :meth:`_train_all`."""
        theta = inner.detached(inner.trainable_params(self.model))
        rates = inner.constant_rates(list(theta), self.inner_lr, self.inner_steps)
        state, step = self._adam_state()
        finals, scores = [], []
        with torch.enable_grad():
            for t, (sx, sy) in enumerate(zip(batch.support_x, batch.support_y)):
                loss = self._scored_support_loss(sx, sy, None if idx is None else idx[t])
                phi, state, last = self._train_steps(
                    loss, theta, rates, state, step, per_step=idx is not None, plain_autograd=True
                )
                step += self.inner_steps
                finals.append(phi)
                scores.append(last)
        self._store_adam_state(state, step)  # type: ignore[arg-type]
        return {k: torch.stack([f[k] for f in finals]) for k in theta}, tuple(
            torch.stack(parts) for parts in zip(*scores)
        )  # type: ignore[return-value]

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        """The Reptile surrogate ``1/2 ||theta - stopgrad(mean_i phi_i)||^2``; metrics of the last inner step on the
        support examples it used.

        ``out.metrics`` reports the support loss and accuracy (or MSE) of the last inner step, on the examples that
        step used, from the forward pass it runs anyway: no forward pass runs only for logging (in 5-way 1-shot
        training with 5 queries per class and 5 inner steps, the dropped query pass encoded 25 images against the
        support passes' 5 images x 5 steps, forward and backward); the query score of the adapted weights is what
        validation measures. The surrogate's value is the metric ``surrogate``.
        """
        idx = self._minibatches(batch)
        finals, (losses, outputs, targets) = (
            self._adapt_sequential(batch, idx) if self.persistent else self._train_all(batch, idx)
        )
        loss = reptile_surrogate(inner.trainable_params(self.model), {k: v.mean(0) for k, v in finals.items()})
        metrics = batch_metrics(outputs, targets, losses.mean())
        metrics["surrogate"] = float(loss.detach())
        return MetaOutput(loss, metrics)

    def adapt(
        self, support_x: Tensor, support_y: Tensor, steps: int | None = None, lr_scale: float = 1.0
    ) -> FastWeightsPredictor:
        """The model fine-tuned for ``steps`` (default ``inner_steps_eval``) steps at ``inner_lr * lr_scale`` on one
        task's
        support set; detached.

        ``update(x, y)`` keeps adapting: the same fine-tuning on a sliding window (:class:`FastWeightsPredictor`).
        """
        steps = self.inner_steps_eval if steps is None else inner.check_steps("steps", steps)
        return FastWeightsPredictor.adapted(self.model, self._adapt_from, support_x, support_y, steps, lr_scale)

    def _adapt_from(self, start: inner.Params, x: Tensor, y: Tensor, steps: int, lr_scale: float = 1.0) -> inner.Params:
        """``steps`` steps of the inner optimiser from ``start`` on ``(x, y)`` (the persistent Adam state, unchanged,
        when kept),
        at ``inner_lr * lr_scale``; detached."""
        rates = inner.constant_rates(list(start), self.inner_lr * lr_scale, steps)
        if self.persistent:
            state, step = self._adam_state()
            with torch.enable_grad():
                return inner.adam_steps(
                    lambda p: task_loss(self._forward(p, x), y),
                    inner.detached(start),
                    rates,
                    state,
                    step,
                    self.betas,
                    plain_autograd=True,
                )[0]
        return inner.fine_tune(self._forward, start, x, y, rates, self.inner_optimizer, self.betas)

    def predict(self, batch: TaskBatch) -> Tensor:
        """Query outputs of every task after ``inner_steps_eval`` fine-tuning steps, ``[T, N*Q, N]``; no graph."""
        return self._adapt_all(batch, self.inner_steps_eval)[1]
