"""From nested dicts (as read from TOML) to a checked :class:`~fastadapt.config.schema.Config`.

Unknown keys, wrong types and impossible values raise :class:`~fastadapt.core.errors.ConfigError` with a
one-line message naming the key.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from typing import Any

from fastadapt.config.schema import (
    AUGMENTATIONS,
    INT_MAX,
    LAYER_WIDTH,
    LOGGERS,
    RANGES,
    SECTIONS,
    Config,
    dataset_name,
)
from fastadapt.config.schema import short_repr as _short
from fastadapt.core.errors import ConfigError
from fastadapt.core.registry import ALGORITHMS, MODELS, TASK_SOURCES, algorithm_class, import_modules, is_target
from fastadapt.runtime.devices import check_device_name

# fastadapt.runtime.layout.MEMORY_FORMATS, written out: importing the runtime here would import torch with the
# config (tests/test_layout.py checks that the two are the same)
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats, lists for tuples."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a)
            except ConfigError:
                pass
        raise ConfigError(f"{key}={_short(value)} has the wrong type; expected {tp}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={_short(value)} has the wrong type; expected a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(key, v, args[0]) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key}: {_short(value)} has {len(value)} value(s); expected {len(args)}")
        return tuple(_coerce(key, v, a) for v, a in zip(value, args, strict=True))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={_short(value)} has the wrong type; expected a number")
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(
                f"{key}={_short(value)} is too large for a number; write it as a float, e.g. 1e3"
            ) from None
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={_short(value)} has the wrong type; expected an integer")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={_short(value)} has the wrong type; expected true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={_short(value)} has the wrong type; expected a string")
        if "\x00" in value:
            raise ConfigError(f"{key}={_short(value)} holds a NUL character; no name or path can")
        return value
    if tp is typing.Any:
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={_short(value)} has the wrong type; expected a table, e.g. {{ width = 64 }}")
        return dict(value)
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _build_section(name: str, cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    allowed = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in values.items():
        if k not in hints:
            raise ConfigError(f"unknown key {name}.{k}; allowed keys of [{name}]: {', '.join(allowed)}")
        kwargs[k] = _coerce(f"{name}.{k}", v, hints[k])
    return cls(**kwargs)


def algorithm_signature(name: str) -> dict[str, inspect.Parameter]:
    """The options of algorithm ``name``: its constructor's keyword parameters after ``model``."""
    params = list(inspect.signature(algorithm_class(name).__init__).parameters.values())[2:]  # self, model
    return {p.name: p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _check_algorithm_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    params = algorithm_signature(name)
    out = {}
    for k, v in options.items():
        if k not in params:
            raise ConfigError(f"unknown key algorithm.{k} for {name}; allowed: {', '.join(params) or '(none)'}")
        default = params[k].default
        if default is not inspect.Parameter.empty and default is not None and v is not None:
            want = type(default)
            if want is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            elif want in (tuple, list) and isinstance(v, (list, tuple)):
                v = want(v)
            elif not isinstance(v, want) or (want is int and isinstance(v, bool)):
                raise ConfigError(
                    f"algorithm.{k}={_short(v)} has the wrong type; expected {want.__name__} (default {default!r})"
                )
        if not _all_finite(v):
            raise ConfigError(f"algorithm.{k}={_short(v)} is invalid; a number must be finite (no nan or inf)")
        out[k] = v
    return out


def _all_finite(v: Any) -> bool:
    """False if ``v`` is, or holds in a list or table, a float NaN or infinity."""
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, (list, tuple)):
        return all(_all_finite(x) for x in v)
    if isinstance(v, dict):
        return all(_all_finite(x) for x in v.values())
    return True


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {', '.join(allowed)}")


def _check_names(cfg: Config) -> None:
    """The model, the task sources and the choices among fixed words."""
    d, o, r = cfg.data, cfg.optim, cfg.run
    check_device_name(r.device)
    _check_choice("optim.optimizer", o.optimizer, ("adam", "sgd", "adamw", "rmsprop"))
    _check_choice("optim.schedule", o.schedule, ("constant", "step", "cosine", "linear"))
    _check_choice("run.precision", r.precision, ("fp32", "bf16", "auto"))
    _check_choice("run.memory_format", r.memory_format, MEMORY_FORMATS)
    if cfg.model.target:
        if not is_target(cfg.model.target):
            raise ConfigError(f"model.target={cfg.model.target!r} is not an import path; write package.module:Class")
    elif cfg.model.name not in MODELS:
        raise ConfigError(
            f"model.name={cfg.model.name!r} is not registered; choose one of {', '.join(MODELS.available())} "
            f'or name a class with model.target = "package.module:Class"'
        )
    sources = ", ".join(TASK_SOURCES.available())
    if d.target:
        if not is_target(d.target):
            raise ConfigError(f"data.target={d.target!r} is not an import path; write package.module:function")
    elif dataset_name(d.dataset) not in TASK_SOURCES:
        raise ConfigError(
            f"data.dataset={d.dataset!r} is not registered; choose one of {sources} "
            f'(e.g. folder:<path>) or name a builder with data.target = "package.module:function"'
        )
    if d.test_dataset and dataset_name(d.test_dataset) not in TASK_SOURCES:
        raise ConfigError(f"data.test_dataset={d.test_dataset!r} is not registered; choose one of {sources}")


def _check_eval(cfg: Config) -> None:
    e = cfg.eval
    if e.finetune not in ("none", "head", "encoder", "transductive", "film", "tsa"):
        raise ConfigError(
            f"eval.finetune={e.finetune!r} is not allowed; choose none, head, encoder, transductive, film or tsa"
        )
    if e.select not in ("fixed", "support_cv"):
        raise ConfigError(f"eval.select={e.select!r} is not allowed; choose fixed or support_cv")
    if not e.select_lr_scales or not all(math.isfinite(s) and s > 0 for s in e.select_lr_scales):
        raise ConfigError(
            f"eval.select_lr_scales={_short(list(e.select_lr_scales))} is invalid; "
            f"give one or more finite numbers > 0, e.g. [0.5, 1, 2]"
        )
    if not e.select_steps or not all(0 <= k <= 10000 for k in e.select_steps):
        raise ConfigError(
            f"eval.select_steps={_short(list(e.select_steps))} is invalid; "
            f"give one or more integers in [0, 10000], e.g. [1, 3, 5, 10]"
        )
    if e.select != "fixed" and e.finetune != "none":
        raise ConfigError(
            "eval.select and eval.finetune are both set; "
            "fine-tuning is for embedding-based algorithms, selection for gradient-based ones"
        )


def _validate(cfg: Config) -> Config:
    d, e, r = cfg.data, cfg.eval, cfg.run
    for key, rng in RANGES.items():
        section, name = key.split(".")
        v = getattr(getattr(cfg, section), name)
        if not rng.contains(v):
            raise ConfigError(f"{key}={_short(v)} is invalid; it must be {rng.describe(v)}")
    if not cfg.model.layers:
        raise ConfigError("model.layers=[] is invalid; give at least one hidden width, e.g. [40, 40]")
    for width in cfg.model.layers:
        if not LAYER_WIDTH.contains(width):
            raise ConfigError(
                f"model.layers={_short(list(cfg.model.layers))} is invalid; "
                f"each width must be {LAYER_WIDTH.describe(width)}"
            )
    _check_names(cfg)
    _check_eval(cfg)
    if d.episode_scope not in ("dataset", "alphabet", "domain"):
        raise ConfigError(f"data.episode_scope={d.episode_scope!r} is not allowed; choose dataset, alphabet or domain")
    if d.episodes not in ("fixed", "variable"):
        raise ConfigError(f"data.episodes={d.episodes!r} is not allowed; choose fixed or variable")
    if d.channels not in (0, 1, 3):
        raise ConfigError(
            f"data.channels={d.channels} is not allowed; choose 0 (as the data has them), 1 (grey) or 3 (RGB)"
        )
    for key, values, allowed in (("data.augment", d.augment, AUGMENTATIONS), ("run.loggers", r.loggers, LOGGERS)):
        bad = [v for v in values if v not in allowed]
        if bad or len(set(values)) != len(values):
            what = f"{bad[0]!r} is not one of" if bad else "lists a name twice; choose from"
            raise ConfigError(f"{key}={_short(list(values))}: {what} {', '.join(allowed)}")
    for ways, shots in e.test_settings:
        if not (RANGES["data.ways"].contains(ways) and RANGES["data.shots"].contains(shots)):
            raise ConfigError(
                f"eval.test_settings entry [{ways}, {shots}] is invalid; ways and shots must be in [1, {INT_MAX}]"
            )
    if e.test_episodes and e.test_episodes < 2:
        raise ConfigError(
            f"eval.test_episodes={e.test_episodes} is too few for a confidence interval; "
            f"use >= 2 (or 0 to skip testing)"
        )
    return cfg


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from nested dicts (as read from TOML).

    The modules in ``run.imports`` are imported first, so that what they register can be named.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a table of sections, got {type(raw).__name__}")
    raw = dict(raw)
    run_raw = raw.get("run", {})
    if isinstance(run_raw, dict) and "imports" in run_raw:
        import_modules(_coerce("run.imports", run_raw["imports"], tuple[str, ...]))
    for section, key in (("model", "name"), ("data", "dataset")):
        table = raw.get(section, {})
        if isinstance(table, dict) and table.get("target") and key in table:
            raise ConfigError(
                f"{section}.{key} and {section}.target are both set; give one (a registered name, or an import path)"
            )
    sections = {}
    for name, cls in SECTIONS.items():
        values = raw.pop(name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"[{name}] must be a table of keys, got {values!r}")
        sections[name] = _build_section(name, cls, values)
    algo = raw.pop("algorithm", {"name": "protonet"})
    if not isinstance(algo, dict) or ("name" in algo) == ("target" in algo):
        raise ConfigError(
            '[algorithm] needs a name (registered, e.g. name = "protonet") or a target ("package.module:Class"), '
            "not both"
        )
    if raw:
        raise ConfigError(f"unknown section [{next(iter(raw))}]; allowed: {', '.join([*SECTIONS, 'algorithm'])}")
    algo = dict(algo)
    key = "name" if "name" in algo else "target"
    name = algo.pop(key)
    if not isinstance(name, str):
        raise ConfigError(f"algorithm.{key}={name!r} has the wrong type; expected a string")
    if key == "name" and name not in ALGORITHMS:
        raise ConfigError(
            f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHMS.available())} "
            f'or name a class with algorithm.target = "package.module:Class"'
        )
    if key == "target" and not is_target(name):
        raise ConfigError(f"algorithm.target={name!r} is not an import path; write package.module:Class")
    options = _check_algorithm_options(name, algo)
    return _validate(Config(**sections, algorithm=name, algorithm_options=options))
