"""The built-in task sources, registered in :mod:`fastadapt.registry` by name.

Each is a builder ``build(request) -> ClassDataset | TaskSource`` (``request`` is a
:class:`fastadapt.build.SourceRequest`); a user registers their own the same way with
:func:`fastadapt.register_task_source`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastadapt.data.classes import ClassDataset
from fastadapt.data.omniglot import SPLITS, load_omniglot
from fastadapt.data.sinusoid import SinusoidTasks
from fastadapt.errors import DataError


def omniglot(request: Any) -> ClassDataset:
    """The bundled Omniglot: ``data.split`` (vinyals | lake) and the part asked for."""
    if request.split not in SPLITS:
        raise DataError(f"data.split={request.split!r} is not an Omniglot split; choose one of {', '.join(SPLITS)}")
    return load_omniglot(request.split, request.part)


def sinusoid(request: Any) -> SinusoidTasks:
    """Sinusoid regression tasks (MAML, section 5.1), ``shots`` support and ``queries`` query points."""
    return SinusoidTasks(request.shots, request.queries, seed=request.seed)


def folder(request: Any) -> ClassDataset:
    """``folder:<path>``: ``<path>/<part>/<class>/<image>`` (``<path>/<class>/<image>`` when the part is empty)."""
    if not request.argument:
        raise DataError("data.dataset='folder:' names no folder; write folder:<path>, a folder with train/, val/ and test/ holding one subfolder per class")
    root = Path(request.argument)
    path = root / request.part if request.part else root
    if request.part and root.is_dir() and not path.is_dir():
        raise DataError(f"image folder {root} has no {request.part}/ subfolder; give it {request.part}/<class>/<image> "
                        f"(or set data.{'train' if request.part == 'train' else 'test'}_part to a subfolder it has)")
    size = (request.image_size, request.image_size)
    return ClassDataset.from_folder(path, size=size, channels=request.channels or None)
