"""The arithmetic precision of training and evaluation (``run.precision``): ``"fp32"``, ``"bf16"`` or ``"auto"``
(:func:`resolve_precision` says what ``"auto"`` becomes, :func:`autocast` what each runs in).

The meta-gradient's error of bf16 against fp32 is bounded in ``tests/test_perf.py``.
"""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager, nullcontext

import torch

from fastadapt.core.errors import ConfigError
from fastadapt.runtime.hardware import BF16_FLAGS, cpu_info, native_bf16

PRECISIONS = ("fp32", "bf16", "auto")
EMULATED_BF16_SLOWDOWN = "6-9x"  # bf16 against fp32 on an AMD EPYC Zen 3 (AVX2, no native bf16), issue 32
_warned: set[str] = set()  # the devices already warned about emulated bf16 (once per process)


class EmulatedBF16Warning(UserWarning):
    """bf16 asked for on a CPU that has no bf16 instructions: every product is emulated, several times slower."""


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a one-line :class:`ConfigError`."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r} is unknown; choose one of {', '.join(PRECISIONS)}")
    return precision


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """``"fp32"`` or ``"bf16"``: ``"auto"`` is bf16 where ``device`` computes it natively
    (:func:`fastadapt.runtime.hardware.native_bf16`: a CPU with ``avx512_bf16`` / ``amx_bf16``, CUDA compute
    capability >= 8.0), else fp32. An explicit ``"bf16"`` on a CPU without native bf16 is kept and warns once per
    process (:class:`EmulatedBF16Warning`, with the slowdown measured on such a CPU)."""
    check_precision(precision)
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16" and torch.device(device).type == "cpu" and "cpu" not in _warned and not native_bf16("cpu"):
        _warned.add("cpu")
        info = cpu_info()
        why = (
            f"oneDNN capped at {info['onednn_max_isa']}"
            if info.get("onednn_max_isa")
            else "no " + " / ".join(BF16_FLAGS)
        )
        warnings.warn(
            f"run.precision='bf16' on a CPU without native bf16 ({info['model']}: {why}) "
            f"is emulated and about {EMULATED_BF16_SLOWDOWN} slower than fp32 (measured on an AMD EPYC Zen 3); use "
            f"run.precision='auto' or 'fp32'",
            EmulatedBF16Warning,
            stacklevel=2,
        )
    return precision


def autocast(precision: str, device: torch.device | str = "cpu") -> AbstractContextManager[object]:
    """The context that runs ``precision`` on ``device`` (``"auto"`` resolved by :func:`resolve_precision`): nothing
    for fp32, bf16 autocast for bf16.

    * ``"fp32"``: every operation in the parameters' dtype (float32 unless the user chose otherwise).
    * ``"bf16"``: ``torch.autocast(device_type, dtype=torch.bfloat16)`` around ``meta_loss`` (and the
      inner loop inside it) and around evaluation: matrix products and convolutions run in bfloat16,
      reductions, losses and normalisations in float32 (torch's autocast op lists); parameters, their
      gradients and the optimizer state stay float32, and the backward pass runs outside the autocast
      region, as torch recommends.
    """
    if resolve_precision(precision, device) == "fp32":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
