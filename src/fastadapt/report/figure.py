"""Matplotlib for every report: imported when a plot is drawn, with a one-line error when it is missing."""

from __future__ import annotations

from typing import Any

from fastadapt.core.errors import FastAdaptError


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files, no window)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise FastAdaptError("plotting needs matplotlib; install it with: pip install 'fastadapt[plot]'") from None
    return plt
