"""Training: one loop for every algorithm (:func:`train`, a :class:`Trainer` with phases and callbacks),
with checkpoints, loggers and run-level tests."""

from fastadapt.training.accumulate import meta_gradient
from fastadapt.training.callbacks import Callback
from fastadapt.training.loop import Trainer, TrainResult, train
from fastadapt.training.resume import TrainingDiverged

__all__ = ["Callback", "TrainResult", "Trainer", "TrainingDiverged", "meta_gradient", "train"]
