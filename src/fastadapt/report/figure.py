"""Matplotlib for every report: imported when a plot is drawn, with a one-line error when it is missing."""

from __future__ import annotations

from pathlib import Path
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


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Lay out ``fig``, write it to ``path`` (PNG) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Path(path)
