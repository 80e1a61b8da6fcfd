"""Normalisation layers with a separate affine step, for exact higher derivatives under ``torch.func.vmap``.

In this torch version the second derivative of the fused ``batch_norm``, ``instance_norm`` and
``layer_norm`` kernels under ``vmap`` is wrong when the layer has an affine weight (docs/PERFORMANCE.md,
"The inner loop"); :class:`SplitAffineNorms` runs them without it and applies ``* weight + bias`` apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode


def _affine(out: Tensor, weight: Tensor | None, bias: Tensor | None, per_channel: bool = True) -> Tensor:
    """``out * weight + bias``, with ``weight``/``bias`` ``[C]`` broadcast over dimension 1 when ``per_channel``."""
    shape = [1, -1] + [1] * (out.ndim - 2) if per_channel else None
    if weight is not None:
        out = out * (weight.reshape(shape) if shape else weight)
    if bias is not None:
        out = out + (bias.reshape(shape) if shape else bias)
    return out


def split_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """``F.batch_norm`` as the fused normalisation without affine, then ``* weight + bias``.

    ``training``: batch statistics (biased variance over all but dimension 1); running statistics
    are neither used nor updated. Otherwise the running statistics normalise.
    """
    if training:
        out = F.batch_norm(input, None, None, None, None, True, 0.0, eps)
    else:
        out = F.batch_norm(input, running_mean, running_var, None, None, False, 0.0, eps)
    return _affine(out, weight, bias)


def split_instance_norm(
    input: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """``F.instance_norm`` as the fused normalisation without affine, then ``* weight + bias``; running statistics are
    not updated."""
    if use_input_stats:
        out = F.instance_norm(input, None, None, None, None, True, 0.0, eps)
    else:
        out = F.instance_norm(input, running_mean, running_var, None, None, False, 0.0, eps)
    return _affine(out, weight, bias)


def split_layer_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """``F.layer_norm`` as the fused normalisation without affine, then ``* weight + bias``."""
    return _affine(F.layer_norm(input, normalized_shape, None, None, eps), weight, bias, per_channel=False)


_SPLIT: dict[Callable[..., Tensor], Callable[..., Tensor]] = {
    F.batch_norm: split_batch_norm,
    F.instance_norm: split_instance_norm,
    F.layer_norm: split_layer_norm,
}


class SplitAffineNorms(TorchFunctionMode):
    """Within this mode, ``F.batch_norm``, ``F.instance_norm`` and ``F.layer_norm`` (hence
    ``nn.BatchNorm*``, ``nn.InstanceNorm*``, ``nn.LayerNorm``) run as the fused normalisation
    without its affine parameters followed by a separate multiply and add.

    Used around ``vmap``, where the fused kernels' second derivatives with respect to an affine
    weight are wrong in this torch version (without the weight they are exact); every other function
    runs unchanged, and nothing outside the ``with`` block is affected.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        return _SPLIT.get(func, func)(*args, **(kwargs or {}))
