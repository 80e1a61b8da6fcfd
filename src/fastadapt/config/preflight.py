"""An up-front estimate of what a run costs, and a refusal of what cannot fit, before anything big is allocated.

The estimate is rough but stated (the formulas are on :func:`estimate_cost`, :func:`check_cost` and
:func:`check_conversion`); it refuses the impossible (``data.meta_batch=200000``) and plans
``optim.task_chunk = "auto"`` (:func:`resolve_task_chunk`) against ``run.memory_budget``
(:func:`memory_budget`); what each algorithm holds (the facts it declares, its own forward where that is all it holds,
and why not a measured ``meta_loss`` + backward) is :mod:`fastadapt.config.memory_model`'s;
``tests/test_memory_plan.py`` checks the estimate against the measured peak of every image algorithm's preset.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fastadapt.algorithms import inner
from fastadapt.config import Config
from fastadapt.config.memory_model import (
    forward_held_bytes,
    inner_batch,
    inner_steps,
    keeps_task_graphs,
    measure,
    predicts_task_by_task,
    resolve_class,
    step_encodes_queries,
    unroll_bytes,
)
from fastadapt.core import contract
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError, FastAdaptError
from fastadapt.runtime.devices import resolve_device

BUDGET_SHARE = 0.5  # run.memory_budget = 0: this share of the memory available to the process (the rest: the data,
# Python and torch themselves, the allocator's slack, other processes' growth)

LOWER_STEP = (
    "optim.task_chunk (tasks back-propagated at once), data.meta_batch, data.ways, data.shots / data.queries "
    "or data.image_size"
)
LOWER_EVAL = "eval.batch, data.test_ways, data.test_shots / data.test_queries or data.image_size"


def size(n: float) -> str:
    """Bytes in words: ``830 MB``, ``1.6 GB``, ``41.5 TB``."""
    if n >= 1e12:
        return f"{n / 1e12:.1f} TB"
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    return f"{n / 1e6:.0f} MB"


@dataclass(frozen=True)
class CostEstimate:
    """What one training step and one evaluation batch hold in memory (see the module docstring)."""

    images_per_step: int  # meta_batch * ways * (shots + queries)
    forwards_per_step: int  # examples through the model in one step: meta_batch * ways * (shots * (k + 1) + queries)
    eval_images_per_batch: int  # eval.batch * test_ways * (test_shots + test_queries), the largest test setting
    eval_images: int  # every validation and test episode's images (time, not memory: batches are drawn one at a time)
    activation_bytes: int  # per example: the input and every leaf module's output (kept by a graph)
    forward_bytes: int  # per example: the largest input + output of one leaf module (a forward without a graph)
    step_bytes: int  # activations and their gradients in one training step
    eval_bytes: int  # activations of one evaluation batch
    parameter_bytes: int  # weights, gradients and two optimizer moments

    @property
    def peak_bytes(self) -> int:
        return self.parameter_bytes + max(self.step_bytes, self.eval_bytes)

    def summary(self) -> str:
        return (
            f"{self.images_per_step} images per step, {self.eval_images_per_batch} per evaluation batch "
            f"({self.eval_images} evaluation images in all); about {size(self.step_bytes)} per step, "
            f"{size(self.eval_bytes)} per evaluation batch, "
            f"{size(self.parameter_bytes)} for parameters and optimizer state"
        )


CGROUP_FILES = (  # (limit, usage): cgroup v2, then v1, as a container sees its own cgroup
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def cgroup_free() -> int | None:
    """Bytes the process's cgroup may still take (its memory limit less its usage); None without a limit (or on a
    machine without cgroups). A v1 "no limit" is a huge number: anything above 2**60 counts as none."""
    for limit_file, usage_file in CGROUP_FILES:
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and limit < 2**60:
            return max(limit - (usage or 0), 0)
    return None


def available_memory(device: str = "cpu") -> int | None:
    """Bytes free for a run on ``device`` ("auto" resolved): a CUDA device's free memory; else the smaller of
    ``MemAvailable`` (``/proc/meminfo``) and what the process's cgroup may still take (:func:`cgroup_free`); None when
    neither is known."""
    device = resolve_device(device)
    if device.startswith("cuda") and torch.cuda.is_available():
        try:
            free, _ = torch.cuda.mem_get_info(torch.device(device))
            return int(free)
        except (RuntimeError, ValueError, AssertionError):
            return None
    found = [] if (limit := cgroup_free()) is None else [limit]
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    return min(found) if found else None


def memory_budget(cfg: Config) -> int | None:
    """Bytes a training step may hold (``run.memory_budget``, in MB); when it is 0, :data:`BUDGET_SHARE` of
    :func:`available_memory` on ``run.device`` (None when that is unknown: nothing is planned)."""
    if cfg.run.memory_budget:
        return int(cfg.run.memory_budget * 1e6)
    have = available_memory(cfg.run.device)
    return None if have is None else int(BUDGET_SHARE * have)


def plan_task_chunk(per_task: int, tasks: int, fixed: int, budget: int | None) -> int:
    """The chunk ``optim.task_chunk = "auto"`` takes: 0 (the whole meta-batch of ``tasks`` at once) when
    ``fixed + tasks * per_task`` bytes fit in ``budget`` (or the budget is unknown); else the chunks are as few as
    fit, ``n = ceil(tasks / k_max)`` with ``k_max = max(1, (budget - fixed) // per_task)``, and as even as can be,
    ``k = ceil(tasks / n)`` (never more than ``k_max``, so the peak falls to what fits)."""
    if budget is None or fixed + tasks * per_task <= budget:
        return 0
    k_max = max(1, (budget - fixed) // max(per_task, 1))
    n = math.ceil(tasks / k_max)
    return math.ceil(tasks / n)


def chunkable(algorithm: Any, model: nn.Module, batch: Any) -> bool:
    """Whether chunks of a meta-batch give ``algorithm`` (a class or an instance) the gradient of one pass: a
    :class:`~fastadapt.core.episodes.TaskBatch` (environments' tasks are not split), and an algorithm that sees
    a task at a time or a model without BatchNorm (as :func:`fastadapt.training.accumulate.check_task_chunk`)."""
    if not isinstance(batch, TaskBatch):
        return False
    has_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return not (contract.encodes_meta_batch(algorithm) and has_norm)


def resolve_task_chunk(
    cfg: Config, batch: Any, model: nn.Module, algorithm: Any = None, tasks: int | None = None
) -> int:
    """``optim.task_chunk`` as a number: itself when it is one; for ``"auto"``, :func:`plan_task_chunk` of the
    estimate's bytes per task (:func:`estimate_cost` with a chunk of 1; fixed bytes for an algorithm that frees each
    task's graph before the next, ``keeps_task_graphs`` False) over ``tasks`` (default
    ``data.meta_batch``; one process's share under ``torchrun``) against :func:`memory_budget`, except that an
    algorithm computing its tasks one at a time (:func:`tasks_one_at_a_time`) takes chunks of 1 even when the whole
    batch fits (no slower, the least memory); 0 when the algorithm cannot be chunked (:func:`chunkable`;
    ``algorithm`` default: the config's class) or the model cannot be measured. The one place ``"auto"`` is decided:
    the trainer records the number in ``config.json``'s provenance (``resolved``)."""
    chunk = cfg.optim.task_chunk
    if chunk != "auto":
        return int(chunk)
    algorithm = resolve_class(cfg, algorithm)
    if algorithm is None or not chunkable(algorithm, model, batch):
        return 0
    one = _estimate(cfg, batch, model, 1)  # the class's facts: an instance's one-task buffers are not per task
    if one is None:
        return 0
    tasks = cfg.data.meta_batch if tasks is None else tasks
    # tasks whose graphs are freed one by one (keeps_task_graphs False) hold one task's bytes whatever the chunk
    per_task, fixed = (
        (one.step_bytes, one.parameter_bytes)
        if keeps_task_graphs(algorithm)
        else (0, one.parameter_bytes + one.step_bytes)
    )
    chunk = plan_task_chunk(per_task, tasks, fixed, memory_budget(cfg))
    return 1 if chunk == 0 and tasks > 1 and tasks_one_at_a_time(algorithm, batch) else chunk


def tasks_one_at_a_time(algorithm: Any, batch: TaskBatch) -> bool:
    """Whether ``algorithm`` (an instance) maps its tasks with a Python loop (its ``execution`` resolves to
    ``"loop"``: images on the CPU by default, :func:`fastadapt.algorithms.inner.resolve_execution`). Such an
    algorithm computes one task at a time anyway, so a chunk of one task costs no speed and holds one task's graph:
    MAML 5-way 1-shot, meta-batch 32, 416 MB against 1141 MB at 2.15 s against 2.65 s a step (benchmarks/README.md,
    ``perf_paths.py memory``); ``"auto"`` takes it."""
    execution = getattr(algorithm, "execution", None)
    if isinstance(algorithm, type) or execution not in inner.EXECUTIONS:
        return False
    return inner.resolve_execution(execution, batch.support_x) == "loop"


def estimate_cost(cfg: Config, batch: Any, model: nn.Module, algorithm: Any = None) -> CostEstimate | None:
    """The estimate for ``cfg``, its first training task ``batch`` and its ``model`` (``algorithm``: the algorithm, a
    class or an instance; default the config's class); None when the model cannot run on two of the task's examples
    (the model check then says why).

    Activations, per example (:func:`~fastadapt.config.memory_model.activation_bytes`, on two examples of the first
    training task)::

        a = input bytes + sum over leaf modules of output bytes          (what autograd keeps for backward)
        f = max over leaf modules of (input bytes + output bytes)       (what a forward without a graph holds)

    A training step (``k`` = ``algorithm.inner_steps`` of a gradient-based algorithm, else 0; ``k_graph`` = ``k``
    for a second-order inner loop, whose every support pass keeps its forward and its backward's graph, ``2a``; 0 for
    first order, Reptile and iMAML, 1 with ``checkpoint_inner``; the query set and one support pass keep ``a``, and
    the backward pass frees each activation as its gradient is made; the facts are the algorithm's class attributes,
    :mod:`fastadapt.config.memory_model`)::

        images per step = meta_batch * ways * (shots + queries)
        per task        = a * (Q + S * (1 + 2 * k_graph))         Q = ways * queries (0: step_encodes_queries False)
                                                                 S = ways * shots, or the option inner_batch
                        = h                                      single_forward_loss: measured (below)
        step bytes      = alive * per task [+ f * (Q + S)]

    The bracket counts an algorithm whose step holds one task at a time, an instance whose tasks run in a loop
    (:func:`tasks_one_at_a_time`) or one that frees each task's graph before the next (``keeps_task_graphs`` False:
    Reptile, iMAML): its backward passes hold one task's gradient buffers beside the graphs (measured: MAML,
    first-order MAML, Meta-SGD, ProtoMAML and ALFA on Conv4-64 20-way 1-shot peak at 1.4-1.55x the bracket-less
    estimate; a batched encoder's backward reuses the activations it frees, ProtoNets' peak is the estimate's 0.98x).

    where ``alive`` is the number of tasks whose graph is alive at once: 1 when the algorithm does not keep its tasks'
    graphs; else ``optim.task_chunk`` (``"auto"`` resolved by :func:`resolve_task_chunk`) when it is between 1 and
    ``meta_batch`` (the loop back-propagates chunk by chunk), else ``meta_batch``. ``h``, for an algorithm (an
    instance) whose ``meta_loss`` is one forward pass (``single_forward_loss``: Matching, Relation and siamese
    networks), is that forward on the batch's first task without a graph, every distinct tensor its leaf modules take
    or give (:func:`~fastadapt.config.memory_model.forward_held_bytes`: the comparators' pairs and the feature maps
    they compare, which the model's own forward does not make).

    An evaluation batch (``k_eval`` = ``algorithm.inner_steps_eval``, else ``k``; adapting with gradients,
    ``k_eval > 0`` or ``eval.finetune``, keeps the support set's graph for one step at a time, ``s = 2a``,
    else ``s = f``; the largest test setting counts)::

        eval images per batch = eval.batch * test_ways * (test_shots + test_queries)
        eval bytes            = eval.batch * test_ways * (test_shots * s + test_queries * f)

    An algorithm whose ``predict`` encodes one task at a time (``predicts_task_by_task``: ProtoNets, Relation
    Networks, siamese networks, iMAML, Matching Networks on images on the CPU; or, given as an instance, one whose
    tasks run in a loop: the gradient-based ones on images on the CPU) holds the batch's images and one episode's
    activations::

        eval bytes            = eval.batch * test_ways * (test_shots + test_queries) * input bytes
                                + test_ways * (test_shots * s + test_queries * f)
    """
    return _estimate(cfg, batch, model, resolve_task_chunk(cfg, batch, model, algorithm), algorithm)


def _estimate(cfg: Config, batch: Any, model: nn.Module, chunk: int, algorithm: Any = None) -> CostEstimate | None:
    """:func:`estimate_cost` with ``optim.task_chunk`` resolved to ``chunk``."""
    measured = measure(model, batch.support_x[0])
    if measured is None:
        return None
    a, a_peak = measured
    d, e = cfg.data, cfg.eval
    regression = batch.query_y.is_floating_point()
    ways = 1 if regression else d.ways
    k, k_eval, k_graph = inner_steps(cfg, algorithm)
    settings = e.test_settings or ((cfg.test_ways, cfg.test_shots),)
    eval_shapes = [(1 if regression else w, s, cfg.test_queries) for w, s in settings]
    per_episode = max(w * (s + q) for w, s, q in eval_shapes)
    adapted = 2 * a if k_eval > 0 or e.finetune != "none" else a_peak  # with gradients, or without a graph
    episode_bytes = max(w * (s * adapted + q * a_peak) for w, s, q in eval_shapes)
    if _task_by_task(cfg, algorithm, batch):
        example = batch.support_x[0, 0]
        eval_bytes = e.batch * per_episode * example.numel() * example.element_size() + episode_bytes
    else:
        eval_bytes = e.batch * episode_bytes
    episodes = (e.val_episodes if e.val_every and d.val_part else 0) + e.test_episodes * len(settings)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    forwards = d.meta_batch * ways * (d.shots * (k + 1) + d.queries)
    algorithm = resolve_class(cfg, algorithm)
    kept = keeps_task_graphs(algorithm)
    alive = 1 if not kept else chunk if 0 < chunk < d.meta_batch else d.meta_batch  # tasks whose graph is alive
    queries = ways * d.queries if step_encodes_queries(algorithm) else 0
    support = inner_batch(cfg, algorithm) or ways * d.shots  # examples of one support pass
    held = forward_held_bytes(algorithm, batch)
    per_task = held if held is not None else a * (queries + support * (1 + 2 * k_graph))
    unrolled = unroll_bytes(algorithm, alive, graph=True) or 0  # a coordinate-wise optimiser's states
    looped = isinstance(batch, TaskBatch) and tasks_one_at_a_time(algorithm, batch)
    transient = a_peak * (queries + support) if looped or not kept else 0  # one task's backward buffers
    return CostEstimate(
        images_per_step=d.meta_batch * ways * (d.shots + d.queries),
        forwards_per_step=forwards,
        eval_images_per_batch=e.batch * per_episode,
        eval_images=episodes * per_episode,
        activation_bytes=a,
        forward_bytes=a_peak,
        step_bytes=alive * per_task + transient + unrolled,
        eval_bytes=eval_bytes + (unroll_bytes(algorithm, e.batch, graph=False) or 0),
        parameter_bytes=4 * params,
    )


def _task_by_task(cfg: Config, algorithm: Any, batch: Any) -> bool:
    """Whether the algorithm's ``predict`` encodes one task at a time (its ``predicts_task_by_task``,
    :func:`~fastadapt.config.memory_model.predicts_task_by_task`, or an instance whose tasks run in a loop,
    :func:`tasks_one_at_a_time`), without test-time fine-tuning or selection."""
    if cfg.eval.finetune != "none" or cfg.eval.select != "fixed":
        return False
    algorithm = resolve_class(cfg, algorithm)
    if algorithm is None:
        return False
    return predicts_task_by_task(algorithm, batch) or (
        isinstance(batch, TaskBatch) and tasks_one_at_a_time(algorithm, batch)
    )


def check_cost(cfg: Config, batch: Any, model: nn.Module) -> CostEstimate | None:
    """The estimate, or a one-line :class:`ConfigError` naming the keys to lower when it exceeds the memory
    available: ``4 * parameter bytes`` (weights, gradients, Adam's two moments) ``+ max(step bytes, eval bytes)``
    against the free memory of the CUDA device for ``run.device = "cuda..."``, else ``MemAvailable`` of
    ``/proc/meminfo`` (elsewhere the check is skipped)."""
    est = estimate_cost(cfg, batch, model)
    have = available_memory(cfg.run.device)
    if est is not None and have is not None and est.peak_bytes > have:
        step_is_larger = est.step_bytes >= est.eval_bytes
        what = (
            f"a training step of {est.images_per_step} images"
            if step_is_larger
            else f"an evaluation batch of {est.eval_images_per_batch} images"
        )
        lower = LOWER_STEP if step_is_larger else LOWER_EVAL
        raise ConfigError(
            f"{what} needs about {size(est.peak_bytes)}, more than the {size(have)} available; "
            f"lower {lower} ({est.summary()})"
        )
    return est


def check_parameters(build: Callable[[], nn.Module], what: str, device: str = "cpu") -> None:
    """Build the model on the meta device (no memory) and refuse it when its parameters cannot fit.

    A model that cannot be built on the meta device is left to the real build (and its own errors).
    """
    try:
        with torch.device("meta"):
            model = build()
    except FastAdaptError:
        raise
    except Exception:
        return
    if not isinstance(model, nn.Module):
        return
    n = sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers()
    )
    have = available_memory(device)
    if have is not None and 4 * n > have:
        raise ConfigError(
            f"{what} has {size(n)} of parameters, {size(4 * n)} with gradients and optimizer state, more than "
            f"the {size(have)} available; lower model.hidden / model.layers (or the model's options)"
        )


def check_conversion(data: Any, image_size: int | None, channels: int, name: str) -> None:
    """Refuse converting a :class:`~fastadapt.data.ClassDataset`'s images when it cannot fit. Resizing to
    ``data.image_size`` and converting channels by ``data.channels`` holds the stored images as float32, the
    resized float32 images and the result at once::

        conversion bytes = M * C * H * W * 4 + M * C' * S * S * (4 + element size)
    """
    x = data.data
    if x.ndim != 4:
        return
    m, c, h, w = (int(s) for s in x.shape)
    size_changes = bool(image_size) and (h, w) != (image_size, image_size)
    out_c = channels or c
    if not size_changes and out_c == c:
        return
    side_h, side_w = (image_size, image_size) if size_changes else (h, w)
    need = (m * c * h * w * 4 if size_changes else 0) + m * out_c * side_h * side_w * (4 + x.element_size())
    have = available_memory("cpu")
    if have is not None and need > have:
        raise ConfigError(
            f"converting {name}'s {m} images of {c}x{h}x{w} to {out_c}x{side_h}x{side_w} needs about {size(need)}, "
            f"more than the {size(have)} available; lower data.image_size (or set data.channels=0)"
        )
