"""Converters into the arrays a :class:`~fastadapt.data.classes.ClassDataset` holds: image folders, PIL
images, and the items of any map-style dataset (torchvision, Hugging Face, a list)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fastadapt.core.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as Pillow's convert("L")


def check_contained(folder: Path, what: str, fix: str = "copy the file in or remove the link") -> None:
    """Refuse (one-line :class:`DataError`) a folder with a symbolic link that points outside it (a file or a folder
    the person did not mean to share, or a path that escapes the tree the command was given); links inside it are
    fine. The folder itself may be a link. ``fix`` ends the message."""
    root = folder.resolve()
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(top) / name
            if path.is_symlink() and not path.resolve().is_relative_to(root):
                raise DataError(
                    f"{what} {folder}: {path.relative_to(root)} is a link to {path.resolve()}, outside the folder; "
                    f"{fix}"
                )


def image_mode(path: Path) -> str:
    """Pillow's mode of an image file, read from its header."""
    with open_image(path) as im:
        return im.mode


def open_image(path: Path) -> Any:
    """``PIL.Image.open(path)``; an unreadable file or one over Pillow's decompression-bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS``: Pillow warns above it, refuses above twice it) is a DataError."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise DataError(
            f"image {path} is too large for Pillow ({e}); shrink it, or raise PIL.Image.MAX_IMAGE_PIXELS "
            f"if you trust the file"
        ) from None
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e}; remove or replace the file") from None


def pil_to_array(im: Any, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    """A PIL image converted to ``mode`` ("L" or "RGB"; the one rule of :meth:`ClassDataset.from_folder`),
    resized to ``size`` (Lanczos), as uint8 ``[H, W]`` or ``[H, W, 3]``."""
    from PIL import Image

    im = im.convert(mode)
    if size is not None and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.Resampling.LANCZOS)
    return np.asarray(im, dtype=np.uint8)


def folder_arrays(
    root: Path, size: tuple[int, int] | None, channels: int | None, outside_links: bool = False
) -> tuple[np.ndarray, list[int], tuple[str, ...]]:
    """The images of ``root/<class>/<image>`` as uint8 ``[M, C, H, W]``, the images per class and the class
    names (see :meth:`ClassDataset.from_folder`)."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; pass a folder with one subfolder per class")
    if not outside_links:
        check_contained(
            root,
            "image folder",
            "copy the file in, remove the link, or pass outside_links=True (data.options = { outside_links = true }) "
            "if it is meant",
        )
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not class_dirs:
        raise DataError(f"image folder {root} has no class subfolders; put each class's images in its own subfolder")
    if channels not in (None, 1, 3):
        raise DataError(f"channels={channels!r} is invalid; use 1 (grey), 3 (RGB) or None (from the images)")
    files_of: list[list[Path]] = []
    for d in class_dirs:
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"class folder {d} holds no images ({', '.join(IMAGE_SUFFIXES)}); remove it or add images")
        files_of.append(files)
    if channels is None:
        channels = 1 if all(image_mode(f) in GREY_MODES for files in files_of for f in files) else 3
    if len(class_dirs) == 1:  # after the header pass (an unreadable file is named first), before decoding
        raise DataError(
            f"image folder {root} has one class subfolder ({class_dirs[0].name}); episodes need at least 2 classes: "
            f"add a subfolder per class"
        )
    mode = "L" if channels == 1 else "RGB"
    images: list[np.ndarray] = []
    for files in files_of:
        for f in files:
            try:
                with open_image(f) as im:
                    arr = pil_to_array(im, mode, size)
            except OSError as e:
                raise DataError(f"cannot read image {f}: {e}; remove or replace the file") from None
            if images and arr.shape != images[0].shape:
                raise DataError(
                    f"image {f} is {arr.shape[:2]}, others are {images[0].shape[:2]}; pass size=(H, W) to resize all"
                )
            images.append(arr)
    stack = np.stack(images)
    stack = stack[:, None] if channels == 1 else stack.transpose(0, 3, 1, 2)
    counts = [len(files) for files in files_of]
    return stack, counts, tuple(d.name for d in class_dirs)


# --- from_dataset: items of a map-style dataset to one stacked array ---------------------------------


def dataset_arrays(
    dataset: Any,
    name: str,
    channels: int | None,
    size: tuple[int, int] | None,
    max_per_class: int | None,
    image_key: str | None,
    label_key: str | None,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    """The examples of a map-style dataset of ``(image, label)`` items: images ``[M, C, H, W]``, int64
    labels ``[M]`` and the class names when the dataset has them (see :meth:`ClassDataset.from_dataset`)."""
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise DataError(
            f"{name}: a {type(dataset).__name__} has no len() and [index]; pass a map-style dataset of (image, label) "
            "pairs"
        )
    if channels not in (None, 1, 3):
        raise DataError(f"channels={channels!r} is invalid; use 1 (grey), 3 (RGB) or None (from the images)")
    if max_per_class is not None and max_per_class < 1:
        raise DataError(f"max_per_class={max_per_class!r} is invalid; use a positive integer or None (keep all)")
    n = len(dataset)
    if n == 0:
        raise DataError(f"{name} holds no examples; pass a dataset with at least 2 classes")
    keys = [image_key, label_key]
    fast = _fast_arrays(dataset, n)
    if fast is not None:
        data, targets = fast
        rows = _first_per_class(targets, max_per_class)
        x = _stack_rows(data, rows, channels, size)
        if x is not None and _same(
            x[0], _stack_items([_split_item(dataset[0], 0, name, keys)[0]], [0], name, channels, size)[0]
        ):
            return x, targets[rows], _class_names(dataset, targets[rows], keys[1])
    images: list[Any] = []
    labels: list[int] = []
    indices: list[int] = []
    seen: dict[int, int] = {}
    for i in range(n):
        image, label = _split_item(dataset[i], i, name, keys)
        if max_per_class is not None and seen.get(label, 0) >= max_per_class:
            continue
        seen[label] = seen.get(label, 0) + 1
        images.append(image)
        labels.append(label)
        indices.append(i)
    x = _stack_items(images, indices, name, channels, size)
    y = np.asarray(labels, dtype=np.int64)
    return x, y, _class_names(dataset, y, keys[1])


def _fast_arrays(dataset: Any, n: int) -> tuple[Any, np.ndarray] | None:
    """``(dataset.data, dataset.targets as int64)`` when both are arrays of ``n`` rows and no transform is set."""
    if any(getattr(dataset, a, None) is not None for a in ("transform", "target_transform", "transforms")):
        return None
    data, targets = getattr(dataset, "data", None), getattr(dataset, "targets", None)
    if not isinstance(data, (np.ndarray, Tensor)) or targets is None or len(data) != n:
        return None
    try:
        t = np.asarray(targets.numpy() if isinstance(targets, Tensor) else targets)
    except (TypeError, ValueError, RuntimeError):
        return None
    if t.shape != (n,) or t.dtype.kind not in "iu":
        return None
    return data, t.astype(np.int64)


def _first_per_class(labels: np.ndarray, cap: int | None) -> np.ndarray:
    """Indices of the first ``cap`` examples of each label, in dataset order (all when ``cap`` is None)."""
    if cap is None:
        return np.arange(len(labels))
    _, inverse = np.unique(labels, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    rank = np.empty(len(labels), dtype=np.int64)
    sorted_inv = inverse[order]
    starts = np.searchsorted(sorted_inv, sorted_inv)
    rank[order] = np.arange(len(labels)) - starts
    return np.flatnonzero(rank < cap)


def _stack_rows(data: Any, rows: np.ndarray, channels: int | None, size: tuple[int, int] | None) -> np.ndarray | None:
    """``data[rows]`` as ``[M, C, H, W]`` at once when no conversion is needed (uint8 grey ``[N, H, W]`` or
    RGB ``[N, H, W, 3]``, float grey ``[N, H, W]``); None otherwise (then every item is read)."""
    x = data.numpy() if isinstance(data, Tensor) else np.asarray(data)
    if x.dtype != np.uint8 and x.dtype.kind != "f":
        return None
    if size is not None and tuple(x.shape[1:3]) != tuple(size):
        return None
    if x.ndim == 3 and channels in (None, 1):
        out = x[rows][:, None]
    elif x.ndim == 4 and x.shape[-1] == 3 and x.dtype == np.uint8 and channels in (None, 3):
        out = x[rows].transpose(0, 3, 1, 2)
    else:
        return None
    return np.ascontiguousarray(out, dtype=np.uint8 if x.dtype == np.uint8 else np.float32)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))


def _is_label(v: Any) -> bool:
    if isinstance(v, Tensor):
        return v.ndim == 0 and not v.is_floating_point() and not v.is_complex() and v.dtype != torch.bool
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_image(v: Any) -> bool:
    from PIL import Image

    return isinstance(v, Image.Image) or (isinstance(v, (np.ndarray, Tensor)) and v.ndim in (2, 3))


def _split_item(item: Any, i: int, name: str, keys: list[str | None]) -> tuple[Any, int]:
    """``(image, label)`` of item ``i``; for dicts, ``keys`` = [image key, label key], filled from the first dict."""
    if isinstance(item, dict):
        if keys[0] is None:
            keys[0] = next((k for k, v in item.items() if _is_image(v)), None)
        if keys[1] is None:
            keys[1] = next((k for k, v in item.items() if _is_label(v)), None)
        for what, key in zip(("image", "label"), keys):
            if key is None or key not in item:
                found = f"no key {key!r}" if key is not None else f"no {what} in keys {', '.join(map(str, item))}"
                raise DataError(f"{name}[{i}] is a dict with {found}; pass {what}_key= the key that holds the {what}")
        image, label = item[keys[0]], item[keys[1]]
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        image, label = item
    else:
        raise DataError(f"{name}[{i}] is a {type(item).__name__}; need an (image, label) pair or a dict holding both")
    if not _is_label(label):
        raise DataError(
            f"{name}[{i}]: label {label!r} is a {type(label).__name__}; need an integer class label "
            f"(int, numpy integer or 0-d integer tensor)"
        )
    return image, int(label)


def _as_hwc(image: Any, where: str) -> Any:
    """A PIL image as it is; an array or tensor as numpy ``[H, W, C]`` (uint8 or float32)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, Tensor):
        a = image.detach().cpu().numpy()
        if a.ndim == 3 and a.shape[0] in (1, 3, 4):
            a = a.transpose(1, 2, 0)
    elif isinstance(image, np.ndarray):
        a = image
        if a.ndim == 3 and a.shape[-1] not in (1, 3, 4) and a.shape[0] in (1, 3, 4):
            a = a.transpose(1, 2, 0)
    else:
        raise DataError(
            f"{where}: image is a {type(image).__name__}; need a PIL image, a numpy array or a torch tensor"
        )
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise DataError(f"{where}: image has shape {list(image.shape)}; need HxW, HxWxC or CxHxW with C in 1, 3, 4")
    if a.dtype.kind == "f":
        return a.astype(np.float32, copy=False)
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind in "iub" and (a.size == 0 or (a.min() >= 0 and a.max() <= 255)):
        return a.astype(np.uint8)
    raise DataError(f"{where}: image is {a.dtype.name}; need uint8, floats, or integers in 0..255")


def _stack_items(
    images: list[Any], indices: list[int], name: str, channels: int | None, size: tuple[int, int] | None
) -> np.ndarray:
    """Images (PIL, arrays, tensors) as one ``[M, C, H, W]`` array: one channel count, one size, one dtype."""
    hwc = [_as_hwc(im, f"{name}[{i}]") for im, i in zip(images, indices)]
    if channels is None:
        channels = (
            1
            if all((im.mode in GREY_MODES) if not isinstance(im, np.ndarray) else im.shape[-1] == 1 for im in hwc)
            else 3
        )
    out: list[np.ndarray] = []
    for im, i in zip(hwc, indices):
        a = _conform_one(im, channels, size)
        if out and a.dtype != out[0].dtype:
            raise DataError(
                f"{name}[{i}] is a {a.dtype.name} image, earlier ones are {out[0].dtype.name}; give images of one type "
                "(uint8 or float)"
            )
        if out and a.shape != out[0].shape:
            raise DataError(
                f"{name}[{i}] is {a.shape[1]}x{a.shape[2]}, earlier images are {out[0].shape[1]}x{out[0].shape[2]}; "
                f"pass size=(H, W) to resize all"
            )
        out.append(a)
    return np.stack(out)


def _conform_one(im: Any, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """One image (PIL or ``[H, W, C]``) as ``[channels, H, W]``, resized to ``size``."""
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    if isinstance(im, np.ndarray) and im.dtype == np.uint8:
        if im.shape[-1] == channels and (size is None or im.shape[:2] == tuple(size)):
            return np.ascontiguousarray(im.transpose(2, 0, 1))
        im = Image.fromarray(im[:, :, 0] if im.shape[-1] == 1 else im)
    if not isinstance(im, np.ndarray):
        a = pil_to_array(im, mode, size)
        return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    x = torch.from_numpy(np.ascontiguousarray(im[:, :, :3].transpose(2, 0, 1)))  # float32 [C, H, W], alpha dropped
    if x.shape[0] == 3 and channels == 1:
        x = (x * torch.tensor(LUMA).view(3, 1, 1)).sum(0, keepdim=True)
    elif x.shape[0] == 1 and channels == 3:
        x = x.expand(3, -1, -1)
    if size is not None and tuple(x.shape[1:]) != tuple(size):
        x = torch.nn.functional.interpolate(
            x[None], size=tuple(size), mode="bilinear", antialias=True, align_corners=False
        )[0]
    return np.ascontiguousarray(x.numpy())


def _class_names(dataset: Any, labels: np.ndarray, label_key: str | None) -> tuple[str, ...] | None:
    """Names of the sorted distinct ``labels`` from ``dataset.classes`` (torchvision) or
    ``dataset.features[label_key].names`` (Hugging Face); None when there are none covering the labels."""
    names = getattr(dataset, "classes", None)
    if names is None and label_key is not None:
        try:
            names = getattr(dataset.features[label_key], "names", None)
        except (AttributeError, KeyError, TypeError, IndexError):
            names = None
    distinct = np.unique(labels)
    if not isinstance(names, (list, tuple)) or not all(isinstance(c, str) for c in names):
        return None
    if distinct.min() < 0 or distinct.max() >= len(names):
        return None
    return tuple(names[int(c)] for c in distinct)
