"""Configuration: the schema of a run, each field with its comment and range (:mod:`.schema`), its
validation (:mod:`.validate`), presets, overrides and TOML (:mod:`.toml`), and the way from a config to
objects (:mod:`.build`) with a preflight check of what a run costs (:mod:`.preflight`)."""

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
