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
    "fastadapt.algorithms": (
        "ALFA",
        "ANIL",
        "FOMAML",
        "MAML",
        "MAMLRL",
        "MANN",
        "MatchingNet",
        "MetaLSTM",
        "MetaSGD",
        "NTMLearner",
        "ProtoMAML",
        "ProtoNet",
        "Reptile",
    ),
    "fastadapt.apps": ("tune",),
    "fastadapt.config": ("Config", "SourceRequest", "TaskSources", "config_from_dict", "load_config"),
    "fastadapt.core": (
        "Algorithm",
        "ConfigError",
        "DataError",
        "EnvTasks",
        "Episode",
        "ExplainablePredictor",
        "FastAdaptError",
        "MetaOutput",
        "Predictor",
        "TaskBatch",
        "TaskSource",
        "collate_tasks",
        "register_algorithm",
        "register_model",
        "register_task_source",
    ),
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
    "fastadapt.eval": ("EvalResult", "evaluate", "explain", "mean_ci", "online"),
    "fastadapt.nn": ("load_pretrained", "load_safetensors", "save_safetensors"),
    "fastadapt.runs": ("Run", "RunFolder", "export_run", "load_run"),
    "fastadapt.runtime": ("keep_freed_memory",),
    "fastadapt.training": ("Callback", "TrainResult", "Trainer", "meta_gradient", "train"),
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
    from fastadapt.algorithms import (
        ALFA,
        ANIL,
        FOMAML,
        MAML,
        MAMLRL,
        MANN,
        MatchingNet,
        MetaLSTM,
        MetaSGD,
        NTMLearner,
        ProtoMAML,
        ProtoNet,
        Reptile,
    )
    from fastadapt.apps import tune
    from fastadapt.config import Config, SourceRequest, TaskSources, config_from_dict, load_config
    from fastadapt.core import (
        Algorithm,
        ConfigError,
        DataError,
        EnvTasks,
        Episode,
        ExplainablePredictor,
        FastAdaptError,
        MetaOutput,
        Predictor,
        TaskBatch,
        TaskSource,
        collate_tasks,
        register_algorithm,
        register_model,
        register_task_source,
    )
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
    from fastadapt.eval import EvalResult, evaluate, explain, mean_ci, online
    from fastadapt.nn import load_pretrained, load_safetensors, save_safetensors
    from fastadapt.runs import Run, RunFolder, export_run, load_run
    from fastadapt.runtime import keep_freed_memory
    from fastadapt.training import Callback, Trainer, TrainResult, meta_gradient, train
