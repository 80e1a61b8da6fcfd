"""A config's ``"auto"`` keys decided on this machine, once, before a run writes anything: ``optim.task_chunk``
(from the memory estimate and ``run.memory_budget``) and ``run.precision`` (from what the device computes
natively)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from fastadapt.config import Config
from fastadapt.config.preflight import estimate_cost, memory_budget, resolve_task_chunk
from fastadapt.core.episodes import TaskBatch
from fastadapt.runtime.hardware import hardware_record
from fastadapt.runtime.layout import model_memory_format
from fastadapt.runtime.precision import resolve_precision


def resolve_auto(
    cfg: Config, probe: Any, algorithm: nn.Module, tasks: int, device: torch.device | str
) -> tuple[Config, dict[str, Any]]:
    """``cfg`` with ``optim.task_chunk`` a number (:func:`fastadapt.config.preflight.resolve_task_chunk`: ``tasks``,
    this process's share of the meta-batch, against ``run.memory_budget``) and ``run.precision`` ``"fp32"`` or
    ``"bf16"`` (:func:`fastadapt.runtime.precision.resolve_precision` on ``device``), and, for the run's provenance,
    ``{"resolved": {"optim.task_chunk": [asked, taken], "run.precision": [asked, taken], "run.memory_format": [asked,
    taken] (as :func:`fastadapt.config.build.build_algorithm` laid the model out), "memory_budget_bytes": ...,
    "estimated_peak_bytes": ...}, "hardware": ...}`` (None where unknown; the machine by
    :func:`fastadapt.runtime.hardware.hardware_record`).

    The estimate measures the algorithm's network (its ``model``); an algorithm without one, or a task family without
    a ``TaskBatch``, plans no chunk: ``"auto"`` becomes 0, the whole meta-batch.
    """
    model = getattr(algorithm, "model", None)
    model = model if isinstance(model, nn.Module) else None
    chunk = resolve_task_chunk(cfg, probe, model, algorithm, tasks) if model is not None else 0
    if cfg.optim.task_chunk != "auto":
        chunk = int(cfg.optim.task_chunk)
    precision = resolve_precision(cfg.run.precision, device)
    out = replace(cfg, optim=replace(cfg.optim, task_chunk=chunk), run=replace(cfg.run, precision=precision))
    found = estimate_cost(out, probe, model, algorithm) if model is not None and isinstance(probe, TaskBatch) else None
    decided = {
        "optim.task_chunk": [cfg.optim.task_chunk, chunk],
        "run.precision": [cfg.run.precision, precision],
        "run.memory_format": [cfg.run.memory_format, model_memory_format(model) if model is not None else "contiguous"],
        "memory_budget_bytes": memory_budget(cfg),
        "estimated_peak_bytes": None if found is None else found.peak_bytes,
    }
    return out, {"resolved": decided, "hardware": hardware_record(device)}


__all__ = ["resolve_auto"]
