"""The sinusoid study's record (``{model: {"mse": {"5shot_1steps": [mean, ci]}}}``) and its figures: fits before and
after adaptation (``fits.png``, the paper's Figure 2) and the MSE against inner steps (``mse_vs_steps.png``)."""

from __future__ import annotations

from pathlib import Path

import torch

from fastadapt.apps.study import Study
from fastadapt.data import SinusoidTasks
from fastadapt.report.figure import pyplot, save_figure
from fastadapt.report.tables import PAPER_5SHOT, STEPS
from fastadapt.runs import load_run


def record(study: Study, cells: dict) -> dict:
    return {
        label: {
            "preset": c["preset"],
            "meta_steps": c["steps"],
            "train_minutes": c["train_minutes"],
            "mse": {name: [e["mean"], e["ci"]] for name, e in c["evals"].items()},
        }
        for label, c in cells.items()
    }


def plot(results: dict, study: Study) -> list[Path]:
    plt = pyplot()
    runs = {c.label: c.run for c in study.cells}
    grid = torch.linspace(-5, 5, 200)[:, None]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for col, label in enumerate(("MAML", "pretrained")):
        seed = load_run(runs[label]).config.eval.seed
        for row, shots in enumerate((5, 10)):
            tasks = SinusoidTasks(shots, 1, seed=seed + 7)
            index = next(i for i in range(100) if float(tasks.task_params(0, i, 1)[0, 0]) > 3.0)  # a visible task
            task = tasks.sample_tasks(0, index, 1).task(0)
            amp, phase = tasks.task_params(0, index, 1)[0].tolist()
            ax = axes[row, col]
            ax.plot(grid, amp * torch.sin(grid - phase), "r", lw=2, label="ground truth")
            for k, style in ((0, ":"), (1, "--"), (10, "-")):
                algo = load_run(runs[label], [f"algorithm.inner_steps_eval={k}"]).algorithm
                pred = algo.adapt(task.support_x, task.support_y)
                name = "pre-update" if k == 0 else f"after {k} step{'s' if k > 1 else ''}"
                with torch.no_grad():
                    ax.plot(
                        grid,
                        pred(grid),
                        style,
                        color="tab:green" if k else "tab:blue",
                        alpha=0.5 + 0.05 * k,
                        label=name,
                    )
            ax.plot(task.support_x, task.support_y, "^", color="purple", label=f"{shots} points used for the gradient")
            ax.set(title=f"{label}, K = {shots}", ylim=(-5.5, 5.5))
            if row == 0 and col == 0:
                ax.legend(fontsize=8, loc="lower left")
    save_figure(fig, study.out / "fits.png", dpi=100)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, row in results.items():
        ax.plot(STEPS, [row["mse"][f"5shot_{k}steps"][0] for k in STEPS], marker="o", label=label)
    ax.plot([1, 5, 10], PAPER_5SHOT["MAML"], "k*", label="MAML (paper)")
    ax.set(xlabel="inner gradient steps at test", ylabel="query MSE (5-shot)", yscale="log", title="K = 5")
    ax.legend()
    save_figure(fig, study.out / "mse_vs_steps.png", dpi=100)
    return [study.out / "fits.png", study.out / "mse_vs_steps.png"]
