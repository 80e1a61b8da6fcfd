"""The leave-one-domain-out tables (studies/domains.toml, docs/CROSS_DOMAIN.md), from the study's ``results.json``.

One table per protocol (5-way 1-shot, 5-way 5-shot, variable-way variable-shot). A row is a method (with a test-time
adaptation mode, or none) under a training regime:

* ``Omniglot only``: the cell trained on Omniglot alone; every other domain is held out.
* ``leave one out``: for a trainable domain ``X`` the cell trained on all domains but ``X``; for a test-only domain
  (never trained on) the cell trained on all domains.

Columns: each held-out domain's accuracy (mean +- 95 % CI over the fixed episodes every row shares), the mean over
the domains both regimes hold out, the average rank over those columns (1 = best), the paired difference of that
mean against the baseline row (``options.baseline_row``: ProtoNets, Omniglot only) with its 95 % CI from the
per-episode scores, the in-domain cost: Omniglot's accuracy for the cell trained on Omniglot (the regime
``all`` for leave-one-out rows), the training minutes of the row's cells and the median seconds per evaluated task.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

TITLES = {"fmnist": "Fashion-MNIST", "animals": "animals", "omniglot": "Omniglot", "glyphs": "glyphs", "kanji": "kanji",
          "emoji": "emoji"}  # fmt: skip
PROTOCOLS = {"5-way 1-shot": "5w1s", "5-way 5-shot": "5w5s", "variable-way, variable-shot (Meta-Dataset)": "var"}


def _scores(cell: Mapping[str, Any], e: Mapping[str, Any], root: Path) -> np.ndarray | None:
    """The per-episode scores of an evaluation's record (``RUN/evals/<record>``, a relative ``RUN`` under ``root``),
    None when it is not on disk."""
    path = root / cell["run"] / "evals" / e["record"]
    if not path.is_file():
        return None
    return np.asarray(json.loads(path.read_text())["scores"], dtype=np.float64)


def _row_cells(results: Mapping[str, Any], method: str, regime: str, domain: str) -> tuple[str, str] | None:
    """The cell label and regime whose evaluation fills the column of ``domain`` for a row."""
    trained = results["options"]["trained_on"]
    if regime == "Omniglot":
        label = f"{method}, Omniglot"
        return (label, "Omniglot") if domain != "omniglot" else None
    if domain in trained["all"]:  # a trainable domain: the cell that left it out
        name = "no Omniglot" if domain == "omniglot" else f"no {domain}"
        return f"{method}, {name}", name
    return f"{method}, all", "all"  # a test-only domain: held out by every regime


def _entry(results: Mapping[str, Any], label: str, column: str) -> tuple[Mapping[str, Any], dict] | None:
    cell = results["cells"].get(label)
    e = cell and cell["evals"].get(column)
    return (cell, e) if e and "mean" in e else None


def domains_table(results: Mapping[str, Any], setting: str, level: float = 0.95, root: Path | str = ".") -> list[str]:
    """One protocol's table (``setting``: 5w1s, 5w5s or var); ``root``: where the cells' relative run folders are."""
    opts = results["options"]
    methods = list(dict.fromkeys(label.rsplit(", ", 1)[0] for label in results["cells"]))
    modes = [""] + list(dict.fromkeys(n.split("+", 1)[1] for n in results["evals"] if "+" in n))
    evals = results["evals"]
    domains = [d for d in TITLES if any(n == f"{d}-{setting}" or n.startswith(f"{d}-{setting}+") for n in evals)]
    rows: list[tuple[str, dict[str, tuple[Mapping, dict]], str]] = []
    for method in methods:
        for mode in modes:
            for regime in ("Omniglot", "leave one out"):
                got = {}
                for d in domains:
                    where = _row_cells(results, method, regime, d)
                    column = f"{d}-{setting}" + (f"+{mode}" if mode else "")
                    found = where and _entry(results, where[0], column)
                    if found:
                        got[d] = found
                cost_label = f"{method}, {'Omniglot' if regime == 'Omniglot' else 'all'}"
                cost = _entry(results, cost_label, f"omniglot-{setting}")
                if got or (not mode and cost):
                    trained = "Omniglot only" if regime == "Omniglot" else regime
                    name = f"{method}{' + ' + mode if mode else ''}, {trained}"
                    rows.append((name, got, _fmt(cost[1]) if cost else "-"))
    if not rows:
        return []
    common = [d for d in domains if d != "omniglot" and all(d in got for _, got, _ in rows)]
    ranks = _average_ranks(rows, common)
    base = next((got for name, got, _ in rows if name == opts.get("baseline_row")), None)
    head = [TITLES[d] for d in domains]
    lines = [
        "| method, training | " + " | ".join(head) + f" | mean of {', '.join(TITLES[d] for d in common) or '-'} "
        f"| average rank | paired diff. of the mean vs {opts.get('baseline_row', '-')} | Omniglot in-domain "
        "| train min (cells) | s per task |",
        "|---" * (len(head) + 7) + "|",
    ]
    for (name, got, cost), rank in zip(rows, ranks):
        cells = [_fmt(got[d][1]) if d in got else "-" for d in domains]
        mean = np.mean([got[d][1]["mean"] for d in common]) if common else math.nan
        diff = _paired_mean_diff(got, base, common, level, Path(root)) if base is not None else "-"
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {100 * mean:.2f} | {rank:.2f} | {diff} | {cost} | "
            f"{_train_minutes(got)} | {_task_seconds(got)} |"
        )
    return lines


def _train_minutes(got: dict) -> str:
    """The training minutes of the cells a row reads (one figure, or the range)."""
    minutes = sorted({round(c["train_minutes"], 1) for c, _ in got.values() if "train_minutes" in c})
    if not minutes:
        return "-"
    return f"{minutes[0]:.1f}" if len(minutes) == 1 else f"{minutes[0]:.1f}-{minutes[-1]:.1f}"


def _task_seconds(got: dict) -> str:
    """The median wall time per evaluated task of a row's columns (the whole ``fastadapt eval`` command, loading
    included, over its episodes), where the study timed it."""
    seconds = [e["seconds_per_episode"] for _, e in got.values() if "seconds_per_episode" in e]
    return f"{float(np.median(seconds)):.2f}" if seconds else "-"


def _fmt(e: Mapping[str, Any]) -> str:
    return f"{100 * e['mean']:.2f} ± {100 * e['ci']:.2f}"


def _average_ranks(rows: list, common: list[str]) -> list[float]:
    """Each row's mean rank (1 = best, ties averaged) over the ``common`` columns."""
    if not common:
        return [math.nan] * len(rows)
    table = np.array([[got[d][1]["mean"] for d in common] for _, got, _ in rows])
    ranks = np.zeros_like(table)
    for j in range(table.shape[1]):
        col = -table[:, j]
        order = col.argsort(kind="stable")
        r = np.empty(len(col))
        r[order] = np.arange(1, len(col) + 1)
        for v in np.unique(col):  # ties share their mean rank
            r[col == v] = r[col == v].mean()
        ranks[:, j] = r
    return list(ranks.mean(axis=1))


def _paired_mean_diff(got: dict, base: dict, common: list[str], level: float, root: Path) -> str:
    """The difference of the mean over ``common`` against the baseline row, paired per episode in every column
    (the same fixed episodes); its interval from the per-column paired variances (columns independent), normal."""
    if not common or got is base:
        return "-"
    means, variances = [], []
    for d in common:
        a, b = _scores(*got[d], root), _scores(*base[d], root)
        if a is None or b is None or len(a) != len(b):
            return "-"
        d_ep = a - b
        means.append(float(d_ep.mean()))
        variances.append(float(d_ep.var(ddof=1)) / len(d_ep) if len(d_ep) > 1 else math.nan)
    diff = float(np.mean(means))
    half = _z(level) * math.sqrt(sum(variances)) / len(common)
    return f"{100 * diff:+.2f} ± {100 * half:.2f}"


def _z(level: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + level / 2)


def merge_results(*studies: Mapping[str, Any]) -> dict[str, Any]:
    """One ``results.json`` of several studies over the same cells (studies/domains.toml and its adaptation columns,
    studies/domains_adapt.toml): every cell's evaluations side by side; the first study's options and cell records."""
    first = studies[0]
    cells = {label: {**c, "evals": dict(c["evals"])} for label, c in first["cells"].items()}
    evals = dict(first["evals"])
    for other in studies[1:]:
        evals.update(other["evals"])
        for label, c in other["cells"].items():
            cells.setdefault(label, {**c, "evals": {}})["evals"].update(c["evals"])
    return {**first, "cells": cells, "evals": evals}


def domains_tables(results: Mapping[str, Any], root: Path | str = ".") -> list[str]:
    """Every protocol's table, each under its title."""
    lines: list[str] = []
    for title, setting in PROTOCOLS.items():
        table = domains_table(results, setting, root=root)
        if table:
            lines += [f"**{title}**", "", *table, ""]
    return lines
