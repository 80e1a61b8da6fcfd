"""Where a MANN training step spends its time, beside its LSTM baseline (torch.profiler, a few steps).

    python scripts/profile_mann.py --steps 3 --out results/mann_profile.txt

Builds the presets ``mann-omniglot`` and ``mann-lstm-omniglot`` (optionally with ``--override``s, e.g.
``algorithm.controller=transformer``), times ``--steps`` training steps (meta_loss, backward, Adam; a
batch of 16 episodes of 50 steps) after one warm-up step, one thread, and prints each model's mean
step time and the profiler's table of operators by self CPU time. Under a minute on one core.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from fastadapt.config import load_config
from fastadapt.config.build import build_algorithm, build_optimizer, probe_batch, task_sources


def profile_preset(preset: str, overrides: list[str], steps: int, rows: int) -> tuple[float, str]:
    cfg = load_config(preset, overrides)
    sources = task_sources(cfg)
    algo = build_algorithm(cfg, probe_batch(sources, cfg), check_memory=False)
    opt, _ = build_optimizer(cfg, algo.parameters())
    batches = [sources.train.sample_tasks(s, 0, cfg.data.meta_batch) for s in range(steps + 1)]

    def step(batch) -> None:
        opt.zero_grad(set_to_none=True)
        algo.meta_loss(batch).loss.backward()
        opt.step()

    step(batches[0])  # warm-up
    t0 = time.perf_counter()
    for b in batches[1:]:
        step(b)
    per_step = (time.perf_counter() - t0) / steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches[1:]:
            step(b)
    return per_step, prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=18, help="operators shown per model")
    parser.add_argument("--override", action="append", default=[], help="config override for both presets (repeatable)")
    parser.add_argument("--out", default="", help="also write the report to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = []
    for preset in ("mann-omniglot", "mann-lstm-omniglot"):
        overrides = args.override if preset == "mann-omniglot" else [o for o in args.override if "controller" not in o]
        per_step, table = profile_preset(preset, overrides, args.steps, args.rows)
        lines += [
            f"== {preset} {' '.join(overrides)}: {per_step:.3f} s per training step "
            "(16 episodes x 50 steps, one thread)",
            table,
        ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
