"""The Markdown tables of the project's studies, each from the records a study wrote under results/.

``scripts/docs_tables.py`` puts them into docs/; the study runner (:mod:`fastadapt.apps.study`) writes them to
``results.md`` (:data:`fastadapt.report.STUDY_TABLES` names them for study files).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fastadapt.eval.stats import mean_ci


def omniglot_table(paths: list[str]) -> list[str]:
    """The Omniglot table of docs/RESULTS.md, from the run folders in ``paths`` (those without metrics.jsonl are
    skipped): each ``eval_<setting>.json``, and the paired difference against the first run tested on the same
    fixed episodes (on their common prefix)."""
    rows = []
    for p in map(Path, paths):
        metrics = p / "metrics.jsonl"
        if not metrics.is_file():
            continue
        last = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()][-1]
        steps, seconds = last["step"], last["time"]  # the last logged step, unless results.json says more
        if (p / "results.json").is_file():
            res = json.loads((p / "results.json").read_text())
            steps, seconds = res["steps"] or steps, res["train_seconds"] or seconds
        for ev in sorted(p.glob("eval_*.json")):
            d = json.loads(ev.read_text())
            rows.append((ev.stem[5:], p.name, d, steps, seconds / 60))
    lines = [
        "| setting | run | algorithm | test accuracy (fixed episodes: 1000 unless said) | meta-steps | train min "
        "| paired diff. vs first row |",
        "|---|---|---|---|---|---|---|",
    ]
    first: dict[tuple, np.ndarray] = {}

    def episodes(d: dict) -> tuple:  # runs scored on the same fixed episodes share this key
        s = d["settings"]
        return tuple(s.get(k) for k in ("dataset", "split", "part", "ways", "shots", "queries", "eval_seed"))

    for setting, name, d, steps, minutes in sorted(
        rows,
        key=lambda r: (
            r[2]["settings"]["ways"],
            r[2]["settings"]["shots"],
            r[2]["settings"]["queries"] != 15,
            r[2]["settings"]["algorithm"] != "protonet",
            r[1],
        ),
    ):
        scores = np.array(d["scores"])
        ref = first.setdefault(episodes(d), scores)
        if ref is scores:
            diff = "-"
        else:
            n = min(len(ref), len(scores))  # the common prefix of the fixed episodes
            m, h = mean_ci(scores[:n] - ref[:n])
            diff = f"{100 * m:+.2f} +- {100 * h:.2f}" + (
                "" if n == len(ref) == len(scores) else f" (first {n} episodes)"
            )
        label = setting if d["settings"]["queries"] == 15 else f"{setting} ({d['settings']['queries']} queries)"
        count = "" if len(scores) == 1000 else f" ({len(scores)} episodes)"
        lines.append(
            f"| {label} | {name} | {d['settings']['algorithm']} "
            f"| {100 * d['mean']:.2f} +- {100 * d['ci']:.2f} %{count} "
            f"| {steps} | {minutes:.1f} | {diff} |"
        )
    return lines


PAPER_5SHOT = {"MAML": (0.67, 0.38, 0.35)}  # Finn et al. 2017, Fig. 3 / text: MSE after 1, 5, 10 steps (5-shot)


STEPS = (0, 1, 5, 10)


SHOTS = (5, 10)


def sinusoid_table(table: dict) -> list[str]:
    """The sinusoid study's table (``results.json``: model -> meta-steps, minutes and MSE after each step count),
    one row per model and K."""
    lines = [
        "| model | meta-steps (train min) | K | MSE 0 steps | 1 step | 5 steps | 10 steps | paper (1/5/10) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, row in table.items():
        for shots in SHOTS:
            cells = [
                f"{row['mse'][f'{shots}shot_{k}steps'][0]:.3f} +- {row['mse'][f'{shots}shot_{k}steps'][1]:.3f}"
                if math.isfinite(row["mse"][f"{shots}shot_{k}steps"][0])
                else "diverged"
                for k in STEPS
            ]
            paper = " / ".join(f"{v:.2f}" for v in PAPER_5SHOT[label]) if label in PAPER_5SHOT and shots == 5 else "-"
            lines.append(
                f"| {label} | {row['meta_steps']} ({row['train_minutes']:.1f}) | {shots} | {' | '.join(cells)} "
                f"| {paper} |"
            )
    return lines


def training_speed_table(summary: dict) -> list[str]:
    rows = {r["label"]: r for r in summary["rows"]}
    base = rows.get("before")
    lines = [
        "| run | meta-steps | training (min) | s per meta-step (median) | speed-up per step "
        "| test accuracy, 1000 fixed episodes (95% CI) |",
        "|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        speed = f"{base['seconds_per_step'] / r['seconds_per_step']:.2f}x" if base else "-"
        lines.append(
            f"| {r['what']} | {r['steps']} | {r['train_seconds'] / 60:.1f} | {r['seconds_per_step']:.3f} | {speed} | "
            f"{100 * r['test_mean']:.2f} +- {100 * r['test_ci']:.2f} % |"
        )
    if "paired" in summary:
        p = summary["paired"]
        lines += [
            "",
            f"bf16 minus fp32 (both today's code, {p['steps']} meta-steps each), "
            f"paired over the same {p['episodes']} episodes: "
            f"{100 * p['mean']:+.2f} +- {100 * p['ci']:.2f} points (95% CI).",
        ]
    return lines


def _fmt(r: dict) -> str:
    if r["metric"] == "acc":
        return f"{100 * r['mean']:.2f} +- {100 * r['ci']:.2f} %"
    return f"{r['mean']:.4f} +- {r['ci']:.4f}"


def hyper_table(rows: list[dict]) -> list[str]:
    """The comparison table (docs/HYPERPARAMETERS.md): one row per run and selection mode."""
    lines = [
        "| domain | method | inner rate and steps | score (95% CI) | episodes | ms per task | training (min) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["metric"] is None:
            lines.append(
                f"| {r['domain']} | {r['method']} | - | diverged after step {r['steps']}, before its first checkpoint: "
                f"nothing to score | 0 | - | {r['train_minutes']:.1f} |"
            )
            continue
        score = _fmt(r) + ("" if r["metric"] == "acc" else " (MSE)")
        if r.get("diverged"):
            score += f" (diverged after step {r['steps']}: scored from its last good checkpoint)"
        lines.append(
            f"| {r['domain']} | {r['method']} | {r['select']} | {score} | {r['episodes']} | "
            f"{1000 * r['seconds_per_task']:.3g} | {r['train_minutes']:.1f} |"
        )
    return lines


def hyper_study_table(study: dict) -> list[str]:
    """The tuning study's summary and its best trial against the preset's default (docs/HYPERPARAMETERS.md)."""
    best = ", ".join(
        f"`{k} = {v:.4g}`" if isinstance(v, float) else f"`{k} = {v}`" for k, v in study["best_params"].items()
    )
    outcome = (
        "no trial finished"
        if study["best_value"] is None
        else f"best validation value {study['best_value']:.4f} with {best}"
    )
    lines = [
        f"Study: {study['finished']} trials finished, {study['pruned']} pruned, {study['failed']} failed; {outcome}.",
        "",
        "| config | test MSE (95% CI) | episodes |",
        "|---|---|---|",
    ]
    for label, name in (("default", "maml-sinusoid (default)"), ("tuned", "best trial (`best.toml`)")):
        if label in study:
            lines.append(f"| {name} | {_fmt(study[label])} | {study[label]['episodes']} |")
    if "paired" in study:
        p = study["paired"]
        lines += [
            "",
            f"Paired over the same {p['episodes']} episodes, tuned minus default: "
            f"{p['mean']:+.4f} +- {p['ci']:.4f} MSE (95% CI); "
            f"median MSE {p['median_tuned']:.4f} tuned vs {p['median_default']:.4f} default; "
            "the tuned model is lower on "
            f"{100 * p['tuned_lower']:.1f} % of the episodes; "
            f"worst episode {p['worst_tuned']:.2f} tuned vs {p['worst_default']:.2f} default.",
        ]
    return lines


def rl_table(results: dict) -> list[str]:
    """The meta-RL study's table (docs/RL.md): return after each policy-gradient step, per family and policy."""
    lines = [
        "| family | policy | " + " | ".join(f"{j} steps" for j in next(iter(results.values()))["steps"]) + " |",
        "|---|---|" + "---|" * len(next(iter(results.values()))["steps"]),
    ]
    for family, r in results.items():
        for name, c in r["curves"].items():
            lines.append(
                f"| {family} | {name} | "
                + " | ".join(f"{m:.2f} +- {ci:.2f}" for m, ci in zip(c["mean"], c["ci"]))
                + " |"
            )
    notes = [
        f"{family}: {r['tasks']} held-out tasks, {r['trajectories']} trajectories per step, 95 % CI over tasks; "
        f"MAML above both after one step with non-overlapping intervals: {r['maml_above_both_after_one_step']}; "
        f"total {r['total_minutes']:.1f} min"
        for family, r in results.items()
    ]
    return [*lines, "", *notes]


MATCHING_REFERENCE = "ProtoNets (same episodes)"


def matching_ablation_table(result: dict) -> list[str]:
    """Markdown, one table per setting: each row's test accuracy, its difference from the ProtoNets row
    (points, paired over the same test episodes when the rows carry their per-episode ``scores``,
    otherwise the root sum of squares of the two intervals), meta-steps and training minutes."""
    md = [
        f"{result['minutes_per_row']:g} training minutes per row, one thread; "
        "the same training and test episodes within a setting.",
        "",
    ]
    for setting, rows in result["settings"].items():
        ref = rows.get(MATCHING_REFERENCE)
        md += [
            f"**{setting}**",
            "",
            "| row | accuracy (%) | minus ProtoNets (points) | meta-steps | minutes |",
            "|---|---|---|---|---|",
        ]
        for name, r in rows.items():
            if ref is None or name == MATCHING_REFERENCE:
                gap = ""
            elif "scores" in r and "scores" in ref:
                m, h = mean_ci(np.asarray(r["scores"]) - np.asarray(ref["scores"]))
                gap = f"{100 * m:+.2f} ± {100 * h:.2f}"
            else:
                gap = f"{100 * (r['acc'] - ref['acc']):+.2f} ± {100 * (r['ci'] ** 2 + ref['ci'] ** 2) ** 0.5:.2f}"
            md.append(
                f"| {name} | {100 * r['acc']:.2f} ± {100 * r['ci']:.2f} | {gap} | {r['steps']:,} "
                f"| {r['train_minutes']:.1f} |"
            )
        md.append("")
    return md[:-1]


def hyper_tables(results: Mapping[str, Any]) -> list[str]:
    """The hyperparameter study's ``results.json``: the comparison table, then the tuning study's summary."""
    lines = hyper_table(results["rows"]) if results.get("rows") else []
    if results.get("study"):
        lines += ["", *hyper_study_table(results["study"])]
    return lines


def _cross_domain_cell(e: Mapping[str, Any] | None, expected: int | None) -> str:
    if e is None:
        return "-"
    if "mean" not in e:
        return e.get("skipped", "-")
    note = "" if e["episodes"] == expected else f" ({e['episodes']} ep.)"
    return f"{100 * e['mean']:.2f} ± {100 * e['ci']:.2f}{note}"


def cross_domain_table(results: Mapping[str, Any]) -> list[str]:
    """The cross-domain study (docs/CROSS_DOMAIN.md): rows x columns, mean +- 95 % CI (%), and a row with test-time
    fine-tuning (the evaluations ``<column>-ft``) below each embedding row. ``options``: ``titles`` (column ->
    title), ``embedding`` (rows that fine-tune), ``lake_row``."""
    opts = results["options"]
    titles = opts["titles"]
    lines = ["| row (trained once on Omniglot background) | " + " | ".join(titles.values()) + " |"]
    lines.append("|---" * (len(titles) + 1) + "|")
    for label, c in sorted(results["cells"].items(), key=lambda kv: kv[0] == opts["lake_row"]):
        for ft in [False, True] if label in opts["embedding"] else [False]:
            names = [f"{key}-ft" if ft else key for key in titles]
            cells = [_cross_domain_cell(c["evals"].get(n), results["evals"][n]["episodes"]) for n in names]
            lines.append(f"| {label}{' + fine-tuning' if ft else ''} | " + " | ".join(cells) + " |")
    return lines


def lake_table(results: Mapping[str, Any]) -> list[str]:
    """Lake's one-shot challenge: the within-alphabet row's error on its ``lake-target`` evaluation (1000 trials),
    against the paper's people and Bayesian Program Learning."""
    lines = ["| model | error on 1000 within-alphabet 20-way 1-shot trials (95 % CI) | training |", "|---|---|---|"]
    label = results["options"]["lake_row"]
    cell = results["cells"].get(label)
    e = cell and cell["evals"].get("lake-target")
    if e and "mean" in e:
        training = f"{cell['steps']} steps, {cell['train_minutes']:.0f} min of one core"
        lines.append(f"| {label} | {100 * (1 - e['mean']):.2f} ± {100 * e['ci']:.2f} % | {training} |")
    lines += ["| people (Lake et al. 2015) | 4.5 % | |", "| Bayesian Program Learning (Lake et al. 2015) | 3.3 % | |"]
    return lines


LAKE_COLUMNS = {  # studies/lake.toml's evaluations, in the table's order
    "official": "Lake's 20 official runs",
    "official-two-way": "official runs, two-way",
    "random-drawer": "1000 random-drawer trials",
    "paired-drawer": "1000 drawer-paired trials",
}


def lake_ablation_table(results: Mapping[str, Any], root: Path | None = None) -> list[str]:
    """Lake's challenge ablation (``studies/lake.toml``): each row's error (100 - accuracy, with the 95 % CI; the
    official runs' CI over the 20 runs) in every column, with the steps and minutes it trained; rows not yet run
    are left out, columns that do not apply are empty. With ``root`` (the folder the cells' run paths are relative
    to), the last column is each row's error minus the first row's, paired episode by episode on the same official
    runs and the same 1000 random-drawer trials (each eval's per-episode scores, ``evals/<record>``), with its 95 %
    CI."""
    lines = [
        "| row | " + " | ".join(f"error: {t}" for t in LAKE_COLUMNS.values()) + " | training | paired difference in "
        "error vs the first row: official / random-drawer |",
        "|---" * (len(LAKE_COLUMNS) + 3) + "|",
    ]
    first: dict[str, np.ndarray] = {}
    for label, cell in results["cells"].items():
        evals = cell.get("evals", {})
        if not any("mean" in e for e in evals.values()):
            continue
        cols = []
        for name in LAKE_COLUMNS:
            e = evals.get(name, {})
            cols.append(f"{100 * (1 - e['mean']):.2f} ± {100 * e['ci']:.2f} %" if "mean" in e else "")
        training = f"{cell['steps']} steps, {cell['train_minutes']:.0f} min"
        diffs = []
        for name in ("official", "random-drawer"):
            scores = _eval_scores(root, cell, evals.get(name, {}))
            ref = first.setdefault(name, scores) if scores is not None else None
            if scores is None or ref is None or ref is scores or len(ref) != len(scores):
                diffs.append("-")
                continue
            m, h = mean_ci(ref - scores)  # error difference = accuracy difference of the first row minus this one
            diffs.append(f"{round(100 * m, 2) + 0.0:+.2f} ± {100 * h:.2f}")  # + 0.0: no "-0.00"
        lines.append(f"| {label} | " + " | ".join(cols) + f" | {training} | {' / '.join(diffs)} |")
    lines += [
        "| people (Lake et al. 2015) | 4.5 % | | | | | |",
        "| Bayesian Program Learning (Lake et al. 2015) | 3.3 % | | | | | |",
    ]
    return lines


def _eval_scores(root: Path | None, cell: Mapping[str, Any], ev: Mapping[str, Any]) -> np.ndarray | None:
    """The per-episode scores of one of a cell's evaluations (``<root>/<run>/evals/<record>``), None if absent."""
    if root is None or "record" not in ev or "run" not in cell:
        return None
    path = Path(root) / cell["run"] / "evals" / ev["record"]
    return np.array(json.loads(path.read_text())["scores"]) if path.is_file() else None


def cross_domain_tables(results: Mapping[str, Any]) -> list[str]:
    """Both tables of the cross-domain study."""
    return [*cross_domain_table(results), "", *lake_table(results)]


def comparators_table(results: Mapping[str, Any]) -> list[str]:
    """The learnt comparators in the ordinary Omniglot settings (``studies/comparators.toml``): each row's accuracy
    with its 95 % CI in every column (the same fixed episodes for every row), the steps and minutes it trained, and
    its accuracy minus the ProtoNets row trained with the same shots (the row labelled ``ProtoNets, trained ...``
    with this row's suffix), paired episode by episode from the per-episode ``scores``; rows not yet run are left
    out."""
    columns = list(results["evals"])
    cells = {
        label: cell for label, cell in results["cells"].items() if "mean" in cell.get("evals", {}).get(columns[0], {})
    }
    lines = [
        "| row | "
        + " | ".join(columns)
        + " | training | minus ProtoNets trained alike (points, paired): "
        + " / ".join(columns)
        + " |",
        "|---" * (len(columns) + 3) + "|",
    ]
    for label, cell in cells.items():
        evals = cell["evals"]
        cols = [
            f"{100 * evals[c]['mean']:.2f} ± {100 * evals[c]['ci']:.2f}" if "mean" in evals.get(c, {}) else ""
            for c in columns
        ]
        suffix = label.split(",", 1)[-1]
        ref = next((cells[r] for r in cells if r.startswith("ProtoNets") and r.split(",", 1)[-1] == suffix), None)
        diffs = []
        for c in columns:
            mine, theirs = evals.get(c, {}).get("scores"), (ref or {}).get("evals", {}).get(c, {}).get("scores")
            if ref is None or ref is cell or mine is None or theirs is None or len(mine) != len(theirs):
                diffs.append("-")
                continue
            m, h = mean_ci(np.asarray(mine) - np.asarray(theirs))
            diffs.append(f"{round(100 * m, 2) + 0.0:+.2f} ± {100 * h:.2f}")
        training = f"{cell['steps']:,} steps, {cell['train_minutes']:.0f} min"
        lines.append(f"| {label} | " + " | ".join(cols) + f" | {training} | {' / '.join(diffs)} |")
    return lines
