"""Chunked meta-gradient accumulation (``optim.task_chunk``): one optimizer update from several ``meta_loss``
calls, so that only one chunk's graph is alive; the accumulated gradient is the whole batch's."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from torch import nn

from fastadapt.core import contract
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError


def check_task_chunk(algo: nn.Module, task_chunk: int, tasks: int) -> None:
    """One-line :class:`ConfigError` unless chunks of ``task_chunk`` tasks give ``algo`` the same gradient as one
    pass over ``tasks``.

    Tasks are independent in ``meta_loss`` for the gradient-based algorithms (each task's BatchNorm statistics
    are its own) and those whose encoder sees a task at a time. An algorithm that encodes the whole meta-batch
    at once (``encodes_meta_batch``) is chunked only when its model has no BatchNorm layer (then nothing
    couples the tasks); otherwise chunks would change the statistics.
    """
    if not task_chunk or task_chunk >= tasks or not contract.encodes_meta_batch(algo):
        return
    norms = [name for name, m in algo.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms:
        raise ConfigError(
            f"optim.task_chunk={task_chunk}: {type(algo).__name__} encodes the whole meta-batch at once and its "
            f"BatchNorm layer {norms[0]} normalises over every task, so chunks would change the gradient; use "
            f"optim.task_chunk=0 (or a model without BatchNorm)"
        )


def task_chunks(tasks: int, task_chunk: int) -> list[slice]:
    """The task slices of one update: ``[0:k], [k:2k], ...``; one slice of all tasks when ``task_chunk`` is 0 or
    >= ``tasks``."""
    if not task_chunk or task_chunk >= tasks:
        return [slice(0, tasks)]
    return [slice(s, min(s + task_chunk, tasks)) for s in range(0, tasks, task_chunk)]


def library_chunk(algo: nn.Module, batch: TaskBatch) -> int:
    """``task_chunk = "auto"`` for a call without a config (:func:`meta_gradient` from Python): chunks of 1 where the
    algorithm runs its tasks in a loop anyway and may be chunked (the leanest, no slower:
    :func:`fastadapt.config.preflight.tasks_one_at_a_time`), else the whole batch. The trainer plans with the memory
    budget instead (:func:`fastadapt.config.preflight.resolve_task_chunk`)."""
    from fastadapt.config.preflight import chunkable, tasks_one_at_a_time

    model = getattr(algo, "model", None)
    if not isinstance(model, nn.Module) or not isinstance(batch, TaskBatch) or len(batch) < 2:
        return 0
    return 1 if chunkable(algo, model, batch) and tasks_one_at_a_time(algo, batch) else 0


def meta_gradient(
    algo: nn.Module,
    batch: TaskBatch,
    task_chunk: int | str = "auto",
    scale: float | None = None,
    around: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> tuple[float, dict[str, float]]:
    """Back-propagate the mean meta-loss of ``batch``'s tasks into ``.grad`` (added to what is there), chunk by chunk.

    Args:
        task_chunk: tasks per ``meta_loss`` call and backward pass (0: all at once, the loop's one-pass path;
            ``"auto"``: :func:`library_chunk`).
        scale: a factor on every backward pass (the loop's distributed task weight ``T_r / T``); None: 1.
        around: the context of each ``meta_loss`` call (precision, synchronised BatchNorm); the
            backward passes run outside it.

    Returns the objective (``loss`` of the output, a float) and the metrics, each the task-weighted
    mean over chunks. A non-finite chunk loss stops the accumulation: the caller sees a non-finite
    objective and must not step.

    The ``T`` tasks are split into chunks of at most ``task_chunk``; each chunk's mean loss is
    back-propagated at once with the weight ``T_c / T``, so only one chunk's graph is alive (peak memory
    falls with ``task_chunk``) and the accumulated gradient is the gradient of the mean over all tasks:
    ``grad (1/T sum_i L_i) = sum_c (T_c / T) grad (1/T_c sum_{i in c} L_i)``. The metrics are the same
    weighted means (exact for per-task means: loss, accuracy); see :func:`check_task_chunk` for which
    algorithms may be chunked.

    Chunks after the first run inside :func:`fastadapt.core.contract.update_part`, so algorithms that count
    meta-updates (MAML++'s derivative-order and multi-step-loss schedules) count one per update.
    Reptile's persistent inner Adam state carries from chunk to chunk as from task to task; its
    mini-batches are drawn task by task in the same order, so chunking changes no number but the
    logged ``surrogate`` (a weighted mean of the chunks' surrogates; its gradient is unchanged).
    """
    task_chunk = library_chunk(algo, batch) if task_chunk == "auto" else int(task_chunk)
    parts = task_chunks(len(batch), task_chunk)
    if len(parts) > 1 and not isinstance(batch, TaskBatch):
        raise ConfigError(
            f"optim.task_chunk={task_chunk}: chunks split a TaskBatch; {type(batch).__name__} tasks cannot be split, "
            f"use optim.task_chunk=0"
        )
    if len(parts) == 1:
        with around():
            out = algo.meta_loss(batch)
        (out.loss if scale is None else out.loss * scale).backward()
        return float(out.loss.detach()), dict(out.metrics)
    total = len(batch)
    objective, metrics = 0.0, {}
    for i, part in enumerate(parts):
        chunk = batch.select(part)
        w = chunk.num_tasks / total
        with contract.update_part(i), around():
            out = algo.meta_loss(chunk)
        value = float(out.loss.detach())
        if not math.isfinite(value):
            return value, {k: math.nan for k in out.metrics}
        (out.loss * (w if scale is None else w * scale)).backward()
        objective += w * value
        for k, v in out.metrics.items():
            metrics[k] = metrics.get(k, 0.0) + w * v
        del out
    return objective, metrics
