"""Omniglot (Lake et al. 2015): 1623 handwritten characters of 50 alphabets, 20 drawings each, bundled at
28x28 (``omniglot28.npz``, built by ``scripts/build_omniglot.py`` from the 105x105 originals: ink = 1,
Lanczos-antialiased resize, as in the MAML / Matching Networks / ProtoNets code). The originals load
from the official archives with :func:`~fastadapt.data.originals.load_omniglot_originals`."""

from __future__ import annotations

import functools
import time
from importlib import resources

import numpy as np
import torch

from fastadapt.core.errors import DataError
from fastadapt.data.classes import ClassDataset

SPLITS: dict[str, dict[str, tuple[int, int]]] = {
    # split -> part -> inclusive range of original character ids
    "vinyals": {"train": (1, 1028), "val": (1029, 1200), "trainval": (1, 1200), "test": (1201, 1623)},
    "lake": {
        "background": (1, 964),
        "background_train": (1, 803),
        "background_val": (804, 964),
        "evaluation": (965, 1623),
    },
}
_DEFAULT_ROTATIONS = {"vinyals": True, "lake": False}
BUNDLED_FILE = "omniglot28.npz"


@functools.lru_cache(maxsize=1)
def _bundled() -> dict[str, np.ndarray]:
    ref = resources.files("fastadapt.data") / BUNDLED_FILE
    try:
        with resources.as_file(ref) as path, np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("images", "char_ids", "characters", "png_sha256")}
    except FileNotFoundError:
        raise DataError(
            f"the bundled Omniglot file {BUNDLED_FILE} is missing; reinstall fastadapt (pip install --force-reinstall "
            "fastadapt)"
        ) from None
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"the bundled Omniglot file {BUNDLED_FILE} is corrupted ({e}); reinstall fastadapt") from None
    if arrays["images"].shape != (1623, 20, 28, 28):
        raise DataError(
            f"the bundled Omniglot file has images of shape {arrays['images'].shape}, expected (1623, 20, 28, 28); "
            "reinstall fastadapt"
        )
    return arrays


def bundled_png_digests() -> dict[str, str]:
    """SHA-256 (hex) of every original PNG, keyed ``images_background/<Alphabet>/<characterNN>/<id>_<k>.png``."""
    z = _bundled()
    out = {}
    for row, (cid, name) in enumerate(zip(z["char_ids"].tolist(), z["characters"].tolist())):
        top = "images_background" if cid <= 964 else "images_evaluation"
        for k in range(20):
            out[f"{top}/{name}/{cid:04d}_{k + 1:02d}.png"] = z["png_sha256"][row, k].tobytes().hex()
    return out


def rotate_classes(images: torch.Tensor, names: list[str]) -> tuple[torch.Tensor, list[str]]:
    """Each class of ``images [C, E, H, W]`` rotated by 0/90/180/270 degrees as 4 classes ``[4C, E, H, W]``.

    Class ``4c + r`` is class ``c`` rotated by ``90 r`` degrees counter-clockwise.
    """
    rot = torch.stack([torch.rot90(images, r, dims=(-2, -1)) for r in range(4)], dim=1)
    return rot.reshape(-1, *images.shape[1:]), [f"{n}/rot{90 * r}" for n in names for r in range(4)]


def load_omniglot(split: str = "vinyals", part: str = "train", rotations: bool | None = None) -> ClassDataset:
    """The bundled 28x28 Omniglot as a :class:`ClassDataset` of uint8 ``[M, 1, 28, 28]`` images (ink bright).

    Args:
        split: ``"vinyals"`` or ``"lake"``.
        part: ``train``/``val``/``trainval``/``test`` (vinyals) or ``background``/``evaluation`` (lake).
        rotations: treat the 4 rotations of each character as classes; default True for vinyals,
            False for lake.

    Splits:

    * ``vinyals`` (Vinyals et al. 2016; used by MAML, Matching and Prototypical Networks): characters
      with original ids 1..1200 for training (``train`` = ids 1..1028, ``val`` = ids 1029..1200, the
      ProtoNets sizes; ``trainval`` = both), ids 1201..1623 (423 characters, from Gurmukhi/character42
      on) for ``test``. With ``rotations=True`` (the default for this split) each character rotated by
      0/90/180/270 degrees is a class of its own: 4800 training classes, 1692 test classes.
    * ``lake`` (Lake et al. 2015): ``background`` = the 30 background alphabets (964 characters),
      ``evaluation`` = the 20 evaluation alphabets (659 characters); no rotations by default.
      ``background_train`` / ``background_val`` = the first 25 / last 5 background alphabets (803 / 161
      characters, from N_Ko on), to validate without touching the evaluation alphabets.

    Class names are ``<Alphabet>/<characterNN>`` (``/rot90`` etc. appended for rotations), so the
    alphabet of a class is the part of its name before the first ``/`` (``data.episode_scope = "alphabet"``).
    """
    if split not in SPLITS:
        raise DataError(f"unknown Omniglot split {split!r}; choose one of {', '.join(SPLITS)}")
    if part not in SPLITS[split]:
        raise DataError(f"unknown part {part!r} of Omniglot split {split!r}; choose one of {', '.join(SPLITS[split])}")
    lo, hi = SPLITS[split][part]
    rot = _DEFAULT_ROTATIONS[split] if rotations is None else rotations
    z = _bundled()
    rows = slice(lo - 1, hi)  # rows are in id order, id = row + 1
    images = torch.from_numpy(z["images"][rows])
    names = [str(n) for n in z["characters"][rows]]
    if rot:
        images, names = rotate_classes(images, names)
    c, e = images.shape[:2]
    data = images.reshape(c * e, 1, *images.shape[2:]).contiguous()
    offsets = torch.arange(0, c * e + 1, e, dtype=torch.long)
    return ClassDataset(data, offsets, tuple(names), f"omniglot-{split}-{part}{'-rot' if rot else ''}")


def load_time_seconds() -> float:
    """Seconds to read the bundled file from disk into memory (cache cleared first)."""
    _bundled.cache_clear()
    t0 = time.perf_counter()
    _bundled()
    return time.perf_counter() - t0
