"""Checkpoints you can trust, and the atomic write every file of a run folder goes through.

Atomic (:func:`atomic_write`: a crash mid-write leaves the previous file intact), complete
(:func:`save_checkpoint`: N steps + resume + N steps equals 2N steps bit for bit) and safe to open
(:func:`load_checkpoint` never runs code from the file). A full disk or a folder we may not write to is a
one-line :class:`WriteError` naming the path and the fix; the previous file is left as it was.
"""

from __future__ import annotations

import errno
import os
import random
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, NoReturn

import numpy as np
import torch
from torch import nn

from fastadapt.core.errors import FastAdaptError

FORMAT = "fastadapt-checkpoint-v1"
FAULT_SLEEP_ENV = "FASTADAPT_FAULT_SLEEP_IN_SAVE"  # test hook: seconds to sleep before renaming a checkpoint into place
TEMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")  # tempfile.mkstemp(prefix=".<name>.", suffix=".tmp")


class CheckpointError(FastAdaptError):
    """A checkpoint is missing, truncated, or not a fastadapt checkpoint."""


class WriteError(FastAdaptError):
    """A file could not be written: the disk is full, or the folder is read-only or not ours."""


_CAUSES = {  # errno: (cause, what the user can do besides writing elsewhere)
    errno.ENOSPC: ("no space left on the device", "free space there"),
    errno.EDQUOT: ("disk quota exceeded", "free space there"),
    errno.EACCES: ("permission denied", "fix the folder's permissions"),
    errno.EPERM: ("operation not permitted", "fix the folder's permissions"),
    errno.EROFS: ("the file system is read-only", ""),
}


def write_error(path: str | Path, e: OSError, elsewhere: str = "choose another run.out") -> OSError:
    """The one-line :class:`WriteError` for a full disk, a read-only file system or missing permissions
    while writing ``path``; any other ``OSError`` is returned unchanged (not something a user fixes).
    ``elsewhere`` says how to write somewhere else."""
    if e.errno not in _CAUSES:
        return e
    cause, fix = _CAUSES[e.errno]
    return WriteError(f"cannot write {path}: {cause}; " + " or ".join(x for x in (fix, elsewhere) if x))


def raise_write_error(path: str | Path, e: OSError, elsewhere: str = "choose another run.out") -> NoReturn:
    """Raise :func:`write_error`'s one line for ``e`` (``e`` itself when it is not something a user fixes)."""
    err = write_error(path, e, elsewhere)
    if err is e:
        raise e
    raise err from None


def atomic_write(
    path: str | Path,
    write: Callable[[IO[bytes]], None],
    *,
    sync: bool = False,
    elsewhere: str = "choose another run.out",
) -> Path:
    """Write ``path`` atomically: ``write(f)`` fills a temporary file beside it, which is then renamed over it.

    On any failure the temporary file is removed and ``path`` keeps its old content; a full disk,
    a read-only file system or missing permissions become a one-line :class:`WriteError`
    (``elsewhere`` says how to write somewhere else). ``sync``: flush to disk before the rename (checkpoints).

    Every file of a run folder is written this way: a temporary ``.<name>.<random>.tmp`` beside the target
    (:data:`TEMP_PATTERN`), renamed over it when complete. A process killed mid-write leaves that temporary
    file behind; :func:`stale_temps` finds them so that the next writer of the folder (holding its lock)
    removes them.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
        if sync and os.environ.get(FAULT_SLEEP_ENV):
            time.sleep(float(os.environ[FAULT_SLEEP_ENV]))
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise_write_error(path, e, elsewhere)
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_many(files: dict[Path, bytes], *, elsewhere: str = "choose another run.out") -> list[Path]:
    """Write several files so that either all change or none does (as far as a file system allows).

    Every content is first written to a temporary file beside its target; only when all are on disk
    are they renamed into place (a rename needs no space). A failure while writing removes every
    temporary file and leaves all targets as they were.
    """
    temps: list[tuple[str, Path]] = []
    current: Path | None = None
    try:
        for path, data in files.items():
            current = Path(path)
            current.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{current.name}.", suffix=".tmp", dir=current.parent)
            temps.append((tmp, current))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o666 & ~_umask())
        for tmp, current in temps:
            os.replace(tmp, current)
    except OSError as e:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)
        raise_write_error(current if current is not None else "", e, elsewhere)
    except BaseException:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)
        raise
    return [Path(p) for p in files]


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (``os.umask`` sets it while reading)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def stale_temps(folder: str | Path) -> list[Path]:
    """The temporary files :func:`atomic_write` leaves in ``folder`` when a process dies mid-write."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if TEMP_PATTERN.match(p.name) and p.is_file())


def rng_state() -> dict[str, Any]:
    """Every RNG state the training loop touches, as plain tensors and containers."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
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
    """Write ``payload`` (plus a format tag) to ``path`` atomically and flushed to disk (:func:`atomic_write`).

    The training loop's payload is complete: model and algorithm parameters, optimizer, scheduler, step, config
    and every RNG state (:func:`rng_state`), so that N steps + resume + N steps equals 2N steps bit for bit.

    Test hook: the environment variable ``FASTADAPT_FAULT_SLEEP_IN_SAVE`` (seconds) makes this sleep between
    writing the temporary file and renaming it, so that a fault test can kill the process inside a checkpoint
    write. It is read on every save and is meant for tests only.
    """
    return atomic_write(path, lambda f: torch.save({"format": FORMAT, **payload}, f), sync=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; never executes code from the file.

    A checkpoint holds plain tensors and Python containers only, loaded with ``torch.load(weights_only=True)``,
    so opening one never runs code from it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} not found; train first or pass the run folder that holds checkpoint.pt"
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, pickle refusing a global, not a torch file...
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path} is not a readable fastadapt checkpoint ({reason}); "
            f"it may be truncated or foreign: use another checkpoint"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a fastadapt checkpoint (format tag missing); use a checkpoint written by fastadapt train"
        )
    return payload


def load_weights(algo: nn.Module, payload: dict[str, Any], path: Path) -> None:
    """``algo.load_state_dict(payload["algorithm"])`` with a one-line error when they do not match."""
    state = payload.get("algorithm")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} has no algorithm weights; use a checkpoint written by fastadapt train")
    try:
        algo.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        reason = " ".join(x.strip() for x in first[:2])[:200]
        raise CheckpointError(
            f"{path} does not fit the run's {type(algo).__name__} ({reason}); it is from another config or algorithm"
        ) from None
