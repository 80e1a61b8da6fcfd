"""Sinusoid regression results (MAML paper, sec. 5.1): MAML, Meta-SGD and the pretrained baseline.

    python scripts/results_sinusoid.py --minutes 12 --out results/sinusoid

Trains the three presets (``maml-sinusoid``, ``metasgd-sinusoid``, ``pretrain-sinusoid``) through the
common engine (each capped at ``--minutes`` of training; resumable), then measures the query MSE
after 1, 5 and 10 inner steps on 600 fixed 5-shot and 10-shot test tasks (100 query points each),
and draws pre- and post-adaptation fits like the paper's Figure 2. Writes ``results.json``,
``results.md``, ``fits.png`` and ``mse_vs_steps.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

import fastadapt
from fastadapt.config import load_config
from fastadapt.config.build import task_sources
from fastadapt.data import SinusoidTasks
from fastadapt.eval import evaluate

PRESETS = {"MAML": "maml-sinusoid", "Meta-SGD": "metasgd-sinusoid", "pretrained": "pretrain-sinusoid"}
PAPER_5SHOT = {"MAML": (0.67, 0.38, 0.35)}  # Finn et al. 2017, Fig. 3 / text: MSE after 1, 5, 10 steps (5-shot)
STEPS = (0, 1, 5, 10)
SHOTS = (5, 10)


def load_trained(cfg, steps: int):
    """The run's trained algorithm (best, else last weights), adapting with ``steps`` inner steps."""
    return fastadapt.load_run(cfg.out_dir, [f"algorithm.inner_steps_eval={steps}"]).algorithm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=12.0, help="training budget per model")
    p.add_argument("--out", type=Path, default=Path("results/sinusoid"))
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--plot-only", action="store_true", help="redraw the figures from finished runs and results.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.plot_only:
        cfgs = {label: (load_config(preset, [f"run.out={args.out / 'runs' / preset}"]), 0, 0.0) for label, preset in PRESETS.items()}
        plot(cfgs, args.out)
        return
    cfgs = {}
    for label, preset in PRESETS.items():
        cfg = load_config(preset, [f"run.out={args.out / 'runs' / preset}", f"optim.max_minutes={args.minutes}", "run.progress=false"])
        res = fastadapt.train(cfg)
        if res.interrupted:
            raise SystemExit(f"{label}: interrupted at step {res.steps}; run the same command again to resume")
        print(f"{label}: trained {res.steps} steps in {res.train_seconds / 60:.1f} min", flush=True)
        cfgs[label] = (cfg, res.steps, res.train_seconds)

    table: dict[str, dict] = {}
    for label, (cfg, steps_trained, seconds) in cfgs.items():
        table[label] = {"preset": PRESETS[label], "meta_steps": steps_trained, "train_minutes": seconds / 60, "mse": {}}
        tests = task_sources(cfg).tests  # the engine's test tasks: eval.seed + 1, 100 query points (data.test_queries)
        for shots in SHOTS:
            tasks = tests[f"{shots}shot"]
            for k in STEPS:  # Meta-SGD's learnt rates are meant for its 1 trained step; more may diverge (reported)
                r = evaluate(load_trained(cfg, k), tasks.fixed(args.episodes, 100))
                table[label]["mse"][f"{shots}shot_{k}steps"] = [r.mean, r.ci]
                print(f"{label} {shots}-shot after {k} steps: MSE {r.mean:.3f} +- {r.ci:.3f}", flush=True)
    (args.out / "results.json").write_text(json.dumps(table, indent=2) + "\n")
    lines = markdown_table(table)
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(cfgs, args.out)


def markdown_table(table: dict) -> list[str]:
    """The Markdown table of ``results.json`` (model -> meta-steps, minutes and MSE after each step count), one row per model and K."""
    lines = ["| model | meta-steps (train min) | K | MSE 0 steps | 1 step | 5 steps | 10 steps | paper (1/5/10) |", "|---|---|---|---|---|---|---|---|"]
    for label, row in table.items():
        for shots in SHOTS:
            cells = [f"{row['mse'][f'{shots}shot_{k}steps'][0]:.3f} +- {row['mse'][f'{shots}shot_{k}steps'][1]:.3f}"
                     if math.isfinite(row["mse"][f"{shots}shot_{k}steps"][0]) else "diverged" for k in STEPS]
            paper = " / ".join(f"{v:.2f}" for v in PAPER_5SHOT[label]) if label in PAPER_5SHOT and shots == 5 else "-"
            lines.append(f"| {label} | {row['meta_steps']} ({row['train_minutes']:.1f}) | {shots} | {' | '.join(cells)} | {paper} |")
    return lines


def plot(cfgs, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = torch.linspace(-5, 5, 200)[:, None]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for col, label in enumerate(("MAML", "pretrained")):
        cfg = cfgs[label][0]
        for row, shots in enumerate(SHOTS):
            tasks = SinusoidTasks(shots, 1, seed=cfg.eval.seed + 7)
            index = next(i for i in range(100) if float(tasks.task_params(0, i, 1)[0, 0]) > 3.0)  # a clearly visible task
            task = tasks.sample_tasks(0, index, 1).task(0)
            amp, phase = tasks.task_params(0, index, 1)[0].tolist()
            ax = axes[row, col]
            ax.plot(grid, amp * torch.sin(grid - phase), "r", lw=2, label="ground truth")
            for k, style in ((0, ":"), (1, "--"), (10, "-")):
                pred = load_trained(cfg, k).adapt(task.support_x, task.support_y)
                with torch.no_grad():
                    ax.plot(grid, pred(grid), style, color="tab:green" if k else "tab:blue", alpha=0.5 + 0.05 * k,
                            label="pre-update" if k == 0 else f"after {k} step{'s' if k > 1 else ''}")
            ax.plot(task.support_x, task.support_y, "^", color="purple", label=f"{shots} points used for the gradient")
            ax.set(title=f"{label}, K = {shots}", ylim=(-5.5, 5.5))
            if row == 0 and col == 0:
                ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(out / "fits.png", dpi=100)
    plt.close(fig)

    table = json.loads((out / "results.json").read_text())
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, row in table.items():
        ys = [row["mse"][f"5shot_{k}steps"][0] for k in STEPS]
        ax.plot(STEPS, ys, marker="o", label=label)
    ax.plot([1, 5, 10], PAPER_5SHOT["MAML"], "k*", label="MAML (paper)")
    ax.set(xlabel="inner gradient steps at test", ylabel="query MSE (5-shot)", yscale="log", title="k-shot regression, K = 5")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "mse_vs_steps.png", dpi=100)
    plt.close(fig)
    assert math.isfinite(ys[-1])


if __name__ == "__main__":
    main()
