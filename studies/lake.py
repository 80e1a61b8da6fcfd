"""Lake's challenge study: ``fastadapt eval RUN ...`` per cell, its record under ``RUN/evals/`` read back when there.

The official runs are the test source ``lake-runs:<options.lake_runs>``; the drawer-paired column adds
``drawers = "paired"`` to the run's own ``data.options`` (its size and rotations kept); ``official-two-way`` applies
to algorithms with a ``two_way`` option only."""

from __future__ import annotations

import json
from pathlib import Path

from fastadapt.apps.study import Cell, Evaluation, Study, StudyError
from fastadapt.cli import main as fastadapt_command
from fastadapt.config import toml
from fastadapt.core.registry import algorithm_class
from fastadapt.runs import RunFolder


def evaluate(cell: Cell, evaluation: Evaluation, study: Study) -> dict:
    opts = study.options
    folder = RunFolder(cell.run)
    cfg = folder.read_config()
    overrides = [*evaluation.overrides, *opts["common_eval"], f"eval.test_episodes={evaluation.episodes}"]
    if evaluation.name.startswith("official"):
        runs = Path(opts["lake_runs"])
        if not runs.is_file():
            raise StudyError(f"{runs} is missing; fetch Lake's runs first (studies/lake.toml says how)")
        overrides.append(f"data.test_dataset=lake-runs:{runs}")
    if evaluation.name == "official-two-way":
        import inspect

        if "two_way" not in inspect.signature(algorithm_class(cfg.algorithm)).parameters:
            return {"skipped": "no two-way scoring for this algorithm"}
        overrides.append("algorithm.two_way=true")
    if evaluation.name == "paired-drawer":
        options = {**cfg.data.options, "drawers": "paired"}
        overrides.append(f"data.options={toml.toml_value(options)}")
    path = folder.eval_file("20w1s", overrides)
    if not path.is_file() and fastadapt_command(["eval", str(cell.run), *overrides]) != 0:
        raise StudyError(f"{cell.label}: fastadapt eval {cell.run} failed (its error is above)")
    d = json.loads(path.read_text())
    return {
        "metric": d["metric"],
        "mean": d["mean"],
        "ci": d["ci"],
        "error": 1 - d["mean"],
        "episodes": d["episodes"],
        "record": path.name,
    }
