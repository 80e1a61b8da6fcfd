"""Configuration: the schema of a run, each field with its comment and range (:mod:`.schema`), its
validation (:mod:`.validate`), presets, overrides and TOML (:mod:`.toml`), and the way from a config to
objects (:mod:`.build`) with a preflight check of what a run costs (:mod:`.preflight`)."""

from typing import TYPE_CHECKING, Any

from fastadapt.config.schema import (
    RANGES,
    SECTIONS,
    Config,
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    Range,
    RunConfig,
    dataset_argument,
    dataset_name,
    field_comments,
)
from fastadapt.config.toml import apply_overrides, load_config, parse_override, preset_names, read_toml, to_toml
from fastadapt.config.validate import algorithm_signature, config_from_dict

if TYPE_CHECKING:
    from fastadapt.config.build import SourceRequest, TaskSources


def __getattr__(name: str) -> Any:  # the builders import torch: only on first use
    if name in ("SourceRequest", "TaskSources"):
        from fastadapt.config import build

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RANGES",
    "SECTIONS",
    "Config",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "OptimConfig",
    "Range",
    "RunConfig",
    "SourceRequest",
    "TaskSources",
    "algorithm_signature",
    "apply_overrides",
    "config_from_dict",
    "dataset_argument",
    "dataset_name",
    "field_comments",
    "load_config",
    "parse_override",
    "preset_names",
    "read_toml",
    "to_toml",
]
