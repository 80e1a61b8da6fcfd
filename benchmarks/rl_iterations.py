"""Wall time per meta-iteration of the meta-RL presets (docs/RL.md): ``meta_loss`` (sampling both sets of
trajectories, baselines, inner steps), then backward and the Adam step, one thread.

    python benchmarks/rl_iterations.py --iterations 5     # maml-rl-nav2d and maml-rl-pendulum
"""

from __future__ import annotations

import argparse

import torch
from timing import timed

from fastadapt.config import load_config
from fastadapt.config.build import build_algorithm, task_sources

PRESETS = ("maml-rl-nav2d", "maml-rl-pendulum")


def time_iterations(preset: str, n: int) -> None:
    cfg = load_config(preset, ["run.out=runs/rl-timing"])
    torch.manual_seed(0)
    source = task_sources(cfg).train
    algo = build_algorithm(cfg, check_memory=False)
    opt = torch.optim.Adam(algo.parameters(), cfg.optim.lr)
    rows = []
    for step in range(n):
        forward, _, out = timed(lambda step=step: algo.meta_loss(source.sample_tasks(step, 0, cfg.data.meta_batch)))
        backward = timed(lambda out=out: (opt.zero_grad(), out.loss.backward(), opt.step()))[0]
        rows.append((forward, backward))
    d = cfg.data
    print(
        f"{preset}: {d.meta_batch} tasks x ({d.shots} + {d.queries}) trajectories per meta-iteration; "
        "seconds (meta_loss + backward/step): " + ", ".join(f"{a:.2f} + {b:.2f}" for a, b in rows),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    for preset in args.presets:
        time_iterations(preset, args.iterations)


if __name__ == "__main__":
    main()
