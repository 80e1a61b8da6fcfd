"""Meta-reinforcement learning results (MAML paper, sec. 5.3, Figure 4): 2D navigation and the Pendulum dynamics family.

    python scripts/results_rl.py --family nav2d                       # <= 60 minutes of one core in total
    python scripts/results_rl.py --family pendulum-dynamics
    python scripts/results_rl.py --smoke --out /tmp/rl-smoke          # < 1 minute: every step, tiny sizes

For each family, trains the meta-learnt policy (``maml-rl-<family>``) and the jointly pretrained
policy (``pretrain-rl-<family>``) through the common engine, each capped by ``optim.max_minutes``
(``--maml-minutes``, ``--pretrain-minutes``; resumable: rerun the same command), then scores them
and a randomly initialised policy on 40 fixed held-out tasks after 0, 1, 2, 3 policy-gradient steps
of 20 trajectories each (mean +- 95 % CI over tasks). Writes under ``--out``: ``results.json`` (every
curve, per-task returns, training steps and minutes, and whether after one step the meta-learnt
policy is above both others with non-overlapping intervals), ``results.md`` (the table),
``<family>_return_vs_steps.png`` and, for 2D navigation, ``nav2d_trajectories.png`` (paths before and
after one adaptation step on four held-out goals). The runs go to ``--runs``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import fastadapt
from fastadapt.config import load_config
from fastadapt.config.build import build_algorithm, task_sources
from fastadapt.eval.rl import compare, paths_before_and_after

FAMILIES = {"nav2d": ("maml-rl-nav2d", "pretrain-rl-nav2d"), "pendulum-dynamics": ("maml-rl-pendulum", "pretrain-rl-pendulum")}
SMOKE = ["optim.steps=2", "data.meta_batch=2", "data.shots=2", "data.queries=2", "data.options={horizon=10}"]


def train(preset: str, runs: Path, minutes: float, smoke: bool):
    """Train ``preset`` (resuming its run folder) and return its config and trained algorithm."""
    over = [f"run.out={runs / preset}", "run.progress=false", "run.threads=1", "eval.test_episodes=0"]
    over += SMOKE if smoke else [f"optim.max_minutes={minutes}"]
    cfg = load_config(preset, over)
    t0 = time.perf_counter()
    res = fastadapt.train(cfg)
    if res.interrupted:
        raise SystemExit(f"{preset}: interrupted at step {res.steps}; run the same command again to resume")
    print(
        f"{preset}: {res.steps} meta-iterations, {res.train_seconds / 60:.1f} min of training ({time.perf_counter() - t0:.0f} s this call)",
        flush=True,
    )
    return cfg, fastadapt.load_run(cfg.out_dir).algorithm, {"steps": res.steps, "train_minutes": res.train_seconds / 60}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=[*FAMILIES, "all"], default="nav2d")
    p.add_argument("--maml-minutes", type=float, default=25.0, help="training budget of the meta-learnt policy")
    p.add_argument("--pretrain-minutes", type=float, default=20.0, help="training budget of the pretrained policy")
    p.add_argument("--tasks", type=int, default=40, help="held-out tasks")
    p.add_argument("--trajectories", type=int, default=20, help="trajectories per task and adaptation step")
    p.add_argument("--steps", type=int, default=3, help="adaptation steps scored (0..steps)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    p.add_argument("--out", type=Path, default=Path("results/rl"))
    p.add_argument("--runs", type=Path, default=None, help="run folders (default: runs/rl, or <out>/runs with --smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 2 meta-iterations, 4 tasks, 2 trajectories: checks the pipeline")
    p.add_argument("--time-iterations", type=int, default=0, help="only time this many meta-iterations of each MAML preset and print")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.time_iterations:
        for family in list(FAMILIES) if args.family == "all" else [args.family]:
            time_iterations(FAMILIES[family][0], args.time_iterations)
        return
    if args.smoke:
        args.tasks, args.trajectories = 4, 2
    runs = args.runs or (args.out / "runs" if args.smoke else Path("runs/rl"))
    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    families = list(FAMILIES) if args.family == "all" else [args.family]
    for family in families:
        t_start = time.perf_counter()
        maml_preset, pretrain_preset = FAMILIES[family]
        cfg, maml, maml_info = train(maml_preset, runs, args.maml_minutes, args.smoke)
        _, pretrained, pretrain_info = train(pretrain_preset, runs, args.pretrain_minutes, args.smoke)
        torch.manual_seed(args.seed)
        random_init = build_algorithm(cfg, check_memory=False)  # a fresh policy of the same shape, the same inner step
        test = task_sources(cfg, tests_only=True).tests
        source = next(iter(test.values()))  # the run's test tasks (eval.seed + 1): held out from training
        tasks = next(iter(source.fixed(args.tasks, args.tasks)))
        t_eval = time.perf_counter()
        curves = compare({"MAML": maml, "pretrained": pretrained, "random": random_init}, tasks, args.steps, args.trajectories)
        eval_seconds = time.perf_counter() - t_eval
        one = 1 if args.steps >= 1 else 0
        results[family] = {
            "curves": {name: c.to_dict() for name, c in curves.items()},
            "training": {"MAML": {"preset": maml_preset, **maml_info}, "pretrained": {"preset": pretrain_preset, **pretrain_info}},
            "tasks": args.tasks,
            "trajectories": args.trajectories,
            "steps": list(range(args.steps + 1)),
            "maml_above_both_after_one_step": curves["MAML"].separated(curves["pretrained"], one)
            and curves["MAML"].separated(curves["random"], one),
            "eval_seconds": eval_seconds,
            "total_minutes": (time.perf_counter() - t_start) / 60,
            "smoke": args.smoke,
            "inner_lr": maml.inner_lr,
            "task_params": tasks.params.tolist(),
        }
        results_file.write_text(json.dumps(results, indent=2) + "\n")
        for name, c in curves.items():
            print(
                f"{family} {name}: " + ", ".join(f"{j} steps {m:.2f} +- {ci:.2f}" for j, (m, ci) in enumerate(zip(c.mean, c.ci))),
                flush=True,
            )
        draw_curves(family, results[family], args.out / f"{family}_return_vs_steps.png")
        if family == "nav2d":
            draw_paths(maml, tasks, args.trajectories, args.out / "nav2d_trajectories.png")
    (args.out / "results.md").write_text(table(results))
    print(f"results in {args.out}")


def time_iterations(preset: str, n: int) -> None:
    """Wall time of ``n`` meta-iterations of ``preset`` (sampling and inner steps; backward and Adam step), one thread."""
    cfg = load_config(preset, ["run.out=/tmp/fastadapt-rl-timing"])
    torch.manual_seed(0)
    source = task_sources(cfg).train
    algo = build_algorithm(cfg, check_memory=False)
    opt = torch.optim.Adam(algo.parameters(), cfg.optim.lr)
    rows = []
    for step in range(n):
        t0 = time.perf_counter()
        out = algo.meta_loss(source.sample_tasks(step, 0, cfg.data.meta_batch))
        t1 = time.perf_counter()
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        rows.append((t1 - t0, time.perf_counter() - t1))
    d = cfg.data
    print(
        f"{preset}: {d.meta_batch} tasks x ({d.shots} + {d.queries}) trajectories per meta-iteration; seconds (meta_loss + backward/step): "
        + ", ".join(f"{a:.2f} + {b:.2f}" for a, b in rows),
        flush=True,
    )


def table(results: dict) -> str:
    lines = [
        "| family | policy | " + " | ".join(f"{j} steps" for j in next(iter(results.values()))["steps"]) + " |",
        "|---|---|" + "---|" * len(next(iter(results.values()))["steps"]),
    ]
    for family, r in results.items():
        for name, c in r["curves"].items():
            lines.append(f"| {family} | {name} | " + " | ".join(f"{m:.2f} +- {ci:.2f}" for m, ci in zip(c["mean"], c["ci"])) + " |")
    notes = [
        f"{family}: {r['tasks']} held-out tasks, {r['trajectories']} trajectories per step, 95 % CI over tasks; MAML above both after "
        f"one step with non-overlapping intervals: {r['maml_above_both_after_one_step']}; total {r['total_minutes']:.1f} min"
        for family, r in results.items()
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def draw_curves(family: str, r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for name, c in r["curves"].items():
        ax.errorbar(r["steps"], c["mean"], yerr=c["ci"], marker="o", capsize=3, label=name)
    ax.set_xlabel("policy-gradient steps")
    ax.set_ylabel("average return")
    ax.set_xticks(r["steps"])
    ax.set_title(f"{family}: {r['tasks']} held-out tasks, 95 % CI")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def draw_paths(algo, tasks, trajectories: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = tasks.select(slice(0, 4))
    paths = paths_before_and_after(algo, shown, trajectories, shown=3)
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
        ax.set_xlim(-0.7, 0.7)
        ax.set_ylim(-0.7, 0.7)
        ax.set_aspect("equal")
        if t == 0:
            ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("2D navigation: MAML policy before and after one adaptation step")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
