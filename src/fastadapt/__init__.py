"""fastadapt: meta-learning on PyTorch. The contract every algorithm keeps is :mod:`fastadapt.contract`;
the layers and extension points are described in docs/ARCHITECTURE.md.

Importing fastadapt changes no process-wide state; :func:`keep_freed_memory` is the allocator
setting the ``fastadapt`` command applies, for library users who want it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fastadapt.version import __version__ as __version__

# The public names and the module each comes from. They are imported on first use (PEP 562), so
# that `import fastadapt` (and the `fastadapt` command's start, which Ctrl-C may interrupt) costs
# nothing until something is used; `from fastadapt import X` and `fastadapt.X` work as usual.
_WHERE = {
    "ALFA": "fastadapt.algorithms.alfa", "tune": "fastadapt.tuning",
    "ANIL": "fastadapt.algorithms.anil", "FOMAML": "fastadapt.algorithms.maml", "MAML": "fastadapt.algorithms.maml",
    "MANN": "fastadapt.algorithms.mann", "MatchingNet": "fastadapt.algorithms.matching", "MetaLSTM": "fastadapt.algorithms.meta_lstm",
    "NTMLearner": "fastadapt.algorithms.ntm",
    "MetaSGD": "fastadapt.algorithms.metasgd", "ProtoNet": "fastadapt.algorithms.protonet", "Reptile": "fastadapt.algorithms.reptile",
    "MAMLRL": "fastadapt.algorithms.maml_rl", "EnvTasks": "fastadapt.episodes",
    "SourceRequest": "fastadapt.build", "TaskSources": "fastadapt.build",
    "Config": "fastadapt.config", "config_from_dict": "fastadapt.config", "load_config": "fastadapt.config",
    "Algorithm": "fastadapt.contract", "MetaOutput": "fastadapt.contract", "TaskSource": "fastadapt.contract",
    "ClassDataset": "fastadapt.data", "EpisodeDataset": "fastadapt.data", "EpisodeSampler": "fastadapt.data", "SinusoidTasks": "fastadapt.data",
    "load_fashion_mnist": "fastadapt.data", "load_idx": "fastadapt.data", "load_omniglot": "fastadapt.data",
    "load_omniglot_originals": "fastadapt.data", "read_idx": "fastadapt.data",
    "TrainResult": "fastadapt.engine", "train": "fastadapt.engine",
    "Episode": "fastadapt.episodes", "TaskBatch": "fastadapt.episodes", "collate_tasks": "fastadapt.episodes",
    "ConfigError": "fastadapt.errors", "DataError": "fastadapt.errors", "FastAdaptError": "fastadapt.errors",
    "EvalResult": "fastadapt.eval", "evaluate": "fastadapt.eval", "mean_ci": "fastadapt.eval",
    "online": "fastadapt.streaming", "explain": "fastadapt.explanations", "keep_freed_memory": "fastadapt.process",
    "register_algorithm": "fastadapt.registry", "register_model": "fastadapt.registry", "register_task_source": "fastadapt.registry",
    "Run": "fastadapt.run_folder", "RunFolder": "fastadapt.run_folder", "load_run": "fastadapt.run_folder",
    "load_pretrained": "fastadapt.weights", "load_safetensors": "fastadapt.weights", "save_safetensors": "fastadapt.weights",
    "export_run": "fastadapt.apps.export_weights",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value  # the next access is a plain attribute
        return value
    try:  # a subpackage used as an attribute: fastadapt.nn.Conv4 after `import fastadapt`
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


if TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from fastadapt.algorithms.alfa import ALFA
    from fastadapt.algorithms.anil import ANIL
    from fastadapt.algorithms.maml import FOMAML, MAML
    from fastadapt.algorithms.maml_rl import MAMLRL
    from fastadapt.algorithms.mann import MANN
    from fastadapt.algorithms.matching import MatchingNet
    from fastadapt.algorithms.meta_lstm import MetaLSTM
    from fastadapt.algorithms.metasgd import MetaSGD
    from fastadapt.algorithms.ntm import NTMLearner
    from fastadapt.algorithms.protonet import ProtoNet
    from fastadapt.algorithms.reptile import Reptile
    from fastadapt.apps.export_weights import export_run
    from fastadapt.build import SourceRequest, TaskSources
    from fastadapt.config import Config, config_from_dict, load_config
    from fastadapt.contract import Algorithm, MetaOutput, TaskSource
    from fastadapt.data import (
        ClassDataset,
        EpisodeDataset,
        EpisodeSampler,
        SinusoidTasks,
        load_fashion_mnist,
        load_idx,
        load_omniglot,
        load_omniglot_originals,
        read_idx,
    )
    from fastadapt.engine import TrainResult, train
    from fastadapt.episodes import EnvTasks, Episode, TaskBatch, collate_tasks
    from fastadapt.errors import ConfigError, DataError, FastAdaptError
    from fastadapt.eval import EvalResult, evaluate, mean_ci
    from fastadapt.explanations import explain
    from fastadapt.process import keep_freed_memory
    from fastadapt.registry import register_algorithm, register_model, register_task_source
    from fastadapt.run_folder import Run, RunFolder, load_run
    from fastadapt.streaming import online
    from fastadapt.tuning import tune
    from fastadapt.weights import load_pretrained, load_safetensors, save_safetensors

__all__ = [
    "ALFA",
    "ANIL",
    "FOMAML",
    "MAML",
    "MAMLRL",
    "MANN",
    "Algorithm",
    "ClassDataset",
    "Config",
    "ConfigError",
    "DataError",
    "EnvTasks",
    "Episode",
    "EpisodeDataset",
    "EpisodeSampler",
    "EvalResult",
    "FastAdaptError",
    "MatchingNet",
    "MetaLSTM",
    "MetaOutput",
    "MetaSGD",
    "NTMLearner",
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
    "collate_tasks",
    "config_from_dict",
    "evaluate",
    "explain",
    "export_run",
    "keep_freed_memory",
    "load_config",
    "load_fashion_mnist",
    "load_idx",
    "load_omniglot",
    "load_omniglot_originals",
    "load_pretrained",
    "load_run",
    "load_safetensors",
    "mean_ci",
    "online",
    "read_idx",
    "register_algorithm",
    "register_model",
    "register_task_source",
    "save_safetensors",
    "train",
    "tune",
]
