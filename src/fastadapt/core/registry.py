"""Registries: the extension points for task sources, models and algorithms.

A name in a config (``data.dataset``, ``model.name``, ``algorithm.name``) is looked up here. A user adds an
entry from outside the package by a call (:func:`register_task_source`, :func:`register_model`,
:func:`register_algorithm`; see :class:`Registry`) or by naming a Python object in a config
(:func:`import_target`). What each kind of object must be is in :mod:`fastadapt.core.contract`.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastadapt.core.errors import ConfigError

_NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")
_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


@dataclass(frozen=True)
class Entry:
    """One registered object: ``target`` is the object itself, or ``"module:attribute"`` (built-ins)."""

    name: str
    target: Any
    description: str
    builtin: bool


class Registry:
    """Names of one kind of component (``kind`` is the word used in messages: "model", ...).

    The built-in entries are ``"module:attribute"`` strings, imported on first use, so that this module sits at
    the bottom of the package and one entry's import cost or failure never touches the others. A user adds an
    entry from outside the package, by a call::

        fastadapt.register_model("resnet12", build_resnet12)
        fastadapt.register_task_source("my-images", build_my_source)
        fastadapt.register_algorithm("my-algo", MyAlgo)
    """

    def __init__(self, kind: str, builtins: dict[str, tuple[str, str]]) -> None:
        self.kind = kind
        self._entries = {name: Entry(name, target, text, True) for name, (target, text) in builtins.items()}

    def register(self, name: str, obj: Any, description: str = "", replace: bool = False) -> Any:
        """Add ``obj`` as ``name``; a built-in name is refused, a user's name needs ``replace=True`` to change."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(
                f"{self.kind} name {name!r} is invalid; use lower-case letters, digits, '-' and '_' (no ':')"
            )
        if not callable(obj):
            raise ConfigError(f"{self.kind} {name!r}: expected a class or function, found {type(obj).__name__}")
        old = self._entries.get(name)
        if old is not None and old.builtin:
            raise ConfigError(f"{self.kind} {name!r} is built in; register yours under another name")
        if old is not None and not replace and old.target is not obj:
            raise ConfigError(
                f"{self.kind} {name!r} is already registered (by {describe_object(old.target)}); "
                "pass replace=True to change it"
            )
        self._entries[name] = Entry(name, obj, description or first_line(obj.__doc__), False)
        return obj

    def unregister(self, name: str) -> None:
        """Remove a user's entry (built-ins stay)."""
        entry = self._entries.get(name)
        if entry is not None and entry.builtin:
            raise ConfigError(f"{self.kind} {name!r} is built in and cannot be removed")
        self._entries.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        """Every registered name, built-ins first."""
        return [e.name for e in self._entries.values() if e.builtin] + sorted(
            e.name for e in self._entries.values() if not e.builtin
        )

    def entry(self, name: str) -> Entry:
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self.available())}")
        return self._entries[name]

    def available(self) -> list[str]:
        """Registered names whose module is present (a built-in's module may be absent from a version)."""
        out = []
        for name in self.names():
            target = self._entries[name].target
            if isinstance(target, str) and importlib.util.find_spec(target.split(":")[0]) is None:
                continue
            out.append(name)
        return out

    def get(self, name: str) -> Any:
        """The object registered as ``name`` (imported on first use)."""
        entry = self.entry(name)
        if not isinstance(entry.target, str):
            return entry.target
        module = entry.target.split(":")[0]
        try:
            return import_target(entry.target, f"{self.kind} {name!r}")
        except ConfigError:
            if importlib.util.find_spec(module) is None:
                raise ConfigError(
                    f"{self.kind} {name!r} is not available in this version; "
                    f"choose one of {', '.join(self.available())}"
                ) from None
            raise


def first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""


def describe_object(obj: Any) -> str:
    if isinstance(obj, str):
        return obj
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', type(obj).__name__)}"


def is_target(text: str) -> bool:
    """Whether ``text`` has the form ``package.module:object``."""
    return isinstance(text, str) and bool(_TARGET.match(text))


def import_target(target: str, what: str = "target") -> Any:
    """The object ``"package.module:attribute"`` names (one-line :class:`ConfigError` when it does not import).

    A config names a Python object this way instead of a registered name: ``model.target = "mypkg.nets:ResNet12"``,
    ``algorithm.target = ...``, ``data.target = ...``.
    """
    if not is_target(target):
        raise ConfigError(
            f"{what}={target!r} is not an import path; write package.module:object, e.g. mypkg.nets:ResNet12"
        )
    module_name, attr = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise ConfigError(
                f"{what}={target!r}: module {e.name!r} not found; install it or add its folder to PYTHONPATH"
            ) from None
        raise ConfigError(f"{what}={target!r}: importing {module_name} failed: {e}") from None
    except Exception as e:  # the user's module raised while importing
        raise ConfigError(f"{what}={target!r}: importing {module_name} failed: {type(e).__name__}: {e}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{what}={target!r}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def import_modules(modules: tuple[str, ...] | list[str]) -> None:
    """Import the modules a config names in ``run.imports`` (they may register components)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
                raise ConfigError(
                    f"run.imports: module {name!r} not found; install it or add its folder to PYTHONPATH"
                ) from None
            raise ConfigError(f"run.imports: importing {name} failed: {e}") from None
        except Exception as e:
            raise ConfigError(f"run.imports: importing {name} failed: {type(e).__name__}: {e}") from None


TASK_SOURCES = Registry(
    "task source",
    {
        "omniglot": (
            "fastadapt.data.omniglot_full:omniglot",
            "Omniglot, bundled 28x28 (data.split = vinyals | lake; data.options.drawers = random | paired)",
        ),
        "omniglot-full": (
            "fastadapt.data.omniglot_full:omniglot_full",
            "Omniglot from the 105x105 originals at data.options.size (28..105, default 105), cached; "
            "the bundled source's splits, parts and names",
        ),
        "lake-runs": (
            "fastadapt.data.lake:lake_runs",
            "lake-runs:<all_runs.zip>: Lake's 20 official 20-way 1-shot runs, verified, as 20 test episodes "
            "(part test only)",
        ),
        "sinusoid": ("fastadapt.data.sources:sinusoid", "sinusoid regression tasks of the MAML paper (generated)"),
        "folder": ("fastadapt.data.sources:folder", "folder:<path>: <path>/<part>/<class>/<image> (your own images)"),
        "idx": (
            "fastadapt.data.sources:idx",
            "idx:<dir>: MNIST-family IDX files (train-/t10k-images-idx3-ubyte[.gz] and labels)",
        ),
        "fashion-mnist": (
            "fastadapt.data.sources:fashion_mnist",
            "Fashion-MNIST from Debian's dataset-fashion-mnist (10 classes: 5-way tasks)",
        ),
        "glyphs": (
            "fastadapt.data.domains.glyphs:glyphs",
            "letters of many scripts rendered from Debian's fonts-noto-core (OFL): "
            "a class a character, a font an example",
        ),
        "kanji": (
            "fastadapt.data.domains.kanji:kanji",
            "KanjiVG's kanji rendered on this machine (PyPI kanjivg, CC BY-SA 3.0): "
            "a kanji a class, seeded stroke variations its examples",
        ),
        "domains": (
            "fastadapt.data.domains.mixed:mixed_domains",
            "several domains' classes as one source (data.options.domains = [...]); with data.episode_scope = "
            "domain every task comes from one domain (Meta-Dataset)",
        ),
        "animals": (
            "fastadapt.data.domains.animals:animals",
            "animal silhouettes (PyPI animal-mnist, MIT): 10 animals, part test only, 5-way tasks",
        ),
        "emoji": (
            "fastadapt.data.domains.emoji:emoji",
            "emoji in colour (Noto Color Emoji, EmojiOne 2, Twemoji from apt and pip; OFL, CC BY-SA, CC BY): "
            "an emoji a class, a design an example",
        ),
        "sinusoid-stream": (
            "fastadapt.data.streams:sinusoid_stream",
            "drifting, switching sinusoid streams; episodes are windows (support: points before a step, query: after)",
        ),
        "omniglot-stream": (
            "fastadapt.data.streams:omniglot_stream",
            "Omniglot streams: characters appear and retire at change points, images rotate gradually",
        ),
        "stream-folder": (
            "fastadapt.data.streams:folder_stream",
            "stream-folder:<path>: <path>/<phase>/<class>/<image> (your data split into phases)",
        ),
        "nav2d": (
            "fastadapt.rl.envs:nav2d",
            "2D navigation to a goal in [-0.5, 0.5]^2 (MAML sec. 5.3; Gymnasium, fastadapt[rl])",
        ),
        "pendulum-dynamics": (
            "fastadapt.rl.envs:pendulum_dynamics",
            "Pendulum-v1 whose mass and length change per task (Gymnasium, fastadapt[rl])",
        ),
        "cheetah-crippled": (
            "fastadapt.rl.cheetah:cheetah_crippled",
            "HalfCheetah-v5 with one joint disabled or weakened mid-episode, per task (MuJoCo, fastadapt[mujoco])",
        ),
        "cheetah-body": (
            "fastadapt.rl.cheetah:cheetah_body",
            "HalfCheetah-v5 with masses and friction scaled per task (MuJoCo, fastadapt[mujoco])",
        ),
        "ant-crippled": (
            "fastadapt.rl.ant:ant_crippled",
            "Ant-v5 with one leg disabled or weakened mid-episode, per task (MuJoCo, fastadapt[mujoco])",
        ),
        "cheetah-transitions": (
            "fastadapt.rl.transitions:cheetah_transitions",
            "windows of half-cheetah or ant transitions (state, action -> state change) for dynamics models such as "
            "GrBAL (data.options.family = crippled | body | ant-crippled; MuJoCo, fastadapt[mujoco])",
        ),
        "copy": (
            "fastadapt.data.sequences:copy_source",
            "the NTM copy task (Graves et al. 2014, 4.1): data.options bits, min_length, max_length, test_length",
        ),
        "recall": (
            "fastadapt.data.sequences:recall_source",
            "associative recall (Graves et al. 2014, 4.3): "
            "data.options bits, item_length, min_items, max_items, test_items",
        ),
    },
)
MODELS = Registry(
    "model",
    {
        "conv4": ("fastadapt.nn.backbones:conv4", "4 conv blocks (Vinyals et al.), optional linear head"),
        "resnet12": (
            "fastadapt.nn.resnet:resnet12",
            "ResNet-12 (TADAM, MetaOptNet): 4 residual blocks, 64-160-320-640; options channels, width, drop_prob",
        ),
        "mlp": ("fastadapt.nn.backbones:mlp", "fully connected ReLU network over the flattened input"),
        "flatten": ("fastadapt.nn.backbones:flatten", "the raw input as a vector (MANN's input); no weights"),
        "ntm": (
            "fastadapt.nn.sequence:ntm",
            "Neural Turing Machine over a sequence (LSTM or transformer controller); for copy / recall tasks",
        ),
        "lstm-seq": ("fastadapt.nn.sequence:lstm_seq", "plain LSTM over a sequence (the NTM's baseline)"),
        "transformer-seq": (
            "fastadapt.nn.sequence:transformer_seq",
            "plain causal transformer over a sequence (the NTM's baseline)",
        ),
        "gaussian-mlp": (
            "fastadapt.rl.policy:gaussian_mlp",
            "Gaussian MLP policy: mean from a ReLU MLP, state-independent log_std (reinforcement learning)",
        ),
    },
)
ALGORITHMS = Registry(
    "algorithm",
    {
        "protonet": ("fastadapt.algorithms.protonet:ProtoNet", "Prototypical Networks (Snell et al. 2017)"),
        "maml": (
            "fastadapt.algorithms.maml:MAML",
            "MAML, second order, MAML++ options (Finn et al. 2017; Antoniou et al. 2019)",
        ),
        "fomaml": ("fastadapt.algorithms.maml:FOMAML", "first-order MAML"),
        "metasgd": (
            "fastadapt.algorithms.metasgd:MetaSGD",
            "Meta-SGD: learnt per-parameter inner rates (Li et al. 2017)",
        ),
        "anil": ("fastadapt.algorithms.anil:ANIL", "ANIL: adapt the head only (Raghu et al. 2020)"),
        "reptile": ("fastadapt.algorithms.reptile:Reptile", "Reptile (Nichol et al. 2018)"),
        "imaml": (
            "fastadapt.algorithms.imaml:IMAML",
            "iMAML: proximal inner loop, implicit meta-gradient by conjugate gradients (Rajeswaran et al. 2019)",
        ),
        "matching": (
            "fastadapt.algorithms.matching:MatchingNet",
            "Matching Networks with full context embeddings (Vinyals et al. 2016)",
        ),
        "meta_lstm": ("fastadapt.algorithms.meta_lstm:MetaLSTM", "LSTM meta-learner (Ravi & Larochelle 2017)"),
        "mann": ("fastadapt.algorithms.mann:MANN", "memory-augmented network (Santoro et al. 2016)"),
        "ntm": (
            "fastadapt.algorithms.ntm:NTMLearner",
            "sequence tasks (copy, recall) through a memory network: NTM or its baselines (Graves et al. 2014)",
        ),
        "baseline": (
            "fastadapt.algorithms.baseline:Baseline",
            "Baseline / Baseline++: a classifier on all training classes, a new head per task (Chen et al. 2019)",
        ),
        "multidomain": (
            "fastadapt.algorithms.multidomain:MultiDomain",
            "one backbone pretrained on several domains, a classification head per domain (Li et al. 2021's "
            "multi-domain baseline); a new head per task",
        ),
        "url": (
            "fastadapt.algorithms.url:URL",
            "URL: one backbone distilled from single-domain teachers, an adapter and a head per domain (Li et al. "
            "2021); nearest centroid per task",
        ),
        "grbal": (
            "fastadapt.algorithms.grbal:GrBAL",
            "GrBAL: meta-learnt adaptation on a recent window of a stream (Nagabandi et al. 2019)",
        ),
        "rebal": (
            "fastadapt.algorithms.rebal:ReBAL",
            "ReBAL: a GRU reads a recent window of a stream into a state that conditions the model (Nagabandi et al. "
            "2019)",
        ),
        "alfa": (
            "fastadapt.algorithms.alfa:ALFA",
            "ALFA: meta-learnt per-step, per-layer inner rates and weight decay (Baik et al. 2020)",
        ),
        "protomaml": (
            "fastadapt.algorithms.protomaml:ProtoMAML",
            "Proto-MAML: a prototype-initialised head, then MAML's inner loop (Triantafillou et al. 2020)",
        ),
        "linear_probe": (
            "fastadapt.algorithms.linear_probe:LinearProbe",
            "linear probe on frozen features: logistic regression per task (Tian et al. 2020, RFS)",
        ),
        "maml-rl": (
            "fastadapt.algorithms.maml_rl:MAMLRL",
            "MAML for policies, clipped outer surrogate (ProMP), first-order and Reptile options "
            "(Finn et al. 2017; Rothfuss et al. 2019)",
        ),
        "relation": (
            "fastadapt.algorithms.relation:RelationNet",
            "Relation Networks: a learnt module scores (class, query) feature-map pairs (Sung et al. 2018)",
        ),
        "siamese": (
            "fastadapt.algorithms.siamese:Siamese",
            "siamese verification net: weighted L1 of two embeddings, p(same); one-shot by the most similar support "
            "image (Koch et al. 2015)",
        ),
        "attentive": (
            "fastadapt.algorithms.attentive:Attentive",
            "attentive comparator: the query's feature map attends to each support image's, a small head scores the "
            "pair (cross-attention; Shyam et al. 2017, Polis & Ilin 2021)",
        ),
    },
)


def register_task_source(
    name: str, build: Callable[..., Any], description: str = "", replace: bool = False
) -> Callable[..., Any]:
    """Register ``build(request: SourceRequest) -> ClassDataset | TaskSource`` as ``data.dataset = name``.

    ``data.dataset = "name:argument"`` passes ``argument`` in ``request.argument`` (e.g. a path).
    """
    return TASK_SOURCES.register(name, build, description, replace)


def register_model(
    name: str, build: Callable[..., Any], description: str = "", replace: bool = False
) -> Callable[..., Any]:
    """Register a model factory (a class or function returning an ``nn.Module``) as ``model.name = name``.

    It is called with the keyword arguments it names among ``in_channels``, ``input_shape``,
    ``image_size``, ``out_features``, ``hidden``, ``layers``, ``batch_norm``, plus ``model.options``.
    """
    return MODELS.register(name, build, description, replace)


def register_algorithm(name: str, cls: type, description: str = "", replace: bool = False) -> type:
    """Register an algorithm class (``cls(model, **options)``, see :class:`fastadapt.core.contract.Algorithm`)."""
    return ALGORITHMS.register(name, cls, description, replace)


def algorithm_class(name: str) -> type:
    """The class a config's ``algorithm.name`` (a registered name) or ``algorithm.target`` names."""
    return import_target(name, "algorithm.target") if is_target(name) else ALGORITHMS.get(name)
