"""``run.device``: its spelling, what ``"auto"`` means on this machine, and whether this machine has it."""

from __future__ import annotations

from fastadapt.core.errors import ConfigError

DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")  # run.device: a type, optionally :index


def _short(value: str, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_device_name(device: str) -> None:
    """A one-line error unless ``device`` is ``type`` or ``type:index`` for a type fastadapt can train on.

    Only the spelling is checked here (a config is replayed on other machines); :func:`check_device`
    checks that this machine has it.
    """
    if device == "auto":
        return
    kind, _, index = device.partition(":")
    if kind not in DEVICE_TYPES or (index and not (index.isascii() and index.isdigit() and len(index) <= 4)):
        raise ConfigError(
            f"run.device={_short(device)} is not a device; write auto, {', '.join(DEVICE_TYPES)}, or a type with an "
            "index: cuda:1"
        )


def resolve_device(device: str) -> str:
    """``run.device`` on this machine: ``"auto"`` becomes ``"cuda"`` when a CUDA device is visible, else ``"mps"`` when
    Apple's GPU is available, else ``"cpu"``; any other name is returned as it is. The one place "auto" is decided
    (:func:`check_device` and :func:`fastadapt.runtime.distributed.local_device` call it)."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def check_device(device: str) -> None:
    """A one-line error unless this machine has ``device`` (``run.device``): CUDA built and visible, the index
    present, MPS available. ``"auto"`` always passes (it resolves to what is there)."""
    import torch

    check_device_name(device)
    device = resolve_device(device)
    kind, _, index = device.partition(":")
    fix = "use run.device=auto (or cpu), or another machine"
    if kind == "cuda":
        if not torch.backends.cuda.is_built():
            raise ConfigError(f"run.device={device!r}: this torch ({torch.__version__}) is built without CUDA; {fix}")
        count = torch.cuda.device_count()
        if count == 0:
            raise ConfigError(f"run.device={device!r}: no CUDA device is visible (CUDA_VISIBLE_DEVICES, driver); {fix}")
        if index and int(index) >= count:
            raise ConfigError(
                f"run.device={device!r}: this machine has {count} CUDA device(s), cuda:0 .. cuda:{count - 1}; choose "
                "one of them"
            )
    elif kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"run.device={device!r}: MPS (Apple GPUs) is not available here; {fix}")
    elif kind == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise ConfigError(f"run.device={device!r}: no Intel XPU is available here; {fix}")
    elif kind in ("mps", "xpu") and index and int(index) != 0:
        raise ConfigError(f"run.device={device!r}: only {kind}:0 is supported; write run.device={kind}")
