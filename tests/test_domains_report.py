"""The leave-one-domain-out tables (fastadapt/report/domains.py) on a synthetic results.json: which cell fills which
column, the mean over common held-out domains, the average rank and the paired difference, computed by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fastadapt.report.domains import domains_table, domains_tables

TRAINED = {"Omniglot": ["omniglot"], "all": ["omniglot", "kanji"], "no Omniglot": ["kanji"], "no kanji": ["omniglot"]}


def record(tmp_path, cell: str, column: str, scores: list[float]) -> dict:
    run = tmp_path / cell.replace(", ", "-").replace(" ", "_")
    (run / "evals").mkdir(parents=True, exist_ok=True)
    (run / "evals" / f"{column}.json").write_text(json.dumps({"scores": scores}))
    a = np.asarray(scores)
    return {"metric": "acc", "mean": float(a.mean()), "ci": 0.01, "episodes": len(a), "record": f"{column}.json"}


@pytest.fixture
def results(tmp_path):
    rng = np.random.default_rng(0)
    cells = {}
    # column values by (cell, column): the held-out ones matter, the rest fill the in-domain cost
    plan = {
        "ProtoNets, Omniglot": {"fmnist-5w1s": 0.50, "kanji-5w1s": 0.60, "omniglot-5w1s": 0.95},
        "ProtoNets, all": {"fmnist-5w1s": 0.56, "kanji-5w1s": 0.90, "omniglot-5w1s": 0.94},
        "ProtoNets, no Omniglot": {"fmnist-5w1s": 0.55, "kanji-5w1s": 0.91, "omniglot-5w1s": 0.80},
        "ProtoNets, no kanji": {"fmnist-5w1s": 0.52, "kanji-5w1s": 0.70, "omniglot-5w1s": 0.95},
    }
    for label, cols in plan.items():
        evals = {}
        for column, mean in cols.items():
            scores = list(np.clip(mean + 0.05 * rng.standard_normal(40), 0, 1))
            evals[column] = record(tmp_path, label, column, scores)
        run = str(tmp_path / label.replace(", ", "-").replace(" ", "_"))
        cells[label] = {"run": run, "evals": evals, "train_minutes": 20.0 + 5 * ("no" in label)}
    evals = {c: {"episodes": 40} for c in ("fmnist-5w1s", "kanji-5w1s", "omniglot-5w1s")}
    options = {"trained_on": TRAINED, "baseline_row": "ProtoNets, Omniglot only"}
    return {"cells": cells, "evals": evals, "options": options}


def test_rows_take_each_held_out_column_from_the_cell_that_left_it_out(results):
    lines = domains_table(results, "5w1s")
    header, _, base, loo = lines
    assert "Fashion-MNIST" in header and "mean of Fashion-MNIST, kanji" in header
    cells = [c.strip() for c in loo.split("|")[1:-1]]
    e = results["cells"]
    assert cells[0] == "ProtoNets, leave one out"
    # Fashion-MNIST (test-only): the cell trained on all; Omniglot: no Omniglot; kanji: no kanji
    assert cells[1] == f"{100 * e['ProtoNets, all']['evals']['fmnist-5w1s']['mean']:.2f} ± 1.00"
    assert cells[2] == f"{100 * e['ProtoNets, no Omniglot']['evals']['omniglot-5w1s']['mean']:.2f} ± 1.00"
    assert cells[3] == f"{100 * e['ProtoNets, no kanji']['evals']['kanji-5w1s']['mean']:.2f} ± 1.00"
    mean = np.mean(
        [e["ProtoNets, all"]["evals"]["fmnist-5w1s"]["mean"], e["ProtoNets, no kanji"]["evals"]["kanji-5w1s"]["mean"]]
    )
    assert cells[4] == f"{100 * mean:.2f}"
    assert cells[5] == "1.00"  # better than the baseline in both common columns
    assert cells[7] == f"{100 * e['ProtoNets, all']['evals']['omniglot-5w1s']['mean']:.2f} ± 1.00"  # in-domain cost
    assert cells[8] == "20.0-25.0" and cells[9] == "-"  # the cells' training minutes; no timed evaluation
    base_cells = [c.strip() for c in base.split("|")[1:-1]]
    assert base_cells[2] == "-" and base_cells[5] == "2.00" and base_cells[6] == "-"


def test_the_paired_difference_is_the_mean_of_per_column_episode_differences(results, tmp_path):
    loo = domains_table(results, "5w1s")[3]
    diff = [c.strip() for c in loo.split("|")[1:-1]][6]
    c = results["cells"]

    def scores(label, column):
        return np.asarray(json.loads((tmp_path / label.replace(", ", "-").replace(" ", "_") / "evals" /
                                      f"{column}.json").read_text())["scores"])  # fmt: skip

    d1 = scores("ProtoNets, all", "fmnist-5w1s") - scores("ProtoNets, Omniglot", "fmnist-5w1s")
    d2 = scores("ProtoNets, no kanji", "kanji-5w1s") - scores("ProtoNets, Omniglot", "kanji-5w1s")
    half = 1.959963984540054 * np.sqrt(d1.var(ddof=1) / 40 + d2.var(ddof=1) / 40) / 2
    assert diff == f"{100 * (d1.mean() + d2.mean()) / 2:+.2f} ± {100 * half:.2f}"
    assert c  # the fixture's cells were read, not rebuilt


def test_a_protocol_without_columns_gives_no_table(results):
    assert domains_table(results, "var") == []
    assert domains_tables(results)[0] == "**5-way 1-shot**"


def test_the_adaptation_study_merges_into_the_same_rows(results, tmp_path):
    from fastadapt.report.domains import merge_results

    label = "ProtoNets, Omniglot"
    adapted = {
        "cells": {label: {"run": results["cells"][label]["run"], "evals": {}}},
        "evals": {"fmnist-5w1s+tsa": {"episodes": 40}},
        "options": results["options"],
    }
    adapted["cells"][label]["evals"]["fmnist-5w1s+tsa"] = record(tmp_path, label, "fmnist-5w1s+tsa", [0.7] * 40)
    merged = merge_results(results, adapted)
    assert set(merged["cells"][label]["evals"]) == {"fmnist-5w1s", "kanji-5w1s", "omniglot-5w1s", "fmnist-5w1s+tsa"}
    assert "fmnist-5w1s+tsa" not in results["cells"][label]["evals"]  # the inputs are left alone
    rows = [line.split("|")[1].strip() for line in domains_table(merged, "5w1s")[2:]]
    assert rows == ["ProtoNets, Omniglot only", "ProtoNets, leave one out", "ProtoNets + tsa, Omniglot only"]
    assert domains_table(adapted, "5w1s")[2].split("|")[2].strip() == "70.00 ± 1.00"  # alone: its own domains
