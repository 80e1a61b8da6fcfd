"""The memory layout of a convolutional model's weights (``run.memory_format``): ``"contiguous"`` (NCHW, torch's
default), ``"channels_last"`` (NHWC, oneDNN's preferred layout on the CPU) or ``"auto"``
(:func:`resolve_memory_format`).

The layout changes how the network is computed, not what in exact arithmetic: the same values in another order in
memory (float64 gradients equal to 1e-12, ``tests/test_layout.py``). In float32 it is not as exact: oneDNN's NHWC
BatchNorm is about 100x less exact, and ProtoNets' meta-gradient differs 0.9 % from float64 in NHWC against
0.0014 % in NCHW (docs/PERFORMANCE.md), which is why NCHW stays the default. Converting the weights is enough: a
convolution whose weight is NHWC runs NHWC and gives NHWC outputs whatever the input's layout
(``benchmarks/op_profile.py``: the batch converted as well gained nothing more).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fastadapt.core.errors import ConfigError

MEMORY_FORMATS = ("auto", "contiguous", "channels_last")


def check_memory_format(choice: str) -> str:
    """``choice`` if it is one of :data:`MEMORY_FORMATS`, else a one-line :class:`ConfigError`."""
    if choice not in MEMORY_FORMATS:
        raise ConfigError(f"run.memory_format={choice!r} is unknown; choose one of {', '.join(MEMORY_FORMATS)}")
    return choice


def has_conv2d(model: nn.Module) -> bool:
    """Whether ``model`` holds a 2-D convolution (the only layers the layout changes)."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def prefers_channels_last(algorithm: Any) -> bool:
    """The algorithm's (class or instance) declared ``prefers_channels_last`` (default False): its training step and
    its ``adapt`` / ``predict`` only run the network forward and back-propagate once through it, the computations
    NHWC speeds up on the CPU (docs/PERFORMANCE.md). A learner that differentiates through inner gradient steps
    (MAML's second order) keeps NCHW: the double backward copies between layouts (workload (a) 8 % slower, measured)."""
    return bool(getattr(algorithm, "prefers_channels_last", False))


def resolve_memory_format(choice: str, algorithm: Any, model: nn.Module, device: torch.device | str = "cpu") -> str:
    """``"contiguous"`` or ``"channels_last"``: ``"auto"`` is channels_last on a CPU for a model with 2-D
    convolutions under an algorithm that declares :func:`prefers_channels_last`, else contiguous (other devices:
    not measured). An explicit choice is kept; channels_last on a model without convolutions changes nothing."""
    check_memory_format(choice)
    if choice != "auto":
        return choice
    cpu = torch.device(device).type == "cpu"
    return "channels_last" if cpu and has_conv2d(model) and prefers_channels_last(algorithm) else "contiguous"


def apply_memory_format(model: nn.Module, memory_format: str) -> None:
    """Lay out ``model``'s 4-D weights as ``memory_format`` (resolved: ``"contiguous"`` or ``"channels_last"``), in
    place; the parameters stay the same objects with the same values."""
    fmt = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    model.to(memory_format=fmt)


def model_memory_format(model: nn.Module) -> str:
    """``"channels_last"`` when every 2-D convolution weight of ``model`` is NHWC, else ``"contiguous"``."""
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    nhwc = weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    return "channels_last" if nhwc else "contiguous"


__all__ = [
    "MEMORY_FORMATS",
    "apply_memory_format",
    "check_memory_format",
    "has_conv2d",
    "model_memory_format",
    "prefers_channels_last",
    "resolve_memory_format",
]
