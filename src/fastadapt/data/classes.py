"""A labelled example set organised by class, in memory: the source of classification tasks.

:class:`ClassDataset` keeps all examples of all classes in one tensor, class after class, with
``offsets`` marking where each class starts; classes may hold different numbers of examples.
Sampling an episode is then pure indexing (no decoding, no per-image Python work).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fastadapt.core.errors import DataError
from fastadapt.data.convert import LUMA, dataset_arrays, folder_arrays


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
        return (
            f"ClassDataset({self.name!r}, classes={self.num_classes}, examples={len(self.data)}, "
            f"shape={self.example_shape}, dtype={self.data.dtype})"
        )

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
                f"{name}: labels have shape {tuple(yt.shape)} for {len(xt)} examples; need one integer label per "
                "example"
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
        root: str | Path,
        size: tuple[int, int] | None = None,
        channels: int | None = None,
        name: str | None = None,
        outside_links: bool = False,
    ) -> ClassDataset:
        """Load ``root/<class>/<image>`` (one subfolder per class) into memory as uint8 ``[M, C, H, W]``.

        Args:
            root: the folder; every subfolder is a class, sorted by name.
            size: ``(height, width)`` to resize every image to (Lanczos); required when sizes differ.
            channels: 1 (grey, "L") or 3 (RGB). ``None``: 1 if every image is greyscale, else 3. The
                one rule for mixed modes: every image is converted with Pillow's ``convert`` to that
                mode (colour to grey by ITU-R 601-2 luma, grey to RGB by copying the channel, a
                palette by its colours, transparency dropped).
            outside_links: follow symbolic links that point outside ``root`` (default: refused, so that a folder
                of someone else's making cannot pull in files from elsewhere on the machine; links inside it are
                always fine).

        Raises:
            DataError: one line naming the folder or file: a missing folder, fewer than 2 classes, an
                empty class, a file that does not decode, an image over Pillow's decompression-bomb
                limit (``PIL.Image.MAX_IMAGE_PIXELS``), sizes that differ without ``size``, a link that points
                outside ``root`` without ``outside_links``.
        """
        root = Path(root)
        stack, counts, names = folder_arrays(root, size, channels, outside_links)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.tensor(counts).cumsum(0)])
        return ClassDataset(torch.from_numpy(np.ascontiguousarray(stack)), offsets, names, name or root.name)

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
        name = name or type(dataset).__name__
        x, y, class_names = dataset_arrays(dataset, name, channels, size, max_per_class, image_key, label_key)
        return ClassDataset.from_arrays(x, torch.from_numpy(y), name, class_names)


def conform_images(data: ClassDataset, image_size: int | None = None, channels: int = 0) -> ClassDataset:
    """``data`` with images ``[M, C, H, W]`` resized to ``image_size`` square (bilinear, antialiased) and
    converted to ``channels`` (0: as stored; 1: luma of RGB; 3: grey copied to RGB); dtype kept.

    Other data (vectors, sequences) is returned unchanged; ``channels`` on such data is an error.
    """
    x = data.data
    if x.ndim != 4:
        if channels:
            raise DataError(
                f"{data.name}: data.channels={channels} applies to images [M, C, H, W]; this data has shape "
                f"{list(x.shape)}"
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
                f"{data.name}: images have {c} channels; data.channels={channels} converts only between 1 (grey) and 3 "
                "(RGB)"
            )
        changed = True
    if image_size and (x.shape[-1] != image_size or x.shape[-2] != image_size):
        y = torch.nn.functional.interpolate(
            x.float(), size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
        )
        x = y.round().clamp(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else y.to(x.dtype)
        changed = True
    return ClassDataset(x, data.offsets, data.names, data.name) if changed else data
