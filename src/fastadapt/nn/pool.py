"""Max-pooling with torch's values and gradients, faster on the CPU for NCHW inputs.

PyTorch's CPU kernel for ``max_pool2d`` on an NCHW (contiguous) tensor is scalar, and its channels-last kernel is
vectorised over channels, so that on a Conv4 block's output (64 channels) pooling a channels-last copy and converting
the result back is faster than pooling in place (``benchmarks/pool.py`` measures it; docs/PERFORMANCE.md has the
figures). :func:`max_pool2d` does that and returns the values in NCHW, so that nothing else in the model changes
layout (convolutions and BatchNorm stay in NCHW, where their float32 results are the reference's; see
fastadapt.runtime.layout for what a whole-model channels-last layout changes). It saves only the indices for the
backward pass (``F.max_pool2d`` saves the input as well), which scatters the output gradient to them.

Exactness: both kernels scan a window row by row and keep the first maximum (a NaN wins), so the values and indices
are torch's own (tested with ties and NaNs); with non-overlapping windows (stride = kernel, no padding or dilation:
the only case taken) every input element receives the gradient of at most one output, so the scatter gives
max-pooling's gradient bit for bit, and its own gradient (a gather by the same indices) the second-order one.
Anything else (overlapping windows, padding, channels-last or non-CPU inputs, tensors of fewer than
:data:`SMALLEST` elements, tensors inside ``torch.func`` transforms, ``torch.compile`` or ``torch.jit.trace``) goes to
``F.max_pool2d`` unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MaxPool2d", "max_pool2d"]

# Below this many elements the tensor sits in the cache, where torch's NCHW kernel is as fast, and the layout
# conversions and the autograd.Function's Python cost more than they save.
SMALLEST = 32768


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def _fast_applies(x: Tensor, kernel: tuple[int, int]) -> bool:
    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and x.is_floating_point()
        and not torch._C._functorch.is_functorch_wrapped_tensor(x)  # vmap/grad transforms: the plain kernel
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and x.is_contiguous()  # NCHW; a channels-last input already gets the fast kernel
        and x.shape[2] >= kernel[0]
        and x.shape[3] >= kernel[1]
        and x.numel() >= SMALLEST
    )


class _IndexedMaxPool(torch.autograd.Function):
    """Forward: torch's channels-last kernel (values and first-maximum indices), back in NCHW. Backward: the output
    gradient scattered to those indices (differentiable: its own gradient is a gather, the second order). Saves the
    indices only, not the input (``F.max_pool2d`` saves both)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, kernel: tuple[int, int]) -> Tensor:
        values, index = F.max_pool2d(x.contiguous(memory_format=torch.channels_last), kernel, return_indices=True)
        n, c, h, w = index.shape
        ctx.save_for_backward(index.contiguous().view(n, c, h * w))  # per plane h * W + w, as in NCHW
        ctx.size = x.shape
        return values.contiguous()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (index,) = ctx.saved_tensors
        n, c, h, w = grad.shape
        flat = grad.contiguous().view(n, c, h * w)
        grad_x = flat.new_zeros(n, c, ctx.size[2] * ctx.size[3]).scatter_(2, index, flat)  # in place: one buffer
        return grad_x.view(ctx.size), None


def max_pool2d(x: Tensor, kernel_size: int | tuple[int, int]) -> Tensor:
    """``F.max_pool2d(x, kernel_size)`` (stride = kernel, no padding): the same values and gradients (first and
    second order), through the channels-last kernel's indices where that is faster (module docstring)."""
    kernel = _pair(kernel_size)
    if not _fast_applies(x, kernel):
        return F.max_pool2d(x, kernel)
    return _IndexedMaxPool.apply(x, kernel)


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` whose non-overlapping case (``stride`` = ``kernel_size``, no padding, dilation 1, no
    indices, floor mode) runs :func:`max_pool2d`; every other configuration is ``nn.MaxPool2d``'s own forward."""

    def forward(self, x: Tensor) -> Tensor:
        stride = self.kernel_size if self.stride is None else self.stride
        simple = (
            _pair(stride) == _pair(self.kernel_size)
            and _pair(self.padding) == (0, 0)
            and _pair(self.dilation) == (1, 1)
            and not self.return_indices
            and not self.ceil_mode
        )
        return max_pool2d(x, self.kernel_size) if simple else super().forward(x)
