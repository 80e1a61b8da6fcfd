"""The algorithms, one a file, registered by name in :mod:`fastadapt.core.registry`; the classes are imported
on first use. Each is an ``nn.Module`` built as ``Cls(model, **options)``, whose keyword options are the keys
of a config's ``[algorithm]`` section; what the engine reads from one is :class:`fastadapt.core.contract.Algorithm`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastadapt.core.lazy import lazy_exports
from fastadapt.core.registry import ALGORITHMS, algorithm_class

_EXPORTS = {
    "fastadapt.algorithms.alfa": ("ALFA",),
    "fastadapt.algorithms.anil": ("ANIL",),
    "fastadapt.algorithms.maml": ("FOMAML", "MAML"),
    "fastadapt.algorithms.maml_rl": ("MAMLRL",),
    "fastadapt.algorithms.mann": ("MANN",),
    "fastadapt.algorithms.matching": ("MatchingNet",),
    "fastadapt.algorithms.meta_lstm": ("MetaLSTM",),
    "fastadapt.algorithms.metasgd": ("MetaSGD",),
    "fastadapt.algorithms.ntm": ("NTMLearner",),
    "fastadapt.algorithms.protomaml": ("ProtoMAML",),
    "fastadapt.algorithms.protonet": ("ProtoNet",),
    "fastadapt.algorithms.reptile": ("Reptile",),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


def available() -> list[str]:
    """Registered algorithms whose module is present."""
    return ALGORITHMS.available()


__all__ = [
    "ALFA",
    "ALGORITHMS",
    "ANIL",
    "FOMAML",
    "MAML",
    "MAMLRL",
    "MANN",
    "MatchingNet",
    "MetaLSTM",
    "MetaSGD",
    "NTMLearner",
    "ProtoMAML",
    "ProtoNet",
    "Reptile",
    "algorithm_class",
    "available",
]

if TYPE_CHECKING:
    from fastadapt.algorithms.alfa import ALFA
    from fastadapt.algorithms.anil import ANIL
    from fastadapt.algorithms.maml import FOMAML, MAML
    from fastadapt.algorithms.maml_rl import MAMLRL
    from fastadapt.algorithms.mann import MANN
    from fastadapt.algorithms.matching import MatchingNet
    from fastadapt.algorithms.meta_lstm import MetaLSTM
    from fastadapt.algorithms.metasgd import MetaSGD
    from fastadapt.algorithms.ntm import NTMLearner
    from fastadapt.algorithms.protomaml import ProtoMAML
    from fastadapt.algorithms.protonet import ProtoNet
    from fastadapt.algorithms.reptile import Reptile
