"""Applications on a trained run (beside the command line): ``fastadapt explain`` (:mod:`.explain`),
``fastadapt serve`` (:mod:`.serve`, state in SQLite: :mod:`.store`, teaching: :mod:`.teach`), ``fastadapt tune``
(:mod:`.tuning`), exporting an adapted task (:mod:`.export`). Safe decoding of images a person gives: :mod:`.inputs`.

The web app needs ``pip install 'fastadapt[app]'``; nothing here is imported by ``import fastadapt``, and
:func:`tune` is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastadapt.apps.tuning import tune


def __getattr__(name: str) -> Any:
    if name == "tune":
        from fastadapt.apps.tuning import tune

        return tune
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["tune"]
