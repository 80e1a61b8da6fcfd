"""Training: one loop for every algorithm (:func:`fastadapt.training.loop.train`), with checkpoints, loggers and run-level tests."""

from fastadapt.training.loop import TrainingDiverged, TrainResult, train

__all__ = ["TrainResult", "TrainingDiverged", "train"]
