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
    return {"minutes_per_row": study.options["minutes_per_row"], "smoke": False, "settings": settings}
