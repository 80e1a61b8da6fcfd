"""fastadapt: meta-learning on PyTorch. See DESIGN.md for the contract every algorithm keeps."""

from fastadapt.algorithms.anil import ANIL
from fastadapt.algorithms.base import MetaOutput
from fastadapt.algorithms.maml import FOMAML, MAML
from fastadapt.algorithms.mann import MANN
from fastadapt.algorithms.matching import MatchingNet
from fastadapt.algorithms.meta_lstm import MetaLSTM
from fastadapt.algorithms.metasgd import MetaSGD
from fastadapt.algorithms.protonet import ProtoNet
from fastadapt.algorithms.reptile import Reptile
from fastadapt.data import ClassDataset, EpisodeSampler, SinusoidTasks, load_omniglot, load_omniglot_originals
from fastadapt.episodes import Episode, TaskBatch
from fastadapt.errors import ConfigError, DataError, FastAdaptError
from fastadapt.eval import evaluate, mean_ci

__version__ = "0.1.0"

__all__ = [
    "ANIL",
    "FOMAML",
    "MAML",
    "MANN",
    "ClassDataset",
    "ConfigError",
    "DataError",
    "Episode",
    "EpisodeSampler",
    "FastAdaptError",
    "MatchingNet",
    "MetaLSTM",
    "MetaOutput",
    "MetaSGD",
    "ProtoNet",
    "Reptile",
    "SinusoidTasks",
    "TaskBatch",
    "evaluate",
    "load_omniglot",
    "load_omniglot_originals",
    "mean_ci",
]
