"""fastadapt: meta-learning on PyTorch. See DESIGN.md for the contract every algorithm keeps."""

from fastadapt.algorithms.base import MetaOutput
from fastadapt.data import ClassDataset, EpisodeSampler, SinusoidTasks, load_omniglot, load_omniglot_originals
from fastadapt.episodes import Episode, TaskBatch
from fastadapt.errors import ConfigError, DataError, FastAdaptError

__version__ = "0.1.0"

__all__ = [
    "ClassDataset",
    "ConfigError",
    "DataError",
    "Episode",
    "EpisodeSampler",
    "FastAdaptError",
    "MetaOutput",
    "SinusoidTasks",
    "TaskBatch",
    "load_omniglot",
    "load_omniglot_originals",
]
