"""The engine: one training loop for every algorithm (:func:`fastadapt.engine.loop.train`)."""

from fastadapt.engine.loop import TrainingDiverged, TrainResult, train

__all__ = ["TrainResult", "TrainingDiverged", "train"]
