"""fastadapt: meta-learning on PyTorch. The contract every algorithm keeps is :mod:`fastadapt.core.contract`;
the layers and extension points are described in docs/ARCHITECTURE.md.

Importing fastadapt changes no process-wide state; :func:`keep_freed_memory` is the allocator
setting the ``fastadapt`` command applies, for library users who want it.
"""

# ruff: noqa: F401  (the TYPE_CHECKING imports are re-exports, named in __all__ at run time)

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fastadapt.core.version import __version__ as __version__

# Each public name, once, under the package that exports it in its own __all__. They are imported on
# first use (PEP 562), so that `import fastadapt` (and the `fastadapt` command's start, which Ctrl-C may
# interrupt) costs nothing until something is used; `from fastadapt import X` and `fastadapt.X` work as usual.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "fastadapt.algorithms.alfa": ("ALFA",),
    "fastadapt.algorithms.anil": ("ANIL",),
    "fastadapt.algorithms.maml": ("FOMAML", "MAML"),
    "fastadapt.algorithms.maml_rl": ("MAMLRL",),
    "fastadapt.algorithms.mann": ("MANN",),
    "fastadapt.algorithms.matching": ("MatchingNet",),
    "fastadapt.algorithms.meta_lstm": ("MetaLSTM",),
    "fastadapt.algorithms.metasgd": ("MetaSGD",),
    "fastadapt.algorithms.ntm": ("NTMLearner",),
    "fastadapt.algorithms.protonet": ("ProtoNet",),
    "fastadapt.algorithms.reptile": ("Reptile",),
    "fastadapt.apps": ("tune",),
    "fastadapt.config": ("Config", "SourceRequest", "TaskSources", "config_from_dict", "load_config"),
    "fastadapt.core.contract": ("Algorithm", "MetaOutput", "TaskSource"),
    "fastadapt.core.episodes": ("EnvTasks", "Episode", "TaskBatch", "collate_tasks"),
    "fastadapt.core.errors": ("ConfigError", "DataError", "FastAdaptError"),
    "fastadapt.core.registry": ("register_algorithm", "register_model", "register_task_source"),
    "fastadapt.data": (
        "ClassDataset",
        "EpisodeDataset",
        "EpisodeSampler",
        "SinusoidTasks",
        "load_fashion_mnist",
        "load_idx",
        "load_omniglot",
        "load_omniglot_originals",
        "read_idx",
    ),
    "fastadapt.eval": ("EvalResult", "evaluate", "mean_ci"),
    "fastadapt.eval.explanations": ("explain",),
    "fastadapt.eval.online": ("online",),
    "fastadapt.nn": ("load_pretrained", "load_safetensors", "save_safetensors"),
    "fastadapt.runs": ("Run", "RunFolder", "export_run", "load_run"),
    "fastadapt.runtime": ("keep_freed_memory",),
    "fastadapt.training": ("TrainResult", "train"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


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


if TYPE_CHECKING:  # for type checkers and editors: the names of _EXPORTS, imported eagerly (a test compares)
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
    from fastadapt.apps import tune
    from fastadapt.config import Config, SourceRequest, TaskSources, config_from_dict, load_config
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
    from fastadapt.nn import load_pretrained, load_safetensors, save_safetensors
    from fastadapt.runs import Run, RunFolder, export_run, load_run
    from fastadapt.runtime import keep_freed_memory
    from fastadapt.training import TrainResult, train
