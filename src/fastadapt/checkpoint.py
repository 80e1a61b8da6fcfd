"""Checkpoints you can trust.

* Atomic: written to a temporary file in the same folder, flushed to disk, then renamed over the
  old one; a crash mid-write leaves the previous checkpoint intact.
* Complete: model and algorithm parameters, optimizer, scheduler, step, config and every RNG state,
  so that N steps + resume + N steps equals 2N steps bit for bit.
* Safe to open: plain tensors and Python containers only, loaded with ``torch.load(weights_only=True)``,
  so opening a checkpoint never runs code from it.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastadapt.errors import FastAdaptError

FORMAT = "fastadapt-checkpoint-v1"


class CheckpointError(FastAdaptError):
    """A checkpoint is missing, truncated, or not a fastadapt checkpoint."""


def rng_state() -> dict[str, Any]:
    """Every RNG state the training loop touches, as plain tensors and containers."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": list(random.getstate()[1]) + [random.getstate()[0]] + [random.getstate()[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    py = state["python"]
    random.setstate((py[-2], tuple(py[:-2]), py[-1]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus a format tag) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; never executes code from the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; train first or pass the run folder that holds checkpoint.pt")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, pickle refusing a global, not a torch file...
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable fastadapt checkpoint ({reason}); it may be truncated or foreign: use another checkpoint") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fastadapt checkpoint (format tag missing); use a checkpoint written by fastadapt train")
    return payload
