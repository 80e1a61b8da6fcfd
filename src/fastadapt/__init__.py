"""fastadapt: meta-learning on PyTorch. The contract every algorithm keeps is :mod:`fastadapt.contract`;
the layers and extension points are described in docs/ARCHITECTURE.md.

Importing fastadapt changes no process-wide state; :func:`keep_freed_memory` is the allocator
setting the ``fastadapt`` command applies, for library users who want it.
"""

from fastadapt.algorithms.anil import ANIL
from fastadapt.algorithms.maml import FOMAML, MAML
from fastadapt.algorithms.mann import MANN
from fastadapt.algorithms.matching import MatchingNet
from fastadapt.algorithms.meta_lstm import MetaLSTM
from fastadapt.algorithms.metasgd import MetaSGD
from fastadapt.algorithms.protonet import ProtoNet
from fastadapt.algorithms.reptile import Reptile
from fastadapt.build import SourceRequest, TaskSources
from fastadapt.config import Config, config_from_dict, load_config
from fastadapt.contract import Algorithm, MetaOutput, TaskSource
from fastadapt.data import (
    ClassDataset,
    EpisodeSampler,
    SinusoidTasks,
    load_fashion_mnist,
    load_idx,
    load_omniglot,
    load_omniglot_originals,
    read_idx,
)
from fastadapt.engine import TrainResult, train
from fastadapt.episodes import Episode, TaskBatch
from fastadapt.errors import ConfigError, DataError, FastAdaptError
from fastadapt.eval import EvalResult, evaluate, mean_ci
from fastadapt.online import online
from fastadapt.process import keep_freed_memory
from fastadapt.registry import register_algorithm, register_model, register_task_source
from fastadapt.run_folder import Run, RunFolder, load_run
from fastadapt.version import __version__ as __version__

__all__ = [
    "ANIL",
    "FOMAML",
    "MAML",
    "MANN",
    "Algorithm",
    "ClassDataset",
    "Config",
    "ConfigError",
    "DataError",
    "Episode",
    "EpisodeSampler",
    "EvalResult",
    "FastAdaptError",
    "MatchingNet",
    "MetaLSTM",
    "MetaOutput",
    "MetaSGD",
    "ProtoNet",
    "Reptile",
    "Run",
    "RunFolder",
    "SinusoidTasks",
    "SourceRequest",
    "TaskBatch",
    "TaskSource",
    "TaskSources",
    "TrainResult",
    "config_from_dict",
    "evaluate",
    "keep_freed_memory",
    "load_config",
    "load_fashion_mnist",
    "load_idx",
    "load_omniglot",
    "load_omniglot_originals",
    "load_run",
    "mean_ci",
    "online",
    "read_idx",
    "register_algorithm",
    "register_model",
    "register_task_source",
    "train",
]
