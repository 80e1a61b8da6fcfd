"""From a :class:`~fastadapt.config.Config` to objects: task sources, the model, the algorithm, the optimizer.

Every name is looked up in :mod:`fastadapt.core.registry` (or imported, for a ``target``); nothing here
knows a dataset, model or algorithm by name. The model's input shape comes from the data (the first
training task), never from a dataset's name, and what the parts return is checked against
:mod:`fastadapt.core.contract` before training starts, so a mismatch is one line naming the expected and
the found.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from fastadapt.config import Config, dataset_argument, dataset_name
from fastadapt.config import preflight as cost
from fastadapt.config.models import build_model, check_model, head_width
from fastadapt.core import contract
from fastadapt.core.episodes import EnvTasks
from fastadapt.core.errors import ConfigError, FastAdaptError
from fastadapt.core.registry import ALGORITHMS, TASK_SOURCES, algorithm_class, describe_object, import_target
from fastadapt.data import ClassDataset, EpisodeSampler, class_groups, conform_images
from fastadapt.data.augment import augmented
from fastadapt.data.domains.mixed import DEFAULT_DOMAINS, domain_request, domain_sizes
from fastadapt.data.variable import VariableEpisodeSampler
from fastadapt.nn.weights import load_pretrained
from fastadapt.runtime.devices import resolve_device
from fastadapt.runtime.layout import apply_memory_format, resolve_memory_format


@dataclass(frozen=True)
class SourceRequest:
    """What a registered task-source builder is asked for.

    A builder returns a :class:`~fastadapt.data.ClassDataset` (the engine resizes it to
    ``image_size``, converts its channels and draws ``ways``-way episodes with ``seed``) or any
    object that keeps :class:`~fastadapt.core.contract.TaskSource`.
    """

    part: str  # "train", "val", "test" or the config's own part names (data.train_part, ...)
    ways: int  # N of the tasks asked for
    shots: int  # K
    queries: int  # Q
    seed: int  # the seed of this stream of tasks (run.seed for training, eval.seed for evaluation)
    argument: str = ""  # what follows the name in data.dataset ("folder:<path>" -> "<path>")
    split: str = "vinyals"  # data.split
    image_size: int = 28  # data.image_size
    channels: int = 0  # data.channels (0: as stored)
    options: dict[str, Any] = field(default_factory=dict)  # data.options
    role: str = "train"  # what the tasks are for: "train", "val" or "test"


@dataclass
class TaskSources:
    """The training stream, the validation episodes and the test episodes of a run."""

    train: Any  # a TaskSource
    val: Any | None = None
    tests: dict[str, Any] = field(default_factory=dict)  # "5w1s" -> TaskSource
    conversions: dict[str, str] = field(
        default_factory=dict
    )  # test key -> how its data was converted to the model's input


def _describe_conversion(before: ClassDataset, after: ClassDataset) -> str:
    """In words, how ``before`` became ``after`` (channels, size), or "none"."""
    if before is after or before.data.shape[1:] == after.data.shape[1:]:
        return "none"
    b, a = before.data.shape[1:], after.data.shape[1:]
    words = []
    if len(b) == 3 and b[0] != a[0]:
        words.append("RGB to grey (ITU-R 601 luma)" if b[0] == 3 else "grey to RGB (channel copied)")
    if b[-2:] != a[-2:]:
        words.append(f"{b[-2]}x{b[-1]} to {a[-2]}x{a[-1]} (bilinear, antialiased)")
    return f"{before.name}: " + ", ".join(words)


def _source_builder(cfg: Config) -> tuple[Any, str]:
    d = cfg.data
    if d.target:
        return import_target(d.target, "data.target"), d.target
    return TASK_SOURCES.get(dataset_name(d.dataset)), d.dataset


def _as_task_source(
    obj: Any,
    name: str,
    ways: int,
    shots: int,
    queries: int,
    seed: int,
    image_size: int | None = None,
    channels: int = 0,
    scope: str = "dataset",
    variable: bool = False,
) -> Any:
    """``obj`` as a task source: a ClassDataset becomes an :class:`EpisodeSampler` (conformed images;
    a class with fewer than ``shots + queries`` examples is an error naming it; ``scope`` as
    ``data.episode_scope``; a conversion that cannot fit in memory is refused before it starts).

    ``variable``: a :class:`~fastadapt.data.variable.VariableEpisodeSampler` instead (``data.episodes =
    "variable"``: ``ways``, ``shots`` and ``queries`` are then not used), which needs a ClassDataset."""
    if isinstance(obj, ClassDataset):
        cost.check_conversion(obj, image_size, channels, obj.name)
        data = conform_images(obj, image_size, channels)
        if variable:
            return VariableEpisodeSampler(data, seed, strict=True, groups=class_groups(data, scope))
        return EpisodeSampler(data, ways, shots, queries, seed=seed, strict=True, groups=class_groups(data, scope))
    if variable:
        raise ConfigError(
            f"data.episodes=variable draws episodes from a dataset's classes; task source {name} gives "
            f"{type(obj).__name__}, not a ClassDataset: use data.episodes=fixed"
        )
    contract.check_task_source(obj, name)
    return obj


def task_sources(
    cfg: Config, tasks: Any = None, tests_only: bool = False, input_shape: tuple[int, ...] | None = None
) -> TaskSources:
    """The training stream, the validation and test episode sources (fixed by ``eval.seed``).

    ``tasks``: the user's own sources instead of ``data.dataset`` (see :func:`user_task_sources`).
    ``data.episodes = "variable"``: validation and test draw variable-way, variable-shot episodes (one test source,
    key ``"variable"``; data.test_ways / test_shots / test_queries and eval.test_settings are not used); training
    keeps data.ways / shots / queries.
    ``tests_only``: build the test sources alone (``train`` is then None); ``input_shape``: the
    model's input (one example), to which another domain's images are converted (default: the
    training source's first task).
    """
    if tasks is not None:
        return user_task_sources(cfg, tasks)
    d, e = cfg.data, cfg.eval
    made: dict[tuple[str, str], ClassDataset] = {}  # a (source, part) that gave a ClassDataset is loaded once

    def source(
        dataset: str, role: str, part: str, ways: int, shots: int, queries: int, seed: int, channels: int
    ) -> tuple[Any, str]:
        if (dataset, part) in made:
            obj: Any = made[dataset, part]
        else:
            build, name = (
                _source_builder(cfg) if dataset == d.dataset else (TASK_SOURCES.get(dataset_name(dataset)), dataset)
            )
            request = SourceRequest(
                part,
                ways,
                shots,
                queries,
                seed,
                dataset_argument(dataset),
                d.split,
                d.image_size,
                channels,
                dict(d.options),
                role,
            )
            if dataset != d.dataset:  # another source at test: data.test_options, never the training source's options
                if dataset_name(d.dataset) == "domains":  # a held-out domain: its own table of data.options too
                    request = domain_request(request, dataset_name(dataset))
                    request = replace(request, options={**request.options, **d.test_options})
                else:
                    request = replace(request, options=dict(d.test_options))
            try:
                obj = build(request)
            except FastAdaptError:
                raise
            except TypeError as e:
                raise ConfigError(
                    f"task source {name}: calling {describe_object(build)}(request) failed: {e}"
                ) from None
            if isinstance(obj, ClassDataset):
                made[dataset, part] = obj
        src = _as_task_source(
            obj,
            d.target or dataset,
            ways,
            shots,
            queries,
            seed,
            d.image_size,
            channels,
            d.episode_scope,
            variable=role != "train" and d.episodes == "variable",
        )
        conversion = _describe_conversion(obj, src.dataset) if isinstance(obj, ClassDataset) else "none"
        return src, conversion

    train, val = None, None
    if not tests_only:
        train, _ = source(d.dataset, "train", d.train_part, d.ways, d.shots, d.queries, cfg.run.seed, d.channels)
        if d.val_part and e.val_every:
            val, _ = source(
                d.dataset, "val", d.val_part, cfg.test_ways, cfg.test_shots, cfg.test_queries, e.seed, d.channels
            )
    test_dataset, test_channels = d.dataset, d.channels
    if d.test_dataset and d.test_dataset != d.dataset:  # another domain: convert its images to the training input
        test_dataset = d.test_dataset
        if input_shape is None:
            first = (
                train
                if train is not None
                else source(d.dataset, "train", d.train_part, d.ways, d.shots, d.queries, cfg.run.seed, d.channels)[0]
            )
            input_shape = tuple(first.sample_tasks(0, 0, 1).support_x.shape[2:])
        test_channels = d.channels or (int(input_shape[0]) if len(input_shape) == 3 else 0)
    settings = e.test_settings or ((cfg.test_ways, cfg.test_shots),)
    if d.episodes == "variable":  # one test source: its episodes draw their own ways and shots
        settings = ((cfg.test_ways, cfg.test_shots),)
    tests, conversions = {}, {}
    for w, s in settings:
        src, conversion = source(test_dataset, "test", d.test_part, w, s, cfg.test_queries, e.seed + 1, test_channels)
        if isinstance(src, VariableEpisodeSampler):
            key = "variable"
        else:  # regression: no ways
            key = f"{s}shot" if getattr(src, "ways", 1) == 1 and not isinstance(src, EpisodeSampler) else f"{w}w{s}s"
        tests[key], conversions[key] = src, conversion
    if train is not None:
        train = augmented(train, d.augment, cfg.run.seed)  # data.augment: training tasks only
    return TaskSources(train, val, tests, conversions)


def user_task_sources(cfg: Config, tasks: Any) -> TaskSources:
    """The user's sources: a :class:`TaskSources`, one source (training only), or a mapping with keys
    ``train`` and optionally ``val`` and ``test`` (a source, or a mapping of setting name -> source).
    A :class:`ClassDataset` in place of a source is drawn from with the config's ways, shots and queries."""
    if isinstance(tasks, TaskSources):
        return tasks
    d, e = cfg.data, cfg.eval
    if not isinstance(tasks, Mapping):
        tasks = {"train": tasks}
    unknown = set(tasks) - {"train", "val", "test"}
    if unknown or "train" not in tasks:
        raise ConfigError(
            f"tasks: expected keys train (required), val and test; found {', '.join(map(str, tasks)) or 'none'}"
        )
    if isinstance(tasks["train"], VariableEpisodeSampler):
        raise ConfigError(
            "tasks['train']: the training loop stacks fixed-shape tasks; variable-way episodes are for validation "
            "and test only (give an EpisodeSampler to train on)"
        )
    train = _as_task_source(
        tasks["train"], "tasks['train']", d.ways, d.shots, d.queries, cfg.run.seed, d.image_size, d.channels
    )
    val = None
    if tasks.get("val") is not None:
        val = _as_task_source(
            tasks["val"],
            "tasks['val']",
            cfg.test_ways,
            cfg.test_shots,
            cfg.test_queries,
            e.seed,
            d.image_size,
            d.channels,
        )
    tests: dict[str, Any] = {}
    test = tasks.get("test")
    if test is not None:
        items = test.items() if isinstance(test, Mapping) else [(f"{cfg.test_ways}w{cfg.test_shots}s", test)]
        for key, src in items:
            tests[str(key)] = _as_task_source(
                src,
                f"tasks['test'][{key!r}]",
                cfg.test_ways,
                cfg.test_shots,
                cfg.test_queries,
                e.seed + 1,
                d.image_size,
                d.channels,
            )
    return TaskSources(augmented(train, d.augment, cfg.run.seed), val, tests)


def probe_batch(sources: TaskSources, cfg: Config) -> Any:
    """One training task, checked against the task-source contract (shapes and labels)."""
    name = cfg.data.target or cfg.data.dataset
    train = sources.train
    batch = train.sample_tasks(0, 0, 1)
    contract.check_task_batch(batch, name, getattr(train, "ways", 1), train.shots, train.queries)
    return batch


def train_classes(sources: TaskSources) -> int | None:
    """Classes the training source draws from (its dataset's), None when it does not say."""
    data = getattr(sources.train, "dataset", None)
    return int(data.num_classes) if isinstance(data, ClassDataset) else None


def train_domains(sources: TaskSources) -> list[int] | None:
    """The class count of each domain of a multi-domain training source, in class-id order (:func:`domain_sizes`);
    None for other sources."""
    data = getattr(sources.train, "dataset", None)
    return domain_sizes(data) if isinstance(data, ClassDataset) else None


def config_domains(cfg: Config) -> list[str] | None:
    """The names of the domains of a ``domains`` training source, in class-id order (``data.options.domains``, else
    the source's default list: :func:`~fastadapt.data.domains.mixed.mixed_domains` puts them side by side in that
    order); None for other sources."""
    if cfg.data.target or dataset_name(cfg.data.dataset) != "domains":
        return None
    return [str(n) for n in cfg.data.options.get("domains", DEFAULT_DOMAINS)]


def build_algorithm(
    cfg: Config,
    batch: Any = None,
    model: nn.Module | None = None,
    num_classes: int | None = None,
    check_memory: bool = True,
    pretrained: bool = True,
    domain_sizes: list[int] | None = None,
) -> nn.Module:
    """The algorithm a config names, around ``model`` (else the config's model), checked on ``batch``
    (a training :class:`~fastadapt.core.episodes.TaskBatch`: its shapes fix the model's input and output;
    None: one task of the config's training source).

    ``check_memory``: refuse, before its weights are allocated, a model whose parameters cannot fit
    (built once on the meta device first), and a configuration whose training step or evaluation
    batch cannot fit (:func:`fastadapt.config.preflight.check_cost`); False for a run that is only evaluated.

    ``pretrained``: load ``model.weights`` into the config's model (False when trained weights replace them:
    ``load_run``).

    An algorithm whose constructor takes ``num_classes`` (a classifier over every training class,
    e.g. Baseline) gets the training source's class count unless the config sets it; one that takes
    ``domain_sizes`` (a head per domain: MultiDomain) gets ``domain_sizes`` (:func:`train_domains`) likewise, one that
    takes ``domain_names`` the domains' names (:func:`config_domains`), and one that takes ``pretrained`` (weights of
    its own to load from elsewhere, e.g. URL's teachers) gets ``pretrained``.

    The model's convolution weights take ``run.memory_format``'s layout
    (:func:`fastadapt.runtime.layout.resolve_memory_format`; default NCHW; ``"auto"``: NHWC on a CPU under ProtoNets
    and Matching Networks).
    """
    if batch is None:
        sources = task_sources(cfg)
        batch, num_classes = probe_batch(sources, cfg), train_classes(sources)
        domain_sizes = train_domains(sources)
    cls = algorithm_class(cfg.algorithm)
    if cfg.data.episodes == "variable":
        contract.check_variable_ways(cls, cfg.algorithm, ALGORITHMS.names(), ALGORITHMS.get)
    width = head_width(cfg, cls, batch)
    name = cfg.model.target or cfg.model.name
    if model is None:
        shape = contract.model_input_shape(batch)
        if check_memory:
            cost.check_parameters(lambda: build_model(cfg, shape, width), f"model {name}", cfg.run.device)
        model = build_model(cfg, shape, width)
        if cfg.model.weights and pretrained:
            load_pretrained(model, cfg.model.weights)
    else:
        name = describe_object(type(model))
    if check_memory and not isinstance(
        batch, EnvTasks
    ):  # before _check_model, which runs the model on a whole support set
        cost.check_cost(cfg, batch, model)
    check_model(model, name, cfg.algorithm, width, batch)
    options = dict(cfg.algorithm_options)
    if "num_classes" in inspect.signature(cls).parameters and "num_classes" not in options:
        if num_classes is None:
            raise ConfigError(
                f"algorithm {cfg.algorithm} needs num_classes (the training classes); set algorithm.num_classes"
            )
        options["num_classes"] = num_classes
    takes = inspect.signature(cls).parameters
    given = {"domain_sizes": domain_sizes, "domain_names": config_domains(cfg), "pretrained": pretrained}
    options.update({k: v for k, v in given.items() if k in takes and k not in options})
    try:
        algo = cls(model, **options)
    except FastAdaptError:
        raise
    except TypeError as e:
        raise ConfigError(f"algorithm {cfg.algorithm}: {e}") from None
    except (
        RuntimeError,
        ValueError,
        IndexError,
        OverflowError,
    ) as e:  # a shape or size from the options that torch refuses
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        given = ", ".join(f"{k}={v!r}" for k, v in cfg.algorithm_options.items())[:200] or "the defaults"
        raise ConfigError(
            f"algorithm {cfg.algorithm} cannot be built with {given} ({type(e).__name__}: {reason}); "
            f"check the [algorithm] options"
        ) from None
    contract.check_algorithm(algo, cfg.algorithm)
    if isinstance(getattr(algo, "model", None), nn.Module):  # run.memory_format: how, never what, it computes
        fmt = resolve_memory_format(cfg.run.memory_format, algo, algo.model, resolve_device(cfg.run.device))
        if fmt == "channels_last":  # NCHW is torch's own: a model given in another layout is left as it came
            apply_memory_format(algo.model, fmt)
    return algo


def build_optimizer(cfg: Config, params) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    o = cfg.optim
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ConfigError(
            f"{cfg.algorithm} with model {cfg.model.target or cfg.model.name} has no trainable parameters; choose a "
            "model with weights (conv4 or mlp)"
        )
    if o.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    elif o.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    elif o.optimizer == "rmsprop":
        opt = torch.optim.RMSprop(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    if o.schedule == "step":
        sched: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.StepLR(opt, o.step_size, o.gamma)
    elif o.schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, o.steps) / o.steps))
        )
    elif o.schedule == "linear":  # Reptile's meta step size: linearly to 0 at optim.steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - min(s, o.steps) / o.steps)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return opt, sched
