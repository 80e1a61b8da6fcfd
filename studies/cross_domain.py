"""The cross-domain study's evaluation: ``fastadapt eval RUN ...`` per cell, its record under ``RUN/evals/``
read back when it is there (also one made on ``options.fallback_episodes`` episodes)."""

from __future__ import annotations

import json
from pathlib import Path

from fastadapt.apps.study import Cell, Evaluation, Study, StudyError
from fastadapt.cli import main as fastadapt_command
from fastadapt.runs import RunFolder


def evaluate(cell: Cell, evaluation: Evaluation, study: Study) -> dict:
    opts = study.options
    embedding = cell.label in opts["embedding"]
    column, ft = evaluation.name.removesuffix("-ft"), evaluation.name.endswith("-ft")
    if evaluation.name == "lake-target" and cell.label != opts["lake_row"]:
        return {"skipped": "only the Lake row"}
    if ft and not embedding:
        return {"skipped": "fine-tuning applies to embeddings"}
    if column == "lake-20w1s" and not embedding:
        return {"skipped": "n/a (5-way head)"}
    base = next(e for e in study.evals if e.name == column).overrides
    column_overrides = [*base, *opts["finetune_overrides"]] if ft else list(evaluation.overrides)

    def record(count: int) -> tuple[list[str], Path]:  # the overrides of a cell and its record's path
        overrides = list(column_overrides)
        if evaluation.name != "lake-target":  # its overrides are complete
            overrides += [*opts["common_eval"], f"eval.test_episodes={count}"]
        ways, shots = (o.split("=")[1] for o in overrides if o.startswith(("data.test_ways", "data.test_shots")))
        return overrides, RunFolder(cell.run).eval_file(f"{ways}w{shots}s", overrides)

    found = [record(n)[1] for n in dict.fromkeys([evaluation.episodes, *opts["fallback_episodes"]])]
    path = next((p for p in found if p.is_file()), None)
    if path is None and ft and column not in opts["finetune_columns"]:
        return {"skipped": ""}  # fine-tuning is measured where the domain changes
    if path is None:  # a new evaluation: the gradient-based rows on fewer episodes (slower to evaluate)
        overrides, path = record(evaluation.episodes if embedding else opts["gradient_episodes"])
        if fastadapt_command(["eval", str(cell.run), *overrides]) != 0:
            raise StudyError(f"{cell.label}: fastadapt eval {cell.run} failed (its error is above)")
    d = json.loads(path.read_text())
    return {"metric": d["metric"], "mean": d["mean"], "ci": d["ci"], "episodes": d["episodes"], "record": path.name}
