"""Is a gradient-based run's learnt initialization better than the random one it started from?

    python scripts/init_vs_trained.py results/runs/reptile-omniglot-5w1s-fresh --episodes 100 --steps 5 50

Scores the run's trained weights (``fastadapt.load_run``: best.pt, else the last checkpoint) and a
freshly built model with the run's seed (the initialization training started from) on the same
fixed validation episodes, after each number of inner steps.
"""

from __future__ import annotations

import argparse
import inspect

import torch
from torch import nn

from fastadapt import Config, FastAdaptError, load_run
from fastadapt.config.build import build_algorithm, probe_batch, task_sources
from fastadapt.core.registry import algorithm_class
from fastadapt.eval import evaluate
from fastadapt.runs.folder import RunFolder


def initial_algorithm(cfg: Config) -> nn.Module:
    """The algorithm as the engine builds it before its first step (the same seed and order of calls)."""
    torch.manual_seed(cfg.run.seed)
    return build_algorithm(cfg, probe_batch(task_sources(cfg), cfg))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="run folder written by fastadapt train")
    parser.add_argument("--episodes", type=int, default=100, help="fixed validation episodes")
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 50], help="inner steps at evaluation")
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        cfg = RunFolder(args.run).read_config()
        if "inner_steps_eval" not in inspect.signature(algorithm_class(cfg.algorithm)).parameters:
            raise SystemExit(
                f"{args.run}: {cfg.algorithm} has no inner steps to vary; this script compares gradient-based runs"
            )
        sources = task_sources(cfg)
        if sources.val is None:
            raise SystemExit(f"{args.run}: the run has no validation part (data.val_part) to score on")
        trained = {steps: load_run(args.run, [f"algorithm.inner_steps_eval={steps}"]) for steps in args.steps}
        first = trained[args.steps[0]]
        print(
            f"{args.run} ({first.weights}, step {first.step}), {args.episodes} validation episodes, "
            "accuracy % mean +- 95% CI"
        )
        models = {
            "random init": {s: initial_algorithm(run.config) for s, run in trained.items()},
            "trained": {s: run.algorithm for s, run in trained.items()},
        }
        for name, by_steps in models.items():
            for steps, algo in by_steps.items():
                res = evaluate(algo, sources.val.fixed(args.episodes, cfg.eval.batch), cfg.eval.level, "cpu")
                print(f"{name:12s} {steps:3d} inner steps: {100 * res.mean:.2f} +- {100 * res.ci:.2f}", flush=True)
    except FastAdaptError as e:
        raise SystemExit(f"init_vs_trained: {e}") from None


if __name__ == "__main__":
    main()
