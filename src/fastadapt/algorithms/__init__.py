"""The algorithms, one a file, registered by name in :mod:`fastadapt.core.registry`.

Every algorithm class is an ``nn.Module`` built as ``Cls(model, **options)``: ``model`` is the user's
``nn.Module`` and ``options`` are the keyword arguments of its constructor, which are also the keys
of a config's ``[algorithm]`` section (the engine reads them from the signature, so an unknown key
is an error). What the engine reads from an algorithm is :class:`fastadapt.core.contract.Algorithm`.
"""

from __future__ import annotations

from fastadapt.core.registry import ALGORITHMS, algorithm_class


def available() -> list[str]:
    """Registered algorithms whose module is present."""
    return ALGORITHMS.available()


__all__ = ["ALGORITHMS", "algorithm_class", "available"]
