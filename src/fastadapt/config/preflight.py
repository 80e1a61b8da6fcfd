"""An up-front estimate of what a run costs, and a refusal of what cannot fit, before anything big is allocated.

The estimate is rough but stated (the formulas are on :func:`estimate_cost`, :func:`check_cost` and
:func:`check_conversion`); it is meant to refuse the impossible (``data.meta_batch=200000``), not to
predict a peak to the megabyte.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fastadapt.config import Config, algorithm_signature
from fastadapt.core.errors import ConfigError, FastAdaptError
from fastadapt.runtime.devices import resolve_device

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


def available_memory(device: str = "cpu") -> int | None:
    """Bytes free for a run on ``device`` ("auto" resolved): a CUDA device's free memory, else ``MemAvailable`` (None
    when unknown)."""
    device = resolve_device(device)
    if device.startswith("cuda") and torch.cuda.is_available():
        try:
            free, _ = torch.cuda.mem_get_info(torch.device(device))
            return int(free)
        except (RuntimeError, ValueError, AssertionError):
            return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _tensor_bytes(out: Any) -> int:
    if isinstance(out, torch.Tensor):
        return out.numel() * out.element_size()
    if isinstance(out, (list, tuple)):
        return sum(_tensor_bytes(o) for o in out)
    if isinstance(out, dict):
        return sum(_tensor_bytes(o) for o in out.values())
    return 0


def activation_bytes(model: nn.Module, x: torch.Tensor, meta: bool = True) -> tuple[int, int]:
    """Per example of ``x`` (a few examples), in bytes: ``x`` and every leaf module's output on it (what a
    graph keeps), and the largest input + output of one leaf module (what a forward without a graph
    holds at once). Eval mode, no graph.

    ``meta``: run on meta tensors (shapes only: no memory, no arithmetic; the model's weights are
    left alone); else a real forward pass.
    """
    total, peak = 0, 0

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        nonlocal total, peak
        out = _tensor_bytes(output)
        total += out
        peak = max(peak, out + _tensor_bytes(inputs))

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if meta:
                params = {k: torch.empty_like(v, device="meta") for k, v in model.named_parameters()}
                buffers = {k: torch.empty_like(v, device="meta") for k, v in model.named_buffers()}
                torch.func.functional_call(model, (params, buffers), (x.to("meta"),))
            else:
                model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    n = max(len(x), 1)
    return math.ceil((total + _tensor_bytes(x)) / n), math.ceil(max(peak, _tensor_bytes(x)) / n)


def _measure(model: nn.Module, x: torch.Tensor) -> tuple[int, int] | None:
    """:func:`activation_bytes` on two examples, on meta tensors, else for real; None when the model cannot take
    them."""
    for meta in (True, False):
        try:
            return activation_bytes(model, x[:2], meta)
        except FastAdaptError:
            raise
        except (
            Exception
        ):  # the model does what meta tensors cannot (.item(), data-dependent shapes), or cannot take x at all
            continue
    return None


def _inner_steps(cfg: Config) -> tuple[int, int]:
    """``(k, k_eval)``: the algorithm's inner steps in training and at evaluation (0 when it has none)."""
    try:
        params = algorithm_signature(cfg.algorithm)
    except (FastAdaptError, TypeError, ValueError):
        params = {}
    opts = cfg.algorithm_options

    def option(name: str) -> Any:
        if name in opts:
            return opts[name]
        p = params.get(name)
        return None if p is None or p.default is p.empty else p.default

    k = option("inner_steps")
    k = int(k) if isinstance(k, int) and not isinstance(k, bool) and k > 0 else 0
    k_eval = option("inner_steps_eval")
    k_eval = int(k_eval) if isinstance(k_eval, int) and not isinstance(k_eval, bool) and k_eval >= 0 else k
    return k, k_eval


def estimate_cost(cfg: Config, batch: Any, model: nn.Module) -> CostEstimate | None:
    """The estimate for ``cfg``, its first training task ``batch`` and its ``model``; None when the model cannot run
    on two of the task's examples (the model check then says why).

    Activations, per example (:func:`activation_bytes`, on two examples of the first training task)::

        a = input bytes + sum over leaf modules of output bytes          (what autograd keeps for backward)
        f = max over leaf modules of (input bytes + output bytes)       (what a forward without a graph holds)

    A training step (``k`` = ``algorithm.inner_steps`` of a gradient-based algorithm, else 0; the support set
    goes through the model ``k + 1`` times, the query set once; the factor 2 is the backward pass's
    gradients)::

        images per step = meta_batch * ways * (shots + queries)
        step bytes      = 2 * a * alive * ways * (shots * (k + 1) + queries)

    where ``alive`` is the number of tasks whose graph is alive at once: ``optim.task_chunk`` when it is
    between 1 and ``meta_batch`` (the loop back-propagates chunk by chunk), else ``meta_batch``.

    An evaluation batch (``k_eval`` = ``algorithm.inner_steps_eval``, else ``k``; adapting with gradients,
    ``k_eval > 0`` or ``eval.finetune``, keeps the support set's graph for one step at a time, ``s = 2a``,
    else ``s = f``; the largest test setting counts)::

        eval images per batch = eval.batch * test_ways * (test_shots + test_queries)
        eval bytes            = eval.batch * test_ways * (test_shots * s + test_queries * f)
    """
    measured = _measure(model, batch.support_x[0])
    if measured is None:
        return None
    a, a_peak = measured
    d, e = cfg.data, cfg.eval
    regression = batch.query_y.is_floating_point()
    ways = 1 if regression else d.ways
    k, k_eval = _inner_steps(cfg)
    settings = e.test_settings or ((cfg.test_ways, cfg.test_shots),)
    eval_shapes = [(1 if regression else w, s, cfg.test_queries) for w, s in settings]
    per_episode = max(w * (s + q) for w, s, q in eval_shapes)
    support = (
        2 * a if k_eval > 0 or e.finetune != "none" else a_peak
    )  # adapted with gradients, or a forward without a graph
    eval_bytes = max(w * (s * support + q * a_peak) for w, s, q in eval_shapes)
    episodes = (e.val_episodes if e.val_every and d.val_part else 0) + e.test_episodes * len(settings)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    forwards = d.meta_batch * ways * (d.shots * (k + 1) + d.queries)
    chunk = cfg.optim.task_chunk
    alive = chunk if 0 < chunk < d.meta_batch else d.meta_batch  # tasks whose graph is alive at once
    return CostEstimate(
        images_per_step=d.meta_batch * ways * (d.shots + d.queries),
        forwards_per_step=forwards,
        eval_images_per_batch=e.batch * per_episode,
        eval_images=episodes * per_episode,
        activation_bytes=a,
        forward_bytes=a_peak,
        step_bytes=2 * a * alive * ways * (d.shots * (k + 1) + d.queries),
        eval_bytes=e.batch * eval_bytes,
        parameter_bytes=4 * params,
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
