"""Export an adapted task, and load it back; export an adapted predictor for deployment (TorchScript).

An adapted task (:func:`task_record`, a ``torch.save`` file) holds what the person taught and what it
became; :func:`read_task_record` loads one back without running code from the file.
:func:`torchscript_predictor` traces the adapted predictor into a TorchScript module ``x -> outputs`` that
needs neither fastadapt nor the run.
"""

from __future__ import annotations

import copy
import io
import stat
import warnings
import zipfile
from typing import Any

import torch
from torch import Tensor, nn

from fastadapt.algorithms.heads import HeadPredictor, head_logits
from fastadapt.algorithms.predictors import FastWeightsPredictor
from fastadapt.algorithms.protonet import PrototypePredictor, prototype_logits
from fastadapt.core.errors import DataError

FORMAT = "fastadapt-task/1"
MAX_MEMBERS = 4096  # entries of an exported task's archive (one written by torch.save has a handful per tensor)
MAX_UNPACKED = 256 * 1024 * 1024  # bytes an exported task may unpack to (its images are uint8)


def adapted_state(predictor: Any) -> dict[str, Any]:
    """The tensors of an adapted predictor: ``{"prototypes": ...}``, ``{"fast_weights": {...}}``, or ``{}`` (other
    algorithms)."""
    if isinstance(predictor, PrototypePredictor):
        return {"prototypes": predictor.state.prototypes.detach().clone()}
    if isinstance(predictor, FastWeightsPredictor):
        return {"fast_weights": {k: v.detach().clone() for k, v in predictor.params.items()}}
    return {}


def task_record(
    run: Any, class_names: list[str], x: Tensor, y: Tensor, sources: list[str], predictor: Any = None
) -> dict[str, Any]:
    """What an export holds; ``x [M, *x]`` in [0, 1], ``y [M]`` positions in ``class_names``.

    What the person taught and what it became: the run it came from (folder, weights file and step,
    algorithm), the class names, every example (the model-input images as uint8, their labels and sources),
    and the adapted state where it is tensors: ProtoNet's ``prototypes [N, D]``, or the gradient-based
    learners' ``fast_weights`` (name -> tensor).
    """
    return {
        "format": FORMAT,
        "run": str(run.folder.path.resolve()),
        "algorithm": run.config.algorithm,
        "weights": run.weights,
        "weights_step": run.step,
        "classes": list(class_names),
        "x": (x.clamp(0, 1) * 255).round().to(torch.uint8),
        "y": y.long(),
        "sources": list(sources),
        "state": adapted_state(predictor) if predictor is not None else {},
    }


def write_task_record(record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(record, buf)
    return buf.getvalue()


def read_task_record(data: bytes, shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """An exported task from its bytes, checked (one-line :class:`DataError` for anything else).

    The archive is checked first (:func:`check_archive`), then loaded with ``torch.load(weights_only=True)`` (no
    code runs from the file), its fields checked; adapting the run to its examples again gives its state back
    (tested).
    """
    check_archive(data)
    try:
        record = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as e:  # a truncated file, another format, a pickle that asks for code
        raise DataError(f"not an exported fastadapt task ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise DataError(
            f"not an exported fastadapt task (format {record.get('format') if isinstance(record, dict) else None!r}, "
            f"expected {FORMAT})"
        )
    x, y, names = record.get("x"), record.get("y"), record.get("classes")
    if (
        not (isinstance(x, Tensor) and isinstance(y, Tensor) and isinstance(names, list))
        or x.dtype != torch.uint8
        or y.ndim != 1
        or len(x) != len(y)
        or (len(y) and not 0 <= int(y.min()) <= int(y.max()) < len(names))
    ):
        raise DataError("the exported task's examples do not fit its classes (x uint8 [M, ...], y [M] in 0..classes-1)")
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise DataError(f"the exported task's images are {list(x.shape[1:])}; this run takes {list(shape)}")
    return record


def check_archive(data: bytes) -> None:
    """Refuse (one-line :class:`DataError`) an exported task that is not a plain zip archive as ``torch.save`` writes
    one, before anything reads it.

    Refused: another container (a legacy tar ``torch.load`` would unpack into a temporary folder), a member whose name
    is absolute, has a drive, a backslash or a ``..`` part, or that is a symbolic link, more than
    :data:`MAX_MEMBERS` members, or members that unpack to more than :data:`MAX_UNPACKED` bytes. Nothing is ever
    extracted to disk (``torch.load`` reads members by name inside the archive); the check makes that explicit.
    """
    if not data.startswith(b"PK\x03\x04"):
        raise DataError("not an exported fastadapt task (not a zip archive as torch.save writes)")
    try:
        members = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise DataError(f"not an exported fastadapt task (a damaged zip archive: {e})") from None
    if len(members) > MAX_MEMBERS:
        raise DataError(f"the exported task's archive has {len(members)} members; at most {MAX_MEMBERS} are accepted")
    for m in members:
        name = m.filename
        parts = name.split("/")
        if name.startswith("/") or "\\" in name or ":" in parts[0] or ".." in parts or not name:
            raise DataError(f"the exported task's archive names a member {name[:80]!r} outside it; refused")
        if stat.S_ISLNK(m.external_attr >> 16):
            raise DataError(f"the exported task's archive has a symbolic link {name[:80]!r}; refused")
    unpacked = sum(m.file_size for m in members)
    if unpacked > MAX_UNPACKED:
        raise DataError(f"the exported task unpacks to {unpacked} bytes; at most {MAX_UNPACKED} are accepted")


class PrototypeModule(nn.Module):
    """``x -> logits [B, N]`` against fixed prototypes (what a ProtoNet predictor computes)."""

    def __init__(self, model: nn.Module, prototypes: Tensor, distance: str, scale: float) -> None:
        super().__init__()
        self.model, self.distance, self.scale = model, distance, scale
        self.register_buffer("prototypes", prototypes.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return prototype_logits(self.model(x).unsqueeze(0), self.prototypes.unsqueeze(0), self.distance, self.scale)[0]


class HeadModule(nn.Module):
    """``x -> logits`` through the frozen encoder and a fitted head (Baseline, linear probe)."""

    def __init__(self, model: nn.Module, predictor: HeadPredictor) -> None:
        super().__init__()
        self.model, self.head, self.normalize = model, predictor.head, predictor.normalize

    def forward(self, x: Tensor) -> Tensor:
        z = self.model(x).flatten(1)
        return head_logits(torch.nn.functional.normalize(z, dim=-1) if self.normalize else z, self.head)


def deployable(predictor: Any) -> nn.Module:
    """An ``nn.Module`` computing what ``predictor`` computes, with the adapted state inside (a copy of the model)."""
    if isinstance(predictor, PrototypePredictor):
        if bool((predictor.counts == 0).any()):
            raise DataError("this predictor has labels with no example; export it after every label has one")
        s = predictor.state
        return PrototypeModule(copy.deepcopy(predictor.model), s.prototypes, s.distance, s.scale).eval()
    if isinstance(predictor, FastWeightsPredictor):
        model = copy.deepcopy(predictor.model)  # an export artefact: the fast weights written into a copy
        model.load_state_dict(
            {**{k: v.detach() for k, v in predictor.params.items()}, **predictor.buffers}, strict=False
        )
        return model.eval()
    if isinstance(predictor, HeadPredictor):
        return HeadModule(copy.deepcopy(predictor.model), predictor).eval()
    raise DataError(
        f"exporting a {type(predictor).__name__} for deployment is not supported; ProtoNet, the gradient-based "
        f"learners, Baseline and the linear probe are"
    )


def torchscript_predictor(predictor: Any, example: Tensor) -> bytes:
    """The adapted predictor traced on ``example [B, *x]`` and saved as TorchScript (bytes for ``torch.jit.load``).

    For deployment: the predictor (ProtoNet, MAML, FOMAML, Meta-SGD, ANIL, Reptile, GrBAL, Baseline, linear
    probe) becomes a TorchScript module ``x -> outputs`` that needs neither fastadapt nor the run:
    ``torch.jit.load(path)(x)``. In torch 2.13 ``torch.jit.trace``, ``save`` and ``load`` warn that TorchScript
    is deprecated in favour of ``torch.export``; the warnings are silenced here, on purpose
    (:func:`load_torchscript` loads a file back), while TorchScript still loads everywhere (C++, mobile)
    without fastadapt. ONNX is the successor to move to (``torch.onnx.export(..., dynamo=True)``; it needs
    onnx, onnxscript and onnxruntime; docs/PERFORMANCE.md, "Export").
    """
    module = deployable(predictor)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.trace's deprecation (see the docstring)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(module, (example,), check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
    return buf.getvalue()


def load_torchscript(data: bytes) -> Any:
    """A module saved by :func:`torchscript_predictor` (``torch.jit.load``, its deprecation warning silenced as
    above)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(io.BytesIO(data), map_location="cpu")


__all__ = [
    "FORMAT",
    "MAX_MEMBERS",
    "MAX_UNPACKED",
    "HeadModule",
    "PrototypeModule",
    "adapted_state",
    "check_archive",
    "deployable",
    "load_torchscript",
    "read_task_record",
    "task_record",
    "torchscript_predictor",
    "write_task_record",
]
