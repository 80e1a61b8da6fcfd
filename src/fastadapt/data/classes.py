"""A labelled example set organised by class, in memory: the source of classification tasks.

:class:`ClassDataset` keeps all examples of all classes in one tensor, class after class, with
``offsets`` marking where each class starts; classes may hold different numbers of examples.
Sampling an episode is then pure indexing (no decoding, no per-image Python work).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fastadapt.errors import DataError

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
            raise DataError(f"{self.name}: offsets has {len(self.offsets)} entries for {len(self.names)} classes; need classes + 1")
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
        rows = torch.cat([torch.arange(int(self.offsets[c]), int(self.offsets[c + 1])) for c in idx.tolist()]) if len(idx) else torch.zeros(0, dtype=torch.long)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        return ClassDataset(self.data[rows], offsets, tuple(self.names[c] for c in idx.tolist()), name or self.name)

    @staticmethod
    def from_arrays(x: np.ndarray | Tensor, y: np.ndarray | Tensor, name: str = "arrays", class_names: Sequence[str] | None = None) -> ClassDataset:
        """Build from examples ``x [M, ...]`` and integer labels ``y [M]`` (any order, any label values).

        Classes are the sorted distinct labels; names are ``str(label)`` unless given.
        """
        xt = torch.as_tensor(np.asarray(x)) if not isinstance(x, Tensor) else x
        yt = torch.as_tensor(np.asarray(y)) if not isinstance(y, Tensor) else y
        if yt.ndim != 1 or len(yt) != len(xt):
            raise DataError(f"{name}: labels have shape {tuple(yt.shape)} for {len(xt)} examples; need one integer label per example")
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
    def from_folder(root: str | Path, size: tuple[int, int] | None = None, channels: int | None = None, name: str | None = None) -> ClassDataset:
        """Load ``root/<class>/<image>`` (one subfolder per class) into memory as uint8 ``[M, C, H, W]``.

        Args:
            root: the folder; every subfolder is a class, sorted by name.
            size: ``(height, width)`` to resize every image to (Lanczos); required when sizes differ.
            channels: 1 (grey, "L") or 3 (RGB). ``None``: 1 if every image is greyscale, else 3. The
                one rule for mixed modes: every image is converted with Pillow's ``convert`` to that
                mode (colour to grey by ITU-R 601-2 luma, grey to RGB by copying the channel, a
                palette by its colours, transparency dropped).
        """
        from PIL import Image

        root = Path(root)
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist; pass a folder with one subfolder per class")
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
            channels = 1 if all(_image_mode(f) in GREY_MODES for files in files_of for f in files) else 3
        mode = "L" if channels == 1 else "RGB"
        images: list[np.ndarray] = []
        for files in files_of:
            for f in files:
                try:
                    with Image.open(f) as im:
                        im = im.convert(mode)
                        if size is not None:
                            im = im.resize((size[1], size[0]), Image.Resampling.LANCZOS)
                        arr = np.asarray(im, dtype=np.uint8)
                except OSError as e:
                    raise DataError(f"cannot read image {f}: {e}; remove or replace the file") from None
                if images and arr.shape != images[0].shape:
                    raise DataError(f"image {f} is {arr.shape[:2]}, others are {images[0].shape[:2]}; pass size=(H, W) to resize all")
                images.append(arr)
        stack = np.stack(images)
        stack = stack[:, None] if channels == 1 else stack.transpose(0, 3, 1, 2)
        counts = [len(files) for files in files_of]
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.tensor(counts).cumsum(0)])
        return ClassDataset(torch.from_numpy(np.ascontiguousarray(stack)), offsets, tuple(d.name for d in class_dirs), name or root.name)


GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _image_mode(path: Path) -> str:
    """Pillow's mode of an image file, read from its header."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.mode
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e}; remove or replace the file") from None


LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as Pillow's convert("L")


def conform_images(data: ClassDataset, image_size: int | None = None, channels: int = 0) -> ClassDataset:
    """``data`` with images ``[M, C, H, W]`` resized to ``image_size`` square (bilinear, antialiased) and
    converted to ``channels`` (0: as stored; 1: luma of RGB; 3: grey copied to RGB); dtype kept.

    Other data (vectors, sequences) is returned unchanged; ``channels`` on such data is an error.
    """
    x = data.data
    if x.ndim != 4:
        if channels:
            raise DataError(f"{data.name}: data.channels={channels} applies to images [M, C, H, W]; this data has shape {list(x.shape)}")
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
            raise DataError(f"{data.name}: images have {c} channels; data.channels={channels} converts only between 1 (grey) and 3 (RGB)")
        changed = True
    if image_size and (x.shape[-1] != image_size or x.shape[-2] != image_size):
        y = torch.nn.functional.interpolate(x.float(), size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
        x = y.round().clamp(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else y.to(x.dtype)
        changed = True
    return ClassDataset(x, data.offsets, data.names, data.name) if changed else data
