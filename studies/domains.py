"""The leave-one-domain-out study's evaluation: ``fastadapt eval RUN ...`` per cell and column, its record under
``RUN/evals/`` read back when it is there. A cell's regime (the part of its label after the method) names the domains
it trained on (``options.trained_on``); a column on one of them is marked in-domain, every other column is held out."""

from __future__ import annotations

import json

from fastadapt.apps.study import Cell, Evaluation, Study, StudyError
from fastadapt.cli import main as fastadapt_command
from fastadapt.runs import RunFolder


def regime(cell: Cell, study: Study) -> str:
    """``"ProtoNets, no glyphs"`` -> ``"no glyphs"`` (a key of ``options.trained_on``)."""
    for name in sorted(study.options["trained_on"], key=len, reverse=True):
        if cell.label.endswith(", " + name):
            return name
    raise StudyError(f"{cell.label}: no regime of options.trained_on ends the label")


def evaluate(cell: Cell, evaluation: Evaluation, study: Study) -> dict:
    opts = study.options
    overrides = [*evaluation.overrides, *opts["common_eval"], f"eval.test_episodes={evaluation.episodes}"]
    if "data.episodes=variable" in overrides:  # the one setting of variable-way, variable-shot episodes
        key = "variable"
    else:
        ways, shots = (o.split("=")[1] for o in overrides if o.startswith(("data.test_ways", "data.test_shots")))
        key = f"{ways}w{shots}s"
    path = RunFolder(cell.run).eval_file(key, overrides)
    if not path.is_file() and fastadapt_command(["eval", str(cell.run), *overrides]) != 0:
        raise StudyError(f"{cell.label}: fastadapt eval {cell.run} failed (its error is above)")
    d = json.loads(path.read_text())
    domain = evaluation.name.split("-", 1)[0].replace("fmnist", "fashion-mnist")
    return {
        "metric": d["metric"],
        "mean": d["mean"],
        "ci": d["ci"],
        "episodes": d["episodes"],
        "record": path.name,
        "held_out": domain not in opts["trained_on"][regime(cell, study)],
    }
