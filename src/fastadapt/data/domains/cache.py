"""A verified, deterministic cache for a domain's rendered images, and the split of its classes into parts.

A domain builds ``(images uint8 [M, C, H, W], labels int64 [M], class names)`` once; :func:`cached` writes it to
``<cache>/<name>-<version>.npz`` with a manifest (SHA-256 of the file, counts) and, on later loads, uses the
file only when the manifest and the digest agree: a partial or corrupt cache is rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastadapt.core.errors import DataError

CACHE_ENV = "FASTADAPT_CACHE"  # where rendered domains are kept; default $XDG_CACHE_HOME/fastadapt/domains
PARTS = ("train", "val", "test")
FRACTIONS = (0.7, 0.15, 0.15)  # train / val / test share of a domain's classes

Built = tuple[np.ndarray, np.ndarray, list[str]]


def cache_root() -> Path:
    """``$FASTADAPT_CACHE``, else ``$XDG_CACHE_HOME/fastadapt/domains`` (``~/.cache/...`` by default)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fastadapt" / "domains"


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check(images: np.ndarray, labels: np.ndarray, names: Sequence[str], what: str) -> None:
    if images.dtype != np.uint8 or images.ndim != 4:
        raise DataError(f"{what}: images must be uint8 [M, C, H, W], found {images.dtype} {list(images.shape)}")
    if labels.shape != (len(images),) or (len(labels) and (labels.min() < 0 or labels.max() >= len(names))):
        raise DataError(f"{what}: {len(labels)} labels for {len(images)} images and {len(names)} classes")


def _load(file: Path, manifest: Path, what: str) -> Built | None:
    """The cached arrays, or None when the cache is missing, partial or does not match its manifest."""
    try:
        meta = json.loads(manifest.read_text())
        if _digest(file) != meta["sha256"]:
            return None
        with np.load(file, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"].astype(np.int64)
        names = list(meta["classes"])
        if len(images) != meta["images"] or len(names) != meta["count_classes"]:
            return None
        _check(images, labels, names, what)
    except (OSError, ValueError, KeyError, TypeError, zlib.error, DataError):
        return None
    return images, labels, names


def cached(name: str, version: str, build: Callable[[], Built], root: str | Path | None = None) -> Built:
    """``build()``'s arrays for domain ``name`` at ``version``, from the cache when it verifies, else built and
    cached (written to a temporary file, then renamed, the manifest last)."""
    folder = Path(root) if root is not None else cache_root()
    file, manifest = folder / f"{name}-{version}.npz", folder / f"{name}-{version}.json"
    got = _load(file, manifest, name) if file.exists() and manifest.exists() else None
    if got is not None:
        return got
    images, labels, names = build()
    labels = np.asarray(labels, dtype=np.int64)
    _check(images, labels, names, name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write(folder, file, lambda f: np.savez_compressed(f, images=images, labels=labels))
        meta = {"images": len(images), "count_classes": len(names), "classes": list(names), "sha256": _digest(file)}
        _write(folder, manifest, lambda f: f.write(json.dumps(meta).encode()))
    except OSError as e:
        raise DataError(f"{name}: cannot write its cache in {folder} ({e.strerror or e}); set {CACHE_ENV}") from None
    return images, labels, list(names)


def _write(folder: Path, target: Path, write: Callable[[Any], object]) -> None:
    """``write(f)`` into a temporary file of ``folder``, renamed to ``target`` when complete; the temporary file is
    removed whatever stops the write (an error, a signal), so an interrupted rendering leaves nothing behind."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=target.suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a cache is readable like any other file
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def split_classes(names: Sequence[str], part: str, fractions: tuple[float, float, float] = FRACTIONS) -> list[int]:
    """The indices of the classes of ``part`` (train, val or test): disjoint, deterministic, independent of the
    order the classes were built in (each class goes by a hash of its name)."""
    if part not in PARTS:
        raise DataError(f"part {part!r} is not one of {', '.join(PARTS)}")
    order = sorted(range(len(names)), key=lambda i: hashlib.sha256(names[i].encode()).hexdigest())
    n_train = int(round(fractions[0] * len(order)))
    n_val = int(round(fractions[1] * len(order)))
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, len(order))}
    lo, hi = bounds[part]
    return sorted(order[lo:hi])
