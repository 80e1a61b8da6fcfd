"""fastadapt: meta-learning on PyTorch. The contract every algorithm keeps is :mod:`fastadapt.core.contract`;
the layers and extension points are described in docs/ARCHITECTURE.md.

Importing fastadapt changes no process-wide state; :func:`keep_freed_memory` is the allocator
setting the ``fastadapt`` command applies, for library users who want it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fastadapt.core.version import __version__ as __version__

# The public names and the module each comes from. They are imported on first use (PEP 562), so
# that `import fastadapt` (and the `fastadapt` command's start, which Ctrl-C may interrupt) costs
# nothing until something is used; `from fastadapt import X` and `fastadapt.X` work as usual.
_WHERE = {
    "ALFA": "fastadapt.algorithms.alfa",
    "tune": "fastadapt.apps.tune",
    "ANIL": "fastadapt.algorithms.anil",
    "FOMAML": "fastadapt.algorithms.maml",
    "MAML": "fastadapt.algorithms.maml",
    "MANN": "fastadapt.algorithms.mann",
    "MatchingNet": "fastadapt.algorithms.matching",
    "MetaLSTM": "fastadapt.algorithms.meta_lstm",
    "NTMLearner": "fastadapt.algorithms.ntm",
    "MetaSGD": "fastadapt.algorithms.metasgd",
    "ProtoNet": "fastadapt.algorithms.protonet",
    "Reptile": "fastadapt.algorithms.reptile",
    "MAMLRL": "fastadapt.algorithms.maml_rl",
    "EnvTasks": "fastadapt.core.episodes",
    "SourceRequest": "fastadapt.config.build",
    "TaskSources": "fastadapt.config.build",
    "Config": "fastadapt.config",
    "config_from_dict": "fastadapt.config",
    "load_config": "fastadapt.config",
    "Algorithm": "fastadapt.core.contract",
    "MetaOutput": "fastadapt.core.contract",
    "TaskSource": "fastadapt.core.contract",
    "ClassDataset": "fastadapt.data",
    "EpisodeDataset": "fastadapt.data",
    "EpisodeSampler": "fastadapt.data",
    "SinusoidTasks": "fastadapt.data",
    "load_fashion_mnist": "fastadapt.data",
    "load_idx": "fastadapt.data",
    "load_omniglot": "fastadapt.data",
    "load_omniglot_originals": "fastadapt.data",
    "read_idx": "fastadapt.data",
    "TrainResult": "fastadapt.training",
    "train": "fastadapt.training",
    "Episode": "fastadapt.core.episodes",
    "TaskBatch": "fastadapt.core.episodes",
    "collate_tasks": "fastadapt.core.episodes",
    "ConfigError": "fastadapt.core.errors",
    "DataError": "fastadapt.core.errors",
    "FastAdaptError": "fastadapt.core.errors",
    "EvalResult": "fastadapt.eval",
    "evaluate": "fastadapt.eval",
    "mean_ci": "fastadapt.eval",
    "online": "fastadapt.eval.online",
    "explain": "fastadapt.eval.explanations",
    "keep_freed_memory": "fastadapt.runtime.allocator",
    "register_algorithm": "fastadapt.core.registry",
    "register_model": "fastadapt.core.registry",
    "register_task_source": "fastadapt.core.registry",
    "Run": "fastadapt.runs.folder",
    "RunFolder": "fastadapt.runs.folder",
    "load_run": "fastadapt.runs.folder",
    "load_pretrained": "fastadapt.nn.weights",
    "load_safetensors": "fastadapt.nn.weights",
    "save_safetensors": "fastadapt.nn.weights",
    "export_run": "fastadapt.runs.export",
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
    from fastadapt.apps.tune import tune
    from fastadapt.config import Config, config_from_dict, load_config
    from fastadapt.config.build import SourceRequest, TaskSources
    from fastadapt.core.contract import Algorithm, MetaOutput, TaskSource
    from fastadapt.core.episodes import EnvTasks, Episode, TaskBatch, collate_tasks
    from fastadapt.core.errors import ConfigError, DataError, FastAdaptError
    from fastadapt.core.registry import register_algorithm, register_model, register_task_source
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
    from fastadapt.eval import EvalResult, evaluate, mean_ci
    from fastadapt.eval.explanations import explain
    from fastadapt.eval.online import online
    from fastadapt.nn.weights import load_pretrained, load_safetensors, save_safetensors
    from fastadapt.runs.export import export_run
    from fastadapt.runs.folder import Run, RunFolder, load_run
    from fastadapt.runtime.allocator import keep_freed_memory
    from fastadapt.training import TrainResult, train

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
