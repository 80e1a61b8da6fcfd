"""Training: one loop for every algorithm (:func:`train`, a :class:`Trainer` with phases and callbacks),
with checkpoints, loggers and run-level tests. Names are imported on first use, so that the step function
:func:`meta_gradient` does not bring the loop (and the config, data and run modules it reads) into a process."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastadapt.core.lazy import lazy_exports

_EXPORTS = {
    "fastadapt.training.accumulate": ("meta_gradient",),
    "fastadapt.training.callbacks": ("Callback",),
    "fastadapt.training.loop": ("Trainer", "TrainResult", "train"),
    "fastadapt.training.resume": ("TrainingDiverged",),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["Callback", "TrainResult", "Trainer", "TrainingDiverged", "meta_gradient", "train"]

if TYPE_CHECKING:
    from fastadapt.training.accumulate import meta_gradient
    from fastadapt.training.callbacks import Callback
    from fastadapt.training.loop import Trainer, TrainResult, train
    from fastadapt.training.resume import TrainingDiverged
