"""The meta-RL study's record: per family, the return of the MAML, pretrained and random policies after 0..steps
policy-gradient steps on the same held-out tasks; its figures (return against steps; 2D navigation paths)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from fastadapt.apps.study import Study
from fastadapt.config.build import build_algorithm, task_sources
from fastadapt.eval.rl import compare, paths_before_and_after
from fastadapt.report.figure import pyplot, save_figure
from fastadapt.runs import load_run


def record(study: Study, cells: dict) -> dict:
    """Each family whose two runs are trained; a family kept from results.json when its runs did not change."""
    opts = study.options
    old_file = study.out / "results.json"
    results = json.loads(old_file.read_text()) if old_file.is_file() else {}
    for family in opts["families"]:
        maml_cell, pre_cell = cells.get(f"MAML {family}"), cells.get(f"pretrained {family}")
        if maml_cell is None or pre_cell is None:
            continue
        training = {
            name: {"preset": c["preset"], "steps": c["steps"], "train_minutes": c["train_minutes"]}
            for name, c in (("MAML", maml_cell), ("pretrained", pre_cell))
        }
        if results.get(family, {}).get("training") == training:
            continue
        t_start = time.perf_counter()
        maml_run = load_run(maml_cell["run"])
        torch.manual_seed(opts["seed"])
        random_init = build_algorithm(maml_run.config, check_memory=False)  # a fresh policy of the same shape
        source = next(iter(task_sources(maml_run.config, tests_only=True).tests.values()))  # held out (eval.seed + 1)
        tasks = next(iter(source.fixed(opts["tasks"], opts["tasks"])))
        policies = {
            "MAML": maml_run.algorithm,
            "pretrained": load_run(pre_cell["run"]).algorithm,
            "random": random_init,
        }
        t_eval = time.perf_counter()
        curves = compare(policies, tasks, opts["steps"], opts["trajectories"])
        one = 1 if opts["steps"] >= 1 else 0
        above = curves["MAML"].separated(curves["pretrained"], one) and curves["MAML"].separated(curves["random"], one)
        results[family] = {
            "curves": {name: c.to_dict() for name, c in curves.items()},
            "training": training,
            "tasks": opts["tasks"],
            "trajectories": opts["trajectories"],
            "steps": list(range(opts["steps"] + 1)),
            "maml_above_both_after_one_step": above,
            "eval_seconds": time.perf_counter() - t_eval,
            "total_minutes": (time.perf_counter() - t_start) / 60,
            "smoke": False,
            "inner_lr": maml_run.algorithm.inner_lr,
            "task_params": tasks.params.tolist(),
        }
    return results


def plot(results: dict, study: Study) -> list[Path]:
    plt = pyplot()
    out = []
    for family, r in results.items():
        fig, ax = plt.subplots(figsize=(4.5, 3.5))
        for name, c in r["curves"].items():
            ax.errorbar(r["steps"], c["mean"], yerr=c["ci"], marker="o", capsize=3, label=name)
        ax.set(xlabel="policy-gradient steps", ylabel="average return", title=f"{family}: {r['tasks']} held-out tasks")
        ax.set_xticks(r["steps"])
        ax.legend()
        out.append(save_figure(fig, study.out / f"{family}_return_vs_steps.png", dpi=120))
    run = next((c.run for c in study.cells if c.label == "MAML nav2d"), None)
    if "nav2d" in results and run is not None and run.is_dir():
        out.append(draw_paths(load_run(run), study.options["trajectories"], study.out / "nav2d_trajectories.png"))
    return out


def draw_paths(run, trajectories: int, path: Path) -> Path:
    """2D navigation: the MAML policy's paths before and after one adaptation step on four held-out goals."""
    plt = pyplot()
    source = next(iter(task_sources(run.config, tests_only=True).tests.values()))
    shown = next(iter(source.fixed(4, 4)))
    paths = paths_before_and_after(run.algorithm, shown, trajectories, shown=3)
    fig, axes = plt.subplots(1, shown.num_tasks, figsize=(3 * shown.num_tasks, 3), squeeze=False)
    for t, ax in enumerate(axes[0]):
        for key, colour, label in (("before", "tab:grey", "0 steps"), ("after", "tab:blue", "1 step")):
            obs, mask = paths[key][t], paths[f"mask_{key}"][t]
            for i in range(obs.shape[0]):
                valid = obs[i][mask[i] > 0]
                ax.plot(valid[:, 0], valid[:, 1], color=colour, lw=1, label=label if i == 0 else None)
        gx, gy = shown.params[t].tolist()
        ax.plot([gx], [gy], "r*", ms=12, label="goal")
        ax.plot([0], [0], "ko", ms=4)
        ax.set(xlim=(-0.7, 0.7), ylim=(-0.7, 0.7), aspect="equal")
        if t == 0:
            ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("2D navigation: MAML policy before and after one adaptation step")
    save_figure(fig, path, dpi=120)
    return path
