"""What the machine computes natively: the CPU's model and the instruction-set flags that decide a fast path
(:func:`cpu_info`), and whether a device computes bfloat16 natively (:func:`native_bf16`), within the instruction set
oneDNN is allowed to use (``ONEDNN_MAX_CPU_ISA``, :func:`onednn_isa_cap`).

Every speed figure and every run's provenance names them (``config.json``'s ``provenance.hardware``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

CPUINFO = Path("/proc/cpuinfo")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # a CPU with either computes bfloat16 products in hardware
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", *BF16_FLAGS, "amx_tile")
CUDA_BF16_CAPABILITY = (8, 0)  # Ampere and later: bfloat16 tensor cores
ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")  # oneDNN's cap on the instructions it uses (its older name second)
# oneDNN ISA caps below AVX512_CORE_BF16: under them convolutions and matrix products in bfloat16 fall back to
# emulation (measured here: a bf16 Conv4 convolution 21x slower than fp32 under ONEDNN_MAX_CPU_ISA=AVX2 on a Zen 5)
NO_BF16_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


def read_cpuinfo() -> str:
    """The text of ``/proc/cpuinfo`` ("" where there is none: macOS, Windows, a sandbox). Tests replace it."""
    try:
        return CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_info() -> dict[str, Any]:
    """The CPU's ``model`` (``/proc/cpuinfo``'s first ``model name``, else ``platform.processor()``), its ``flags``
    among :data:`RELEVANT_FLAGS` (in that order), ``bf16_native`` (one of :data:`BF16_FLAGS` is there) and
    ``capability``, the vector instruction set torch's CPU kernels dispatch to
    (``torch.backends.cpu.get_cpu_capability()``: ``"AVX2"``, ``"AVX512"``, ...)."""
    import platform

    model, flags = "", set()
    for line in read_cpuinfo().splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:  # x86, ARM
            flags = set(value.split())
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = ""
    cap = onednn_isa_cap()
    info = {
        "model": model or platform.processor() or platform.machine(),
        "flags": [f for f in RELEVANT_FLAGS if f in flags],
        "bf16_native": any(f in flags for f in BF16_FLAGS) and cap not in NO_BF16_ISAS,
        "capability": capability,
    }
    if cap:
        info["onednn_max_isa"] = cap
    return info


def onednn_isa_cap() -> str:
    """The instruction-set cap set for oneDNN by ``ONEDNN_MAX_CPU_ISA`` (or ``DNNL_MAX_CPU_ISA``), upper case; ""
    when none is set. Under a cap of :data:`NO_BF16_ISAS` the CPU's bf16 instructions go unused: bfloat16 is
    emulated whatever the flags say."""
    for name in ISA_ENV:
        value = os.environ.get(name, "").strip().upper()
        if value:
            return value
    return ""


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` computes bfloat16 natively: a CPU with ``avx512_bf16`` or ``amx_bf16`` whose oneDNN is not
    capped below them (:func:`cpu_info`, :func:`onednn_isa_cap`), a CUDA device of compute capability >= 8.0; False
    elsewhere (MPS, other devices: not measured)."""
    device = torch.device(device)
    if device.type == "cpu":
        return bool(cpu_info()["bf16_native"])
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_capability(device) >= CUDA_BF16_CAPABILITY
    return False


def hardware_record(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What a run's provenance records of the machine: :func:`cpu_info`, and for a CUDA device its name and compute
    capability."""
    out: dict[str, Any] = {"cpu": cpu_info()}
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device)
        out["cuda"] = {"name": torch.cuda.get_device_name(device), "capability": f"{major}.{minor}"}
    return out


__all__ = [
    "BF16_FLAGS",
    "NO_BF16_ISAS",
    "RELEVANT_FLAGS",
    "cpu_info",
    "hardware_record",
    "native_bf16",
    "onednn_isa_cap",
    "read_cpuinfo",
]
