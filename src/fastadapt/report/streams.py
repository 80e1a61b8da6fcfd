"""Reports of online runs: the stream and recovery plots, the ``streams.json`` record that ``fastadapt plot`` reads,
and the tables of the change study (docs/CHANGE.md)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fastadapt.core.errors import DataError
from fastadapt.eval.stream_metrics import run_values
from fastadapt.eval.streams import OnlineRun
from fastadapt.report.figure import pyplot, save_figure


def plot_stream(
    runs: Mapping[str, OnlineRun], path: str | Path, metric: str = "probe", title: str = "", smooth: int = 1
) -> Path:
    """Error against step of one stream for each learner, change points as vertical lines, detector
    resets as ticks; saved to ``path`` (PNG). Needs matplotlib."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.6))
    first = next(iter(runs.values()))
    for c in first.change_points:
        ax.axvline(c, color="0.75", lw=1, zorder=0)
    for label, run in runs.items():
        v = run_values(run, metric)
        if smooth > 1:
            v = np.convolve(np.nan_to_num(v), np.ones(smooth) / smooth, mode="same")
        (line,) = ax.plot(np.arange(run.length), v, lw=1.2, label=label)
        if run.resets:
            ax.plot(run.resets, [ax.get_ylim()[0]] * len(run.resets), "|", color=line.get_color(), ms=10)
    ax.set(
        xlabel="step",
        ylabel=("probe " if metric == "probe" else "") + ("error rate" if first.classification else "MSE"),
        title=title,
    )
    if not first.classification:
        ax.set_yscale("log")
    ax.legend(fontsize=8, ncol=3)
    return save_figure(fig, path, dpi=100)


STREAMS_FILE = "streams.json"  # what save_runs writes and fastadapt plot reads


def save_runs(runs: Mapping[str, OnlineRun] | Mapping[str, Mapping[str, OnlineRun]], path: str | Path) -> Path:
    """Write the records of :func:`online` runs as JSON (``{learner: run}``, or ``{stream: {learner: run}}`` for several
    streams); a folder gets ``streams.json``. ``fastadapt plot PATH`` draws them."""
    path = Path(path)
    if path.is_dir():
        path = path / STREAMS_FILE

    def plain(v: Any) -> Any:
        return v.to_dict() if isinstance(v, OnlineRun) else {k: plain(x) for k, x in v.items()}

    path.write_text(json.dumps(plain(runs)) + "\n")
    return path


def is_streams_record(path: str | Path) -> bool:
    """Whether ``path`` is a record of online runs (a ``.json`` file or a folder holding ``streams.json``) rather
    than a run folder."""
    path = Path(path)
    return (path.is_file() and path.suffix == ".json") or (
        path.is_dir() and (path / STREAMS_FILE).is_file() and not (path / "config.json").is_file()
    )


def plot_stream_record(path: str | Path) -> list[Path]:
    """``fastadapt plot`` of a :func:`save_runs` record: one PNG per stream (``stream_<name>.png``, or
    ``stream.png``) beside it, every learner's probe error along the stream with the change points. A file that is
    not such a record is one line."""
    path = Path(path)
    file = path / STREAMS_FILE if path.is_dir() else path
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise DataError(
            f"{file}: not a readable record of online runs ({(str(e).strip() or type(e).__name__).splitlines()[0]})"
        ) from None

    def is_run(v: Any) -> bool:
        return isinstance(v, Mapping) and "error" in v and "change_points" in v

    if not isinstance(data, Mapping) or not data:
        raise DataError(
            f"{file}: expected {{learner: run}} or {{stream: {{learner: run}}}} "
            "as written by fastadapt.report.streams.save_runs"
        )
    groups = {"": data} if all(is_run(v) for v in data.values()) else data
    out = []
    for name, runs in groups.items():
        if not isinstance(runs, Mapping) or not runs or not all(is_run(v) for v in runs.values()):
            raise DataError(
                f"{file}: stream {name!r} holds no online runs (each needs 'error' and 'change_points'; see save_runs)"
            )
        target = file.parent / (f"stream_{name}.png" if name else "stream.png")
        out.append(
            plot_stream(
                {k: OnlineRun.from_dict(v) for k, v in runs.items()}, target, title=f"{file.name} {name}".strip()
            )
        )
    return out


def plot_recovery(
    summaries: Mapping[str, Mapping[str, Any]], path: str | Path, title: str = "", ylabel: str = "MSE", log: bool = True
) -> Path:
    """Mean error against steps since a change (``summarize(...)["curve"]``) with its interval, one line per
    learner (PNG)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, s in summaries.items():
        if "curve" not in s:
            continue
        m, h = np.array(s["curve"]), np.nan_to_num(np.array(s["curve_ci"]))
        x = np.arange(len(m))
        ax.plot(x, m, label=label)
        ax.fill_between(x, m - h, m + h, alpha=0.2)
    ax.set(xlabel="steps since the change", ylabel=ylabel, title=title)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=100)


def plot_new_classes(learners: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """Probe accuracy of the classes that appear at a change against labelled examples seen of each, one line per
    learner (``summary["new_classes"]["accuracy_by_examples"]`` of the change study's Omniglot learners)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in learners.items():
        acc = np.array([math.nan if v is None else v for v in r["new_classes"]["accuracy_by_examples"]], dtype=float)
        ax.plot(np.arange(len(acc)), acc, marker=".", label=name)
    ax.axvline(5, color="0.7", lw=1)
    ax.set(
        xlabel="labelled examples of the new class",
        ylabel="probe accuracy on the new class",
        title="classes that appear at a change",
    )
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=100)


def change_tables(results: Mapping[str, Any]) -> list[str]:
    """Both tables of the change study's ``results.json`` (sinusoid, then Omniglot)."""
    return [*change_sinusoid_table(results), "", *change_omniglot_table(results)]


def change_sinusoid_table(results: dict[str, Any]) -> list[str]:
    """The change study's sinusoid table: recovery steps, censored share and regret per learner, then the paired
    differences."""
    s = results["sinusoid"]
    lines = [
        f"| learner ({s['streams']} streams) | recovery steps (95 % CI) | censored "
        "| regret, cumulative MSE (95 % CI) |",
        "|---|---|---|---|",
    ]
    for name, r in s["learners"].items():
        lines.append(
            f"| {name} | {_fmt(r.get('recovery'))} | {r.get('censored', math.nan):.0%} | {_fmt(r['regret'], 0)} |"
        )
    for name, d in s["paired"].items():
        lines.append(f"| *paired: {name}* | {_fmt(d['recovery'])} | | {_fmt(d['regret'], 0)} |")
    return lines


def change_omniglot_table(results: dict[str, Any]) -> list[str]:
    """The change study's Omniglot table: recovery, regret (errors) and the new classes' accuracy by examples
    seen."""
    o = results["omniglot"]
    lines = [
        f"| learner ({o['streams']} streams) | recovery steps (95 % CI) | regret, errors (95 % CI) "
        "| new classes: acc. after 1 / 5 examples, final "
        f"| examples to 90 % of final (95 % CI) | classes within 5 examples |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in o["learners"].items():
        n = r["new_classes"]
        acc = n["accuracy_by_examples"]
        at = " / ".join(
            f"{acc[k]:.1%}" if k < len(acc) and acc[k] is not None and math.isfinite(acc[k]) else "-" for k in (1, 5)
        )
        lines.append(
            f"| {name} | {_fmt(r.get('recovery'))} | {_fmt(r['regret'])} | {at}, {n['final_accuracy']:.1%} | "
            f"{_fmt(n['examples_to_90pct'])} | {n['classes_within_5_examples']:.0%} |"
        )
    return lines


def _fmt(pair: Any, digits: int = 1) -> str:
    if not pair or pair[0] is None or not math.isfinite(pair[0]):
        return "-"
    half = pair[1]
    return (
        f"{pair[0]:.{digits}f} +- {half:.{digits}f}"
        if half is not None and math.isfinite(half)
        else f"{pair[0]:.{digits}f}"
    )
