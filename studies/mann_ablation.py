"""The MANN ablation's record (``{"rows": {row: {"accuracy", "curve", ...}}}``, as ``fastadapt.report`` tables it)
and its plot (training accuracy at the 2nd and 10th instance against episodes, every row)."""

from __future__ import annotations

from pathlib import Path

from fastadapt.apps.study import Study
from fastadapt.report.model_based import engine_curve, plot_mann_ablation
from fastadapt.runs import RunFolder


def record(study: Study, cells: dict) -> dict:
    rows = {}
    for label, c in cells.items():
        folder = RunFolder(c["run"])
        e = c["evals"]["test"]
        rows[label] = {
            "preset": c["preset"],
            "overrides": c["overrides"],
            "run": c["run"],
            "steps": c["steps"],
            "episodes": e["training_episodes"],
            "train_minutes": c["train_minutes"],
            "accuracy": e["accuracy"],
            "curve": engine_curve(folder.read_metrics(), folder.read_config().data.meta_batch),
        }
    episodes = next(iter(cells.values()))["evals"]["test"]["episodes"] if cells else None
    return {
        "minutes_per_row": minutes_per_row(cells),
        "eval_episodes": episodes,
        "smoke": False,
        "rows": rows,
    }


def plot(results: dict, study: Study) -> list[Path]:
    return [plot_mann_ablation(study.out, results)]


def minutes_per_row(cells: dict) -> float:
    """The training budget of the rows (their ``optim.max_minutes``; the largest when they differ)."""
    return max(
        float(o.split("=", 1)[1]) for c in cells.values() for o in c["overrides"] if o.startswith("optim.max_minutes=")
    )
