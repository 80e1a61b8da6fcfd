"""Weights files: safetensors read and written without a dependency, and pretrained weights loaded into a
model (:func:`load_pretrained`)."""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastadapt.core.errors import ConfigError, DataError

# safetensors dtype names <-> torch dtypes
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_NAMES = {v: k for k, v in DTYPES.items()}
HEADER_LIMIT = (
    100 * 2**20
)  # a header larger than this is not a weights file (the safetensors package refuses past 100 MB too)
EXPORT_FORMAT = "fastadapt-weights/1"  # the metadata "format" of an exported run's weights (fastadapt export)
HEAD_PREFIX = "head."  # the output head a model gets for its algorithm; a pretrained encoder may leave it out


def save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``tensors`` (name -> tensor, any device) to ``path`` in the safetensors format; returns the path.

    The `safetensors <https://huggingface.co/docs/safetensors>`_ format is an 8-byte little-endian header
    length ``n``, ``n`` bytes of JSON header ``{name: {"dtype", "shape", "data_offsets": [begin, end]},
    "__metadata__": {str: str}}``, then the tensors' bytes, little-endian, row-major. It holds no code, so
    loading one runs nothing from the file. Written and read here in plain Python (the ``safetensors``
    package reads what this writes and the other way round: ``tests/test_weights.py``).

    ``metadata``: string pairs kept in the header (``__metadata__``). Tensors are written in name order,
    each one contiguous and on its own (shared storage is copied).
    """
    if sys.byteorder != "little":  # pragma: no cover
        raise ConfigError("safetensors is little-endian; writing it on a big-endian machine is not supported")
    header: dict[str, Any] = {}
    if metadata:
        bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise ConfigError(f"safetensors metadata must be strings; {bad[0]!r} is not")
        header["__metadata__"] = dict(metadata)
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name]
        if not isinstance(t, torch.Tensor):
            raise ConfigError(f"{name} is a {type(t).__name__}, not a tensor; safetensors holds tensors only")
        if t.dtype not in _NAMES:
            raise ConfigError(
                f"{name} has dtype {t.dtype}, which safetensors has no name for here; convert it (e.g. to float32)"
            )
        data = _le_bytes(t.detach().to("cpu").contiguous())
        header[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the tensors start 8-byte aligned, as the reference writer does
    path = Path(path)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for data in blobs:
            f.write(data)
    return path


def _le_bytes(t: torch.Tensor) -> bytes:
    """The bytes of a contiguous CPU tensor (little-endian: the byte order of every platform torch ships wheels for)."""
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors (name -> CPU tensor) and the metadata of a safetensors file; one-line :class:`DataError` for anything
    else."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"weights file {path} not found; check the path")
    raw = path.read_bytes()
    if len(raw) < 8:
        raise DataError(f"{path} is not a safetensors file (only {len(raw)} bytes)")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > min(HEADER_LIMIT, len(raw) - 8):
        raise DataError(f"{path} is not a safetensors file (header length {n} does not fit its {len(raw)} bytes)")
    try:
        header = json.loads(raw[8 : 8 + n])
    except ValueError:
        raise DataError(f"{path} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise DataError(f"{path} is not a safetensors file (its header is not a table)")
    metadata = header.pop("__metadata__", None) or {}
    data = memoryview(raw)[8 + n :]
    out = {}
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = DTYPES[info["dtype"]], [int(s) for s in info["shape"]], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise DataError(
                f"{path}: tensor {name!r} has an unreadable entry {str(info)[:80]}; "
                "the file is damaged or not safetensors"
            ) from None
        numel = 1
        for s in shape:
            numel *= s
        size = numel * torch.empty((), dtype=dtype).element_size()
        if not (0 <= begin <= end <= len(data)) or end - begin != size or min(shape, default=0) < 0:
            raise DataError(
                f"{path}: tensor {name!r} ({info['dtype']} {shape}) does not fit its bytes [{begin}, {end}); "
                "the file is truncated or damaged"
            )
        buf = bytearray(data[begin:end])
        t = torch.frombuffer(buf, dtype=torch.uint8) if size else torch.empty(0, dtype=torch.uint8)
        t = t.view(dtype).reshape(shape) if size else torch.empty(shape, dtype=dtype)
        out[name] = t
    return out, {str(k): str(v) for k, v in metadata.items()}


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (name -> CPU tensor)."""
    return read_safetensors(path)[0]


def read_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a weights file: ``.safetensors``, or a torch file (``torch.save`` of a state dict, of a
    dict with ``state_dict`` or ``model``, or a fastadapt checkpoint, whose ``algorithm.model.*`` tensors are
    the model's). An exported run's ``weights.safetensors`` gives its model's tensors too.

    Torch files are read with ``weights_only=True``: no code runs from them.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        tensors, metadata = read_safetensors(path)
        if metadata.get("format") == EXPORT_FORMAT:  # an exported run: the algorithm's model
            tensors = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        return tensors
    if not path.is_file():
        raise DataError(
            f"weights file {path} not found; check the path (model.weights takes a .safetensors or a torch .pt/.pth "
            "file)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, truncated, a pickle that asks for code
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise DataError(
            f"{path} is not a readable torch weights file ({reason}); pass a state dict saved with torch.save or a "
            ".safetensors file"
        ) from None
    if isinstance(obj, dict) and isinstance(
        obj.get("algorithm"), dict
    ):  # a fastadapt checkpoint: the algorithm's model
        obj = {k[len("model.") :]: v for k, v in obj["algorithm"].items() if k.startswith("model.")}
    elif isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if (
        not isinstance(obj, dict)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise DataError(
            f"{path} holds no state dict (name -> tensor); save one with torch.save(model.state_dict(), path)"
        )
    return obj


def load_pretrained(model: nn.Module, path: str | Path) -> list[str]:
    """Copy the weights of ``path`` into ``model`` (in place, before training); returns the model keys left as
    initialised.

    ``model.weights = "encoder.safetensors"`` (or a torch file) in a config. Strict: a tensor of the file
    that the model lacks, a shape that differs, or a model tensor missing from the file (other than the
    output head's, ``head.*``, which the algorithm sizes for its tasks: an encoder trained elsewhere has
    none) is a one-line :class:`ConfigError` naming the key.
    """
    state = read_state_file(path)
    own = model.state_dict()
    for key, mine in own.items():  # in the model's order: the first layer that differs is named
        if key in state and tuple(state[key].shape) != tuple(mine.shape):
            raise ConfigError(
                f"model.weights={str(path)!r}: {key!r} has shape {list(state[key].shape)} in the file and "
                f"{list(mine.shape)} "
                f"in the model; pass weights of a model built with the same options"
            )
    for key in state:
        if key not in own:
            raise ConfigError(
                f"model.weights={str(path)!r}: the file has {key!r}, which the model lacks "
                f"(it has {', '.join(list(own)[:4])}{', ...' if len(own) > 4 else ''}); pass weights of this model"
            )
    missing = [k for k in own if k not in state]
    needed = [k for k in missing if not k.startswith(HEAD_PREFIX)]
    if needed:
        raise ConfigError(
            f"model.weights={str(path)!r}: the file has no {needed[0]!r} ({len(needed)} model tensor(s) missing); "
            f"pass weights of this model"
        )
    with torch.no_grad():
        for key, t in state.items():
            own[key].copy_(t)
    return missing


def exported_payload(path: str | Path) -> dict[str, Any]:
    """An exported run's weights file as :func:`fastadapt.runs.load_run` reads a checkpoint:
    ``{"algorithm": state, "step": n}``."""
    tensors, metadata = read_safetensors(path)
    step = metadata.get("step", "")
    return {"algorithm": tensors, "step": int(step) if step.isdigit() else None}


__all__ = [
    "DTYPES",
    "EXPORT_FORMAT",
    "exported_payload",
    "load_pretrained",
    "load_safetensors",
    "read_safetensors",
    "read_state_file",
    "save_safetensors",
]
