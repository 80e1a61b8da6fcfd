"""The MuJoCo model-based meta-RL study (Nagabandi et al. 2019, GrBAL and ReBAL): its record (model-predictive control
on held-out half-cheetahs whose joint fails mid-episode, with the meta-learnt models adapting online against a model
trained on all tasks, fixed or fine-tuned online), its table and figure; and the Pendulum specialists measurement
(``python studies/mujoco.py pendulum``)."""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import torch

from fastadapt.apps.study import Study
from fastadapt.config.build import task_sources
from fastadapt.data.sampler import EVAL_STEP, _mix
from fastadapt.eval.stats import mean_ci
from fastadapt.report.figure import pyplot, save_figure
from fastadapt.rl.envs import EnvTaskSource, pendulum_family
from fastadapt.rl.model_based import OnlineDynamics, control_episode, recovery_steps, return_after
from fastadapt.rl.mpc import pendulum_reward, pendulum_state, pendulum_step, reward_for
from fastadapt.rl.transitions import transition_family
from fastadapt.runs import load_run

METHODS = {  # label -> (cell, mode of OnlineDynamics)
    "GrBAL (adapts online)": ("GrBAL", "meta"),
    "ReBAL (recurrent, adapts online)": ("ReBAL", "meta"),
    "pretrained, fixed": ("pretrained", "fixed"),
    "pretrained, fine-tuned online": ("pretrained", "finetune"),
}
CELLS = tuple(dict.fromkeys(cell for cell, _ in METHODS.values()))  # the study's rows: the models METHODS act with
# the baselines the meta-learnt models are judged by: the model trained on all tasks, fixed or fine-tuned online
BASELINES = [label for label, (cell, _) in METHODS.items() if cell == "pretrained"]
BUDGET_MS = 20.0  # the real-time budget of one control step (a 20 ms control period)


def above_baselines(methods: dict, label: str) -> bool:
    """Whether method ``label``'s return after the change is above every baseline's (:data:`BASELINES`) with
    non-overlapping 95 % CIs: the lower end of its interval above the upper end of each of theirs."""
    r = methods[label]["return_after_change"]
    return all(
        r["mean"] - r["ci"] > methods[b]["return_after_change"]["mean"] + methods[b]["return_after_change"]["ci"]
        for b in BASELINES
    )


def record(study: Study, cells: dict) -> dict:
    """Every method of :data:`METHODS` on the same held-out tasks and episode seeds: return after the change (mean +-
    95 % CI over tasks), the mean reward at each step, recovery, wall time of a control step, simulator steps."""
    opts = study.options
    if any(cells.get(c) is None for c in CELLS):
        return {"smoke": bool(opts.get("smoke", False)), "methods": {}}
    runs = {name: load_run(cells[name]["run"]) for name in CELLS}
    cfg = runs["GrBAL"].config
    source = next(iter(task_sources(cfg, tests_only=True).tests.values()))
    options = {k: v for k, v in cfg.data.options.items() if k not in ("family", "trajectories", "action_std")}
    options["horizon"] = opts["horizon"]
    family = transition_family(cfg.data.options.get("family", "crippled"), options, "cheetah-transitions")
    tasks = EnvTaskSource(family, 1, 1, _mix(cfg.eval.seed, 99)).sample_tasks(EVAL_STEP, 0, opts["tasks"])
    methods = {}
    for label, (cell, mode) in METHODS.items():
        t0 = time.perf_counter()
        rewards, steps_ms, cpu_ms, after, recovery = [], [], [], [], []
        for params, seed in zip(tasks.params.tolist(), tasks.seeds.tolist()):
            dyn = OnlineDynamics(runs[cell].algorithm, source.normalizer, mode, opts["window"])
            rec = control_episode(
                family, params, seed, dyn.predict, dyn.observe, plan_horizon=opts["plan_horizon"],
                candidates=opts["candidates"], iterations=opts["iterations"], reward_fn=reward_for(family),
            )  # fmt: skip
            rewards.append(rec.rewards.tolist())
            steps_ms += (1000 * rec.step_seconds).tolist()
            cpu_ms += (1000 * rec.cpu_seconds).tolist()
            after.append(return_after(rec.rewards, rec.switch_step))
            before = float(rec.rewards[: rec.switch_step].mean()) if rec.switch_step else float("nan")
            recovery.append(recovery_steps(rec.rewards, rec.switch_step, 0.9 * before))
        mean, ci = mean_ci(after)
        ms, cpu = torch.tensor(steps_ms), torch.tensor(cpu_ms)
        methods[label] = {
            "return_after_change": {"mean": mean, "ci": ci, "per_task": after},
            "reward_per_step": torch.tensor(rewards).mean(0).tolist(),
            "recovery_steps": recovery,
            "step_ms": {"median": float(ms.median()), "p95": float(ms.quantile(0.95)), "max": float(ms.max())},
            "step_cpu_ms": {"median": float(cpu.median()), "p95": float(cpu.quantile(0.95))},
            "eval_seconds": time.perf_counter() - t0,
        }
    train_part = cfg.data.options.get("trajectories", 64) * family.horizon
    return {
        "smoke": bool(opts.get("smoke", False)),
        "description": study.description,
        "family": family.name,
        "tasks": opts["tasks"],
        "task_params": tasks.params.tolist(),
        "param_names": list(family.param_names),
        "horizon": family.horizon,
        "switch_step": int(tasks.params[0, 2]) if "switch_step" in family.param_names else 0,
        "planner": {k: opts[k] for k in ("candidates", "plan_horizon", "iterations", "window")},
        "methods": methods,
        "training": {name: {k: cells[name][k] for k in ("preset", "steps", "train_minutes")} for name in runs},
        "simulator_steps": {"training_data_per_model": train_part, "per_evaluation_episode": family.horizon},
        "grbal_above_both": above_baselines(methods, "GrBAL (adapts online)"),  # both pretrained baselines
        "rebal_above_both": above_baselines(methods, "ReBAL (recurrent, adapts online)"),
        "within_budget": all(  # CPU time of one core (the machine is shared), for each meta-learnt model
            methods[label]["step_cpu_ms"]["p95"] <= BUDGET_MS for label in METHODS if label not in BASELINES
        ),
    }


def table(results: dict) -> list[str]:
    """The Markdown table: return after the change, recovery and control-step time per method."""
    lines = [
        "| method | return after the change | recovered (steps, median) | control step: CPU ms (median / p95) | wall ms "
        "(median / p95) |",
        "|---|---|---|---|---|",
    ]
    for label, m in results.get("methods", {}).items():
        r, rec = m["return_after_change"], sorted(m["recovery_steps"])
        lines.append(
            f"| {label} | {r['mean']:.1f} +- {r['ci']:.1f} | {rec[len(rec) // 2]} | "
            f"{m['step_cpu_ms']['median']:.1f} / {m['step_cpu_ms']['p95']:.1f} | "
            f"{m['step_ms']['median']:.1f} / {m['step_ms']['p95']:.1f} |"
        )
    if results.get("methods"):
        size = "SMOKE-SIZED (not a result)" if results["smoke"] else "full"
        lines += [
            "",
            f"{size}: {results['tasks']} held-out tasks, {results['horizon']}-step episodes, change at step "
            f"{results['switch_step']}; GrBAL above both baselines with non-overlapping 95 % CIs: "
            f"{results['grbal_above_both']}"
            + (f"; ReBAL above both: {results['rebal_above_both']}" if "rebal_above_both" in results else "")
            + f"; control step within {BUDGET_MS:.0f} ms of one core's CPU time (p95): {results['within_budget']}",
        ]
    return lines


def plot(results: dict, study: Study) -> list[Path]:
    """Mean reward against the steps after the change (10-step moving average), one line per method."""
    if not results.get("methods"):
        return []
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    switch = results["switch_step"]
    for label, m in results["methods"].items():
        r = torch.tensor(m["reward_per_step"])
        smooth = r.unfold(0, 10, 1).mean(-1) if r.numel() >= 10 else r
        ax.plot(torch.arange(smooth.numel()) + 9 - switch, smooth, label=label)
    ax.axvline(0, color="k", lw=0.8)
    ant = results.get("family") == "ant-crippled"
    ax.set(xlabel=f"steps after the {'leg' if ant else 'joint'} failed", ylabel="reward (10-step mean)")
    ax.set_title(
        ("smoke-sized: " if results["smoke"] else "")
        + f"{results['tasks']} held-out {'ants' if ant else 'half-cheetahs'}"
    )
    ax.legend(fontsize=7)
    name = "ant_reward_after_change.png" if ant else "cheetah_reward_after_change.png"
    return [save_figure(fig, study.out / name, dpi=120)]


def pendulum_specialists(tasks: int, plan_horizon: int, candidates: int, iterations: int, seed: int = 1) -> dict:
    """Do Pendulum's tasks need different controllers? On held-out (mass, length) tasks, model-predictive control
    with each task's own exact dynamics (the specialist) against one controller for all tasks (the same planner
    with one assumed mass and length: the family's centre (1.25, 1.0), and the best of a 3 x 3 grid of assumed
    bodies by mean return over the tasks), episodes paired by seed."""
    family = pendulum_family()
    drawn = EnvTaskSource(family, 1, 1, seed).sample_tasks(EVAL_STEP, 0, tasks)
    grid = [(m, length) for m in (0.75, 1.25, 1.75) for length in (0.75, 1.0, 1.25)]

    def episode(params: list[float], s: int, mass: float, length: float) -> float:
        model = partial(pendulum_step, mass=mass, length=length)
        rec = control_episode(
            family, params, s, model, plan_horizon=plan_horizon, candidates=candidates, iterations=iterations,
            reward_fn=pendulum_reward, state_of=pendulum_state,
        )  # fmt: skip
        return float(rec.rewards.sum())

    t0 = time.perf_counter()
    pairs = list(zip(drawn.params.tolist(), drawn.seeds.tolist()))
    own = [episode(p, s, p[0], p[1]) for p, s in pairs]
    shared = {f"m={m}, l={length}": [episode(p, s, m, length) for p, s in pairs] for m, length in grid}
    best = max(shared, key=lambda k: sum(shared[k]))
    out = {"specialist": own, "shared_centre": shared["m=1.25, l=1.0"], "shared_best": shared[best]}
    summary = {k: dict(zip(("mean", "ci"), mean_ci(v))) for k, v in out.items()}
    gaps = {
        k: dict(zip(("mean", "ci"), mean_ci([a - b for a, b in zip(own, out[k])]))) for k in out if k != "specialist"
    }
    return {
        "tasks": drawn.params.tolist(), "returns": out, "summary": summary, "specialist_minus_shared": gaps,
        "best_shared_body": best, "grid": shared, "planner": {"plan_horizon": plan_horizon, "candidates": candidates,
        "iterations": iterations}, "seconds": time.perf_counter() - t0,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("pendulum", help="Pendulum: each task's specialist controller against one shared controller")
    p.add_argument("--tasks", type=int, default=16)
    p.add_argument("--plan-horizon", type=int, default=30)
    p.add_argument("--candidates", type=int, default=300)
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--out", default="results/mujoco/pendulum_specialists.json")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a script: one core, as measured
    res = pendulum_specialists(args.tasks, args.plan_horizon, args.candidates, args.iterations)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(
        json.dumps({"summary": res["summary"], "gap": res["specialist_minus_shared"], "best": res["best_shared_body"]})
    )


if __name__ == "__main__":
    main()
