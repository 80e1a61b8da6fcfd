"""The hyperparameter study's evaluation (score and seconds per task on the same fixed episodes), its record
(``{"rows": [...], "study": ...}``, as ``fastadapt.report`` tables it) and part 2, the tuning study."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

import fastadapt
from fastadapt.apps.study import Cell, Evaluation, Study
from fastadapt.config import load_config
from fastadapt.config.build import task_sources
from fastadapt.eval import evaluate as evaluate_episodes
from fastadapt.eval.stats import mean_ci
from fastadapt.training.testing import evaluated


def score(run_dir: Path, overrides: list[str]) -> dict:
    """Mean, 95% CI and seconds per task of the run on its fixed test episodes with ``overrides``."""
    run = fastadapt.load_run(run_dir, overrides)
    cfg = run.config
    shapes = run.provenance.get("task_shapes") or {}
    shape = tuple(shapes["support_x"][1:]) if shapes.get("support_x") else None
    ((key, sampler),) = list(task_sources(cfg, tests_only=True, input_shape=shape).tests.items())[:1]
    episodes = list(sampler.fixed(cfg.eval.test_episodes, cfg.eval.batch))
    model = evaluated(cfg, run.algorithm)
    t0 = time.perf_counter()
    res = evaluate_episodes(model, episodes, cfg.eval.level)
    seconds = time.perf_counter() - t0
    return {"setting": key, "metric": res.metric, "mean": res.mean, "ci": res.ci, "episodes": res.episodes,
            "seconds_per_task": seconds / res.episodes, "eval_seed": cfg.eval.seed, "overrides": overrides,
            "scores": list(res.scores)}  # fmt: skip


def testing_overrides(study: Study, sinusoid: bool) -> list[str]:
    n = study.evals[0].episodes or 600
    return [
        f"eval.test_episodes={n}",
        f"eval.batch={min(n, 50)}",
        *(study.options["sinusoid_test"] if sinusoid else []),
    ]


def evaluate(cell: Cell, evaluation: Evaluation, study: Study) -> dict:
    return score(cell.run, [*testing_overrides(study, "sinusoid" in cell.preset), *evaluation.overrides])


def record(study: Study, cells: dict) -> dict:
    rows = []
    for label, c in cells.items():
        domain, method = label.split(": ", 1)
        base = {"domain": domain, "method": method, "preset": c["preset"], "train_minutes": c["train_minutes"],
                "diverged": c.get("diverged"), "steps": c["steps"]}  # fmt: skip
        if not c["evals"]:  # diverged before its first checkpoint
            rows.append({**base, "select": "-", "metric": None, "episodes": 0})
        for select, r in c["evals"].items():
            rows.append({**base, "select": select, **r})
    study_part = tune_part(study) if study.options.get("tune") else None
    return {"rows": rows, "study": study_part, "smoke": False, "minutes": study.options["minutes"],
            "torch": __import__("torch").__version__, "fastadapt": fastadapt.__version__}  # fmt: skip


def tune_part(study: Study) -> dict:
    """Part 2: ``fastadapt tune maml-sinusoid`` (resumes from its study.db), then the best config and the preset's
    default trained for ``options.minutes`` each (resumable) and tested on the same episodes, paired."""
    from fastadapt.apps.tuning import tune

    opts = study.options
    folder = study.out / "runs" / "tune-maml-sinusoid"
    base = [f"optim.max_minutes={opts['trial_minutes']}"]
    res = tune("maml-sinusoid", base, folder, opts["space"], trials=opts["trials"], minutes=opts["tune_minutes"])
    result: dict = {"folder": str(folder), "finished": res.finished, "pruned": res.pruned, "failed": res.failed,
                    "best_value": res.best_value, "best_params": res.best_params, "space": opts["space"],
                    "trial_overrides": base}  # fmt: skip
    if res.best_file is None:
        return result
    common = ["run.progress=false", f"optim.max_minutes={opts['minutes']}", "eval.test_episodes=0"]
    for label, config in (("default", "maml-sinusoid"), ("tuned", str(res.best_file))):
        run_out = study.out / "runs" / f"tune-compare-{label}"
        fastadapt.train(load_config(config, [*common, f"run.out={json.dumps(str(run_out))}"]))
        result[label] = score(run_out, testing_overrides(study, True))
    a, b = np.asarray(result["default"]["scores"], float), np.asarray(result["tuned"]["scores"], float)
    mean, ci = mean_ci(b - a)
    result["paired"] = {"mean": mean, "ci": ci, "median_default": float(np.median(a)),
                        "median_tuned": float(np.median(b)),
                        "tuned_lower": float((b < a).mean()), "worst_default": float(a.max()),
                        "worst_tuned": float(b.max()), "episodes": int(a.size)}  # fmt: skip
    return result
