"""Objects a :class:`Config` describes: task sources, the model, the algorithm, the optimizer."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.algorithms import algorithm_class
from fastadapt.data import ClassDataset, EpisodeSampler, SinusoidTasks, load_omniglot
from fastadapt.errors import ConfigError
from fastadapt.nn import MLP, Conv4
from fastadapt.train.config import Config


def resize_dataset(data: ClassDataset, size: int) -> ClassDataset:
    """``data`` with images resized to ``size x size`` (area / antialiased), kept as uint8."""
    if data.data.ndim != 4 or data.data.shape[-1] == size:
        return data
    x = F.interpolate(data.data.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return ClassDataset(x.round().clamp(0, 255).to(torch.uint8), data.offsets, data.names, data.name)


def class_dataset(cfg: Config, part: str) -> ClassDataset:
    d = cfg.data
    if d.dataset == "omniglot":
        data = load_omniglot(d.split, part)
    elif d.dataset.startswith("folder:"):
        root = d.dataset[len("folder:") :]
        data = ClassDataset.from_folder(f"{root}/{part}" if part else root, size=(d.image_size, d.image_size))
    else:
        raise ConfigError(f"data.dataset={d.dataset!r} has no classes")
    return resize_dataset(data, d.image_size)


@dataclass
class TaskSources:
    train: EpisodeSampler | SinusoidTasks
    val: EpisodeSampler | SinusoidTasks | None
    tests: dict[str, EpisodeSampler | SinusoidTasks]  # "5w1s" -> sampler


def task_sources(cfg: Config) -> TaskSources:
    """The training stream, the validation and test episode sources (fixed by ``eval.seed``)."""
    d, e = cfg.data, cfg.eval
    if d.dataset == "sinusoid":
        train = SinusoidTasks(d.shots, d.queries, seed=cfg.run.seed)
        val = SinusoidTasks(cfg.test_shots, cfg.test_queries, seed=e.seed) if d.val_part else None
        settings = e.test_settings or ((1, cfg.test_shots),)
        tests = {f"{s}shot": SinusoidTasks(s, cfg.test_queries, seed=e.seed + 1) for _, s in settings}
        return TaskSources(train, val, tests)
    train = EpisodeSampler(class_dataset(cfg, d.train_part), d.ways, d.shots, d.queries, seed=cfg.run.seed)
    val = None
    if d.val_part and e.val_every:
        val = EpisodeSampler(class_dataset(cfg, d.val_part), cfg.test_ways, cfg.test_shots, cfg.test_queries, seed=e.seed)
    test_data = class_dataset(cfg, d.test_part)
    settings = e.test_settings or ((cfg.test_ways, cfg.test_shots),)
    tests = {f"{w}w{s}s": EpisodeSampler(test_data, w, s, cfg.test_queries, seed=e.seed + 1) for w, s in settings}
    return TaskSources(train, val, tests)


def build_model(cfg: Config, out_features: int | None) -> nn.Module:
    m = cfg.model
    if m.name == "conv4":
        channels = 1 if cfg.data.dataset == "omniglot" else 3 if cfg.data.dataset.startswith("folder:") else 1
        return Conv4(channels, out_features, m.hidden, cfg.data.image_size, batch_norm=m.batch_norm)
    if m.name == "mlp":
        in_features = 1 if cfg.data.dataset == "sinusoid" else cfg.data.image_size**2
        return MLP(in_features, out_features or m.layers[-1], tuple(m.layers))
    if m.name == "flatten":
        if out_features is not None:
            raise ConfigError(f"model.name=flatten has no output layer; {cfg.algorithm} needs a model with a head (use conv4 or mlp)")
        return nn.Flatten()
    raise ConfigError(f"model.name={m.name!r} is not allowed; choose conv4, mlp or flatten")


def build_algorithm(cfg: Config) -> nn.Module:
    cls = algorithm_class(cfg.algorithm)
    regression = cfg.data.dataset == "sinusoid"
    if regression:
        out = 1
    else:
        out = cfg.data.ways if getattr(cls, "needs_head", False) else None
        bad = [w for w in (cfg.test_ways, *(w for w, _ in cfg.eval.test_settings)) if w != cfg.data.ways]
        if out is not None and bad:
            raise ConfigError(f"{cfg.algorithm} has a {cfg.data.ways}-way head; test ways must equal data.ways={cfg.data.ways} (got {bad[0]})")
    model = build_model(cfg, out)
    try:
        return cls(model, **cfg.algorithm_options)
    except TypeError as e:
        raise ConfigError(f"algorithm {cfg.algorithm}: {e}") from None


def build_optimizer(cfg: Config, params) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    o = cfg.optim
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ConfigError(f"{cfg.algorithm} with model.name={cfg.model.name} has no trainable parameters; choose a model with weights (conv4 or mlp)")
    if o.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    elif o.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    if o.schedule == "step":
        sched: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.StepLR(opt, o.step_size, o.gamma)
    elif o.schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, o.steps) / o.steps)))
    elif o.schedule == "linear":  # Reptile's meta step size: linearly to 0 at optim.steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - min(s, o.steps) / o.steps)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return opt, sched
