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


def plot_cg(panels: dict[str, list[dict[str, Any]]], path: str | Path) -> Path:
    """CG's relative error against its iterations on log-linear axes, one panel per title in ``panels``, one curve
    per record (a :class:`~fastadapt.analysis.implicit.CGCurve` as a dict, with a ``label``), its bound
    ``2 sqrt(kappa) rho^k`` dashed in the same colour."""
    fig = _figure(5 * len(panels), 4)
    for i, (title, records) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for j, r in enumerate(records):
            colour = f"C{j}"
            rate = f"rate {r['measured_rate']:.3f}, theory {r['rate']:.3f}" if r["rate"] == r["rate"] else "not SPD"
            ax.semilogy(r["steps"], r["errors"], "o-", ms=3, color=colour, label=f"{r['label']} ({rate})")
            if r["rate"] == r["rate"]:
                ax.semilogy(r["steps"], r["bounds"], "--", color=colour, lw=0.8)
        ax.set_xlabel("CG iterations")
        ax.set_ylabel("||x_k - x*|| / ||x*||")
        ax.set_ylim(1e-16, 1e2)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return Path(path)


def plot_boundary(record: dict[str, Any], path: str | Path) -> Path:
    """The divergence boundary of the inner rate against the inner steps on log-log axes: each N's bracket (largest
    stable to smallest unstable rate) as a bar, the geometric middle as a point, the fitted line and a slope -1
    guide; ``record`` as written by ``scripts/theory_more.py`` (``rows`` of ``steps``, ``stable``, ``unstable``)."""
    rows = [r for r in record["rows"] if r["stable"] == r["stable"] and r["unstable"] != float("inf")]
    n = [r["steps"] for r in rows]
    mid = [(r["stable"] * r["unstable"]) ** 0.5 for r in rows]
    fig = _figure(5, 4)
    ax = fig.add_subplot(1, 1, 1)
    for r in rows:
        ax.plot([r["steps"]] * 2, [r["stable"], r["unstable"]], "-", color="tab:blue", lw=3, alpha=0.5)
    ax.loglog(n, mid, "o", color="tab:blue", label=f"boundary (fitted slope {record['slope']:.2f})")
    _reference(ax, n, mid, record["slope"], "fit")
    _reference(ax, n, mid, -1.0, "slope -1 (Ji et al.)")
    ax.lines[-1].set_linestyle(":")
    ax.set_xlabel("inner steps N")
    ax.set_ylabel("largest inner rate a that does not diverge")
    ax.set_title(record.get("title", ""), fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return Path(path)


def plot_transfer(record: dict[str, Any], path: str | Path) -> Path:
    """One panel per similarity measure: the measured transfer gain of each ordered alphabet pair against the
    similarity, with Spearman's rho and its bootstrap interval in the title (``record`` as written by
    ``scripts/theory_more.py``)."""
    sims = record["similarities"]
    fig = _figure(4.2 * len(sims), 3.8)
    for i, (name, xs) in enumerate(sims.items()):
        ax = fig.add_subplot(1, len(sims), i + 1)
        r = record["results"][name]
        ax.plot(xs, record["gain"], "o", ms=4, alpha=0.7)
        ax.set_xlabel(name, fontsize=8)
        ax.set_ylabel("accuracy gain over the untrained network")
        lo, hi = r["ci_gain_alphabets"]
        ax.set_title(f"rho {r['rho_gain']:.2f} (95 % CI over alphabets {lo:.2f} to {hi:.2f})", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return Path(path)


def plot_episodes(record: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """The episode analysis's figure (:func:`fastadapt.analysis.episodes.analyze_episodes`): the cosines between the
    tasks' meta-gradients as a matrix, with the Hessian's top eigenvalue in the title."""
    fig = _figure(4.5, 4)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(record["alignment"]["pairwise"], vmin=-1, vmax=1, cmap="RdBu_r")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_xlabel("task")
    ax.set_ylabel("task")
    ax.set_title(
        f"cosine between task meta-gradients (mean {record['alignment']['task_gradient_cosine']:.2f})\n"
        f"episode-loss Hessian top eigenvalue {record['hessian']['top_eigenvalue']:.3g}",
        fontsize=8,
    )
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return Path(path)


def plot_memory(record: dict[str, Any], path: str | Path) -> Path:
    """Peak resident memory against the inner steps, one line per algorithm (``record`` as written by
    ``benchmarks/imaml_memory.py --json``: ``steps`` and ``measured[algorithm][steps]["peak_mb"]``)."""
    fig = _figure(5, 4)
    ax = fig.add_subplot(1, 1, 1)
    for algorithm, rows in record["measured"].items():
        steps = sorted(int(n) for n in rows)
        ax.plot(steps, [rows[str(n)]["peak_mb"] for n in steps], "o-", label=algorithm)
    ax.set_xscale("log")
    ax.set_xlabel("inner steps")
    ax.set_ylabel("peak resident memory (MB)")
    ax.set_ylim(bottom=0)
    ax.set_title("one meta-gradient, each setting in a fresh process", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return Path(path)
