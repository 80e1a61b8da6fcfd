"""The model a config names: built from the registry (``model.name``) or an import path (``model.target``), the
outputs the algorithm needs of it, and one trial forward on a task's support set."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from fastadapt.config import Config
from fastadapt.core import contract
from fastadapt.core.episodes import EnvTasks
from fastadapt.core.errors import ConfigError, FastAdaptError
from fastadapt.core.registry import MODELS, import_target


def _call_with_named(
    factory: Any, what: str, available: dict[str, Any], options: dict[str, Any], options_key: str
) -> Any:
    """``factory(**kwargs)``: the ``available`` values whose names it takes, plus every one of ``options``."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in options if k not in named and not open_ended]
    if unknown:
        raise ConfigError(
            f"{options_key}.{unknown[0]}: {what} takes no argument {unknown[0]!r}; it takes "
            f"{', '.join(named) or 'none'}"
        )
    kwargs = {k: v for k, v in available.items() if k in named and k not in options}
    kwargs.update(options)
    try:
        return factory(**kwargs)
    except FastAdaptError:
        raise
    except TypeError as e:
        raise ConfigError(f"{what}: {e}") from None


def build_model(cfg: Config, input_shape: tuple[int, ...], out_features: int | None) -> nn.Module:
    """The model a config names, for inputs of ``input_shape`` (one example) and ``out_features`` outputs (None: an
    embedding)."""
    m = cfg.model
    factory = import_target(m.target, "model.target") if m.target else MODELS.get(m.name)
    what = f"model {m.target or m.name}"
    available = {
        "input_shape": tuple(input_shape),
        "in_channels": int(input_shape[0]) if input_shape else 1,
        "image_size": int(input_shape[-1]) if len(input_shape) >= 2 else cfg.data.image_size,
        "out_features": out_features,
        "hidden": m.hidden,
        "layers": tuple(m.layers),
        "batch_norm": m.batch_norm,
    }
    model = _call_with_named(factory, what, available, dict(m.options), "model.options")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{what} returned {type(model).__name__}; expected an nn.Module")
    return model


def head_width(cfg: Config, cls: type, batch: Any) -> int | None:
    """Outputs per example the algorithm needs of its model: the classes of a head, the regression
    target's width, the action size (reinforcement learning), or None (an embedding)."""
    if isinstance(batch, EnvTasks):
        return batch.action_size
    if batch.query_y.is_floating_point():
        return int(batch.query_y.shape[-1]) if batch.query_y.ndim > 2 else 1
    if not contract.needs_head(cls):
        return None
    ways = batch.ways
    bad = [w for w in (cfg.test_ways, *(w for w, _ in cfg.eval.test_settings)) if w != ways]
    if bad:
        raise ConfigError(
            f"{cfg.algorithm} has a {ways}-way head; test ways must equal data.ways={ways} (got {bad[0]})"
        )
    return ways


def check_model(model: nn.Module, name: str, algorithm: str, width: int | None, batch: Any) -> None:
    """Run ``model`` once (eval mode, no graph) on one task's support set and check its output's shape."""
    if not any(True for _ in model.parameters()) and not any(True for _ in model.buffers()) and width is not None:
        raise ConfigError(
            f"model {name} has no weights; {algorithm} needs a model with a {width}-output head (use conv4 or mlp)"
        )
    x = torch.zeros(2, *batch.observation_shape) if isinstance(batch, EnvTasks) else batch.support_x[0]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except FastAdaptError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"model {name} cannot take inputs of shape {list(x.shape)} from the task source ({reason}); "
            f"check data.image_size / data.channels, or choose a model for this data (model.name / model.target)"
        ) from None
    finally:
        model.train(was_training)
    contract.check_model_output(out, name, algorithm, width, x.shape[0])
