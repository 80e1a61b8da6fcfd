"""The arithmetic precision of training and evaluation (``run.precision``): ``"fp32"`` or ``"bf16"``
(:func:`autocast` says what each runs in).

The meta-gradient's error of bf16 against fp32 is bounded in ``tests/test_perf.py``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from fastadapt.core.errors import ConfigError

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a one-line :class:`ConfigError`."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r} is unknown; choose one of {', '.join(PRECISIONS)}")
    return precision


def autocast(precision: str, device: torch.device | str = "cpu") -> AbstractContextManager[object]:
    """The context that runs ``precision`` on ``device``: nothing for ``"fp32"``, bf16 autocast for ``"bf16"``.

    * ``"fp32"``: every operation in the parameters' dtype (float32 unless the user chose otherwise).
    * ``"bf16"``: ``torch.autocast(device_type, dtype=torch.bfloat16)`` around ``meta_loss`` (and the
      inner loop inside it) and around evaluation: matrix products and convolutions run in bfloat16,
      reductions, losses and normalisations in float32 (torch's autocast op lists); parameters, their
      gradients and the optimizer state stay float32, and the backward pass runs outside the autocast
      region, as torch recommends.
    """
    if check_precision(precision) == "fp32":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
