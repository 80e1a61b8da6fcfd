"""The leave-one-domain-out study's evaluation: ``fastadapt eval RUN ...`` per cell and column, its record under
``RUN/evals/`` read back when it is there. A cell's regime (the part of its label after the method) names the domains
it trained on (``options.trained_on``); a column on one of them is marked in-domain, every other column is held out.

A column ``<column>+<mode>`` is ``<column>`` with test-time adaptation ``eval.finetune = <mode>`` (transductive
fine-tuning, FiLM, TSA, ...): measured for the methods of ``options.adapt_methods`` on held-out columns only, on
``options.adapt_episodes`` episodes, with the steps and rate chosen per cell on the validation classes of its
training domains (``choose_schedule`` over ``options.adapt_grid``; never on a test domain), kept in
``RUN/evals/schedule-<mode>.json``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from fastadapt.apps.study import Cell, Evaluation, Study, StudyError
from fastadapt.cli import main as fastadapt_command
from fastadapt.runs import RunFolder


def regime(cell: Cell, study: Study) -> str:
    """``"ProtoNets, no glyphs"`` -> ``"no glyphs"`` (a key of ``options.trained_on``)."""
    for name in sorted(study.options["trained_on"], key=len, reverse=True):
        if cell.label.endswith(", " + name):
            return name
    raise StudyError(f"{cell.label}: no regime of options.trained_on ends the label")


def schedule(cell: Cell, mode: str, study: Study) -> dict:
    """The ``(steps, lr)`` of ``options.adapt_grid`` best on the cell's validation episodes (kept in its run)."""
    import fastadapt
    from fastadapt.eval.finetune import choose_schedule

    path = RunFolder(cell.run).evals_dir / f"schedule-{mode}.json"
    if path.is_file():
        return json.loads(path.read_text())
    opts = study.options
    run = fastadapt.load_run(cell.run, ["eval.val_every=1", "eval.seed=2024", "run.progress=false"])
    grid = [tuple(g) for g in opts["adapt_grid"]]
    best = choose_schedule(run, run.tasks("val").val, mode, grid, episodes=opts["adapt_val_episodes"])
    rec = {
        "mode": mode,
        "steps": best.steps,
        "lr": best.lr,
        "val_episodes": best.episodes,
        "table": [list(r) for r in best.table],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=2) + "\n")
    return rec


def evaluate(cell: Cell, evaluation: Evaluation, study: Study) -> dict:
    opts = study.options
    column, _, mode = evaluation.name.partition("+")
    domain = column.split("-", 1)[0].replace("fmnist", "fashion-mnist")
    held_out = domain not in opts["trained_on"][regime(cell, study)]
    overrides = [*evaluation.overrides, *opts["common_eval"], f"eval.test_episodes={evaluation.episodes}"]
    chosen = None
    if mode:
        if cell.label.rsplit(", ", 1)[0] not in opts["adapt_methods"]:
            return {"skipped": "test-time adaptation is measured for options.adapt_methods"}
        if not held_out:
            return {"skipped": "test-time adaptation is measured on held-out domains"}
        chosen = schedule(cell, mode, study)
        overrides += [
            f"eval.finetune={mode}",
            f"eval.finetune_steps={chosen['steps']}",
            f"eval.finetune_lr={chosen['lr']}",
        ]
    if "data.episodes=variable" in overrides:  # the one setting of variable-way, variable-shot episodes
        key = "variable"
    else:
        ways, shots = (o.split("=")[1] for o in overrides if o.startswith(("data.test_ways", "data.test_shots")))
        key = f"{ways}w{shots}s"
    path: Path = RunFolder(cell.run).eval_file(key, overrides)
    seconds = None
    if not path.is_file():
        start = time.perf_counter()
        if fastadapt_command(["eval", str(cell.run), *overrides]) != 0:
            raise StudyError(f"{cell.label}: fastadapt eval {cell.run} failed (its error is above)")
        seconds = time.perf_counter() - start
    d = json.loads(path.read_text())
    out = {
        "metric": d["metric"],
        "mean": d["mean"],
        "ci": d["ci"],
        "episodes": d["episodes"],
        "record": path.name,
        "held_out": held_out,
    }
    if chosen is not None:
        out["schedule"] = {"steps": chosen["steps"], "lr": chosen["lr"]}
    if seconds is not None:  # wall time of the whole command (loading included) per episode, one thread
        out["seconds_per_episode"] = seconds / d["episodes"]
        out["load_average"] = os.getloadavg()[0]
    return out
