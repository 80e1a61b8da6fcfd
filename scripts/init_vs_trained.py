"""Is a gradient-based run's learnt initialization better than the random one it started from?

    python scripts/init_vs_trained.py results/runs/reptile-omniglot-5w1s-fresh --episodes 100 --steps 5 50

Scores the run's last checkpoint and a freshly built model with the run's seed (the initialization
training started from) on the same fixed validation episodes, after each number of inner steps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fastadapt.build import build_algorithm, task_sources
from fastadapt.checkpoint import load_checkpoint
from fastadapt.config import config_from_dict
from fastadapt.eval import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="run folder written by fastadapt train")
    parser.add_argument("--episodes", type=int, default=100, help="fixed validation episodes")
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 50], help="inner steps at evaluation")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = Path(args.run)
    if not (run / "config.json").is_file() or not (run / "checkpoint.pt").is_file():
        raise SystemExit(f"{run}: needs config.json and checkpoint.pt (a run folder written by fastadapt train)")
    cfg = config_from_dict(json.loads((run / "config.json").read_text()))
    sources = task_sources(cfg)
    if sources.val is None:
        raise SystemExit(f"{run}: the run has no validation part (data.val_part) to score on")
    torch.manual_seed(cfg.run.seed)  # the engine seeds torch the same way before building the model
    models = {"random init": build_algorithm(cfg), "trained": build_algorithm(cfg)}
    if not hasattr(models["trained"], "inner_steps_eval"):
        raise SystemExit(f"{run}: {cfg.algorithm} has no inner steps to vary; this script compares gradient-based runs")
    state = load_checkpoint(run / "checkpoint.pt")
    models["trained"].load_state_dict(state["algorithm"])
    print(f"{run} (step {int(state['step'])}), {args.episodes} validation episodes, accuracy % mean +- 95% CI")
    for name, algo in models.items():
        for steps in args.steps:
            algo.inner_steps_eval = steps
            res = evaluate(algo, sources.val.fixed(args.episodes, cfg.eval.batch), cfg.eval.level, "cpu")
            print(f"{name:12s} {steps:3d} inner steps: {100 * res.mean:.2f} +- {100 * res.ci:.2f}", flush=True)


if __name__ == "__main__":
    main()
