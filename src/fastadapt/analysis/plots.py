"""The analysis figure: the Taylor residuals and the first-order error against the step size, on log-log axes.

Drawn on a :class:`matplotlib.figure.Figure` with its own Agg canvas, so that no global matplotlib state (the
backend, pyplot's figure list) is touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastadapt.core.errors import FastAdaptError

COLOURS = {"maml": "tab:blue", "fomaml": "tab:orange", "reptile": "tab:green"}


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise FastAdaptError("plotting needs matplotlib; install it with: pip install 'fastadapt[plot]'") from None
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _reference(ax: Any, xs: list[float], ys: list[float], slope: float, label: str) -> None:
    """A dashed line of the given log-log slope through the geometric middle of the points."""
    import math

    pairs = [(x, y) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len(pairs) < 2:
        return
    mx = math.exp(sum(math.log(x) for x, _ in pairs) / len(pairs))
    my = math.exp(sum(math.log(y) for _, y in pairs) / len(pairs))
    lo, hi = min(xs), max(xs)
    ax.plot([lo, hi], [my * (lo / mx) ** slope, my * (hi / mx) ** slope], "k--", lw=0.8, label=label)


def plot_analysis(record: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Write the figure of an analysis ``record`` (:func:`fastadapt.analysis.runner.analyze_subject`'s) to ``path``:
    left, ``|measured - predicted|`` of each meta-gradient against ``a`` with a slope-2 guide; right, the first-order
    error and its bound against ``a`` with a slope-1 guide."""
    sweep = record["sweep"]
    a = [row["a"] for row in sweep]
    fig = _figure(10, 4)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for name, colour in COLOURS.items():
        ys = [row["taylor"][name]["residual"] for row in sweep]
        slope = record["summary"]["taylor_slopes"][name]
        left.loglog(a, ys, "o-", color=colour, label=f"{name} (slope {slope:.2f})")
    _reference(left, a, [row["taylor"]["maml"]["residual"] for row in sweep], 2.0, "slope 2")
    left.set_xlabel("step size a")
    left.set_ylabel("|measured - predicted| meta-gradient")
    left.set_title(f"Taylor residual, k = {record['settings']['k']}")
    left.legend(fontsize=8)
    err = [row["first_order"]["error"] for row in sweep]
    bound = [row["first_order"]["bound"] for row in sweep]
    right.loglog(a, err, "o-", color="tab:red", label=f"||g_MAML - g_FO|| (slope {record['summary']['fo_slope']:.2f})")
    right.loglog(a, bound, "s-", color="tab:gray", label="bound a L ||g_FO||")
    _reference(right, a, err, 1.0, "slope 1")
    right.set_xlabel("step size a")
    right.set_ylabel("mean over tasks")
    right.set_title("first-order error (one step)")
    right.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return Path(path)
