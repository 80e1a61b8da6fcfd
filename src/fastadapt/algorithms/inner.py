"""The inner loop shared by the gradient-based algorithms (MAML, first-order MAML, Meta-SGD, ANIL, Reptile).

Fast weights are a plain ``dict`` name -> tensor; the model is called with them through
``torch.func.functional_call``, so the user's ``nn.Module`` is never copied or changed. The inner loop (Finn et al.
2017, with per-step, per-parameter rates as in Meta-SGD and MAML++) is :func:`inner_loop`; the execution paths over
the tasks of a batch are :func:`map_tasks`'s, and how BatchNorm normalises inside them is :func:`norm_mode`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from fastadapt.algorithms import checkpointed, compiled, shared_first
from fastadapt.algorithms.base import MetaOutput, batch_metrics, task_loss
from fastadapt.algorithms.norms import (  # noqa: F401  (re-exported: inner.SplitAffineNorms, inner.split_*)
    SplitAffineNorms,
    split_batch_norm,
    split_instance_norm,
    split_layer_norm,
)
from fastadapt.algorithms.updates import (  # noqa: F401  (re-exported: inner.sgd_update, ...)
    Params,
    Rate,
    adam_update,
    minibatch_indices,
    plain_grad,
    sgd_update,
)
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError

Rates = Sequence[Mapping[str, Rate]]  # one mapping name -> rate per inner step

EXECUTIONS = ("auto", "vmap", "chunks", "loop", "shared_first")
DEFAULT_EXECUTION = "auto"  # measured per workload: docs/PERFORMANCE.md ("The inner loop"), resolve_execution
DEFAULT_CHUNK_SIZE = 8
OPTIMIZERS = ("sgd", "adam")


# --- option checks ---------------------------------------------------------------------------


def resolve_execution(execution: str, x: Tensor) -> str:
    """The path ``"auto"`` takes for task inputs ``x [T, S, *x_shape]``: ``"loop"`` for images
    (``[T, S, C, H, W]``) on the CPU, ``"vmap"`` otherwise; other values are returned as they are."""
    if execution != "auto":
        return execution
    return "loop" if x.device.type == "cpu" and x.ndim >= 5 else "vmap"


def check_execution(execution: str, chunk_size: int) -> None:
    """Raise :class:`ConfigError` unless ``execution`` is one of :data:`EXECUTIONS` and ``chunk_size >= 1``."""
    if execution not in EXECUTIONS:
        raise ConfigError(f"execution={execution!r} is unknown; choose one of {', '.join(EXECUTIONS)}")
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ConfigError(f"chunk_size={chunk_size!r} is invalid; it must be a positive integer")


def check_steps(name: str, value: int, minimum: int = 0) -> int:
    """``value`` if it is an integer >= ``minimum``, else :class:`ConfigError`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name}={value!r} is invalid; it must be an integer >= {minimum}")
    return value


def check_positive(name: str, value: float) -> float:
    """``float(value)`` if it is a finite number > 0, else :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ConfigError(f"{name}={value!r} is invalid; it must be a finite number > 0")
    return float(value)


def step_counts(inner_steps: int, inner_steps_eval: int | None, minimum: int = 0) -> tuple[int, int]:
    """``(inner_steps, inner_steps_eval)`` checked (each an integer >= ``minimum``, resp. >= 0); the evaluation
    count defaults to the training one."""
    steps = check_steps("inner_steps", inner_steps, minimum)
    return steps, steps if inner_steps_eval is None else check_steps("inner_steps_eval", inner_steps_eval)


def execution_options(execution: str, chunk_size: int) -> tuple[str, int]:
    """``(execution, chunk_size)`` checked by :func:`check_execution`."""
    check_execution(execution, chunk_size)
    return execution, chunk_size


# --- parameters and state --------------------------------------------------------------------


def trainable_params(model: nn.Module, prefix: str = "") -> Params:
    """The parameters of ``model`` that require grad, by name (the ones the inner loop adapts)."""
    return {prefix + k: v for k, v in model.named_parameters() if v.requires_grad}


def frozen_state(model: nn.Module) -> Params:
    """Copies of the buffers (BatchNorm running statistics, ...): passed through ``functional_call``
    unchanged; a copy so that nothing a forward pass writes can reach the module."""
    return {k: v.clone() for k, v in model.named_buffers()}


def param_key(name: str) -> str:
    """A parameter name as an ``nn.ParameterDict`` key (dots are not allowed there)."""
    return name.replace(".", "-")


def rate_parameters(model: nn.Module, init: Callable[[Tensor], Tensor]) -> nn.ParameterDict:
    """Learnt inner rates, one ``init(param)`` tensor per trainable parameter, keyed by :func:`param_key`."""
    params = trainable_params(model)
    keys = {param_key(n) for n in params}
    if len(keys) != len(params):
        raise ConfigError(
            "parameter names collide once dots become dashes; rename the model's submodules to use learnt inner rates"
        )
    return nn.ParameterDict({param_key(n): nn.Parameter(init(p.detach())) for n, p in params.items()})


def detached(params: Mapping[str, Tensor]) -> Params:
    return {k: v.detach() for k, v in params.items()}


def detached_rates(rates: Rates) -> list[dict[str, Rate]]:
    """``rates`` with every tensor detached (evaluation: no graph to learnt rates)."""
    return [{k: v.detach() if isinstance(v, Tensor) else v for k, v in r.items()} for r in rates]


def scaled_rates(rates: Rates, scale: float) -> Rates:
    """``rates`` with every rate times ``scale`` (``rates`` itself when ``scale == 1``); test-time selection uses it."""
    if scale == 1.0:
        return rates
    return [{k: v * scale for k, v in r.items()} for r in rates]


def constant_rates(names: Sequence[str], lr: Rate, steps: int) -> list[dict[str, Rate]]:
    """The same rate ``lr`` for every parameter at every one of ``steps`` steps."""
    return [dict.fromkeys(names, lr) for _ in range(steps)]


def call(model: nn.Module, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """``model(x)`` under fast weights ``params`` (buffers are copies: a forward pass never writes the module's)."""
    return functional_call(model, (params, frozen_state(model)), (x,))


def rate_summary(rates: Tensor) -> dict[str, float]:
    """``mean``, ``std`` (population), ``min`` and ``max`` of learnt rates, as floats (for inspection and plots)."""
    a = rates.detach().double()
    return {"mean": float(a.mean()), "std": float(a.std(unbiased=False)), "min": float(a.min()), "max": float(a.max())}


def norm_mode(model: nn.Module) -> str:
    """How the model's BatchNorm layers normalise inside the inner loop, for reports:
    ``"transductive"`` (per-task batch statistics, running statistics unused), ``"running"``
    (eval-mode layers using running statistics), ``"mixed"`` (both kinds) or ``"none"`` (no BatchNorm).

    BatchNorm is transductive: a BatchNorm layer in training mode, or with ``track_running_stats=False``,
    normalises each task's support pass and query pass with that pass's own batch statistics (tasks
    never see each other's examples), as in MAML. Running statistics are never updated by the inner
    loop: buffers are passed through ``functional_call`` as copies, so the module's own buffers are
    never written.
    """
    modes = set()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            modes.add("transductive" if m.training or not m.track_running_stats else "running")
    if not modes:
        return "none"
    return modes.pop() if len(modes) == 1 else "mixed"


@dataclass(frozen=True)
class AdaptedModel:
    """What ``adapt`` returns: the model with fast weights, ``query_x [B, *x] -> outputs [B, ...]``.

    ``params`` holds every adapted parameter (detached); the model's other parameters are its own.
    With per-task BatchNorm, the query batch is normalised with its own statistics.
    """

    model: nn.Module
    params: Params
    buffers: Params

    def __call__(self, x: Tensor) -> Tensor:
        return functional_call(self.model, (self.params, self.buffers), (x,))


def inner_loop(
    loss_of: Callable[..., Tensor],
    params: Params,
    rates: Rates,
    first_order: bool = False,
    optimizer: str = "sgd",
    betas: tuple[float, float] = (0.0, 0.999),
    eps: float = 1e-8,
    keep: Collection[int] = (),
    per_step: bool = False,
    checkpoint: bool = False,
) -> dict[int, Params]:
    """``{k: phi_k}`` for ``k`` in ``keep`` and the final ``K = len(rates)``, after gradient steps on ``loss_of`` for
    one task.

    One task's inner loop (Finn et al. 2017, eq. 1, with per-step, per-parameter rates as in Meta-SGD and MAML++)

        phi_0 = theta,    phi_{k+1} = phi_k - alpha_k * grad_phi L_support(phi_k),    k = 0 .. K-1

    is written for one task with ``torch.func.grad`` and mapped over the T tasks of a batch by
    :func:`map_tasks`:

    * second order: ``grad L_support(phi_k)`` stays a function of theta (the outer backward then
      differentiates through it: the Hessian-vector products of MAML);
    * first order: the gradient is taken at a detached copy of ``phi_k`` and detached, so
      ``d phi_K / d theta = I`` (first-order MAML, Finn et al. 2017 sec. 5.2).

    ``loss_of(phi)`` is the support loss of fast weights ``phi`` (a scalar); with ``per_step``,
    ``loss_of(phi, k)`` is the loss of inner step ``k`` (mini-batches). ``rates[k][name]``
    is the rate of parameter ``name`` at step ``k``. Second order (``first_order=False``):
    gradients are functions of ``params`` (``create_graph``); first order: each gradient is taken at
    a detached copy and detached, so the support passes build no graph to the meta-parameters
    (learnt rates still get a gradient through ``alpha * g``). ``optimizer="adam"`` runs Adam with
    a fresh state per task (:func:`adam_steps` starts from a given state). Only the kept steps are held (a long
    evaluation loop over many tasks stores one set of fast weights). Works under ``vmap``. ``checkpoint``
    (``algorithm.checkpoint_inner``; one task, not under ``vmap``): each second-order step recomputed in the
    backward pass (:mod:`fastadapt.algorithms.checkpointed`: the same numbers, one step's graph alive); a first-order
    step keeps no graph of its support pass, so it is left as it is (50 Conv4-64 steps: 257 MB against 5 steps' 230).
    """
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"inner optimizer={optimizer!r} is unknown; choose one of {', '.join(OPTIMIZERS)}")
    if checkpoint and not first_order and checkpointed.differentiable(params):  # first order keeps no step's graph
        return checkpointed.inner_loop(loss_of, params, rates, first_order, optimizer, betas, eps, keep, per_step)
    grad_fn = torch.func.grad(loss_of)
    phi = params
    kept = {0: params} if 0 in keep else {}
    zeros = {k: torch.zeros_like(v) for k, v in params.items()} if optimizer == "adam" else {}
    state = (zeros, zeros)  # Adam's first and second moments
    for k, step_rates in enumerate(rates):
        at = (k,) if per_step else ()
        if first_order:
            grads = detached(grad_fn(detached(phi), *at))
        else:
            grads = grad_fn(phi, *at)
        if optimizer == "sgd":
            phi = sgd_update(phi, grads, step_rates)
        else:
            phi, state = adam_update(phi, grads, step_rates, state, k + 1, betas, eps)
        if k + 1 in keep:
            kept[k + 1] = phi
    kept[len(rates)] = phi
    return kept


def adam_steps(
    loss_of: Callable[..., Tensor],
    params: Params,
    rates: Rates,
    state: tuple[Params, Params],
    step: int,
    betas: tuple[float, float] = (0.0, 0.999),
    eps: float = 1e-8,
    per_step: bool = False,
    plain_autograd: bool = False,
) -> tuple[Params, tuple[Params, Params]]:
    """First-order Adam steps on ``loss_of`` from a given optimiser state; returns the final weights and state.

    ``state`` is Adam's ``(m, v)`` and ``step`` the number of steps it has already taken, so the steps
    here are numbered ``step + 1 .. step + K`` in the bias correction. This is Reptile's inner loop
    with the optimiser state carried from task to task (see :class:`~fastadapt.algorithms.reptile.Reptile`).
    ``per_step`` as in :func:`inner_loop`. Nothing here builds a graph to ``params``. Works under ``vmap``
    unless ``plain_autograd`` (one task: the gradients from :func:`plain_grad`).
    """
    grad_fn = plain_grad(loss_of) if plain_autograd else torch.func.grad(loss_of)
    phi = params
    for k, step_rates in enumerate(rates):
        grads = detached(grad_fn(detached(phi), *((k,) if per_step else ())))
        phi, state = adam_update(phi, grads, step_rates, state, step + k + 1, betas, eps)
    return detached(phi), (detached(state[0]), detached(state[1]))


def adapt_and_evaluate(
    forward: Callable[[Params, Tensor], Tensor],
    params: Params,
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    query_y: Tensor,
    rates: Rates,
    first_order: bool,
    loss_steps: Sequence[int],
    loss: Callable[[Tensor, Tensor], Tensor],
    checkpoint: bool = False,
) -> tuple[Tensor, Tensor]:
    """One task of MAML / Meta-SGD / ANIL: adapt on the support set, score on the query set (``checkpoint``: the
    inner steps recomputed in the backward pass, :func:`inner_loop`).

    ``forward(phi, x)`` is the model under fast weights ``phi``. Returns the query losses
    ``L_query(phi_k)`` for ``k`` in ``loss_steps`` (``[len(loss_steps)]``; MAML++'s multi-step loss
    uses several, MAML only ``K``) and the query outputs at ``phi_K`` (``[N*Q, N]`` or ``[Q, *y]``).
    """
    final = len(rates)
    support_loss = lambda p: loss(forward(p, support_x), support_y)  # noqa: E731
    trajectory = inner_loop(support_loss, params, rates, first_order, keep=loss_steps, checkpoint=checkpoint)
    outputs = forward(trajectory[final], query_x)
    losses = [loss(outputs if k == final else forward(trajectory[k], query_x), query_y) for k in loss_steps]
    return torch.stack(losses), outputs


def evaluate_tasks(
    forward: Callable[[Params, Tensor], Tensor],
    params: Params,
    batch: TaskBatch,
    rates: Rates,
    first_order: bool,
    loss_steps: Sequence[int],
    execution: str = DEFAULT_EXECUTION,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    checkpoint: bool = False,
) -> tuple[Tensor, Tensor]:
    """:func:`adapt_and_evaluate` for every task of ``batch``: query losses ``[T, len(loss_steps)]``
    and final query outputs ``[T, N*Q, N]`` (``[T, Q, *y]``). Autograd is on inside, even under ``no_grad``.
    ``checkpoint`` (recomputed inner steps) maps the tasks with the ``"loop"`` path, uncompiled."""
    execution = "loop" if checkpoint else execution
    # run.compile: the per-task function compiled (fastadapt.algorithms.compiled), on the loop path only
    looped = resolve_execution(execution, batch.support_x) == "loop" and not checkpoint
    run = compiled.maybe_compiled(adapt_and_evaluate) if looped else adapt_and_evaluate

    def task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, ...]:
        return run(forward, params, sx, sy, qx, qy, rates, first_order, loss_steps, task_loss, checkpoint)

    if execution == "shared_first" and rates and 0 not in loss_steps:
        with torch.enable_grad():
            return shared_first.evaluate_tasks(
                forward,
                params,
                batch.support_x,
                batch.support_y,
                batch.query_x,
                batch.query_y,
                rates,
                first_order,
                loss_steps,
                task_loss,
                inner_loop,
            )
    with torch.enable_grad():
        losses, outputs = map_tasks(
            task, (batch.support_x, batch.support_y, batch.query_x, batch.query_y), execution, chunk_size
        )
    return losses, outputs


def final_loss(
    forward: Callable[[Params, Tensor], Tensor],
    params: Params,
    batch: TaskBatch,
    rates: Rates,
    first_order: bool,
    execution: str = DEFAULT_EXECUTION,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    checkpoint: bool = False,
) -> MetaOutput:
    """The meta-loss of MAML's kind: the mean query loss over tasks after the ``len(rates)`` steps of
    :func:`evaluate_tasks` (``checkpoint``: recomputed in the backward pass), with the metrics of the final outputs."""
    steps = [len(rates)]
    losses, outputs = evaluate_tasks(
        forward, params, batch, rates, first_order, steps, execution, chunk_size, checkpoint
    )
    loss = losses[:, 0].mean()
    return MetaOutput(loss, batch_metrics(outputs, batch.query_y, loss))


def predict_after(
    forward: Callable[[Params, Tensor], Tensor],
    params: Params,
    batch: TaskBatch,
    rates: Rates,
    execution: str = DEFAULT_EXECUTION,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """Query outputs of every task after ``len(rates)`` steps from ``params`` (``[T, N*Q, N]`` or ``[T, Q, *y]``),
    first order, with no graph to the parameters or the rates: an algorithm's ``predict``."""
    steps = [len(rates)]
    out = evaluate_tasks(forward, detached(params), batch, detached_rates(rates), True, steps, execution, chunk_size)
    return out[1].detach()


def fine_tune(
    forward: Callable[[Params, Tensor], Tensor],
    params: Params,
    support_x: Tensor,
    support_y: Tensor,
    rates: Rates,
    optimizer: str = "sgd",
    betas: tuple[float, float] = (0.0, 0.999),
    eps: float = 1e-8,
) -> Params:
    """Detached fast weights after ``len(rates)`` steps on one task's support set (``adapt``); no graph is kept.

    The same steps as :func:`inner_loop` with ``first_order=True`` (the same updates, numerically equal),
    taken with plain ``torch.autograd.grad`` on leaf copies of the weights: one task, no ``vmap``, so
    ``torch.func``'s transform layers are not needed (about 12 % of a 5-step Conv4 adaptation, benchmarks/latency.py).
    """
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"inner optimizer={optimizer!r} is unknown; choose one of {', '.join(OPTIMIZERS)}")
    phi = detached(params)
    zeros = {k: torch.zeros_like(v) for k, v in phi.items()} if optimizer == "adam" else {}
    state = (zeros, zeros)  # Adam's first and second moments
    grad_fn = plain_grad(lambda p: task_loss(forward(p, support_x), support_y))
    for k, step_rates in enumerate(detached_rates(rates)):
        grads = grad_fn(phi)
        if optimizer == "sgd":
            phi = sgd_update(phi, grads, step_rates)
        else:
            phi, state = adam_update(phi, grads, step_rates, state, k + 1, betas, eps)
    return detached(phi)


# --- mapping over tasks ----------------------------------------------------------------------


def map_tasks(
    fn: Callable[..., tuple[Tensor, ...]],
    tensors: Sequence[Tensor],
    execution: str = DEFAULT_EXECUTION,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[Tensor, ...]:
    """``fn`` applied to every task: ``tensors`` are ``[T, ...]``, ``fn`` takes one slice of each
    (``[...]``) and returns a tuple of tensors; the results are stacked to ``[T, ...]``.

    Execution paths (``execution=``) compute the same numbers (tested to 1e-9 in float64); they differ
    only in speed and memory: ``"vmap"`` (all tasks in one ``torch.func.vmap`` call), ``"chunks"`` (vmap over
    ``chunk_size`` tasks at a time), ``"loop"`` (a Python loop over tasks) and ``"shared_first"`` (the first
    inner step of all tasks as one computation, :mod:`fastadapt.algorithms.shared_first`, then ``"loop"``;
    opt-in). ``"auto"`` (:func:`resolve_execution`) follows the measurements in docs/PERFORMANCE.md ("The inner
    loop"): ``"loop"`` for images on the CPU, ``"vmap"`` otherwise. The vmap paths (``"vmap"`` / ``"chunks"``) run
    inside :class:`SplitAffineNorms` (exact higher derivatives of the normalisation layers) with
    ``randomness="different"`` (dropout differs across tasks).
    """
    check_execution(execution, chunk_size)
    execution = resolve_execution(execution, tensors[0])
    if execution in ("loop", "shared_first"):  # shared_first shares work only in evaluate_tasks; a plain loop elsewhere
        outs = [fn(*(t[i] for t in tensors)) for i in range(tensors[0].shape[0])]
        return tuple(torch.stack(parts) for parts in zip(*outs))
    mapped = vmap(fn, randomness="different", chunk_size=chunk_size if execution == "chunks" else None)
    with SplitAffineNorms():
        return mapped(*tensors)
