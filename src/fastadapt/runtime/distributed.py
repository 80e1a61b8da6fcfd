"""Meta-training on several processes with ``torch.distributed``, launched by ``torchrun``.

Each meta-batch is sharded across the ranks (:func:`shard`), each rank back-propagates its loss scaled by
:func:`task_weight`, and :func:`all_reduce_gradients` sums; :func:`global_batchnorm` keeps BatchNorm statistics
over the whole meta-batch. The result equals one process with the same global batch up to float rounding.
:func:`process_group` joins the group ``torchrun`` describes; without it every helper here is the identity, so
the training loop has one code path (docs/DISTRIBUTED.md).
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.overrides import TorchFunctionMode

from fastadapt.core.errors import FastAdaptError

DEFAULT_TIMEOUT_S = 60.0  # default of run.dist_timeout_s


class PeerLost(FastAdaptError):
    """A collective failed: another rank died, hung past ``run.dist_timeout_s``, or the network broke.

    A one-line :class:`~fastadapt.core.errors.FastAdaptError` naming this rank and the lost one where it can be
    known.
    """


def env_world_size() -> int:
    """``WORLD_SIZE`` as ``torchrun`` sets it (1 when absent)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise FastAdaptError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer; launch with torchrun"
        ) from None


def is_distributed() -> bool:
    """Whether this process is one of several ranks of an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (the group's, else ``RANK`` from the environment, else 0)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Whether this rank writes logs, metrics, checkpoints and results (rank 0)."""
    return rank() == 0


def local_device(device: str) -> torch.device:
    """``device`` for this rank: ``"auto"`` is resolved (:func:`fastadapt.runtime.devices.resolve_device`), then a
    bare ``"cuda"`` becomes ``cuda:LOCAL_RANK`` under torchrun."""
    from fastadapt.runtime.devices import resolve_device

    device = resolve_device(device)
    if device == "cuda" and env_world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(device)


def _backend_for(device: torch.device) -> str:
    """NCCL for CUDA devices, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def _reason(e: BaseException) -> str:
    """The backend's first sentence, without its source location: ``Connection closed by peer [10.0.0.2]:41234``."""
    text = re.sub(r"\[[^\]]*\.(cc|cpp|h|hpp):\d+\]\s*", "", " ".join(str(e).split()))
    text = text.split(". ")[0].rstrip(".")
    return (text[:200] + "...") if len(text) > 200 else text or type(e).__name__


def _is_comm_failure(e: BaseException) -> bool:
    if isinstance(e, dist.DistError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(
        s in text
        for s in (
            "gloo",
            "Gloo",
            "NCCL",
            "Connection closed",
            "Connection reset",
            "Broken pipe",
            "Timed out",
            "timed out",
            "ProcessGroup",
        )
    )


def _peer_lost(e: BaseException, timeout_s: float = DEFAULT_TIMEOUT_S, hint: str = "") -> PeerLost:
    """The one-line error for a failed collective ``e`` (``hint``: what the user can do, appended)."""
    r, w = rank(), world_size()
    peer = f"rank {1 - r}" if w == 2 else "another rank (torchrun's summary names it)"
    return PeerLost(
        f"rank {r} of {w} lost {peer} ({_reason(e)}): a process died, hung for more than "
        f"run.dist_timeout_s={timeout_s:g} s, "
        f"or the network failed" + (f"; {hint}" if hint else "")
    )


@contextmanager
def process_group(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S, hint: str = "") -> Iterator[None]:
    """Join the process group ``torchrun`` describes for the duration of the block.

    ``torchrun`` sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; the
    group they describe is joined with a timeout (gloo on CPU, NCCL on CUDA). Does nothing when
    ``WORLD_SIZE`` is absent or 1, or when a group is already initialised (the caller then owns it).
    Failures of collectives inside the block become :class:`PeerLost`, with ``hint`` appended to the message.
    """
    size = env_world_size()
    if size <= 1 or (dist.is_available() and dist.is_initialized()):
        yield
        return
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise FastAdaptError(
            f"WORLD_SIZE={size} but {', '.join(missing)} not set; launch with torchrun (see docs/DISTRIBUTED.md)"
        )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    _bind_defaults_before_joining()
    try:
        dist.init_process_group(
            _backend_for(device),
            timeout=timedelta(seconds=timeout_s),
            device_id=device if device.type == "cuda" else None,
        )
    except Exception as e:  # rendezvous timed out, port taken, ...
        raise PeerLost(
            f"rank {os.environ['RANK']} of {size} could not join the process group at "
            f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within run.dist_timeout_s={timeout_s:g} s "
            f"({_reason(e)})"
        ) from None
    try:
        yield
    except Exception as e:
        if _is_comm_failure(e):
            raise _peer_lost(e, timeout_s, hint) from None
        raise
    finally:
        _cleanup()


def _bind_defaults_before_joining() -> None:
    """Import the modules that take the default group as a default argument, before there is one.

    ``torch.distributed.nn.functional`` declares ``def all_reduce(..., group=group.WORLD)`` and others, bound when it
    is first imported; ``torch._dynamo`` imports it, and building an algorithm imports ``torch._dynamo``. Imported
    inside the group, those defaults would hold the group past ``destroy_process_group()``: its gloo worker threads
    would live until the interpreter's finalization, and one dropping the last collective's tensors there needs the
    GIL, which ends the thread and aborts the process ("terminate called without an active exception", exit -6).
    Imported before, they hold None, and :func:`_cleanup` frees the group and joins its threads.
    """
    import torch.distributed.nn.functional  # noqa: F401


def _cleanup() -> None:
    """Leave the process group (safe to call when there is none or it is broken); the group is freed and its
    worker threads joined here, not at the interpreter's exit (:func:`_bind_defaults_before_joining`)."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # a broken group: nothing left to release
            pass


def shard(n: int, r: int | None = None, w: int | None = None) -> tuple[int, int]:
    """Rank ``r``'s contiguous block ``(start, count)`` of ``n`` items among ``w`` ranks (default: this
    rank, this group); the first ``n % w`` ranks take one more.

    Each meta-batch of ``T`` tasks is sharded across the ``W`` ranks: rank ``r`` takes the block of task
    indices this gives it and draws them with ``sampler.sample_tasks(step, start, count)``, so task ``i`` of
    step ``s`` is the same task whatever ``W`` is.
    """
    r = rank() if r is None else r
    w = world_size() if w is None else w
    base, extra = divmod(n, w)
    return r * base + min(r, extra), base + (1 if r < extra else 0)


def task_weight(local_tasks: int, global_tasks: int) -> float:
    """``T_r / T``: the factor of this rank's mean loss in the global mean (1.0 on one process).

    ``meta_loss`` returns the mean over a rank's ``T_r`` tasks, so the global objective is

        L = 1/T sum_i L_i = sum_r (T_r / T) L_r

    and its gradient is the sum over ranks of the gradients of ``(T_r / T) L_r``: each rank
    back-propagates its loss scaled by this weight and :func:`all_reduce_gradients` sums. The
    result equals one process with the same global batch up to float rounding, also when ``T`` is not
    divisible by ``W``.
    """
    return local_tasks / global_tasks


def all_reduce_gradients(
    params: Iterable[Tensor], local_tasks: int | None = None, global_tasks: int | None = None
) -> None:
    """Sum the gradients of ``params`` over ranks, in place (one collective per dtype and device).

    Each rank's ``.grad`` must hold the gradient of its loss scaled by :func:`task_weight` (what the
    training loop back-propagates). Pass ``local_tasks`` and ``global_tasks`` instead when the
    backward ran on the unscaled local mean: the gradients are then scaled by ``T_r / T`` first
    (only right when the loss of one rank does not depend on another rank's data, i.e. without
    :func:`global_batchnorm`). A parameter without a gradient counts as zero. No-op on one process.
    """
    if not is_distributed():
        return
    params = [p for p in params if p.requires_grad]
    scale = None if local_tasks is None or global_tasks is None else task_weight(local_tasks, global_tasks)
    buckets: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        buckets.setdefault((p.grad.dtype, p.grad.device), []).append(p)
    for group in buckets.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        if scale is not None:
            flat.mul_(scale)
        dist.all_reduce(flat)
        offset = 0
        for p in group:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n


def reduce_metrics(metrics: dict[str, float], weight: float) -> dict[str, float]:
    """The global metrics: ``sum_r weight_r * metrics_r`` for every key (identity on one process).

    With ``weight = T_r / T`` a per-task mean (loss, accuracy) becomes the mean over the global batch;
    a NaN on any rank makes the result NaN on every rank.
    """
    if not is_distributed():
        return dict(metrics)
    keys = sorted(metrics)
    t = torch.tensor([metrics[k] * weight for k in keys], dtype=torch.float64)
    _all_reduce_cpu_or_device(t)
    return dict(zip(keys, t.tolist()))


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (so that every rank stops at the same step)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64)
    _all_reduce_cpu_or_device(t, dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _all_reduce_cpu_or_device(t: Tensor, op=dist.ReduceOp.SUM) -> None:
    """All-reduce a small CPU tensor in place; through the current CUDA device under NCCL."""
    if dist.get_backend() == "nccl":
        d = t.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(d, op=op)
        t.copy_(d.cpu())
    else:
        dist.all_reduce(t, op=op)


def gather_scores(items: list[Any]) -> list[Any]:
    """Every rank's ``items`` concatenated in rank order, on every rank (``items`` itself on one process)."""
    if not is_distributed():
        return list(items)
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, list(items))
    return [x for part in out for x in part]


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled; only between the ranks of one job)."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_parameters(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into ``module`` on every rank."""
    if not is_distributed():
        return
    with torch.no_grad():
        for t in module.state_dict().values():
            if isinstance(t, Tensor):
                dist.broadcast(t, src=src)


def _combine_moments(mean: Tensor, var: Tensor, n: int) -> tuple[Tensor, Tensor, float]:
    """Per-channel mean and biased variance over every rank's values, from each rank's ``n``, ``mean``, ``var``.

    One all-gather; combined in float64 with the parallel formula ``V = sum_r n_r (v_r + (m_r - M)^2) / N``,
    so no precision is lost to ``E[x^2] - M^2`` cancellation.
    """
    local = torch.cat([mean.new_full((1,), float(n)), mean, var]).to(torch.float64)
    parts = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(parts, local)
    stacked = torch.stack(parts)  # [W, 1 + 2C]
    c = mean.numel()
    counts, means, variances = stacked[:, :1], stacked[:, 1 : 1 + c], stacked[:, 1 + c :]
    total = counts.sum()
    g_mean = (counts * means).sum(0) / total
    g_var = (counts * (variances + (means - g_mean) ** 2)).sum(0) / total
    return g_mean.to(mean.dtype), g_var.to(var.dtype), float(total)


class _GlobalBatchNorm(torch.autograd.Function):
    """Training-mode batch norm of this rank's ``x [B, C, ...]`` with statistics over every rank's batch.

    Forward: local moments -> all-gather -> global ``M``, ``V`` -> the fused eval-mode kernel with
    ``(M, V)``. Backward: the fused eval-mode backward gives ``g w / sqrt(V + eps)`` and the local
    ``sum g``, ``sum g (x - M) / sqrt(V + eps)``; one all-reduce makes those global and

        dx = w / sqrt(V + eps) * (g - (sum g) / N - (x - M) / (V + eps) * (sum g (x - M)) / N)

    (the sums over all ``N`` values of the channel, on every rank). The weight and bias gradients
    returned are this rank's parts; the training loop sums them over ranks with the others.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float):  # type: ignore[override]
        c = x.shape[1]
        mean, var = torch.batch_norm_update_stats(x, x.new_zeros(c), x.new_ones(c), 0.0)  # local, biased
        g_mean, g_var, total = _combine_moments(mean, var, x.numel() // c)
        y = torch.native_batch_norm(x, weight, bias, g_mean, g_var, False, 0.0, eps)[0]
        ctx.save_for_backward(x, weight, g_mean, g_var)
        ctx.eps, ctx.total = eps, total
        count = g_mean.new_full((), total)
        ctx.mark_non_differentiable(g_mean, g_var, count)
        return y, g_mean, g_var, count

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor, _mean: Tensor, _var: Tensor, _count: Tensor):  # type: ignore[override]
        x, weight, g_mean, g_var = ctx.saved_tensors
        w = weight if weight is not None else torch.ones_like(g_mean)
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
            grad.contiguous(), x, w, g_mean, g_var, None, None, False, ctx.eps, [True, True, True]
        )
        sums = torch.cat([gb, gw])
        dist.all_reduce(sums)
        c = g_mean.numel()
        total_gb, total_gw = sums[:c], sums[c:]
        invstd = torch.rsqrt(g_var + ctx.eps)
        k = w * invstd / ctx.total
        slope = -k * invstd * total_gw  # coefficient of x
        offset = -k * total_gb - slope * g_mean
        shape = [1, -1] + [1] * (x.ndim - 2)
        gx.addcmul_(x, slope.view(shape)).add_(offset.view(shape))
        return gx, (gw if ctx.needs_input_grad[1] else None), (gb if ctx.needs_input_grad[2] else None), None


def _global_batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    momentum: float | None,
    eps: float,
) -> Tensor:
    """``F.batch_norm(..., training=True)`` with the statistics of every rank's batch (see :class:`_GlobalBatchNorm`).

    Running statistics, when given, are updated from the global mean and unbiased variance, so
    every rank keeps the same buffers.
    """
    y, mean, var, count = _GlobalBatchNorm.apply(x, weight, bias, eps)
    if running_mean is not None and running_var is not None:
        n = float(count)
        factor = 0.1 if momentum is None else momentum
        with torch.no_grad():
            running_mean.mul_(1 - factor).add_(mean, alpha=factor)
            running_var.mul_(1 - factor).add_(var * n / max(n - 1, 1), alpha=factor)
    return y


class _GlobalBatchNormMode(TorchFunctionMode):
    """Routes every training-mode ``F.batch_norm`` call inside the mode to :func:`_global_batch_norm`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm:
            bound = _BATCH_NORM_SIGNATURE.bind(*args, **kwargs)
            bound.apply_defaults()
            a = bound.arguments
            if a["training"]:
                return _global_batch_norm(
                    a["input"], a["running_mean"], a["running_var"], a["weight"], a["bias"], a["momentum"], a["eps"]
                )
        return func(*args, **kwargs)


_BATCH_NORM_SIGNATURE = inspect.signature(F.batch_norm)


@contextmanager
def global_batchnorm(enabled: bool = True) -> Iterator[None]:
    """Inside the block, BatchNorm that normalises with batch statistics uses the statistics of the
    images of all ranks (every rank must run the same forward passes, and the backward after).

    Algorithms that say ``encodes_meta_batch`` (ProtoNets, Matching Networks with
    ``encode="meta_batch"``; :mod:`fastadapt.core.contract`) run the encoder once over every image of the
    meta-batch, and Conv4's BatchNorm (no running statistics) normalises with the statistics of that whole
    batch. Sharding would change those statistics; this computes them over the images of every rank instead
    (an all-gather of per-channel moments forward, an all-reduce of two per-channel sums backward), so the
    distributed run stays equal to one process. Gradient-based algorithms normalise each task on its own and
    need nothing.

    A ``TorchFunctionMode`` intercepts ``F.batch_norm`` (what ``nn.BatchNorm*`` calls), so no module
    is changed and no work is done twice. No-op on one process or with ``enabled=False``.
    """
    if not enabled or not is_distributed():
        yield
        return
    with _GlobalBatchNormMode():
        yield
