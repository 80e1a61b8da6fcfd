"""The algorithms, one a file, and the registry the engine and CLI build them from.

Every algorithm class is an ``nn.Module`` built as ``Cls(model, **options)``: ``model`` is the user's
``nn.Module`` and ``options`` are the keyword arguments of its constructor, which are also the keys
of a config's ``[algorithm]`` section (the engine reads them from the signature, so an unknown key
is an error). ``Cls.needs_head`` says whether the model must end in a ``ways``-way linear head
(gradient-based algorithms) or be an embedding (metric-based ones).
"""

from __future__ import annotations

import importlib
import importlib.util

from fastadapt.errors import ConfigError

# name -> "module:Class"; imported on use so that one algorithm's import cost or failure never
# touches the others.
REGISTRY: dict[str, str] = {
    "protonet": "fastadapt.algorithms.protonet:ProtoNet",
    "maml": "fastadapt.algorithms.maml:MAML",
    "fomaml": "fastadapt.algorithms.maml:FOMAML",
    "metasgd": "fastadapt.algorithms.metasgd:MetaSGD",
    "anil": "fastadapt.algorithms.anil:ANIL",
    "reptile": "fastadapt.algorithms.reptile:Reptile",
    "matching": "fastadapt.algorithms.matching:MatchingNet",
    "meta_lstm": "fastadapt.algorithms.meta_lstm:MetaLSTM",
    "mann": "fastadapt.algorithms.mann:MANN",
}


def available() -> list[str]:
    """Registered algorithms whose module is present."""
    out = []
    for name, target in REGISTRY.items():
        module = target.split(":")[0]
        if importlib.util.find_spec(module) is not None:
            out.append(name)
    return out


def algorithm_class(name: str) -> type:
    """The class registered as ``name``."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown algorithm {name!r}; choose one of {', '.join(available())}")
    module, cls = REGISTRY[name].split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            raise ConfigError(f"algorithm {name!r} is not available in this version; choose one of {', '.join(available())}") from None
        raise
    return getattr(mod, cls)
