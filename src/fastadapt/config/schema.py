"""One validated source of truth for a run's settings.

A config is five frozen sections plus the algorithm's options. Presets are TOML files shipped in
``fastadapt/config/presets``; ``fastadapt train PRESET key=value ...`` overrides keys with dotted names
(``data.ways=20``, ``algorithm.inner_lr=0.1``). Unknown keys, wrong types and impossible values
raise :class:`~fastadapt.core.errors.ConfigError` with a one-line message naming the key.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import math
import re
import sys
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fastadapt.core.errors import ConfigError
from fastadapt.core.registry import ALGORITHMS, MODELS, TASK_SOURCES, algorithm_class, import_modules, is_target
from fastadapt.runtime.devices import check_device_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "omniglot"  # a registered task source, optionally name:argument: "omniglot", "sinusoid", "folder:<path>" (`fastadapt list`)
    target: str = ""  # instead of dataset: a task-source builder named by import path, "package.module:function"
    options: dict[str, Any] = field(default_factory=dict)  # keyword arguments for the task source (request.options)
    split: str = "vinyals"  # Omniglot split: "vinyals" (with rotations) or "lake"
    train_part: str = "train"  # part to meta-train on
    val_part: str = "val"  # part for validation / best-checkpoint selection ("" to skip validation)
    test_part: str = "test"  # part to test on
    test_dataset: str = ""  # test on another task source (registered name[:argument], e.g. fashion-mnist or folder:<path>); "" = data.dataset. Its images are converted to the training input (data.image_size, the training channels)
    ways: int = 5  # N classes per training task
    shots: int = 1  # K support examples per class
    queries: int = 15  # Q query examples per class
    meta_batch: int = 32  # tasks per outer step
    test_ways: int = 0  # N at validation and test (0: same as ways)
    test_shots: int = 0  # K at validation and test (0: same as shots)
    test_queries: int = 0  # Q at validation and test (0: same as queries)
    image_size: int = 28  # side of the square images fed to the model (resized if different)
    episode_scope: str = "dataset"  # where a task's classes come from: "dataset" (any), "alphabet" (one Omniglot alphabet per task: Lake's within-alphabet tasks)
    channels: int = 0  # image channels fed to the model: 0 = as the data has them, 1 = grey (RGB by ITU-R 601 luma), 3 = RGB (grey replicated)
    augment: tuple[
        str, ...
    ] = ()  # training tasks only, seeded per task: "flip" (per image), "crop" (per image: zero-pad 1/8 of the side, random crop), "shift" (per image, up to 1/8 of the side), "jitter" (per image: brightness, contrast, saturation, +-40%), "rotate90" (per class: a new class, as Omniglot's rotations)


@dataclass(frozen=True)
class ModelConfig:
    name: str = (
        "conv4"  # a registered model: "conv4", "mlp", "flatten" (the raw pixels as a vector: MANN's input), or yours
    )
    target: str = ""  # instead of name: a model class or factory named by import path, "package.module:Class"
    hidden: int = 64  # conv4: filters per layer
    layers: tuple[int, ...] = (40, 40)  # mlp: hidden widths
    batch_norm: bool = True  # conv4: BatchNorm after each conv (batch statistics, no running stats)
    options: dict[str, Any] = field(default_factory=dict)  # further keyword arguments of the model's factory
    weights: str = ""  # pretrained weights loaded into the model before training: a .safetensors or torch .pt file (strict about names and shapes; the head may be missing)


@dataclass(frozen=True)
class OptimConfig:
    optimizer: str = "adam"  # "adam", "sgd", "adamw" or "rmsprop" (torch's RMSprop, smoothing 0.99, with optim.momentum; MANN's paper: rmsprop at 1e-4)
    lr: float = 1e-3  # outer learning rate
    weight_decay: float = 0.0
    momentum: float = 0.0  # sgd only
    schedule: str = "constant"  # "constant", "step" (x gamma every step_size steps), "cosine" or "linear" (to 0), both over optim.steps
    step_size: int = 2000  # "step" schedule period
    gamma: float = 0.5  # "step" schedule factor
    clip_grad: float = 0.0  # max global gradient norm (0: no clipping)
    steps: int = 1000  # outer steps in total
    max_minutes: float = 0.0  # stop (checkpointed) after this many minutes of training (0: no limit)
    task_chunk: int = 0  # tasks per meta_loss call and backward pass, gradients accumulated over the step (0: the whole meta-batch at once); less memory, the same gradient


@dataclass(frozen=True)
class EvalConfig:
    val_every: int = 500  # validate every N steps (0: never)
    val_episodes: int = 200  # fixed validation episodes
    test_episodes: int = 1000  # fixed test episodes (0: train without testing)
    batch: int = 50  # episodes per evaluation batch
    seed: int = 1234  # seed of the fixed validation / test episodes
    test_settings: tuple[
        tuple[int, int], ...
    ] = ()  # extra (ways, shots) settings to test on; () = test_ways/test_shots only
    level: float = 0.95  # confidence level of the reported interval
    finetune: str = "none"  # test-time fine-tuning of embedding-based algorithms on each support set: "none", "head" (a prototype-initialised linear head on frozen features), "encoder" (that head and the encoder)
    finetune_steps: int = 50  # fine-tuning steps per task (SGD, momentum 0.9, full support set)
    finetune_lr: float = 0.01  # fine-tuning learning rate
    select: str = "fixed"  # gradient-based algorithms: "fixed" (the run's inner rate and steps) or "support_cv" (chosen per task from a grid by validation on its support set alone; fastadapt/eval/select.py)
    select_lr_scales: tuple[float, ...] = (0.5, 1.0, 2.0)  # support_cv: multipliers of the run's inner rates to try
    select_steps: tuple[int, ...] = (
        1,
        3,
        5,
        10,
    )  # support_cv: inner step counts to try (the run's own is always tried too)


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"  # run name (default output folder runs/<name>)
    out: str = ""  # output folder ("" = runs/<name>)
    seed: int = 0  # seed of model init and training episodes
    device: str = "auto"  # "auto" (CUDA, else MPS, else CPU), "cpu", "cuda", "cuda:1", "mps", ...
    deterministic: bool = False  # torch.use_deterministic_algorithms(True) for the run (CUDA: reproducible, slower; an op without a deterministic version is an error)
    threads: int = 0  # torch CPU threads (0: torch's default)
    log_every: int = 10  # append train metrics to metrics.jsonl every N steps
    checkpoint_every: int = 200  # write checkpoint.pt every N steps
    progress: bool = True  # show a progress bar
    dist_timeout_s: float = 60.0  # under torchrun: seconds a collective (or the start-up rendezvous) waits for the other ranks before failing
    imports: tuple[
        str, ...
    ] = ()  # Python modules imported before the config is checked (they may register task sources, models, algorithms)
    loggers: tuple[str, ...] = (
        "jsonl",
    )  # where training metrics go, live: "jsonl" (metrics.jsonl, always written), "csv" (metrics.csv), "tensorboard" (extra [tensorboard]), "wandb" (offline, extra [wandb])
    precision: str = "fp32"  # "fp32", or "bf16": autocast around meta_loss and evaluation (parameters, gradients and optimizer state stay float32)
    compile: bool = False  # torch.compile the per-task function of MAML/FOMAML/Meta-SGD on the loop path (fastadapt/algorithms/compiled.py; cold start logged as a "compile" row)
    keep_freed_memory: bool = True  # the fastadapt command only: glibc keeps freed memory for reuse (ProtoNets 1.47x faster, <= 1.28x peak memory; fastadapt/runtime/allocator.py)


@dataclass(frozen=True)
class Range:
    """The values a numeric key may take: ``lo <= v <= hi`` (``<`` on an open end); a float must also be finite."""

    lo: float
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    why: str = ""  # the reason for a bound that is not obvious

    def contains(self, v: float) -> bool:
        """Whether ``v`` is in range; False for NaN and infinities (every comparison with NaN is False)."""
        if not math.isfinite(v):
            return False
        return (self.lo < v if self.lo_open else self.lo <= v) and (v < self.hi if self.hi_open else v <= self.hi)

    def describe(self, v: float) -> str:
        """The bound ``v`` breaks, in words: ``>= 1``, ``< 1``, ``a finite number in (0, 10]``."""
        low = f"> {self.lo:g}" if self.lo_open else f">= {_num(self.lo)}"
        high = f"< {self.hi:g}" if self.hi_open else f"<= {_num(self.hi)}"
        if not math.isfinite(v):
            whole = (
                low
                if self.hi == math.inf
                else f"in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
            )
            text = f"a finite number {whole}"
        else:
            text = low if v <= self.lo else high
        return text + (f" ({self.why})" if self.why else "")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 2**64 else f"{x:g}"


INT_MAX = 2**31 - 1  # counts and sizes: a tensor dimension or a loop bound (the memory check refuses what does not fit)
SEED_MAX = 2**63 - 2  # torch.manual_seed takes 64-bit seeds; the test episodes use eval.seed + 1
_LR = "a rate above 10 makes every step diverge; meta-learning uses 1e-4 to 1, Reptile's outer step 1.0"

# Every numeric key of every section, with its range (checked by _validate; NaN and infinities are refused everywhere).
RANGES: dict[str, Range] = {
    "data.ways": Range(1, INT_MAX),
    "data.shots": Range(1, INT_MAX),
    "data.queries": Range(1, INT_MAX),
    "data.meta_batch": Range(1, INT_MAX),
    "data.test_ways": Range(0, INT_MAX),
    "data.test_shots": Range(0, INT_MAX),
    "data.test_queries": Range(0, INT_MAX),
    "data.image_size": Range(1, 65536, why="a side in pixels"),
    "data.channels": Range(0, 3, why="0: as stored, 1: grey, 3: RGB"),
    "model.hidden": Range(1, 65536, why="filters per layer"),
    "optim.lr": Range(0, 10, lo_open=True, why=_LR),
    "optim.weight_decay": Range(0, 1, why="an L2 coefficient; above 1 the decay outweighs every gradient"),
    "optim.momentum": Range(
        0, 1, hi_open=True, why="SGD momentum; at 1 or more it never forgets a gradient and diverges"
    ),
    "optim.step_size": Range(1, INT_MAX, why="steps between two decays of the step schedule"),
    "optim.gamma": Range(0, 1, lo_open=True, why="the step schedule's decay factor"),
    "optim.clip_grad": Range(0, why="0: no clipping"),
    "optim.steps": Range(1, INT_MAX),
    "optim.max_minutes": Range(0, why="0: no limit"),
    "optim.task_chunk": Range(0, INT_MAX, why="0: the whole meta-batch at once"),
    "eval.val_every": Range(0, INT_MAX),
    "eval.val_episodes": Range(0, INT_MAX),
    "eval.test_episodes": Range(0, INT_MAX),
    "eval.batch": Range(1, INT_MAX),
    "eval.seed": Range(0, SEED_MAX, why="a 64-bit seed"),
    "eval.level": Range(0, 1, lo_open=True, hi_open=True, why="a confidence level, e.g. 0.95"),
    "eval.finetune_steps": Range(0, INT_MAX),
    "eval.finetune_lr": Range(0, 10, lo_open=True, why=_LR),
    "run.seed": Range(0, SEED_MAX, why="a 64-bit seed"),
    "run.threads": Range(0, 1024, why="0: torch's default; more threads than a machine's cores only slows it down"),
    "run.log_every": Range(1, INT_MAX),
    "run.checkpoint_every": Range(1, INT_MAX),
    "run.dist_timeout_s": Range(0, 86400, lo_open=True, why="seconds; a collective that waits a day is hung"),
}
LAYER_WIDTH = Range(1, 2**20, why="units of one mlp layer")  # each entry of model.layers
AUGMENTATIONS = ("flip", "rotate90", "crop", "shift", "jitter")  # data.augment (fastadapt/data/augment.py)
LOGGERS = ("jsonl", "csv", "tensorboard", "wandb")  # run.loggers (fastadapt/training/loggers.py)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "eval": EvalConfig,
    "run": RunConfig,
}


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    algorithm: str = (
        "protonet"  # registered name, or an import path "package.module:Class" (a config's algorithm.target)
    )
    algorithm_options: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the algorithm's constructor

    @property
    def out_dir(self) -> Path:
        return Path(self.run.out or f"runs/{self.run.name}")

    @property
    def test_ways(self) -> int:
        return self.data.test_ways or self.data.ways

    @property
    def test_shots(self) -> int:
        return self.data.test_shots or self.data.shots

    @property
    def test_queries(self) -> int:
        return self.data.test_queries or self.data.queries

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: _plain(dataclasses.asdict(getattr(self, name))) for name in SECTIONS}
        if self.model.target:  # a target replaces the registered name
            del out["model"]["name"]
        if self.data.target:
            del out["data"]["dataset"]
        out["algorithm"] = {
            "target" if is_target(self.algorithm) else "name": self.algorithm,
            **_plain(self.algorithm_options),
        }
        return out


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    return v


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (a message stays one readable line)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats, lists for tuples."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a)
            except ConfigError as e:
                errors.append(str(e))
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


def _validate(cfg: Config) -> Config:
    d, o, e, r = cfg.data, cfg.optim, cfg.eval, cfg.run
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
                f"model.layers={_short(list(cfg.model.layers))} is invalid; each width must be {LAYER_WIDTH.describe(width)}"
            )
    check_device_name(r.device)
    choices = {
        "optim.optimizer": (o.optimizer, ("adam", "sgd", "adamw", "rmsprop")),
        "optim.schedule": (o.schedule, ("constant", "step", "cosine", "linear")),
        "run.precision": (r.precision, ("fp32", "bf16")),
    }
    for key, (v, allowed) in choices.items():
        if v not in allowed:
            raise ConfigError(f"{key}={v!r} is not allowed; choose one of {', '.join(allowed)}")
    if cfg.model.target:
        if not is_target(cfg.model.target):
            raise ConfigError(f"model.target={cfg.model.target!r} is not an import path; write package.module:Class")
    elif cfg.model.name not in MODELS:
        raise ConfigError(
            f"model.name={cfg.model.name!r} is not registered; choose one of {', '.join(MODELS.available())} "
            f'or name a class with model.target = "package.module:Class"'
        )
    if d.target:
        if not is_target(d.target):
            raise ConfigError(f"data.target={d.target!r} is not an import path; write package.module:function")
    elif dataset_name(d.dataset) not in TASK_SOURCES:
        raise ConfigError(
            f"data.dataset={d.dataset!r} is not registered; choose one of {', '.join(TASK_SOURCES.available())} "
            f'(e.g. folder:<path>) or name a builder with data.target = "package.module:function"'
        )
    if d.test_dataset and dataset_name(d.test_dataset) not in TASK_SOURCES:
        raise ConfigError(
            f"data.test_dataset={d.test_dataset!r} is not registered; choose one of {', '.join(TASK_SOURCES.available())}"
        )
    if e.finetune not in ("none", "head", "encoder"):
        raise ConfigError(f"eval.finetune={e.finetune!r} is not allowed; choose none, head or encoder")
    if e.select not in ("fixed", "support_cv"):
        raise ConfigError(f"eval.select={e.select!r} is not allowed; choose fixed or support_cv")
    if not e.select_lr_scales or not all(math.isfinite(s) and s > 0 for s in e.select_lr_scales):
        raise ConfigError(
            f"eval.select_lr_scales={_short(list(e.select_lr_scales))} is invalid; give one or more finite numbers > 0, e.g. [0.5, 1, 2]"
        )
    if not e.select_steps or not all(0 <= k <= 10000 for k in e.select_steps):
        raise ConfigError(
            f"eval.select_steps={_short(list(e.select_steps))} is invalid; give one or more integers in [0, 10000], e.g. [1, 3, 5, 10]"
        )
    if e.select != "fixed" and e.finetune != "none":
        raise ConfigError(
            "eval.select and eval.finetune are both set; fine-tuning is for embedding-based algorithms, selection for gradient-based ones"
        )
    if d.episode_scope not in ("dataset", "alphabet"):
        raise ConfigError(f"data.episode_scope={d.episode_scope!r} is not allowed; choose dataset or alphabet")
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
            f"eval.test_episodes={e.test_episodes} is too few for a confidence interval; use >= 2 (or 0 to skip testing)"
        )
    return cfg


def dataset_name(dataset: str) -> str:
    """The registered name in ``data.dataset`` (``"folder:/x"`` -> ``"folder"``)."""
    return dataset.split(":", 1)[0]


def dataset_argument(dataset: str) -> str:
    """What follows the name in ``data.dataset`` (``"folder:/x"`` -> ``"/x"``; ``""`` when nothing does)."""
    return dataset.split(":", 1)[1] if ":" in dataset else ""


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
            '[algorithm] needs a name (registered, e.g. name = "protonet") or a target ("package.module:Class"), not both'
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


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"data.ways=20"`` -> (["data", "ways"], 20); the value is read as TOML, else taken as a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value; write e.g. data.ways=20")
    key, value = text.split("=", 1)
    path = key.strip().split(".")
    if len(path) != 2 or not all(path):
        raise ConfigError(f"override key {key!r} must be section.key, e.g. data.ways or algorithm.inner_lr")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return path, parsed


def preset_names() -> list[str]:
    return sorted(
        p.name[: -len(".toml")]
        for p in resources.files("fastadapt.config.presets").iterdir()
        if p.name.endswith(".toml")
    )


def read_toml(preset_or_path: str) -> dict[str, Any]:
    """The raw dict of a shipped preset (by name) or a TOML file (by path)."""
    if "\x00" in preset_or_path:
        raise ConfigError(f"config {_short(preset_or_path)} holds a NUL character; pass a preset name or a TOML file")
    path = Path(preset_or_path)
    try:
        is_file = path.suffix == ".toml" or path.exists()
    except OSError as e:  # a name too long for the file system, ...
        raise ConfigError(
            f"config {_short(preset_or_path)}: {e.strerror or e}; pass a preset name or a TOML file"
        ) from None
    if is_file:
        if not path.is_file():
            raise ConfigError(
                f"config file {path} not found; pass a preset name ({', '.join(preset_names())}) or a TOML file"
            )
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"config file {path} cannot be read ({e.strerror or e}); check its permissions") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(
                f"config file {path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                f"save it as UTF-8, as TOML requires"
            ) from None
    elif preset_or_path in preset_names():
        text = (resources.files("fastadapt.config.presets") / f"{preset_or_path}.toml").read_text(encoding="utf-8")
    else:
        raise ConfigError(
            f"unknown preset {preset_or_path!r}; choose one of {', '.join(preset_names())} or pass a .toml file"
        )
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{preset_or_path}: invalid TOML ({e})") from None


# An override of one of these keys replaces the other: model.target=... on a preset that names conv4.
_EXCLUSIVE = {
    ("model", "name"): "target",
    ("model", "target"): "name",
    ("data", "dataset"): "target",
    ("data", "target"): "dataset",
    ("algorithm", "name"): "target",
    ("algorithm", "target"): "name",
}


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``raw`` with ``section.key=value`` overrides applied (in place; returned)."""
    for text in overrides:
        (section, key), value = parse_override(text)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"[{section}] is not a table")
        other = _EXCLUSIVE.get((section, key))
        if other is not None:
            raw[section].pop(other, None)
        raw[section][key] = value
    return raw


def load_config(preset_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a preset or file, apply ``key=value`` overrides, validate."""
    return config_from_dict(apply_overrides(read_toml(preset_or_path), overrides))


def field_comments(cls: type) -> dict[str, str]:
    """The trailing ``# ...`` comment of every field of the dataclass ``cls``, read from its source ({} without one)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (a frozen application): no comments
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    lines: dict[int, list[tokenize.TokenInfo]] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in (tokenize.INDENT, tokenize.DEDENT, tokenize.NEWLINE, tokenize.NL):
            lines.setdefault(tok.start[0], []).append(tok)
    out = {}
    for toks in lines.values():
        if (
            len(toks) > 2
            and toks[0].type == tokenize.NAME
            and toks[0].string in names
            and toks[1].string == ":"
            and toks[-1].type == tokenize.COMMENT
        ):
            out[toks[0].string] = toks[-1].string.lstrip("#").strip()
    return out


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_string(text: str) -> str:
    escapes = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
    return (
        '"'
        + "".join(escapes.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c) for c in text)
        + '"'
    )


def _toml_value(v: Any) -> str | None:
    """``v`` as a TOML value; None when TOML cannot write it (``None``, an object)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, (list, tuple)):
        items = [_toml_value(x) for x in v]
        return None if None in items else "[" + ", ".join(items) + "]"  # type: ignore[arg-type]
    if isinstance(v, dict):
        pairs = [(k if _BARE_KEY.fullmatch(str(k)) else _toml_string(str(k)), _toml_value(x)) for k, x in v.items()]
        return (
            None
            if any(x is None for _, x in pairs)
            else ("{ " + ", ".join(f"{k} = {x}" for k, x in pairs) + " }" if pairs else "{}")
        )
    return None


def _toml_line(key: str, value: Any, comment: str) -> str:
    text = _toml_value(value)
    if text is None:  # kept visible, as a comment: TOML has no None
        return f"# {key} = {value!r}  (not expressible in TOML)" + (f"  # {comment}" if comment else "")
    return f"{key} = {text}" + (f"  # {comment}" if comment else "")


def to_toml(cfg: Config, title: str = "") -> str:
    """``cfg`` as a TOML file to save, edit and load again: every key of every section with its value and its comment.

    ``[algorithm]`` holds the options the config sets; the algorithm's other constructor options follow as
    comments with their defaults. ``load_config`` of the text gives ``cfg`` back (``to_dict()`` equal).
    """
    data = cfg.to_dict()
    lines = [f"# {line}" for line in title.splitlines()]
    for name, cls in SECTIONS.items():
        comments = field_comments(cls)
        lines += ["", f"[{name}]", *(_toml_line(k, v, comments.get(k, "")) for k, v in data[name].items())]
    algo = dict(data["algorithm"])
    key = "target" if "target" in algo else "name"
    lines += ["", "[algorithm]", _toml_line(key, algo.pop(key), field_comments(Config).get("algorithm", ""))]
    lines += [_toml_line(k, v, f"an option of {cfg.algorithm}") for k, v in algo.items()]
    try:
        params = algorithm_signature(cfg.algorithm)
    except ConfigError:
        params = {}
    rest = [p for p in params.values() if p.name not in algo]
    if rest:
        lines.append(f"# other options of {cfg.algorithm}, at their defaults (uncomment to change):")
    for p in rest:
        text = None if p.default is inspect.Parameter.empty else _toml_value(p.default)
        lines.append(f"# {p.name} = {text}" if text is not None else f"# {p.name}: default {p.default!r}")
    return "\n".join(lines).lstrip("\n") + "\n"
