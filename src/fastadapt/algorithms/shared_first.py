"""Shared work across tasks at the first inner step (``execution="shared_first"``).

Every task of a meta-batch starts its inner loop from the same weights theta, so the support forward and backward
of step 0 for all T tasks is one computation over all T*B support examples: :func:`first_step`, with the layers run
by :class:`TaskGroups` and :class:`SharedConv`; opt-in (why: :func:`first_step`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from fastadapt.core.errors import ConfigError

Params = dict[str, Tensor]


class SharedConv(torch.autograd.Function):
    """``F.conv2d`` of ``x [T*B, C, H, W]`` with per-task weights ``w [T, ...]`` that are all equal
    (an ``expand``): forward and input gradient with ``w[0]`` on the whole batch, weight and bias
    gradients per task. The backward is built of differentiable operations (double backward works)."""

    @staticmethod
    def forward(
        x: Tensor, w: Tensor, b: Tensor | None, stride: object, padding: object, dilation: object, groups: int
    ) -> Tensor:
        return F.conv2d(x, w[0], None if b is None else b[0], stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        x, w, b, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(x, w)
        ctx.conf = (stride, padding, dilation, groups, b is not None)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, ...]:  # noqa: ANN001
        x, w = ctx.saved_tensors
        stride, padding, dilation, groups, has_bias = ctx.conf
        tasks = w.shape[0]
        gx = gw = gb = None
        low = g.dtype  # under autocast the forward ran in a lower precision: the backward's products run in it too
        if ctx.needs_input_grad[0]:
            gx = torch.nn.grad.conv2d_input(x.shape, w[0].to(low), g, stride, padding, dilation, groups).to(x.dtype)
        if ctx.needs_input_grad[1]:
            xs, gs = x.to(low).reshape(tasks, -1, *x.shape[1:]), g.reshape(tasks, -1, *g.shape[1:])
            gw = torch.stack(
                [
                    torch.nn.grad.conv2d_weight(xs[t], w.shape[1:], gs[t], stride, padding, dilation, groups)
                    for t in range(tasks)
                ]
            ).to(w.dtype)
        if has_bias and ctx.needs_input_grad[2]:
            gb = g.reshape(tasks, -1, g.shape[1], g[0, 0].numel()).sum((1, 3)).to(w.dtype)
        return gx, gw, gb, None, None, None, None


class TaskGroups(TorchFunctionMode):
    """Within this mode a model called on ``[T*B, ...]`` with per-task parameters ``[T, ...]`` (the
    tensors in ``per_task``) runs as T tasks of B examples each:

    * a convolution with the shared weight runs once on the whole batch (one large oneDNN call
      instead of T small ones), and so does the gradient with respect to its input; only the weight
      gradient is split by task (``T`` weight-gradient convolutions, the part that differs per task);
    * a linear layer is a batched matrix product over tasks;
    * BatchNorm with batch statistics normalises each task's group of B examples with that group's
      own mean and (biased) variance (the fused kernel on ``[B, T*C, ...]``), as the per-task path does
      (transductive, see :func:`fastadapt.algorithms.inner.norm_mode`); running statistics are used as they are.

    The model may use its parameters only through ``F.conv2d``, ``F.linear`` and ``F.batch_norm`` (the
    layers ``nn.Conv2d``, ``nn.Linear``, ``nn.BatchNorm*``), and its other operations must act on
    each example separately (activations, pooling, reshapes); anything else is a one-line
    :class:`~fastadapt.core.errors.ConfigError` that names ``execution="loop"``.
    """

    def __init__(self, tasks: int, per_task: Sequence[Tensor]) -> None:
        super().__init__()
        self.tasks = tasks
        self.ids = {id(t) for t in per_task}

    def _ours(self, t: object) -> bool:
        return isinstance(t, Tensor) and id(t) in self.ids

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if func is F.conv2d:
            return self._conv2d(*args, **kwargs)
        if func is F.linear:
            return self._linear(*args, **kwargs)
        if func is F.batch_norm:
            return self._batch_norm(*args, **kwargs)
        if any(self._ours(a) for a in (*args, *kwargs.values())):
            name = getattr(func, "__name__", str(func))
            raise ConfigError(
                "execution='shared_first' needs a model that uses its "
                "parameters only in conv2d, linear and batch_norm; "
                f"this one uses a parameter in {name}; use execution='loop'"
            )
        return func(*args, **kwargs)

    def _conv2d(
        self,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None = None,
        stride: object = 1,
        padding: object = 0,
        dilation: object = 1,
        groups: int = 1,
    ) -> Tensor:
        if not self._ours(weight):
            if self._ours(bias):
                raise ConfigError(
                    "execution='shared_first': a conv2d whose bias adapts but weight "
                    "does not is not supported; use execution='loop'"
                )
            return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
        if isinstance(padding, str):
            raise ConfigError("execution='shared_first' needs numeric conv2d padding; use execution='loop'")
        return SharedConv.apply(x, weight, bias, stride, padding, dilation, groups)

    def _linear(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        if not (self._ours(weight) or self._ours(bias)):
            return F.linear(x, weight, bias)
        t = self.tasks
        xs = x.reshape(t, -1, x.shape[-1])
        w = weight if self._ours(weight) else weight.expand(t, *weight.shape)
        out = torch.matmul(xs, w.transpose(1, 2))
        if bias is not None:
            out = out + (bias[:, None, :] if self._ours(bias) else bias)
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def _batch_norm(
        self,
        x: Tensor,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
        training: bool = False,
        momentum: float | None = 0.1,
        eps: float = 1e-5,
    ) -> Tensor:
        t = self.tasks
        if training:  # batch statistics of each task's group of examples; running statistics neither used nor updated
            # tasks moved into the channels ([B, T*C, ...]) so that the fused kernel normalises each task's group
            per = x.shape[0] // t
            xs = x.reshape(t, per, *x.shape[1:]).transpose(0, 1).reshape(per, t * x.shape[1], *x.shape[2:])
            out = F.batch_norm(xs, None, None, None, None, True, 0.0, eps)
            out = out.reshape(per, t, *x.shape[1:]).transpose(0, 1).reshape(x.shape)
        else:
            out = F.batch_norm(x, running_mean, running_var, None, None, False, 0.0, eps)
        if weight is None and bias is None:
            return out
        spatial = [1] * (x.ndim - 2)
        outs = out.reshape(t, -1, *x.shape[1:])
        for p, op in ((weight, torch.mul), (bias, torch.add)):
            if p is not None:
                outs = op(outs, p.reshape(t, 1, -1, *spatial) if self._ours(p) else p.reshape(-1, *spatial))
        return outs.reshape(x.shape)


def first_step(
    forward: Callable[[Params, Tensor], Tensor],
    params: Params,
    support_x: Tensor,
    support_y: Tensor,
    rates: Mapping[str, float | Tensor],
    first_order: bool,
    loss: Callable[[Tensor, Tensor], Tensor],
) -> Params:
    """``phi_1`` of every task, ``{name: [T, *shape]}``: one SGD step ``theta - alpha * grad L_support_t(theta)``
    computed for all tasks at once (``support_x [T, B, *x]``, ``support_y [T, B, ...]``).

    Second order: the gradients are functions of ``params`` (``create_graph``); first order: taken
    at a detached copy and detached (``d phi_1 / d theta = I``; learnt rates still get a gradient).

    Per-task gradients come from one backward: each parameter enters the forward as
    ``theta.expand(T, *theta.shape)`` (no copy), and ``torch.autograd.grad`` of the sum of the task
    losses with respect to these expanded tensors returns ``[T, *theta.shape]``, task t's gradient in row t.
    The convolution is :class:`SharedConv`, an autograd function whose backward is written with
    differentiable operations, so second-order MAML differentiates through it. Steps 1..K-1 and the
    query pass then run per task (:func:`fastadapt.algorithms.inner.inner_loop` from ``phi_1``). Equal to the
    per-task loop to 1e-9 in float64 (``tests/test_execution_paths.py``).

    Speed: opt-in, because on the CPU it was not faster than ``"loop"`` (measured: docs/PERFORMANCE.md;
    ``python benchmarks/shared_first.py``). On a GPU, where one kernel instead of T matters,
    ``benchmarks/gpu_compare.py`` measures it.
    """
    tasks, per = support_x.shape[0], support_x.shape[1]
    base = {k: v.detach().requires_grad_() for k, v in params.items()} if first_order else params
    expanded = {k: v.expand(tasks, *v.shape) for k, v in base.items()}
    x = support_x.reshape(tasks * per, *support_x.shape[2:])
    with TaskGroups(tasks, list(expanded.values())):
        out = forward(expanded, x)
    out = out.reshape(tasks, per, *out.shape[1:])
    total = sum(loss(out[t], support_y[t]) for t in range(tasks))
    names = list(expanded)
    grads = torch.autograd.grad(total, [expanded[k] for k in names], create_graph=not first_order, allow_unused=True)
    phi = {}
    for k, g in zip(names, grads):
        g = torch.zeros_like(expanded[k]) if g is None else g
        phi[k] = params[k] - rates[k] * (g.detach() if first_order else g)
    return phi


def evaluate_tasks(
    forward: Callable[[Params, Tensor], Tensor],
    params: Params,
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    query_y: Tensor,
    rates: Sequence[Mapping[str, float | Tensor]],
    first_order: bool,
    loss_steps: Sequence[int],
    loss: Callable[[Tensor, Tensor], Tensor],
    inner_loop: Callable[..., dict[int, Params]],
) -> tuple[Tensor, Tensor]:
    """:func:`fastadapt.algorithms.inner.evaluate_tasks` with the first inner step shared across tasks
    (needs ``len(rates) >= 1``; ``loss_steps`` in ``1..K``): query losses ``[T, len(loss_steps)]`` and
    final query outputs ``[T, ...]``. ``inner_loop`` is :func:`fastadapt.algorithms.inner.inner_loop`."""
    final = len(rates)
    phi1 = first_step(forward, params, support_x, support_y, rates[0], first_order, loss)
    all_losses, all_outputs = [], []
    for t in range(support_x.shape[0]):
        sx, sy, qx, qy = support_x[t], support_y[t], query_x[t], query_y[t]
        start = {k: v[t] for k, v in phi1.items()}
        rest = inner_loop(
            lambda p, sx=sx, sy=sy: loss(forward(p, sx), sy),
            start,
            rates[1:],
            first_order,
            keep=[k - 1 for k in loss_steps],
        )
        outputs = forward(rest[final - 1], qx)
        losses = [loss(outputs if k == final else forward(rest[k - 1], qx), qy) for k in loss_steps]
        all_losses.append(torch.stack(losses))
        all_outputs.append(outputs)
    return torch.stack(all_losses), torch.stack(all_outputs)
