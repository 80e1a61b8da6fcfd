"""Reports of run folders: learning-curve plots, what a run learnt about learning, a Markdown table comparing runs,
pictures of episodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastadapt.core.contract import GateTracing, LearntRates, StepRates
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import FastAdaptError
from fastadapt.report.figure import pyplot, save_figure
from fastadapt.runs import RunFolder, load_run


def read_metrics(run_dir: str | Path) -> list[dict]:
    return RunFolder(run_dir).read_metrics()


def plot_run(run_dir: str | Path) -> list[Path]:
    """``curves.png``: training loss, and training / validation score against step."""
    plt = pyplot()
    rows = read_metrics(run_dir)
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    metric = "acc" if any("acc" in r for r in rows) else ("return" if any("return" in r for r in rows) else "mse")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
    ax1.set(xlabel="step", ylabel="training loss (query)", title="loss")
    if all(r["loss"] > 0 for r in train):  # a policy-gradient surrogate is near 0 and of either sign
        ax1.set_yscale("log")
    ax2.plot([r["step"] for r in train], [r.get(metric, np.nan) for r in train], lw=1, label="train (query)")
    if metric == "return":  # reinforcement learning: the return before adaptation beside the one after
        ax2.plot(
            [r["step"] for r in train],
            [r.get("return_pre", np.nan) for r in train],
            lw=1,
            label="train, before adaptation",
        )
    if val:
        m = np.array([r[metric] for r in val])
        ci = np.array([r.get("ci", 0.0) for r in val])
        steps = [r["step"] for r in val]
        ax2.plot(steps, m, marker="o", label="validation (fixed episodes)")
        ax2.fill_between(steps, m - ci, m + ci, alpha=0.2)
    ax2.set(xlabel="step", ylabel=metric, title=metric)
    ax2.legend()
    fig.suptitle(Path(run_dir).name)
    out = save_figure(fig, Path(run_dir) / "curves.png", dpi=110)
    return [out, *plot_learnt_learning(run_dir)]


def plot_learnt_learning(run_dir: str | Path) -> list[Path]:
    """What a run learnt about learning: Meta-SGD's per-layer inner rates (``inner_lrs.png``), MAML++'s
    per-layer rates at each inner step (``step_rates.png``), the LSTM meta-learner's input and forget
    gates across inner steps (``gates.png``)."""
    run = Path(run_dir)
    folder = RunFolder(run)
    if not folder.config_file.is_file() or not (folder.best_file.is_file() or folder.checkpoint_file.is_file()):
        return []
    from fastadapt.core.registry import algorithm_class

    if not issubclass(algorithm_class(folder.read_config().algorithm), (LearntRates, StepRates, GateTracing)):
        return []
    loaded = load_run(run)
    cfg, algo = loaded.config, loaded.algorithm
    outs: list[Path] = []
    plt = pyplot()
    if isinstance(algo, LearntRates):
        rates = algo.learning_rates()
        names = list(rates)
        fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(names)), 4))
        ax.bar(range(len(names)), [rates[n]["mean"] for n in names], yerr=[rates[n]["std"] for n in names], capsize=2)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set(
            ylabel="learnt inner rate (mean +- std over coordinates)",
            title=f"{cfg.algorithm}: learnt inner learning rates per tensor",
        )
        outs.append(save_figure(fig, run / "inner_lrs.png", dpi=110))
    per_step = algo.step_rates() if isinstance(algo, StepRates) else {}
    if per_step:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        colours = plt.get_cmap("tab20").colors  # 20 distinct colours; a line style per further 20 tensors
        for i, (name, r) in enumerate(per_step.items()):
            ax.plot(
                range(1, len(r) + 1),
                r,
                marker="o",
                lw=1,
                label=name,
                color=colours[i % 20],
                ls=("-", "--", ":")[i // 20 % 3],
            )
        initial = getattr(algo, "inner_lr", None)
        if isinstance(initial, float):
            ax.axhline(initial, color="grey", ls="--", lw=1, label=f"initial rate {initial:g}")
        ax.set_xticks(range(1, max(len(r) for r in per_step.values()) + 1))
        ax.set(
            xlabel="inner step",
            ylabel="learnt inner rate",
            title=f"{cfg.algorithm}: learnt rate per layer and inner step",
        )
        ax.legend(fontsize=6, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
        outs.append(save_figure(fig, run / "step_rates.png", dpi=110))
    if isinstance(algo, GateTracing):
        sampler = next(iter(loaded.tasks("test").tests.values()))
        batch = next(iter(sampler.fixed(20, 20)))
        trace = algo.gate_trace(batch.support_x, batch.support_y)
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        steps = range(1, trace.input_gate.shape[0] + 1)
        for j, name in enumerate(trace.names):
            a1.plot(steps, trace.input_gate[:, j], marker="o", label=name)
            a2.plot(steps, trace.forget_gate[:, j], marker="o", label=name)
        a1.set(xlabel="inner step", ylabel="mean input gate i_t (a learnt step size)", title="input gate")
        a2.set(xlabel="inner step", ylabel="mean forget gate f_t (1 - weight decay)", title="forget gate")
        a2.legend(fontsize=6)
        outs.append(save_figure(fig, run / "gates.png", dpi=110))
    return outs


def markdown_report(run_dirs: list[str] | list[Path]) -> str:
    """A Markdown table: one row per run and test setting, with mean +- CI and what produced it."""
    lines = [
        "| run | algorithm | test setting | score (mean +- 95% CI) | episodes | steps | train min | batchnorm |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in run_dirs:
        res = RunFolder(run).read_results()
        for key, t in res["tests"].items():
            s = t["settings"]
            if t["metric"] == "acc":
                score = f"{100 * t['mean']:.2f} +- {100 * t['ci']:.2f} %"
            else:  # mse (regression) or return (reinforcement learning)
                score = (
                    f"{t['metric'].upper() if t['metric'] == 'mse' else t['metric']} {t['mean']:.4f} +- {t['ci']:.4f}"
                )
            lines.append(
                f"| {Path(run).name} | {s.get('algorithm', '?')} | {key} ({s.get('queries', '?')} queries) | {score} | "
                f"{t['episodes']} | {res['steps']} | {res['train_seconds'] / 60:.1f} | {s.get('batchnorm', '?')} |"
            )
    return "\n".join(lines) + "\n"


def save_episode_grid(batch: TaskBatch, path: str | Path, max_tasks: int = 4) -> Path:
    """A PNG of the first tasks: one row per task, support images then query images, grouped by label."""
    from PIL import Image

    if batch.support_x.ndim != 5:
        raise FastAdaptError("episode pictures need image tasks [T, S, C, H, W]")
    rows = []
    for t in range(min(max_tasks, len(batch))):
        imgs = [batch.support_x[t, i] for i in range(batch.support_x.shape[1])]
        gap = np.ones_like(imgs[0][0].numpy()) * 0.5
        q = [batch.query_x[t, i] for i in range(min(batch.query_x.shape[1], 2 * batch.ways))]
        row = np.concatenate([im[0].numpy() for im in imgs] + [gap] + [im[0].numpy() for im in q], axis=1)
        rows.append(row)
    width = max(r.shape[1] for r in rows)
    grid = np.concatenate([np.pad(r, ((1, 1), (0, width - r.shape[1])), constant_values=0.5) for r in rows], axis=0)
    Image.fromarray((255 * (1 - grid.clip(0, 1))).astype(np.uint8)).save(path)
    return Path(path)
