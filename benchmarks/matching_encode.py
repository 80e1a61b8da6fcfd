"""Time MatchingNet.encode's two execution paths (median over a few calls, paths interleaved).

    python benchmarks/matching_encode.py [--iters 5] [--threads 1] [--tasks 10]

Conv4 (64 filters, BatchNorm) on random 1x28x28 images, ``--tasks`` tasks, no gradient (as in
evaluation), at two per-task sizes: 300 images (the 15 queries x 20 ways of a 20-way test episode)
and 20 (its 1-shot support set). Reports the median CPU time of this process (which other work on a
shared machine does not inflate) and the median wall time; the result sets what
``MatchingNet.encode(execution="auto")`` does on the CPU.
"""

from __future__ import annotations

import argparse

import torch
from timing import interleaved

from fastadapt.algorithms.matching import MatchingNet
from fastadapt.nn import Conv4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tasks", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    algo = MatchingNet(Conv4(in_channels=1, out_features=None, hidden=64, image_size=28), fce=False)
    for per_task in (300, 20):
        x = torch.rand(args.tasks, per_task, 1, 28, 28)
        with torch.no_grad():
            t = interleaved({p: (lambda p=p, x=x: algo.encode(x, p)) for p in ("vmap", "loop")}, args.iters)
        med = {p: (t.median_cpu(p), t.median_wall(p)) for p in t.cpu}
        print(f"{args.tasks} tasks x {per_task} images: " + ", ".join(f"{p} {c:.3f} s CPU ({w:.3f} s wall)" for p, (c, w) in med.items())
              + f"; vmap / loop CPU = {med['vmap'][0] / med['loop'][0]:.2f} (median of {args.iters})", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
