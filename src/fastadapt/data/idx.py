"""The IDX format of MNIST and its family (Fashion-MNIST, KMNIST, EMNIST), plain or gzipped: one file
as a numpy array (:func:`read_idx`), an image file and a label file as a class dataset (:func:`load_idx`),
and Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (:func:`load_fashion_mnist`)."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fastadapt.core.errors import DataError
from fastadapt.data.classes import ClassDataset

IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
IDX_PARTS = {
    "train": "train",
    "test": "t10k",
}  # part -> file prefix (train-images-idx3-ubyte, t10k-labels-idx1-ubyte, ...)
GZIP_MAGIC = b"\x1f\x8b"

FASHION_MNIST_DIR = Path(
    "/usr/share/datasets/fashion-mnist"
)  # where Debian's dataset-fashion-mnist puts the four files
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def read_idx(path: str | Path) -> np.ndarray:
    """The array in the IDX file ``path`` (gzipped or not, told by its first bytes), in native byte order.

    An IDX file is a header and the data, big-endian (LeCun et al., http://yann.lecun.com/exdb/mnist/): two
    zero bytes, a type byte (0x08 ubyte, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64) and
    a byte with the number of dimensions ``d``; ``d`` sizes, each a 4-byte unsigned integer;
    ``prod(sizes)`` values of the type, row-major.

    Raises:
        DataError: one line naming the file, what is wrong and what to do (missing file, a header that
            is not IDX, fewer or more data bytes than the header promises, a corrupt gzip stream).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDX file {path} does not exist; pass the path of an IDX file (plain or .gz)")
    raw = path.read_bytes()
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"IDX file {path} is a corrupt gzip file ({e}); download it again") from None
    if len(raw) < 4:
        raise DataError(
            f"IDX file {path} is truncated: {len(raw)} bytes, fewer than the 4-byte header; download it again"
        )
    zero, kind, ndim = raw[:2], raw[2], raw[3]
    if zero != b"\x00\x00":
        raise DataError(
            f"{path} is not an IDX file: it starts with bytes {raw[:2].hex()}, not 0000; "
            "pass an IDX file (plain or .gz)"
        )
    if kind not in IDX_TYPES:
        known = ", ".join(f"0x{k:02X}" for k in IDX_TYPES)
        raise DataError(
            f"{path} is not an IDX file: type code 0x{kind:02X} is none of {known}; pass an IDX file (plain or .gz)"
        )
    if ndim == 0:
        raise DataError(f"{path} is not an IDX file: its header gives 0 dimensions; pass an IDX file (plain or .gz)")
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise DataError(
            f"IDX file {path} is truncated: its {ndim}-dimension header needs {start} bytes, found {len(raw)}; "
            "download it again"
        )
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_TYPES[kind]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - start
    if found < expected:
        raise DataError(
            f"IDX file {path} is truncated: shape {list(shape)} of {dtype.name} needs {expected} data bytes, "
            f"found {found}; download it again"
        )
    if found > expected:
        raise DataError(
            f"IDX file {path} has {found - expected} bytes of trailing garbage after the {expected} data bytes "
            f"of shape {list(shape)}; download it again"
        )
    return np.frombuffer(raw, dtype=dtype, offset=start).astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def load_idx(
    images: str | Path, labels: str | Path, name: str | None = None, class_names: Sequence[str] | None = None
) -> ClassDataset:
    """A :class:`ClassDataset` from an IDX image file and its IDX label file.

    Args:
        images: ``[N, H, W]`` (grey) or ``[N, H, W, C]`` images. ubyte (and other integers within
            0..255) become uint8 ``[N, C, H, W]``; floats are kept as float32 ``[N, C, H, W]``.
        labels: ``[N]`` integer labels.
        name: the dataset's name (default: the image file's name without ``.gz``).
        class_names: a name per distinct label, in label order (default: the labels as text).
    """
    x, y = read_idx(images), read_idx(labels)
    name = name or Path(images).name.removesuffix(".gz")
    if x.ndim not in (3, 4):
        raise DataError(f"IDX images {images} have shape {list(x.shape)}; need [N, H, W] or [N, H, W, C]")
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(f"IDX labels {labels} are {y.dtype.name} of shape {list(y.shape)}; need [N] integers")
    if len(x) != len(y):
        raise DataError(
            f"IDX images {images} hold {len(x)} examples but labels {labels} hold {len(y)}; "
            "pass the label file of these images"
        )
    if x.dtype.kind in "iu":
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(f"IDX images {images} hold values {x.min()}..{x.max()}; integer images must lie in 0..255")
        x = x.astype(np.uint8, copy=False)
    else:
        x = x.astype(np.float32, copy=False)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return ClassDataset.from_arrays(np.ascontiguousarray(x), y.astype(np.int64), name=name, class_names=class_names)


def idx_files(root: str | Path, part: str) -> tuple[Path, Path] | None:
    """The image and label files of ``part`` ("train" or "test") in ``root``, plain or ``.gz``; None if either is
    missing."""
    prefix = IDX_PARTS[part]
    found = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        candidates = [Path(root) / f"{prefix}-{kind}{gz}" for gz in ("", ".gz")]
        hit = next((p for p in candidates if p.is_file()), None)
        if hit is None:
            return None
        found.append(hit)
    return found[0], found[1]


def load_fashion_mnist(part: str = "train", root: str | Path | None = None) -> ClassDataset:
    """Fashion-MNIST (Xiao et al. 2017): 10 classes of 28x28 grey clothing images as uint8 ``[M, 1, 28, 28]``.

    ``train`` holds 60000 images (6000 a class), ``test`` 10000 (1000 a class). Both parts have the
    same 10 classes, so few-shot tasks on ``test`` are new images of seen classes; for unseen classes,
    train on another domain (Omniglot) and test here.

    Args:
        part: "train" or "test".
        root: a folder with the four IDX files (plain or .gz); default: where Debian's
            ``dataset-fashion-mnist`` puts them, ``/usr/share/datasets/fashion-mnist``.
    """
    if part not in IDX_PARTS:
        raise DataError(f"Fashion-MNIST has no part {part!r}; choose one of {', '.join(IDX_PARTS)}")
    folder = Path(root) if root is not None else FASHION_MNIST_DIR
    files = idx_files(folder, part)
    if files is None:
        prefix = IDX_PARTS[part]
        raise DataError(
            f"Fashion-MNIST's {prefix}-images-idx3-ubyte and {prefix}-labels-idx1-ubyte (.gz) are not in {folder}; "
            f"apt-get install dataset-fashion-mnist (or pass root= a folder with the four IDX files)"
        )
    return load_idx(*files, name=f"fashion-mnist-{part}", class_names=FASHION_MNIST_CLASSES)
