"""What every predictor shares: the check of a labelled batch given to ``update``."""

from __future__ import annotations

import torch
from torch import Tensor

from fastadapt.core.errors import DataError


def check_update(x: Tensor, y: Tensor, like_x: Tensor, like_y: Tensor, what: str = "update") -> None:
    """One-line :class:`DataError` unless ``x [B, *x_shape]``, ``y`` are a labelled batch like
    ``like_x``, ``like_y`` (a predictor's window): same example shape (the run's input shape), matching
    batch sizes, integer labels >= 0 for a classifier / finite float targets for a regressor, finite inputs."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise DataError(f"{what}: x and y must be tensors, found {type(x).__name__} and {type(y).__name__}")
    if tuple(x.shape[1:]) != tuple(like_x.shape[1:]):
        raise DataError(
            f"{what}: inputs have shape {list(x.shape[1:])} per example; this predictor was adapted on {list(like_x.shape[1:])} "
            f"(the shape its run was trained for); convert the data to that shape"
        )
    if y.shape[:1] != x.shape[:1] or tuple(y.shape[1:]) != tuple(like_y.shape[1:]):
        raise DataError(
            f"{what}: {x.shape[0]} inputs with targets of shape {list(y.shape)}; expected [{x.shape[0]}"
            f"{''.join(f', {s}' for s in like_y.shape[1:])}]"
        )
    if like_y.is_floating_point():
        if not y.is_floating_point():
            raise DataError(f"{what}: targets are {y.dtype}; this predictor regresses float targets")
        bad = ~torch.isfinite(y)
        if bool(bad.any()):
            raise DataError(
                f"{what}: target {int(bad.flatten().nonzero()[0])} is {float(y.flatten()[bad.flatten()][0])}; targets must be finite "
                f"(the predictor's state is unchanged)"
            )
    else:
        if y.is_floating_point() or y.dtype == torch.bool:
            raise DataError(f"{what}: labels are {y.dtype}; this predictor classifies: use integer labels")
        if y.numel() and int(y.min()) < 0:
            raise DataError(f"{what}: label {int(y.min())} is negative; labels are class indices 0, 1, ...")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise DataError(f"{what}: inputs hold NaN or infinite values (the predictor's state is unchanged)")
