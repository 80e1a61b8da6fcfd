"""The schema of a run's config: five frozen sections plus the algorithm's options.

Every field carries its type, its default and a comment saying what it means; a numeric field also
carries its :class:`Range` (``Annotated[int, Range(...)]``), checked by :mod:`fastadapt.config.validate`.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import math
import textwrap
import tokenize
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastadapt.core.registry import is_target


@dataclass(frozen=True)
class Range:
    """The values a numeric key may take: ``lo <= v <= hi`` (``<`` on an open end); a float must also be finite."""

    lo: float
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    why: str = ""  # the reason for a bound that is not obvious
    words: tuple[str, ...] = ()  # words the key takes besides numbers (optim.task_chunk: "auto")

    def contains(self, v: float | str) -> bool:
        """Whether ``v`` is in range (or one of :attr:`words`); False for NaN and infinities (every comparison with
        NaN is False)."""
        if isinstance(v, str):
            return v in self.words
        if not math.isfinite(v):
            return False
        return (self.lo < v if self.lo_open else self.lo <= v) and (v < self.hi if self.hi_open else v <= self.hi)

    def describe(self, v: float | str) -> str:
        """The bound ``v`` breaks, in words: ``>= 1``, ``< 1``, ``a finite number in (0, 10]``."""
        if isinstance(v, str):
            words = " or ".join(repr(w) for w in self.words)
            return (
                f"a number >= {_num(self.lo)}"
                + (f" or {words}" if words else "")
                + (f" ({self.why})" if self.why else "")
            )
        low = f"> {self.lo:g}" if self.lo_open else f">= {_num(self.lo)}"
        high = f"< {self.hi:g}" if self.hi_open else f"<= {_num(self.hi)}"
        if not math.isfinite(v):
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            whole = low if self.hi == math.inf else f"in {left}{_num(self.lo)}, {_num(self.hi)}{right}"
            text = f"a finite number {whole}"
        else:
            text = low if v <= self.lo else high
        return text + (f" ({self.why})" if self.why else "")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 2**64 else f"{x:g}"


INT_MAX = 2**31 - 1  # counts and sizes: a tensor dimension or a loop bound (the memory check refuses what does not fit)
SEED_MAX = 2**63 - 2  # torch.manual_seed takes 64-bit seeds; the test episodes use eval.seed + 1
_LR = "a rate above 10 makes every step diverge; meta-learning uses 1e-4 to 1, Reptile's outer step 1.0"

Count = Annotated[int, Range(1, INT_MAX)]  # a count of at least 1
Count0 = Annotated[int, Range(0, INT_MAX)]  # a count where 0 means "none" or "as another key"
Seed = Annotated[int, Range(0, SEED_MAX, why="a 64-bit seed")]
Rate = Annotated[float, Range(0, 10, lo_open=True, why=_LR)]
Side = Annotated[int, Range(1, 65536, why="a side in pixels")]
Channels = Annotated[int, Range(0, 3, why="0: as stored, 1: grey, 3: RGB")]
Filters = Annotated[int, Range(1, 65536, why="filters per layer")]
Decay = Annotated[float, Range(0, 1, why="an L2 coefficient; above 1 the decay outweighs every gradient")]
_MOMENTUM_WHY = "SGD momentum; at 1 or more it never forgets a gradient and diverges"
Momentum = Annotated[float, Range(0, 1, hi_open=True, why=_MOMENTUM_WHY)]
Period = Annotated[int, Range(1, INT_MAX, why="steps between two decays of the step schedule")]
Gamma = Annotated[float, Range(0, 1, lo_open=True, why="the step schedule's decay factor")]
Clip = Annotated[float, Range(0, why="0: no clipping")]
Minutes = Annotated[float, Range(0, why="0: no limit")]
Chunk = Annotated[
    int | str, Range(0, INT_MAX, why='0: the whole meta-batch at once; "auto": from run.memory_budget', words=("auto",))
]
MegaBytes = Annotated[float, Range(0, 1e12, why="megabytes; 0: a share of the memory available")]
Level = Annotated[float, Range(0, 1, lo_open=True, hi_open=True, why="a confidence level, e.g. 0.95")]
_THREADS_WHY = "0: torch's default; more threads than a machine's cores only slows it down"
Threads = Annotated[int, Range(0, 1024, why=_THREADS_WHY)]
Timeout = Annotated[float, Range(0, 86400, lo_open=True, why="seconds; a collective that waits a day is hung")]
LAYER_WIDTH = Range(1, 2**20, why="units of one mlp layer")  # each entry of model.layers
AUGMENTATIONS = ("flip", "rotate90", "crop", "shift", "jitter", "affine")  # data.augment (fastadapt/data/augment.py)
LOGGERS = ("jsonl", "csv", "tensorboard", "wandb")  # run.loggers (fastadapt/training/loggers.py)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "omniglot"  # a registered task source, optionally name:argument: "omniglot", "sinusoid",
    # "folder:<path>" (`fastadapt list`)
    target: str = ""  # instead of dataset: a task-source builder named by import path, "package.module:function"
    options: dict[str, Any] = field(default_factory=dict)  # keyword arguments for the task source (request.options)
    split: str = "vinyals"  # Omniglot split: "vinyals" (with rotations) or "lake"
    train_part: str = "train"  # part to meta-train on
    val_part: str = "val"  # part for validation / best-checkpoint selection ("" to skip validation)
    test_part: str = "test"  # part to test on
    test_dataset: str = ""  # test on another task source (registered name[:argument], e.g. fashion-mnist or
    # folder:<path>); "" = data.dataset. Its images are converted to the training input (data.image_size, the
    # training channels)
    test_options: dict[str, Any] = field(default_factory=dict)  # keyword arguments for data.test_dataset when it is
    # another source (data.options belong to the training source; a "domains" run's held-out domain also reads its
    # own table data.options.<domain>)
    ways: Count = 5  # N classes per training task
    shots: Count = 1  # K support examples per class
    queries: Count = 15  # Q query examples per class
    meta_batch: Count = 32  # tasks per outer step
    test_ways: Count0 = 0  # N at validation and test (0: same as ways)
    test_shots: Count0 = 0  # K at validation and test (0: same as shots)
    test_queries: Count0 = 0  # Q at validation and test (0: same as queries)
    image_size: Side = 28  # side of the square images fed to the model (resized if different)
    episode_scope: str = "dataset"  # where a task's classes come from: "dataset" (any), "alphabet" (one Omniglot
    # alphabet per task: Lake's within-alphabet tasks), "domain" (one domain of the "domains" source per task)
    episodes: str = "fixed"  # validation and test episodes: "fixed" (test_ways-way test_shots-shot) or "variable"
    # (Meta-Dataset's variable-way, variable-shot, class-imbalanced episodes, fastadapt/data/variable.py: test_ways,
    # test_shots, test_queries and eval.test_settings are then ignored; training keeps ways / shots / queries)
    channels: Channels = 0  # image channels fed to the model: 0 = as the data has them, 1 = grey (RGB by ITU-R 601
    # luma), 3 = RGB (grey replicated)
    augment: tuple[str, ...] = ()  # training tasks only, seeded per task: "flip" (per image), "crop" (per image:
    # zero-pad 1/8 of the side, random crop), "shift" (per image, up to 1/8 of the side), "jitter" (per image:
    # brightness, contrast, saturation, +-40%), "rotate90" (per class: a new class, as Omniglot's rotations), "affine"
    # (per image: Koch et al. 2015's rotation, shear, scale and translation, zero-filled)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "conv4"  # a registered model: "conv4", "mlp", "flatten" (the raw pixels as a vector: MANN's input),
    # or yours
    target: str = ""  # instead of name: a model class or factory named by import path, "package.module:Class"
    hidden: Filters = 64  # conv4: filters per layer
    layers: tuple[int, ...] = (40, 40)  # mlp: hidden widths
    batch_norm: bool = True  # conv4: BatchNorm after each conv (batch statistics, no running stats)
    options: dict[str, Any] = field(default_factory=dict)  # further keyword arguments of the model's factory
    weights: str = ""  # pretrained weights loaded into the model before training: a .safetensors or torch .pt file
    # (strict about names and shapes; the head may be missing)


@dataclass(frozen=True)
class OptimConfig:
    optimizer: str = "adam"  # "adam", "sgd", "adamw" or "rmsprop" (torch's RMSprop, smoothing 0.99, with
    # optim.momentum; MANN's paper: rmsprop at 1e-4)
    lr: Rate = 1e-3  # outer learning rate
    weight_decay: Decay = 0.0  # the optimizer's weight decay (L2 for adam, sgd and rmsprop; decoupled for adamw)
    momentum: Momentum = 0.0  # sgd only
    schedule: str = "constant"  # "constant", "step" (x gamma every step_size steps), "cosine" or "linear" (to 0),
    # both over optim.steps
    step_size: Period = 2000  # "step" schedule period
    gamma: Gamma = 0.5  # "step" schedule factor
    clip_grad: Clip = 0.0  # max global gradient norm (0: no clipping)
    steps: Count = 1000  # outer steps in total
    max_minutes: Minutes = 0.0  # stop (checkpointed) after this many minutes of training (0: no limit)
    task_chunk: Chunk = "auto"  # tasks per meta_loss call and backward pass, gradients accumulated over the step (0:
    # the whole meta-batch at once; "auto": the whole batch when the preflight estimate fits run.memory_budget, else
    # the largest chunk that fits; chunks of 1 where tasks run one at a time anyway: preflight.resolve_task_chunk,
    # recorded in config.json's provenance); less memory, the same gradient


@dataclass(frozen=True)
class EvalConfig:
    val_every: Count0 = 500  # validate every N steps (0: never)
    val_episodes: Count0 = 200  # fixed validation episodes
    test_episodes: Count0 = 1000  # fixed test episodes (0: train without testing)
    batch: Count = 50  # episodes per evaluation batch
    seed: Seed = 1234  # seed of the fixed validation / test episodes
    test_settings: tuple[tuple[int, int], ...] = ()  # extra (ways, shots) settings to test on; ()
    # = test_ways/test_shots only
    level: Level = 0.95  # confidence level of the reported interval
    finetune: str = "none"  # test-time fine-tuning of embedding-based algorithms on each support set: "none", "head"
    # (a prototype-initialised linear head on frozen features), "encoder" (that head and the encoder),
    # "transductive" (both, plus the query predictions' entropy, weight 1: Dhillon et al. 2020), "film" (per-channel
    # scale and shift after each norm, backbone frozen), "tsa" (1x1 residual adapters and a feature transform,
    # backbone frozen: Li et al. 2022); fastadapt/eval/finetune.py
    finetune_steps: Count0 = 50  # fine-tuning steps per task (SGD, momentum 0.9, full support set)
    finetune_lr: Rate = 0.01  # fine-tuning learning rate
    tta: Count0 = 0  # test-time augmentation: query logits averaged over the undistorted task and N copies of it with
    # every image affinely distorted as data.augment's "affine" (support and query; 0: off); fastadapt/eval/tta.py
    select: str = "fixed"  # gradient-based algorithms: "fixed" (the run's inner rate and steps) or "support_cv"
    # (chosen per task from a grid by validation on its support set alone; fastadapt/eval/select.py)
    select_lr_scales: tuple[float, ...] = (0.5, 1.0, 2.0)  # support_cv: multipliers of the run's inner rates to try
    select_steps: tuple[int, ...] = (1, 3, 5, 10)  # support_cv: inner step counts to try (the run's own is always
    # tried too)


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"  # run name (default output folder runs/<name>)
    out: str = ""  # output folder ("" = runs/<name>)
    seed: Seed = 0  # seed of model init and training episodes
    device: str = "auto"  # "auto" (CUDA, else MPS, else CPU), "cpu", "cuda", "cuda:1", "mps", ...
    deterministic: bool = False  # torch.use_deterministic_algorithms(True) for the run (CUDA: reproducible, slower;
    # an op without a deterministic version is an error)
    threads: Threads = 0  # torch CPU threads (0: torch's default)
    log_every: Count = 10  # append train metrics to metrics.jsonl every N steps
    checkpoint_every: Count = 200  # write checkpoint.pt every N steps
    progress: bool = True  # show a progress bar
    dist_timeout_s: Timeout = 60.0  # under torchrun: seconds a collective (or the start-up rendezvous) waits for the
    # other ranks before failing
    imports: tuple[str, ...] = ()  # Python modules imported before the config is checked (they may register task
    # sources, models, algorithms)
    loggers: tuple[str, ...] = ("jsonl",)  # where training metrics go, live: "jsonl" (metrics.jsonl, always written),
    # "csv" (metrics.csv), "tensorboard" (extra [tensorboard]), "wandb" (offline, extra [wandb])
    precision: str = "fp32"  # "fp32", "bf16" or "auto": autocast around meta_loss and evaluation (parameters,
    # gradients and optimizer state stay float32). "auto" is bf16 where the device computes it natively (CPU flags
    # avx512_bf16 / amx_bf16, CUDA compute capability >= 8.0), else fp32 (fastadapt/runtime/hardware.py); bf16 on a
    # CPU without them is emulated, 6-9x slower, and warns
    memory_budget: MegaBytes = 0.0  # megabytes a training step may hold, for optim.task_chunk = "auto" (0: half the
    # memory available to the process: the cgroup limit less its usage when one is set, else MemAvailable; a CUDA
    # device's free memory)
    memory_format: str = "contiguous"  # convolution weights' layout: "contiguous" (NCHW, as built), "channels_last"
    # (NHWC) or "auto": NHWC on a CPU under an algorithm that declares prefers_channels_last (ProtoNets, Matching
    # Networks), NCHW elsewhere (fastadapt/runtime/layout.py). Not the default: NHWC is 1.5x faster for ProtoNets on
    # the CPU, but oneDNN's NHWC BatchNorm is less exact in float32 (docs/PERFORMANCE.md: a 0.9 % gradient error)
    compile: bool = False  # torch.compile the per-task function of MAML/FOMAML/Meta-SGD on the loop path
    # (fastadapt/algorithms/compiled.py; cold start logged as a "compile" row)
    keep_freed_memory: bool = True  # the fastadapt command only: glibc keeps freed memory for reuse (ProtoNets 1.47x
    # faster, <= 1.28x peak memory; fastadapt/runtime/allocator.py)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "eval": EvalConfig,
    "run": RunConfig,
}


def _field_ranges(cls: type) -> dict[str, Range]:
    """The :class:`Range` of every numeric field of the section ``cls``, in field order."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out = {}
    for f in dataclasses.fields(cls):
        found = [m for m in getattr(hints[f.name], "__metadata__", ()) if isinstance(m, Range)]
        if found:
            out[f.name] = found[0]
    return out


# Every numeric key of every section with its range, read from the fields (NaN and infinities are refused everywhere).
RANGES: dict[str, Range] = {f"{s}.{k}": rng for s, cls in SECTIONS.items() for k, rng in _field_ranges(cls).items()}


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    algorithm: str = "protonet"  # registered name, or an import path "package.module:Class" (a config's
    # algorithm.target)
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


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (a message stays one readable line)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def dataset_name(dataset: str) -> str:
    """The registered name in ``data.dataset`` (``"folder:/x"`` -> ``"folder"``)."""
    return dataset.split(":", 1)[0]


def dataset_argument(dataset: str) -> str:
    """What follows the name in ``data.dataset`` (``"folder:/x"`` -> ``"/x"``; ``""`` when nothing does)."""
    return dataset.split(":", 1)[1] if ":" in dataset else ""


def field_comments(cls: type) -> dict[str, str]:
    """The comment of every field of the dataclass ``cls``, read from its source ({} without one).

    A field's comment is the ``# ...`` that ends its line, continued by the comment-only lines right below it.
    """
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (a frozen application): no comments
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    ends = {  # the last line of each field's statement -> its name
        node.end_lineno: node.target.id
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id in names
    }
    comments: dict[int, str] = {}
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.INDENT, tokenize.DEDENT, tokenize.NEWLINE, tokenize.NL):
            code_lines.add(tok.start[0])
    out = {}
    for end, name in ends.items():
        if end not in comments:
            continue
        parts, line = [comments[end]], end + 1
        while line in comments and line not in code_lines:  # a comment-only line continues it
            parts.append(comments[line])
            line += 1
        out[name] = " ".join(parts)
    return out
