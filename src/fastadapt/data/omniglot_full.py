"""Omniglot at full resolution (the 105x105 originals, or resized once to ``size``), with the bundled 28x28
data's splits, parts, class order, rotations and names; and Lake's drawer-paired trials for both."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastadapt.core.errors import DataError
from fastadapt.data.classes import ClassDataset, conform_images
from fastadapt.data.domains.cache import cache_root, cached
from fastadapt.data.omniglot import _DEFAULT_ROTATIONS, SPLITS, _bundled, rotate_classes
from fastadapt.data.originals import file_digest, load_omniglot_originals
from fastadapt.data.sampler import DRAWERS, EpisodeSampler, class_groups

ORIGINAL_SIZE = 105
DEFAULT_SIZE = 105  # the drawings people and BPL saw: no resampling at all, pixel-identical to Lake's runs
MIN_SIZE = 28
CACHE_NAME = "omniglot-full"
CACHE_VERSION = "v1"  # bump when the pixels a size gives change
PACKED_SHA256 = {  # the packed originals of ../shared/data/omniglot (its README; SHA256SUMS)
    "images_background.npz": "55071da20ebc40734fc1b3330f856cddb502530fb441d0777083f95fde72648c",
    "images_evaluation.npz": "187e1f5e7dcfbc00b542924d5ce270daf6b823607bcedbcd81cd04f3f568c15e",
}
_CHUNK = 256  # characters resized at a time (bounds the float32 copy the conversion makes)


def default_root() -> Path:
    """Where the originals are looked for when ``data.options.root`` is not set: ``<cache>/../omniglot``
    (``~/.cache/fastadapt/omniglot`` by default)."""
    return cache_root().parent / "omniglot"


def _packed(folder: Path) -> np.ndarray:
    """The packed originals (``images_background.npz``, ``images_evaluation.npz``), each file checked against its
    SHA-256, as uint8 ``[1623, 20, 105, 105]`` in character-id order, ink = 255."""
    names = _bundled()["characters"]
    out = np.empty((len(names), 20, ORIGINAL_SIZE, ORIGINAL_SIZE), dtype=np.uint8)
    for file, want in PACKED_SHA256.items():
        got = file_digest(folder / file)
        if got != want:
            raise DataError(f"SHA-256 of {folder / file} is {got}, expected {want}; use the verified packed originals")
        with np.load(folder / file, allow_pickle=False) as z:
            rows = z["char_ids"].astype(np.int64) - 1
            if [str(n) for n in z["characters"]] != [str(n) for n in names[rows]]:
                raise DataError(f"{folder / file}: character names differ from the bundled Omniglot's")
            pixels = np.unpackbits(z["images"], axis=-1, count=ORIGINAL_SIZE)  # 1 = white background
            out[rows] = (1 - pixels) * np.uint8(255)  # ink bright, as the bundled 28x28
    return out


def _official(folder: Path, download: bool) -> np.ndarray:
    """The official archives through :func:`load_omniglot_originals` (every PNG checked against the bundled
    manifest), in character-id order."""
    row = {str(n): i for i, n in enumerate(_bundled()["characters"])}
    out = np.empty((len(row), 20, ORIGINAL_SIZE, ORIGINAL_SIZE), dtype=np.uint8)
    for background in (True, False):
        data = load_omniglot_originals(folder, background=background, download=download)
        for c, name in enumerate(data.names):
            out[row[name]] = data.examples(c)[:, 0].numpy()  # drawings _01.._20 in file-name order
    return out


def _originals(root: Path, download: bool) -> np.ndarray:
    if all((root / f).is_file() for f in PACKED_SHA256):
        return _packed(root)
    return _official(root, download)


def _resized(images: np.ndarray, size: int) -> np.ndarray:
    """``images [N, 20, 105, 105]`` at ``size x size`` by the engine's one conversion rule (:func:`conform_images`:
    bilinear, antialiased, rounded to uint8), a chunk of characters at a time."""
    if size == images.shape[-1]:
        return images
    out = np.empty((*images.shape[:2], size, size), dtype=np.uint8)
    for lo in range(0, len(images), _CHUNK):
        x = torch.from_numpy(images[lo : lo + _CHUNK]).reshape(-1, 1, *images.shape[2:])
        chunk = ClassDataset(x, torch.tensor([0, len(x)]), ("chunk",), "omniglot-full")
        out[lo : lo + _CHUNK] = conform_images(chunk, size).data.reshape(-1, images.shape[1], size, size).numpy()
    return out


@functools.lru_cache(maxsize=1)
def full_images(size: int = DEFAULT_SIZE, root: str | None = None, download: bool = False) -> np.ndarray:
    """Every Omniglot drawing at ``size x size``: uint8 ``[1623, 20, size, size]``, ink = 255, rows in character-id
    order (as the bundled 28x28 file), axis 1 = drawer ``_01.._20``.

    Built once from the originals in ``root`` (default :func:`default_root`): the packed ``.npz`` pair of the
    development machines (each file checked against :data:`PACKED_SHA256`), else the official archives
    ``images_background.zip`` / ``images_evaluation.zip`` (fetched when ``download``; checked as
    :func:`load_omniglot_originals` says), then kept in the verified cache (``fastadapt/data/domains/cache.py``,
    ``omniglot-full-<size>px-v1.npz``): later calls read the cache and need no originals.
    """
    if not isinstance(size, int) or isinstance(size, bool) or not MIN_SIZE <= size <= ORIGINAL_SIZE:
        raise DataError(f"omniglot-full size={size!r} is invalid; choose an integer from {MIN_SIZE} to {ORIGINAL_SIZE}")
    folder = Path(root) if root is not None else default_root()
    names = [str(n) for n in _bundled()["characters"]]

    def build():
        if not folder.is_dir() and not download:
            raise DataError(
                f"the Omniglot originals are not in {folder}; put the official images_background.zip and "
                "images_evaluation.zip there, set data.options.root, or set data.options.download = true"
            )
        x = _resized(_originals(folder, download), size)
        return x.reshape(-1, 1, size, size), np.repeat(np.arange(len(names)), x.shape[1]), names

    images, labels, got = cached(CACHE_NAME, f"{size}px-{CACHE_VERSION}", build)
    if (
        got != names
        or len(images) != 20 * len(names)
        or not np.array_equal(labels, np.repeat(np.arange(len(names)), 20))
    ):
        raise DataError(f"the {CACHE_NAME} cache does not hold Omniglot's 1623 x 20 drawings; delete it to rebuild")
    return images.reshape(len(names), 20, size, size)


def load_omniglot_full(
    split: str = "vinyals",
    part: str = "train",
    rotations: bool | None = None,
    size: int = DEFAULT_SIZE,
    root: str | Path | None = None,
    download: bool = False,
) -> ClassDataset:
    """Omniglot at ``size x size`` as a :class:`ClassDataset` of uint8 ``[M, 1, size, size]`` images (ink bright):
    the same splits, parts, class order, names and rotation rule as :func:`~fastadapt.data.omniglot.load_omniglot`
    (so a seed draws the same characters and drawers from either), from :func:`full_images`."""
    if split not in SPLITS:
        raise DataError(f"unknown Omniglot split {split!r}; choose one of {', '.join(SPLITS)}")
    if part not in SPLITS[split]:
        raise DataError(f"unknown part {part!r} of Omniglot split {split!r}; choose one of {', '.join(SPLITS[split])}")
    lo, hi = SPLITS[split][part]
    rot = _DEFAULT_ROTATIONS[split] if rotations is None else rotations
    everything = full_images(size, None if root is None else str(root), download)
    images = torch.from_numpy(everything[lo - 1 : hi])
    names = [str(n) for n in _bundled()["characters"][lo - 1 : hi]]
    if rot:
        images, names = rotate_classes(images, names)
    c, e = images.shape[:2]
    data = images.reshape(c * e, 1, size, size).contiguous()
    offsets = torch.arange(0, c * e + 1, e, dtype=torch.long)
    return ClassDataset(data, offsets, tuple(names), f"omniglot-full{size}-{split}-{part}{'-rot' if rot else ''}")


# --- task sources ---------------------------------------------------------------------------------------------------

_OMNIGLOT_OPTIONS = ("rotations", "train_rotations", "drawers", "train_drawers")


def _drawers(request: Any, options: dict[str, Any]) -> str:
    """``data.options.drawers`` (every role), ``train_drawers`` overriding it for training; default random."""
    drawers = options.get("drawers", "random")
    if request.role == "train" and options.get("train_drawers") is not None:
        drawers = options["train_drawers"]
    if drawers not in DRAWERS:
        raise DataError(f"data.options.drawers={drawers!r} is not supported; choose one of {', '.join(DRAWERS)}")
    return drawers


def drawer_source(data: ClassDataset, request: Any, drawers: str) -> ClassDataset | EpisodeSampler:
    """``data`` itself for random drawers (the engine draws episodes, ``data.episode_scope`` applies); for
    ``"paired"``, Lake's trials: an :class:`EpisodeSampler` over ``data`` converted to ``request.image_size`` and
    ``request.channels`` by the one rule, every task within one alphabet, its support drawings by one drawer and
    its queries by others (one other for 1 query), seeded by ``request.seed``."""
    if drawers == "random":
        return data
    data = conform_images(data, request.image_size, request.channels)
    groups = class_groups(data, "alphabet")
    return EpisodeSampler(
        data,
        request.ways,
        request.shots,
        request.queries,
        seed=request.seed,
        strict=True,
        groups=groups,
        drawers="paired",
    )


def omniglot(request: Any) -> ClassDataset | EpisodeSampler:
    """The bundled 28x28 Omniglot (:func:`fastadapt.data.sources.omniglot`: ``rotations``, ``train_rotations``),
    plus ``data.options.drawers = "paired"`` for Lake's drawer-paired within-alphabet trials (``train_drawers``
    sets training's own; default ``"random"``: each class's drawings drawn independently, today's episodes)."""
    from fastadapt.data import sources

    options = dict(request.options)
    unknown = [k for k in options if k not in _OMNIGLOT_OPTIONS]
    if unknown:
        raise DataError(
            f"data.options.{unknown[0]} is not an option of omniglot; it takes {', '.join(_OMNIGLOT_OPTIONS)}"
        )
    drawers = _drawers(request, options)
    rest = {k: v for k, v in options.items() if k in ("rotations", "train_rotations")}
    return drawer_source(sources.omniglot(dataclasses.replace(request, options=rest)), request, drawers)


def omniglot_full(request: Any) -> ClassDataset | EpisodeSampler:
    """Omniglot from the 105x105 originals at ``data.options.size`` (28..105, default 105), with ``data.split`` and
    the bundled source's parts, names and options (``rotations``, ``train_rotations``, ``drawers``,
    ``train_drawers``); ``root``: the folder of the originals (default :func:`default_root`), ``download = true``:
    fetch the official archives there. Set ``data.image_size`` to ``size`` too, or the engine resizes again."""
    options = dict(request.options)
    allowed = (*_OMNIGLOT_OPTIONS, "size", "root", "download")
    unknown = [k for k in options if k not in allowed]
    if unknown:
        raise DataError(f"data.options.{unknown[0]} is not an option of omniglot-full; it takes {', '.join(allowed)}")
    if request.split not in SPLITS:
        raise DataError(f"data.split={request.split!r} is not an Omniglot split; choose one of {', '.join(SPLITS)}")
    rotations = options.get("rotations")
    if request.role == "train" and options.get("train_rotations") is not None:
        rotations = bool(options["train_rotations"])
    data = load_omniglot_full(
        request.split,
        request.part,
        rotations=rotations,
        size=options.get("size", DEFAULT_SIZE),
        root=options.get("root"),
        download=bool(options.get("download", False)),
    )
    return drawer_source(data, request, _drawers(request, options))
