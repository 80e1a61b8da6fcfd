"""Time MAML's execution paths on the Omniglot workload (median over a few meta-updates).

    python benchmarks/inner_execution.py [--iters 5] [--threads 1]

Conv4 with 64 filters on 28x28 Omniglot, 5-way 1-shot, 5 queries per class, meta-batch 32,
1 second-order inner step, float32: forward and backward of ``MAML.meta_loss`` per path.
The result (median CPU time of this process, which other work on a shared machine does not
inflate; wall time alongside) sets ``fastadapt.algorithms.inner.DEFAULT_EXECUTION``.
"""

from __future__ import annotations

import argparse

import torch
from timing import Timings, interleaved

from fastadapt.algorithms.maml import MAML
from fastadapt.data import EpisodeSampler, load_omniglot
from fastadapt.nn import Conv4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chunk-size", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch = EpisodeSampler(load_omniglot("vinyals", "train"), ways=5, shots=1, queries=5, seed=0).sample(32)
    model = Conv4(in_channels=1, out_features=5, hidden=64, image_size=28)
    paths = ("vmap", "chunks", "loop")
    algos = {ex: MAML(model, inner_lr=0.4, inner_steps=1, execution=ex, chunk_size=args.chunk_size) for ex in paths}

    def step(algo):
        def run():
            algo.zero_grad(set_to_none=True)
            algo.meta_loss(batch).loss.backward()

        return run

    def show(i: int, t: Timings) -> None:
        print(f"round {i}: " + ", ".join(f"{ex} {t.cpu[ex][-1] * 1000:.0f} ms CPU / {t.wall[ex][-1] * 1000:.0f} ms wall"
                                         for ex in paths), flush=True)  # fmt: skip

    timings = interleaved({ex: step(algo) for ex, algo in algos.items()}, args.iters, after_round=show)
    for execution in paths:
        label = f"{execution} (chunk_size={args.chunk_size})" if execution == "chunks" else execution
        print(f"{label:24s} median {timings.median_cpu(execution) * 1000:6.0f} ms CPU, "
              f"{timings.median_wall(execution) * 1000:6.0f} ms wall  ({args.iters} iters, {args.threads} thread(s))")  # fmt: skip


if __name__ == "__main__":
    main()
