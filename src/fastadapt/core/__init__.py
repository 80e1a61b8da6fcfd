"""The bottom of the package: typed episodes (:mod:`.episodes`), the contract every algorithm, task source
and predictor keeps (:mod:`.contract`), the registries of named components (:mod:`.registry`) and the errors
a user can cause (:mod:`.errors`). Nothing here imports the rest; names are imported on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastadapt.core.lazy import lazy_exports

_EXPORTS = {
    "fastadapt.core.contract": ("Algorithm", "ExplainablePredictor", "MetaOutput", "Predictor", "TaskSource"),
    "fastadapt.core.episodes": ("EnvTasks", "Episode", "TaskBatch", "collate_tasks"),
    "fastadapt.core.errors": ("ConfigError", "DataError", "FastAdaptError"),
    "fastadapt.core.registry": ("register_algorithm", "register_model", "register_task_source"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = [
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
]

if TYPE_CHECKING:
    from fastadapt.core.contract import Algorithm, ExplainablePredictor, MetaOutput, Predictor, TaskSource
    from fastadapt.core.episodes import EnvTasks, Episode, TaskBatch, collate_tasks
    from fastadapt.core.errors import ConfigError, DataError, FastAdaptError
    from fastadapt.core.registry import register_algorithm, register_model, register_task_source
