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
    def from_folder(root: str | Path, size: tuple[int, int] | None = None, grayscale: bool = True, name: str | None = None) -> ClassDataset:
        """Load ``root/<class>/<image>`` (one subfolder per class) into memory as uint8 ``[M, C, H, W]``.

        Args:
            root: the folder; every subfolder is a class, sorted by name.
            size: ``(height, width)`` to resize every image to (Lanczos); required when sizes differ.
            grayscale: load as one channel ("L"); otherwise as RGB.
        """
        from PIL import Image

        root = Path(root)
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist; pass a folder with one subfolder per class")
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
        if not class_dirs:
            raise DataError(f"image folder {root} has no class subfolders; put each class's images in its own subfolder")
        images: list[np.ndarray] = []
        counts: list[int] = []
        mode = "L" if grayscale else "RGB"
        for d in class_dirs:
            files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DataError(f"class folder {d} holds no images ({', '.join(IMAGE_SUFFIXES)}); remove it or add images")
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
            counts.append(len(files))
        stack = np.stack(images)
        stack = stack[:, None] if grayscale else stack.transpose(0, 3, 1, 2)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.tensor(counts).cumsum(0)])
        return ClassDataset(torch.from_numpy(np.ascontiguousarray(stack)), offsets, tuple(d.name for d in class_dirs), name or root.name)
