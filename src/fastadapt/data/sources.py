"""The built-in task sources, registered in :mod:`fastadapt.core.registry` by name.

Each is a builder ``build(request) -> ClassDataset | TaskSource`` (``request`` is a
:class:`fastadapt.config.build.SourceRequest`); a user registers their own the same way with
:func:`fastadapt.register_task_source`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastadapt.core.errors import DataError
from fastadapt.data.classes import ClassDataset
from fastadapt.data.idx import FASHION_MNIST_CLASSES, IDX_PARTS, idx_files, load_fashion_mnist, load_idx
from fastadapt.data.omniglot import SPLITS, load_omniglot
from fastadapt.data.sinusoid import SinusoidTasks


def omniglot(request: Any) -> ClassDataset:
    """The bundled Omniglot: ``data.split`` (vinyals | lake) and the part asked for.

    ``data.options = { train_rotations = true }``: the training part's characters rotated by 90, 180
    and 270 degrees are classes of their own (the split's default for the other parts: vinyals yes,
    lake no); ``rotations = true / false`` sets it for every part.
    """
    if request.split not in SPLITS:
        raise DataError(f"data.split={request.split!r} is not an Omniglot split; choose one of {', '.join(SPLITS)}")
    options = dict(request.options)
    rotations = options.pop("rotations", None)
    train_rotations = options.pop("train_rotations", None)
    if options:
        raise DataError(
            f"data.options.{next(iter(options))} is not an option of omniglot; it takes rotations and train_rotations"
        )
    if request.role == "train" and train_rotations is not None:
        rotations = bool(train_rotations)
    return load_omniglot(request.split, request.part, rotations=rotations)


def sinusoid(request: Any) -> SinusoidTasks:
    """Sinusoid regression tasks (MAML, section 5.1), ``shots`` support and ``queries`` query points."""
    return SinusoidTasks(request.shots, request.queries, seed=request.seed)


def folder(request: Any) -> ClassDataset:
    """``folder:<path>``: ``<path>/<part>/<class>/<image>`` (``<path>/<class>/<image>`` when the part is empty).
    A symbolic link in it that points outside it is refused unless ``data.options = { outside_links = true }``."""
    if not request.argument:
        raise DataError(
            "data.dataset='folder:' names no folder; write folder:<path>, a folder with train/, "
            "val/ and test/ holding one subfolder per class"
        )
    root = Path(request.argument)
    path = root / request.part if request.part else root
    if request.part and root.is_dir() and not path.is_dir():
        raise DataError(
            f"image folder {root} has no {request.part}/ subfolder; give it {request.part}/<class>/<image> "
            f"(or set data.{'train' if request.part == 'train' else 'test'}_part to a subfolder it has)"
        )
    options = dict(request.options)
    outside_links = options.pop("outside_links", False)
    if options or not isinstance(outside_links, bool):
        bad = (
            f"data.options.{next(iter(options))} is not an option of folder"
            if options
            else (f"data.options.outside_links={outside_links!r} is not true or false")
        )
        raise DataError(f"{bad}; folder: takes outside_links = true (follow links that point outside the folder)")
    size = (request.image_size, request.image_size)
    # channels as the images have them; the engine converts (data.channels) and says so
    return ClassDataset.from_folder(path, size=size, outside_links=outside_links)


def idx(request: Any) -> ClassDataset:
    """``idx:<dir>``: MNIST-family IDX files in ``<dir>``: part ``train`` reads ``train-images-idx3-ubyte``
    and ``train-labels-idx1-ubyte``, part ``test`` the ``t10k-`` pair (each plain or ``.gz``)."""
    if not request.argument:
        raise DataError(
            "data.dataset='idx:' names no folder; write idx:<dir>, a folder with train-/t10k-images-idx3-ubyte and "
            "-labels-idx1-ubyte (.gz)"
        )
    root = Path(request.argument)
    if not root.is_dir():
        raise DataError(
            f"IDX folder {root} does not exist; write idx:<dir>, a folder with train-/t10k-images-idx3-ubyte and "
            "-labels-idx1-ubyte (.gz)"
        )
    if request.part not in IDX_PARTS:
        there = [p for p in IDX_PARTS if idx_files(root, p) is not None]
        raise DataError(
            f"IDX folder {root} has no part {request.part!r}; it has {', '.join(there) or 'none'} "
            f'(set data.train_part/data.test_part to one of them, data.val_part="" to skip validation)'
        )
    files = idx_files(root, request.part)
    if files is None:
        prefix = IDX_PARTS[request.part]
        raise DataError(
            f"IDX folder {root} lacks {prefix}-images-idx3-ubyte or {prefix}-labels-idx1-ubyte (plain or .gz) for part "
            f"{request.part!r}; add them or choose another part"
        )
    return load_idx(*files, name=f"{root.name}-{request.part}")


def fashion_mnist(request: Any) -> ClassDataset:
    """Fashion-MNIST (Debian's ``dataset-fashion-mnist``; ``data.options.root``: another folder of the
    four IDX files): parts ``train`` and ``test``, 10 classes, so tasks of at most 10 ways (5 is usual)."""
    classes = len(FASHION_MNIST_CLASSES)
    if request.part not in IDX_PARTS:
        raise DataError(
            f'Fashion-MNIST has no part {request.part!r}; it has train and test (no val: set data.val_part="" '
            f"or validate on Omniglot); its {classes} classes allow 5-way tasks (test ways <= {classes})"
        )
    if request.ways > classes:
        raise DataError(
            f"{request.ways}-way tasks on Fashion-MNIST's {request.part} part: it has {classes} classes; "
            f"set data.ways and data.test_ways to at most {classes} (5 is usual)"
        )
    return load_fashion_mnist(request.part, request.options.get("root"))
