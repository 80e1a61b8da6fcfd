"""A labelled example set organised by class, in memory: the source of classification tasks.

:class:`ClassDataset` keeps all examples of all classes in one tensor, class after class, with
``offsets`` marking where each class starts; classes may hold different numbers of examples.
Sampling an episode is then pure indexing (no decoding, no per-image Python work).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fastadapt.core.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass(frozen=True, repr=False)
class ClassDataset:
    """Examples grouped by class.

    Attributes:
        data: ``[M, *x_shape]`` every example, class by class. uint8 data is scaled to [0, 1]
            floats when sampled; float data is returned as it is.
        offsets: ``[C + 1]`` int64; class ``c`` owns ``data[offsets[c]:offsets[c+1]]``.
        names: ``C`` class names (for reports).
        name: the dataset's name (for reports).
    """

    data: Tensor
    offsets: Tensor
    names: tuple[str, ...]
    name: str = "dataset"

    def __post_init__(self) -> None:
        if self.offsets.ndim != 1 or len(self.offsets) != len(self.names) + 1:
            raise DataError(
                f"{self.name}: offsets has {len(self.offsets)} entries for {len(self.names)} classes; need classes + 1"
            )
        if int(self.offsets[0]) != 0 or int(self.offsets[-1]) != len(self.data):
            raise DataError(f"{self.name}: offsets must run from 0 to {len(self.data)} (the number of examples)")
        if len(self.names) and int(self.counts.min()) < 1:
            raise DataError(f"{self.name}: every class needs at least one example")

    def __repr__(self) -> str:
        return f"ClassDataset({self.name!r}, classes={self.num_classes}, examples={len(self.data)}, shape={self.example_shape}, dtype={self.data.dtype})"

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def counts(self) -> Tensor:
        """``[C]`` examples per class."""
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def example_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[1:])

    def __len__(self) -> int:
        return self.num_classes

    def examples(self, c: int) -> Tensor:
        """All examples of class ``c``, as stored."""
        return self.data[int(self.offsets[c]) : int(self.offsets[c + 1])]

    def subset(self, classes: Sequence[int] | Tensor, name: str | None = None) -> ClassDataset:
        """A new dataset holding only ``classes`` (in that order)."""
        idx = torch.as_tensor(classes, dtype=torch.long)
        counts = self.counts[idx]
        rows = (
            torch.cat([torch.arange(int(self.offsets[c]), int(self.offsets[c + 1])) for c in idx.tolist()])
            if len(idx)
            else torch.zeros(0, dtype=torch.long)
        )
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        return ClassDataset(self.data[rows], offsets, tuple(self.names[c] for c in idx.tolist()), name or self.name)

    @staticmethod
    def from_arrays(
        x: np.ndarray | Tensor, y: np.ndarray | Tensor, name: str = "arrays", class_names: Sequence[str] | None = None
    ) -> ClassDataset:
        """Build from examples ``x [M, ...]`` and integer labels ``y [M]`` (any order, any label values).

        Classes are the sorted distinct labels; names are ``str(label)`` unless given.
        """
        xt = torch.as_tensor(np.asarray(x)) if not isinstance(x, Tensor) else x
        yt = torch.as_tensor(np.asarray(y)) if not isinstance(y, Tensor) else y
        if yt.ndim != 1 or len(yt) != len(xt):
            raise DataError(
                f"{name}: labels have shape {tuple(yt.shape)} for {len(xt)} examples; need one integer label per example"
            )
        if yt.is_floating_point():
            raise DataError(f"{name}: labels are {yt.dtype}; need integer class labels")
        labels, inverse = torch.unique(yt, sorted=True, return_inverse=True)
        order = torch.argsort(inverse, stable=True)
        counts = torch.bincount(inverse, minlength=len(labels))
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        names = tuple(class_names) if class_names is not None else tuple(str(v) for v in labels.tolist())
        if len(names) != len(labels):
            raise DataError(f"{name}: {len(names)} class names for {len(labels)} classes")
        return ClassDataset(xt[order].contiguous(), offsets, names, name)

    @staticmethod
    def from_folder(
        root: str | Path, size: tuple[int, int] | None = None, channels: int | None = None, name: str | None = None
    ) -> ClassDataset:
        """Load ``root/<class>/<image>`` (one subfolder per class) into memory as uint8 ``[M, C, H, W]``.

        Args:
            root: the folder; every subfolder is a class, sorted by name.
            size: ``(height, width)`` to resize every image to (Lanczos); required when sizes differ.
            channels: 1 (grey, "L") or 3 (RGB). ``None``: 1 if every image is greyscale, else 3. The
                one rule for mixed modes: every image is converted with Pillow's ``convert`` to that
                mode (colour to grey by ITU-R 601-2 luma, grey to RGB by copying the channel, a
                palette by its colours, transparency dropped).

        Raises:
            DataError: one line naming the folder or file: a missing folder, fewer than 2 classes, an
                empty class, a file that does not decode, an image over Pillow's decompression-bomb
                limit (``PIL.Image.MAX_IMAGE_PIXELS``), sizes that differ without ``size``.
        """
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist; pass a folder with one subfolder per class")
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
        if not class_dirs:
            raise DataError(
                f"image folder {root} has no class subfolders; put each class's images in its own subfolder"
            )
        if channels not in (None, 1, 3):
            raise DataError(f"channels={channels!r} is invalid; use 1 (grey), 3 (RGB) or None (from the images)")
        files_of: list[list[Path]] = []
        for d in class_dirs:
            files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DataError(
                    f"class folder {d} holds no images ({', '.join(IMAGE_SUFFIXES)}); remove it or add images"
                )
            files_of.append(files)
        if channels is None:
            channels = 1 if all(_image_mode(f) in GREY_MODES for files in files_of for f in files) else 3
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
                    with _open_image(f) as im:
                        arr = _pil_to_array(im, mode, size)
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
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.tensor(counts).cumsum(0)])
        return ClassDataset(
            torch.from_numpy(np.ascontiguousarray(stack)), offsets, tuple(d.name for d in class_dirs), name or root.name
        )

    @staticmethod
    def from_dataset(
        dataset: Any,
        name: str | None = None,
        channels: int | None = None,
        size: tuple[int, int] | None = None,
        max_per_class: int | None = None,
        image_key: str | None = None,
        label_key: str | None = None,
    ) -> ClassDataset:
        """Load a map-style dataset of ``(image, label)`` pairs (``torch.utils.data.Dataset``, torchvision,
        a Hugging Face ``datasets.Dataset`` of dicts, a list) into memory as ``[M, C, H, W]`` images.

        Only ``len(dataset)`` and ``dataset[i]`` are used (no torchvision or ``datasets`` import). An item
        is an ``(image, label)`` pair or a dict holding both. An image is a PIL image, a numpy array or a
        torch tensor: ``HxW``, ``HxWxC`` (C in 1, 3, 4; numpy's and PIL's layout) or ``CxHxW`` (torch's
        layout, as torchvision's ``ToTensor`` gives); a tensor is read as ``CxHxW`` when its first size
        is 1, 3 or 4, an array as ``HxWxC`` when its last is. uint8 stays uint8; floats become float32
        (as given: ``ToTensor``'s [0, 1] stays [0, 1]); other integers in 0..255 become uint8. A label is
        an int, a numpy integer or a 0-d integer tensor.

        A dataset with array attributes ``data`` and ``targets`` of its length and no transform
        (torchvision's MNIST, CIFAR) is read from those arrays at once; the result is the same, and
        item 0 is checked against them (else every item is read).

        Args:
            dataset: the dataset.
            name: the dataset's name (default: its class name).
            channels: 1 (grey) or 3 (RGB); ``None``: 1 if every image is greyscale, else 3. PIL images
                and uint8 arrays follow :meth:`from_folder`'s one rule (Pillow's ``convert``); float
                images: RGB to grey by ITU-R 601-2 luma, grey to RGB by copying, alpha dropped.
            size: ``(height, width)`` to resize every image to (Lanczos for PIL and uint8, bilinear
                antialiased for floats); required when sizes differ.
            max_per_class: keep at most this many examples of each class (the first in dataset order).
            image_key, label_key: for dict items, the keys of the image and the label (default: the
                first key of item 0 holding an image, the first holding an integer).

        Class names come from ``dataset.classes`` (torchvision) or ``dataset.features[label_key].names``
        (Hugging Face) when they cover the labels, else the labels as text.

        Example, a torchvision dataset as training and test tasks (5-way episodes drawn from it)::

            from torchvision.datasets import MNIST, FashionMNIST
            train = fastadapt.ClassDataset.from_dataset(MNIST("~/data", train=True, download=True))
            test = fastadapt.ClassDataset.from_dataset(FashionMNIST("~/data", train=False, download=True))
            cfg = fastadapt.load_config("protonet-quick", ["data.ways=5", "data.image_size=28"])
            fastadapt.train(cfg, tasks={"train": train, "test": test})
        """
        return _dataset_to_classes(
            dataset, name or type(dataset).__name__, channels, size, max_per_class, image_key, label_key
        )


GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _image_mode(path: Path) -> str:
    """Pillow's mode of an image file, read from its header."""
    with _open_image(path) as im:
        return im.mode


def _open_image(path: Path) -> Any:
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


def _pil_to_array(im: Any, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    """A PIL image converted to ``mode`` ("L" or "RGB"; the one rule of :meth:`ClassDataset.from_folder`),
    resized to ``size`` (Lanczos), as uint8 ``[H, W]`` or ``[H, W, 3]``."""
    from PIL import Image

    im = im.convert(mode)
    if size is not None and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.Resampling.LANCZOS)
    return np.asarray(im, dtype=np.uint8)


LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as Pillow's convert("L")


def conform_images(data: ClassDataset, image_size: int | None = None, channels: int = 0) -> ClassDataset:
    """``data`` with images ``[M, C, H, W]`` resized to ``image_size`` square (bilinear, antialiased) and
    converted to ``channels`` (0: as stored; 1: luma of RGB; 3: grey copied to RGB); dtype kept.

    Other data (vectors, sequences) is returned unchanged; ``channels`` on such data is an error.
    """
    x = data.data
    if x.ndim != 4:
        if channels:
            raise DataError(
                f"{data.name}: data.channels={channels} applies to images [M, C, H, W]; this data has shape {list(x.shape)}"
            )
        return data
    changed = False
    c = x.shape[1]
    if channels and c != channels:
        if (c, channels) == (3, 1):
            w = torch.tensor(LUMA, dtype=torch.float32).view(1, 3, 1, 1)
            x = (x.float() * w).sum(1, keepdim=True)
            x = x.round().clamp(0, 255).to(torch.uint8) if data.data.dtype == torch.uint8 else x.to(data.data.dtype)
        elif (c, channels) == (1, 3):
            x = x.expand(-1, 3, -1, -1).contiguous()
        else:
            raise DataError(
                f"{data.name}: images have {c} channels; data.channels={channels} converts only between 1 (grey) and 3 (RGB)"
            )
        changed = True
    if image_size and (x.shape[-1] != image_size or x.shape[-2] != image_size):
        y = torch.nn.functional.interpolate(
            x.float(), size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
        )
        x = y.round().clamp(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else y.to(x.dtype)
        changed = True
    return ClassDataset(x, data.offsets, data.names, data.name) if changed else data


# --- from_dataset: items of a map-style dataset to one stacked array ---------------------------------


def _dataset_to_classes(
    dataset: Any,
    name: str,
    channels: int | None,
    size: tuple[int, int] | None,
    max_per_class: int | None,
    image_key: str | None,
    label_key: str | None,
) -> ClassDataset:
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise DataError(
            f"{name}: a {type(dataset).__name__} has no len() and [index]; pass a map-style dataset of (image, label) pairs"
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
            return ClassDataset.from_arrays(
                x, torch.from_numpy(targets[rows]), name, _class_names(dataset, targets[rows], keys[1])
            )
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
    return ClassDataset.from_arrays(x, torch.from_numpy(y), name, _class_names(dataset, y, keys[1]))


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
                f"{name}[{i}] is a {a.dtype.name} image, earlier ones are {out[0].dtype.name}; give images of one type (uint8 or float)"
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
        a = _pil_to_array(im, mode, size)
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
