"""The Matching ablation's record: ``{"settings": {setting: {row: ...}}}``, as ``fastadapt.report`` tables it."""

from __future__ import annotations

from fastadapt.apps.study import Study


def record(study: Study, cells: dict) -> dict:
    settings: dict = {}
    for label, c in cells.items():
        row, setting = label.rsplit(", ", 1)
        e = c["evals"]["test"]
        settings.setdefault(setting, {})[row] = {
            "preset": c["preset"],
            "overrides": c["overrides"],
            "run": c["run"],
            "steps": c["steps"],
            "train_minutes": c["train_minutes"],
            "acc": e["mean"],
            "ci": e["ci"],
            "episodes": e["episodes"],
            "scores": [round(x, 6) for x in e["scores"]],
        }
    return {"minutes_per_row": minutes_per_row(cells), "smoke": False, "settings": settings}


def minutes_per_row(cells: dict) -> float:
    """The training budget of the rows (their ``optim.max_minutes``; the largest when they differ)."""
    return max(
        float(o.split("=", 1)[1]) for c in cells.values() for o in c["overrides"] if o.startswith("optim.max_minutes=")
    )
